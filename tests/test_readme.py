"""The README's Python session runs exactly as printed, and its commands' flags exist."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block() -> str:
    text = README.read_text()
    section = text[text.index("## From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_from_python_session_runs_as_printed(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        exec(compile(_python_block(), str(README), "exec"), {"__name__": "__readme__"})
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out.splitlines()
    curve = eval(out[0])
    assert len(curve) == 3 and all(0 <= r <= 1 for r in curve)
    assert out[1].startswith("memorization ratio ")
    assert float(out[2]) == 1.0  # the optimum copies
    assert (tmp_path / "neighbors.png").stat().st_size > 1000
    assert (tmp_path / "run16" / "summary.json").exists()


def test_the_set_up_commands_are_the_two_documented_ones():
    commands = [line for line in README.read_text().splitlines() if line.startswith("pip install torch==")]
    assert commands == ["pip install torch==2.13.0 -e . && diffmem demo",
                        "pip install torch==2.13.0 -e '.[test]' && python -m pytest -q"]
