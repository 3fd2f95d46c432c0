"""Shared fixtures: a CLI runner, a seeded generator, and small real data sets built once per session."""

from __future__ import annotations

import numpy as np
import pytest

from diffmem.cli import run


@pytest.fixture
def run_cli(capsys):
    """``run_cli([...]) -> (exit_code, stdout, stderr)``, running ``diffmem`` in-process."""

    def _run(argv):
        capsys.readouterr()
        code = run([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return _run


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits as an ImageSet (1797 images, uint8, labels 0..9)."""
    from diffmem.data import load_source

    return load_source("digits")


@pytest.fixture(scope="session")
def digits64(digits):
    """The class-balanced nested subset of 64 digits (``diffmem data --source digits --size 64``)."""
    from diffmem.data import class_balanced_subset

    return class_balanced_subset(digits, 64, exact=False)


@pytest.fixture(scope="session")
def digits64_zip(digits64, tmp_path_factory):
    """``digits64`` written as an EDM dataset zip, with its true labels."""
    from diffmem.data import write_dataset_zip

    return write_dataset_zip(tmp_path_factory.mktemp("digits64") / "digits64.zip", digits64)
