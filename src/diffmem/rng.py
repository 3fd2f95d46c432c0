"""Random streams: every random draw in diffmem is seeded by a pure function of its keys.

``derive_seed(seed, stream, *keys)`` hashes the user's seed, a stream id and the draw's position
(an epoch, a step, a sample index) with numpy's ``SeedSequence`` into a 63-bit seed. So a training
step's noise depends only on (seed, step), a sample only on (seed, its index), whatever the batch
size, the number of processes, or where a killed run was resumed.
"""

from __future__ import annotations

import numpy as np
import torch

from diffmem.errors import InputError

# Stream ids: one per kind of draw, so no two kinds share a seed.
INIT, PERMUTATION, NOISE, DROPOUT, TRACK, SAMPLE, LABELS, BOOTSTRAP, POINTS, MEMBERSHIP, SUBSET = range(11)

MAX_SEED = 2**63 - 1


def check_seed(seed, param: str = "seed") -> int:
    """A seed must be a whole number in ``0 .. 2^63 - 1``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_SEED:
        raise InputError(f"must be a whole number in 0..2^63-1, got {seed!r}", param=param)
    return int(seed)


def derive_seed(seed: int, stream: int, *keys: int) -> int:
    """A 63-bit seed for one random stream, a pure function of (seed, stream, keys)."""
    state = np.random.SeedSequence([check_seed(seed), int(stream), *map(int, keys)]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & MAX_SEED


def generator(seed: int, device="cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(seed)


def numpy_rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    """A numpy generator for the stream (seed, stream, keys)."""
    return np.random.default_rng(derive_seed(seed, stream, *keys))
