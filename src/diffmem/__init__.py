"""diffmem: measure, explain and control memorization in diffusion models.

A denoiser is any callable ``D(x, sigma, labels=None) -> x_hat`` on model-space tensors
(``uint8 / 127.5 - 1``). Trained networks (preconditioned) and closed-form optima both satisfy it,
so every sampler and metric in this package works on both.
"""

from diffmem.errors import InputError

__version__ = "0.1.0"
__all__ = ["InputError", "__version__"]
