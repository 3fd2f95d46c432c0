"""One grammar for ``--labels`` (none | true | random[:C] | unique | K | k1,k2,...): the forms each
command takes, the ones it refuses (one line naming --labels and the forms it takes), and what
each accepted form gives."""

from __future__ import annotations

import numpy as np
import pytest

from diffmem.data import (
    DATA_FORMS,
    SAMPLE_FORMS,
    ImageSet,
    conditioning_labels,
    load_image_set,
    parse_labels,
    write_dataset_zip,
)
from diffmem.errors import InputError
from diffmem.rng import LABELS, numpy_rng

DATA_TAKES = "expected none, true, random:C (1 <= C <= 1048576) or unique for a training set"
SAMPLE_TAKES = "expected none, true, random, K or k1,k2,... (class indices) for sampling"


def _one_line(code, stdout, stderr, *needles):
    assert code == 2, (code, stdout, stderr)
    assert stderr.count("\n") == 1 and stderr.startswith("diffmem: error: --labels: "), stderr
    assert "Traceback" not in stderr and stdout == ""
    for needle in needles:
        assert needle in stderr, stderr


# The grammar ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, form, count, classes", [
    ("none", "none", None, ()),
    ("true", "true", None, ()),
    ("random", "random", None, ()),
    ("random:7", "random:C", 7, ()),
    ("unique", "unique", None, ()),
    ("3", "K", None, (3,)),
    ("0", "K", None, (0,)),
    ("1,0,2", "k1,k2,...", None, (1, 0, 2)),
    ("4,", None, None, None),
    (" 2, 5 ", "k1,k2,...", None, (2, 5)),
])
def test_the_grammar(text, form, count, classes):
    if form is None:
        with pytest.raises(InputError) as info:
            parse_labels(text)
        assert info.value.param == "labels"
        return
    spec = parse_labels(text)
    assert (spec.form, spec.count, spec.classes) == (form, count, classes)


@pytest.mark.parametrize("bad", ["", " ", "random:", "random:0", "random:x", "random:2000000", "unique:3",
                                 "sometimes", "1,,2", "1.5", "-1", "2,-3", "1e3", "1048576", "None", "TRUE"])
def test_outside_the_grammar(bad):
    with pytest.raises(InputError) as info:
        parse_labels(bad)
    assert info.value.param == "labels" and "\n" not in str(info.value)


def test_each_use_names_the_forms_it_takes():
    assert DATA_FORMS == ("none", "true", "random:C", "unique")
    assert SAMPLE_FORMS == ("none", "true", "random", "K", "k1,k2,...")
    with pytest.raises(InputError, match="a training set, got '3' \\(K is for sampling\\)"):
        parse_labels("3", DATA_FORMS)
    with pytest.raises(InputError, match="for sampling, got 'unique' \\(unique is for a training set\\)"):
        parse_labels("unique", SAMPLE_FORMS)


# diffmem data -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("labels, expected", [
    ("none", None),
    ("true", "true"),
    ("random:3", "random"),
    ("unique", "unique"),
])
def test_data_takes_its_forms(run_cli, digits, tmp_path, labels, expected):
    out = tmp_path / "d.zip"
    code, stdout, stderr = run_cli(["data", "--source", "digits", "--size", 20, "--labels", labels,
                                    "--seed", 5, "--out", out])
    assert code == 0 and stderr == "" and f"(labels: {labels})" in stdout
    got = load_image_set(out).labels
    if expected is None:
        assert got is None
    elif expected == "true":
        assert np.bincount(got).tolist() == [2] * 10  # the first two of each digit
    elif expected == "random":
        np.testing.assert_array_equal(got, numpy_rng(5, LABELS).integers(0, 3, size=20))
    else:
        np.testing.assert_array_equal(got, np.arange(20))


@pytest.mark.parametrize("labels, why", [
    ("random", "(random is for sampling)"),
    ("3", "(K is for sampling)"),
    ("1,2", "(k1,k2,... is for sampling)"),
    ("random:0", ""),
    ("", ""),
    ("maybe", ""),
])
def test_data_refuses_the_other_forms(run_cli, tmp_path, labels, why):
    out = tmp_path / "d.zip"
    _one_line(*run_cli(["data", "--source", "digits", "--size", 20, "--labels", labels, "--out", out]),
              DATA_TAKES, f"got {labels!r}", why)
    assert not out.exists()


def test_data_true_on_an_unlabeled_source(run_cli, tmp_path):
    write_dataset_zip(tmp_path / "plain.zip", np.zeros((4, 1, 4, 4), np.uint8))
    _one_line(*run_cli(["data", "--source", tmp_path / "plain.zip", "--labels", "true", "--out", tmp_path / "o.zip"]),
              "true: the source has no labels")
    assert not (tmp_path / "o.zip").exists()


# diffmem sample -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_zip(tmp_path_factory):
    """Six 4x4 images with labels 0, 0, 2, 2, 1, 2 (all three classes present)."""
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("labels") / "train.zip"
    return write_dataset_zip(path, rng.integers(0, 256, (6, 1, 4, 4), dtype=np.uint8), [0, 0, 2, 2, 1, 2])


def _sample(train_zip, out, *extra):
    return ["sample", "--optimal", "--train", train_zip, "--num", 8, "--steps", 3, "--seed", 4, "--device", "cpu",
            "--out", out, *extra]


@pytest.mark.parametrize("labels, expected", [
    ("none", None),
    ("true", [0, 0, 2, 2, 1, 2, 0, 0]),
    ("random", numpy_rng(4, LABELS).integers(0, 3, size=8).tolist()),
    ("1", [1] * 8),
    ("2,0,1", [2, 0, 1, 2, 0, 1, 2, 0]),
])
def test_sample_takes_its_forms(run_cli, train_zip, tmp_path, labels, expected):
    out = tmp_path / "g.zip"
    code, _, stderr = run_cli(_sample(train_zip, out, "--labels", labels))
    assert code == 0, stderr
    got = load_image_set(out).labels
    assert (got is None) if expected is None else got.tolist() == expected


@pytest.mark.parametrize("labels, why", [
    ("unique", "(unique is for a training set)"),
    ("random:3", "(random:C is for a training set)"),
    ("", ""),
    ("-1", ""),
    ("three", ""),
])
def test_sample_refuses_the_other_forms(run_cli, train_zip, tmp_path, labels, why):
    out = tmp_path / "g.zip"
    _one_line(*run_cli(_sample(train_zip, out, "--labels", labels)), why)
    assert not out.exists()


@pytest.mark.parametrize("labels, needle", [
    ("3", "class 3 is outside 0..2"),
    ("0,9", "class 9 is outside 0..2"),
])
def test_sample_refuses_classes_the_model_lacks(run_cli, train_zip, tmp_path, labels, needle):
    out = tmp_path / "g.zip"
    _one_line(*run_cli(_sample(train_zip, out, "--labels", labels)), needle)
    assert not out.exists()


def test_sample_labels_need_a_labelled_training_set(run_cli, tmp_path):
    write_dataset_zip(tmp_path / "plain.zip", np.zeros((4, 1, 4, 4), np.uint8))
    for labels in ("true", "random", "0"):
        _one_line(*run_cli(_sample(tmp_path / "plain.zip", tmp_path / "g.zip", "--labels", labels)), "no classes")
    assert not (tmp_path / "g.zip").exists()


# conditioning_labels, the library function --------------------------------------------------------------


def test_conditioning_labels():
    assert conditioning_labels(None, 5, 3) is None and conditioning_labels("none", 5, 0) is None
    np.testing.assert_array_equal(conditioning_labels("random", 50, 4, seed=2),
                                  numpy_rng(2, LABELS).integers(0, 4, size=50))
    np.testing.assert_array_equal(conditioning_labels("2", 3, 4), [2, 2, 2])
    np.testing.assert_array_equal(conditioning_labels("3,1", 5, 4), [3, 1, 3, 1, 3])
    np.testing.assert_array_equal(conditioning_labels("true", 5, 4, train_labels=[3, 0]), [3, 0, 3, 0, 3])
    # classes absent from the training set: random skips them, K refuses them
    gappy = np.array([0, 0, 3, 3])
    drawn = conditioning_labels("random", 400, 4, seed=1, train_labels=gappy)
    assert set(drawn.tolist()) == {0, 3}
    with pytest.raises(InputError, match="class 1 has no training images"):
        conditioning_labels("1", 4, 4, train_labels=gappy)
    # a network does not keep its training labels
    with pytest.raises(InputError, match="true needs the training set's labels") as info:
        conditioning_labels("true", 4, 10)
    assert info.value.param == "labels"
    for bad_num in (0, -2):
        with pytest.raises(InputError) as info:
            conditioning_labels("1", bad_num, 4)
        assert info.value.param == "num"
    with pytest.raises(InputError) as info:
        conditioning_labels("random", 4, 4, seed=-1)
    assert info.value.param == "seed"


def test_optimum_conditions_on_present_classes_only(tmp_path, run_cli):
    """A training set whose labels skip a class: random never picks it, and K names it."""
    images = np.random.default_rng(0).integers(0, 256, (4, 1, 4, 4), dtype=np.uint8)
    write_dataset_zip(tmp_path / "gap.zip", ImageSet(images, np.array([0, 0, 2, 2])))
    code, _, stderr = run_cli(_sample(tmp_path / "gap.zip", tmp_path / "r.zip", "--labels", "random"))
    assert code == 0, stderr
    assert set(load_image_set(tmp_path / "r.zip").labels.tolist()) <= {0, 2}
    _one_line(*run_cli(_sample(tmp_path / "gap.zip", tmp_path / "k.zip", "--labels", "1")), "class 1 has no training images")
    assert not (tmp_path / "k.zip").exists()
