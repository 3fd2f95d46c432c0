"""The one entry shape of the studies and the one list of engine options of their commands."""

import inspect

import click
import pytest

from diffmem.cli import options
from diffmem.errors import InputError
from diffmem.studies import engines, regularization, rf, sweep, timescales, twosplit
from diffmem.studies.result import StudyResult

STUDY_COMMANDS = ("sweep", "emm", "timescales", "two-split", "random-features", "regularization")
ENGINE_FLAGS = {"--engine", "--workers", "--threads", "--address", "--gpus", "--ray-logs", "--progress"}


def _command(name):
    from diffmem.cli import main

    return main.commands[name]


@pytest.mark.parametrize("name", STUDY_COMMANDS)
def test_every_study_command_takes_the_engine_options(name):
    flags = {flag for p in _command(name).params if isinstance(p, click.Option) for flag in p.opts}
    assert ENGINE_FLAGS <= flags and "--out" in flags


def test_the_engine_options_come_from_one_list():
    assert {flag for o in options.ENGINE_OPTIONS for flag in _decorated(o).params[0].opts} == ENGINE_FLAGS


def _decorated(option):
    return option(click.Command("x"))


@pytest.mark.parametrize("module", [sweep, timescales, twosplit, rf, regularization])
def test_every_study_has_the_same_entry(module):
    params = inspect.signature(module.run).parameters
    assert list(params)[:2] == ["spec", "out"]
    for name in ("engine", "workers", "threads", "log", "progress"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["engine"].default == "local" and params["workers"].default == 1


def test_study_result_shape(tmp_path):
    result = StudyResult("sweep", tmp_path, [{"a": 1}], ["one", "two"])
    assert result.summary() == "one\ntwo" and result.rows() == [{"a": 1}]
    result.rows()[0]["a"] = 2  # a copy: the result keeps its table
    assert result.rows() == [{"a": 1}]


def test_engine_checks_its_kind_and_gpus():
    with pytest.raises(InputError) as err:
        engines.Engine("slurm")
    assert err.value.param == "engine"
    with pytest.raises(InputError) as err:
        engines.Engine("ray", gpus=-1)
    assert err.value.param == "gpus"
    assert engines.as_engine("local") == engines.Engine()


def _square(x):
    return x * x


def test_local_engine_runs_jobs(tmp_path):
    done = dict(engines.Engine().run([("a", _square, (3,)), ("b", _square, (4,))], workers=1, threads=1, out=tmp_path))
    assert done == {"a": 9, "b": 16}


def test_a_node_without_the_drivers_folder_is_refused_in_one_line(tmp_path):
    marker = engines.write_marker(tmp_path)
    engines.check_marker(marker)  # the driver's own node sees it
    (tmp_path / engines.SHARED_MARKER).write_text("another run\n")
    with pytest.raises(engines.SharedStorageError, match="--out must be storage every Ray node sees"):
        engines.check_marker(marker)
    (tmp_path / engines.SHARED_MARKER).unlink()
    with pytest.raises(engines.SharedStorageError, match="missing"):
        engines.check_marker(marker)


def test_a_study_run_gives_its_table_summary_and_report(tmp_path):
    """regularization.run in the entry shape: the same rows on one worker here and on two processes."""
    spec = tmp_path / "reg.toml"
    spec.write_text('name = "reg"\nmode = "regularization"\n[data]\nsource = "toy2d"\nsize = 20\n[axes]\n'
                    'size = [10, 20]\n[regularization]\ntikhonov = [0.0, 1.0]\nnum = 30\nsteps = 8\nbootstrap = 10\n')
    lines = []
    here = regularization.run(spec, tmp_path / "here", threads=1, log=lines.append)
    assert isinstance(here, StudyResult) and here.study == "regularization"
    assert [(r["cell"], r["strength"]) for r in here.rows()] == [(f"size-{n}", c) for n in (10, 20) for c in (0.0, 1.0)]
    assert here.summary() == f"4 strengths measured; table in {tmp_path / 'here'}/results.csv" and len(lines) == 4
    pool = regularization.run(spec, tmp_path / "pool", workers=2, threads=1)
    strip = lambda rows: [{k: v for k, v in r.items() if "time" not in k} for r in rows]  # noqa: E731
    assert strip(pool.rows()) == strip(here.rows())
    assert here.report().name == "index.html"
