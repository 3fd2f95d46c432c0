"""Shared fixtures: a CLI runner, a seeded generator, and small real data sets built once per session."""

from __future__ import annotations

import os
import shutil
import subprocess

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
def one_thread():
    """One torch thread for tiny models and matrices: two threads spin against each other on a busy
    2-core machine (tens of times slower here). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def one_line(code, stdout, stderr, *needles):
    """The CLI's contract for bad input: exit 2, one line on stderr naming what was wrong, no traceback."""
    assert code == 2, (code, stdout, stderr)
    assert stderr.count("\n") == 1 and stderr.startswith("diffmem: error: "), stderr
    assert "Traceback" not in stderr and stdout == ""
    for needle in needles:
        assert needle in stderr, stderr
    return stderr


@pytest.fixture
def sets(tmp_path):
    """A small uint8 training set (train.zip, 20 images) and generated set (gen.npz, 6) of 1x4x4."""
    from diffmem.data import save_npz, write_dataset_zip

    rng = np.random.default_rng(0)
    write_dataset_zip(tmp_path / "train.zip", rng.integers(0, 256, (20, 1, 4, 4), dtype=np.uint8))
    save_npz(tmp_path / "gen.npz", rng.integers(0, 256, (6, 1, 4, 4), dtype=np.uint8))
    return tmp_path


def browser_dom(index) -> str:
    """The DOM of the page ``index`` (a path) after headless Chromium rendered it. Skips where
    Chromium is not installed, fails in CI (``.ci/run`` installs the Debian package)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing in CI (.ci/run installs the Debian package chromium)")
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           "--dump-dom", index.as_uri()], capture_output=True, text=True, timeout=120).stdout
