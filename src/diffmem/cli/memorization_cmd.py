"""``diffmem memorization``: how much of a generated set copies the training set."""

from __future__ import annotations

import json
import sys

import click

from diffmem.atomic import prepare_output, write_json, write_npz
from diffmem.cli.options import parse_bytes, parse_fraction, resolve_device
from diffmem.data.io import load_image_set
from diffmem.data.points import is_points_file, load_data
from diffmem.errors import InputError, check_number
from diffmem.metrics.features import parse_features
from diffmem.metrics.memorization import (
    DEFAULT_SIMILARITY_THRESHOLD, MAX_BOOTSTRAP, METRICS, FeatureMemorizationResult, feature_memorization,
    memorization,
)
from diffmem.metrics.proximity import DEFAULT_TOLERANCE, proximity
from diffmem.rng import check_seed

OUTPUTS = ("neighbors.npz", "neighbors.png", "summary.json")


@click.command("memorization")
@click.option("--train", "train_path", required=True, help="Training images: PNG folder, .npz, EDM .zip, CIFAR archive, idx.")
@click.option("--generated", "generated_path", required=True, help="Generated images, same formats.")
@click.option("--threshold", default="1/3", show_default=True, help="Memorized when d1/d2 < threshold; in (0, 1].")
@click.option("--out", "out_dir", default=None, help="Folder for neighbors.npz, neighbors.png, summary.json.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--memory-limit", default="2GiB", show_default=True, help="Working-memory budget of the search.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--bootstrap", default=1000, show_default=True, type=int,
              help=f"Bootstrap resamples for the 95 % CI (0..{MAX_BOOTSTRAP:,}; 0: none, ci95 and stderr are then null).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the bootstrap.")
@click.option("--quantize/--no-quantize", default=False, show_default=True,
              help="Round float generated images to uint8 first, as saving them to PNG would (seed 001).")
@click.option("--features", default=None,
              help="Measure in a feature space: pixels, pca:K (fitted on --train), classifier (with --source) "
                   "or a TorchScript file (float32 NCHW in [-1, 1] -> (N, k)). Default: exact pixel L2.")
@click.option("--metric", default=None, type=click.Choice(METRICS),
              help="Feature-space distance (default cosine; implies --features pixels if not given).")
@click.option("--similarity-threshold", default=DEFAULT_SIMILARITY_THRESHOLD, show_default=True, type=float,
              help="Cosine: a sample is a replication when its nearest training similarity exceeds this (DCR).")
@click.option("--source", default=None, help="Built-in source of --features classifier (digits, mnist, fashion-mnist).")
@click.option("--tolerance", default=DEFAULT_TOLERANCE, show_default=True, type=float,
              help="Point clouds (.npz of points): also count samples within this distance of a training point.")
def memorization_cmd(train_path, generated_path, threshold, out_dir, as_json, memory_limit, device, bootstrap, seed,
                     quantize, features, metric, similarity_threshold, source, tolerance):
    """Memorization ratio: the share of generated images whose nearest training image is
    closer than THRESHOLD times the second nearest (exact L2 in pixel space, or in the feature
    space of --features with --metric cosine|l2)."""
    threshold = check_number("threshold", parse_fraction(threshold, "threshold"), lo=0.0, lo_open=True, hi=1.0)
    bootstrap = check_number("bootstrap", bootstrap, lo=0, hi=MAX_BOOTSTRAP, integer=True)
    seed = check_seed(seed, "seed")
    limit = parse_bytes(memory_limit, "memory_limit")
    similarity_threshold = check_number("similarity_threshold", similarity_threshold, lo=-1.0, hi=1.0)
    if features is not None:
        parse_features(features)  # a bad spec or missing file is named before any image is read
    if out_dir is not None and not out_dir.strip():
        prepare_output(out_dir, kind="folder", names=OUTPUTS)  # refuses the empty path, naming --out
    device = resolve_device(device)
    if is_points_file(train_path) or is_points_file(generated_path):
        return _points(train_path, generated_path, threshold, tolerance, bootstrap, seed, device, as_json, out_dir)
    train = load_image_set(train_path, what="train")
    generated = load_image_set(generated_path, what="generated")
    if out_dir is not None:  # checked after the inputs, created only once the measurement succeeded
        prepare_output(out_dir, kind="folder", names=OUTPUTS, create=False)
    common = dict(threshold=threshold, memory_limit=limit, device=device, bootstrap=bootstrap, seed=seed,
                  progress=sys.stderr.isatty())
    if features is None and metric is None:
        result = memorization(train, generated, quantize=quantize, **common)
    else:
        result = feature_memorization(train, generated, features=features or "pixels", metric=metric or "cosine",
                                      similarity_threshold=similarity_threshold, source=source, **common)
    out = prepare_output(out_dir, kind="folder", names=OUTPUTS) if out_dir is not None else None
    summary = {"train": str(train_path), "generated": str(generated_path), **result.summary()}
    if out:
        _write_outputs(out, result, generated, train, summary)
    if as_json:
        click.echo(json.dumps(summary, allow_nan=False))
        return
    ci = "" if result.ci95 is None else f" (95% CI {result.ci95[0]:.4f}-{result.ci95[1]:.4f})"
    space = f" in {result.features} space ({result.metric})" if isinstance(result, FeatureMemorizationResult) else ""
    click.echo(
        f"memorization ratio{space} {result.ratio:.4f}{ci}: "
        f"{int(result.memorized.sum())} of {result.n_generated} generated images copy one of "
        f"{result.n_train} training images (d1/d2 < {threshold:.4g})"
    )
    if result.explain():
        click.echo(result.explain())
    if out:
        click.echo(f"wrote {', '.join(str(out / name) for name in OUTPUTS)}")


def _points(train_path, generated_path, threshold, tolerance, bootstrap, seed, device, as_json, out_dir) -> None:
    """Point clouds (seed 002's toys): the share within ``tolerance`` of a training point and the 1/3
    ratio (:func:`diffmem.metrics.proximity.proximity`), measured unquantized."""
    if out_dir is not None:
        raise InputError("per-sample outputs are written for image sets only; leave it out for point clouds",
                         param="out")
    train, generated = load_data(train_path, what="train"), load_data(generated_path, what="generated")
    result = proximity(train, generated, tolerance=tolerance, threshold=threshold, bootstrap=bootstrap, seed=seed,
                       device=device)
    summary = {"train": str(train_path), "generated": str(generated_path), **result.summary()}
    if as_json:
        click.echo(json.dumps(summary, allow_nan=False))
        return
    click.echo(f"{result.ratio:.4f} of {len(generated)} samples memorized by the ratio rule (d1/d2 < {threshold:.4g}); "
               f"{result.fraction_within:.4f} within {tolerance:g} of one of {len(train)} training points")


def _write_outputs(out, result, generated, train, summary: dict) -> None:
    """``neighbors.npz`` (per-sample d1, d2, idx1, idx2, memorized, nn_ratio), the grid PNG and
    ``summary.json``."""
    from diffmem.plots import save_neighbor_grid

    write_npz(out / "neighbors.npz", **result.per_sample())
    save_neighbor_grid(out / "neighbors.png", generated.images, train.images, result)
    write_json(out / "summary.json", summary, allow_nan=False)
