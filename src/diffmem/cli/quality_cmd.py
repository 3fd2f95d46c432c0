"""``diffmem quality``: Fréchet distance of generated to held-out images, and the held-out loss gap."""

from __future__ import annotations

import json
import sys

import click

from diffmem.cli.options import resolve_device
from diffmem.data.io import load_image_set
from diffmem.errors import InputError
from diffmem.metrics.features import CLASSIFIER_SOURCES, classifier_path, parse_features
from diffmem.metrics.quality import loss_gap, sample_quality


@click.command("quality")
@click.option("--generated", "generated_path", required=True, help="Generated images: PNG folder, .npz, EDM .zip.")
@click.option("--heldout", "heldout_path", required=True,
              help="Held-out images of the training source (diffmem data ... --heldout-out H.zip), same formats.")
@click.option("--features", default="classifier", show_default=True,
              help="classifier (trained once per --source and cached), pixels, pca:K, or a TorchScript file.")
@click.option("--source", default=None,
              help="Built-in source of the classifier: digits, mnist or fashion-mnist (needed with --features classifier).")
@click.option("--network", default=None, help="A run folder: also report its held-out minus training denoising loss.")
@click.option("--train", "train_path", default=None, help="The run's training images (with --network).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def quality_cmd(generated_path, heldout_path, features, source, network, train_path, device, as_json):
    """Sample quality: the Fréchet distance between generated and held-out images in a feature
    space that needs no download; with --network and --train, the held-out loss gap too."""
    parse_features(features)
    if (network is None) != (train_path is None):
        raise InputError("--network and --train go together (the loss gap needs the run and its training images)",
                         param="train" if train_path is None else "network")
    device = resolve_device(device)
    generated = load_image_set(generated_path, what="generated")
    heldout = load_image_set(heldout_path, what="heldout")
    D = train = None
    if network is not None:  # the model and its sets are checked before any work
        from diffmem.denoisers.probe import check_shape
        from diffmem.runs import load_run

        D = load_run(network, device=device).denoiser
        train = load_image_set(train_path, what="train")
        check_shape(D, train, "train", "training images")
        check_shape(D, heldout, "heldout", "held-out images")
    if features == "classifier" and source in CLASSIFIER_SOURCES:
        cached = classifier_path(source, heldout.shape)
        if not cached.is_file():
            click.echo(f"training the {source} classifier for {'x'.join(map(str, heldout.shape))} images once "
                       f"(cached as {cached})", err=True)
    summary = {"generated": str(generated_path), "heldout": str(heldout_path),
               **sample_quality(generated, heldout, features, source=source, device=device,
                                progress=sys.stderr.isatty())}
    if D is not None:
        summary["loss"] = loss_gap(D, train, heldout, device=device)
    if as_json:
        click.echo(json.dumps(summary, allow_nan=False))
        return
    click.echo(f"FD {summary['fd']:.4g} in {summary['features']} features ({summary['dim']} dims): "
               f"{summary['n_generated']} generated vs {summary['n_heldout']} held-out images")
    if "classifier" in summary:
        click.echo(f"classifier {summary['classifier']['file']}: "
                   f"test accuracy {summary['classifier']['test_accuracy']:.4f}")
    if "loss" in summary:
        loss = summary["loss"]
        click.echo(f"denoising loss (mean over {len(loss['sigmas'])} sigmas): train {loss['train_loss']:.4g}, "
                   f"held-out {loss['heldout_loss']:.4g}, gap {loss['gap']:.4g}")
