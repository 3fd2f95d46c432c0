"""``diffmem sample``: draw images from the closed-form optimum or a trained network."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import click
import numpy as np

from diffmem.atomic import prepare_output
from diffmem.cli.options import resolve_device
from diffmem.data.imageset import to_uint8
from diffmem.data.io import save_npz, write_dataset_zip, write_png_folder
from diffmem.data.labels import conditioning_labels
from diffmem.data.points import load_data, save_points
from diffmem.denoisers.optimal import OptimalDenoiser, parse_regularize_flag
from diffmem.errors import InputError
from diffmem.rng import check_seed
from diffmem.sampling import SAMPLERS, SDE_DEFAULTS, sample

_DEFAULTS = {name: p.default for name, p in inspect.signature(sample).parameters.items()}  # the library's


def write_images(path: str | Path, images: np.ndarray, labels=None) -> Path:
    """Write uint8 NCHW images by the path's form: ``.npz``, EDM ``.zip``, else a PNG folder."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        return save_npz(path, images, labels, param="out")
    if path.suffix.lower() == ".zip":
        return write_dataset_zip(path, images, labels, param="out")
    return write_png_folder(path, images, labels, param="out")


@click.command("sample")
@click.option("--optimal", is_flag=True, help="Sample the closed-form optimal denoiser of --train.")
@click.option("--train", "train_path", default=None, help="Training set for --optimal.")
@click.option("--network", default=None,
              help="A training run folder or snapshot file, a diffusers UNet2DModel folder, or a TorchScript file.")
@click.option("--num", type=int, required=True, help="Number of images.")
@click.option("--out", "out_path", required=True, help="Output: a PNG folder, an .npz or an EDM .zip.")
@click.option("--sampler", type=click.Choice(SAMPLERS), default=_DEFAULTS["sampler"], show_default=True)
@click.option("--steps", type=int, default=_DEFAULTS["steps"], show_default=True)
@click.option("--sigma-min", type=float, default=_DEFAULTS["sigma_min"], show_default=True)
@click.option("--sigma-max", type=float, default=_DEFAULTS["sigma_max"], show_default=True)
@click.option("--rho", type=float, default=_DEFAULTS["rho"], show_default=True)
@click.option("--s-churn", type=float, default=None,
              help=f"Stochasticity of the sde sampler (default {SDE_DEFAULTS['s_churn']:g}).")
@click.option("--seed", type=int, default=_DEFAULTS["seed"], show_default=True, help="Sample i uses the stream (seed, i).")
@click.option("--labels", default=None,
              help="none | true (the --train labels, cycled) | random | K | k1,k2,... (class-conditional sampling).")
@click.option("--regularize", default=None, help="tikhonov:C (constant strength), tikhonov_time:C (strength c·g(t)², g² = 2σ on EDM's "
                   "schedule), eb:TAU or log_eb:LN_TAU (the floor by its logarithm), with --optimal.")
@click.option("--batch", type=int, default=_DEFAULTS["batch_size"], show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--allow-pickle", is_flag=True, help="Allow pickled (.bin) diffusers weights; only for files you trust.")
def sample_cmd(optimal, train_path, network, num, out_path, sampler, steps, sigma_min, sigma_max, rho, s_churn,
               seed, labels, regularize, batch, device, allow_pickle):
    """Generate NUM images (uint8) with EDM's samplers from the optimum or a trained network."""
    if optimal == bool(network):
        raise InputError("give exactly one of --optimal (with --train) or --network", param="optimal/network")
    check_seed(seed)
    device = resolve_device(device)
    prepare_output(out_path, kind="file" if Path(out_path).suffix.lower() in (".npz", ".zip") else "folder",
                   param="out", create=False)  # created when written, after sampling
    if optimal:
        if not train_path:
            raise InputError("--optimal needs the training set", param="train")
        train = load_data(train_path, what="--train")
        lab = conditioning_labels(labels, num, train.num_classes, seed, train_labels=train.labels)
        D = OptimalDenoiser(train, train.labels,
                            conditional=lab is not None, regularize=parse_regularize_flag(regularize),
                            device=device)
        source = {"optimal": str(train_path), "regularize": regularize}
    else:
        if regularize:
            raise InputError("only applies to --optimal", param="regularize")
        from diffmem.denoisers.adapters import is_run
        from diffmem.runs import load_denoiser
        from diffmem.runs import load_run

        if is_run(network) or not Path(network).exists():
            run = load_run(network, device=device)
            D, source = run.denoiser, {"network": str(network), "epoch": run.epoch}
        else:  # a diffusers folder or a TorchScript file
            D, source = load_denoiser(network, device=device, allow_pickle=allow_pickle, param="network"), \
                {"network": str(network)}
        lab = conditioning_labels(labels if labels is not None else ("random" if D.num_classes else None), num,
                                  D.num_classes, seed)
    shape = D.shape
    if len(shape) == 1 and Path(out_path).suffix.lower() != ".npz":
        raise InputError(f"{out_path}: samples of shape {tuple(shape)} are points; give an .npz", param="out")
    x = sample(D, num, labels=lab, sampler=sampler, steps=steps, sigma_min=sigma_min, sigma_max=sigma_max,
               rho=rho, s_churn=s_churn, seed=seed, batch_size=batch, device=device,
               progress=sys.stderr.isatty())
    if len(shape) == 1:  # points: written unquantized, as an .npz of points
        written = save_points(out_path, x.numpy(), lab, param="out")
    else:
        written = write_images(out_path, to_uint8(x.numpy()), lab)
    click.echo(json.dumps({"out": str(written), "num": num, "shape": list(shape), "sampler": sampler,
                           "steps": steps, "seed": seed, "labels": labels, **source}))
