"""``diffmem membership``: can the model's training images be told from held-out ones?"""

from __future__ import annotations

import json

import click

from diffmem.atomic import prepare_output, write_json, write_npz
from diffmem.cli.options import resolve_device
from diffmem.data.io import load_image_set
from diffmem.errors import InputError, check_number
from diffmem.metrics.membership import DEFAULT_SIGMAS, METHODS, membership, roc_figure
from diffmem.rng import check_seed

OUTPUTS = ("scores.npz", "roc.png", "summary.json")


def parse_sigmas(text: str | None, method: str) -> list[float]:
    """``"0.05,0.1"`` -> [0.05, 0.1]; None -> the method's defaults."""
    if text is None:
        return list(DEFAULT_SIGMAS[method])
    parts = [p.strip() for p in str(text).split(",")]
    if not all(parts):
        raise InputError(f"expected comma-separated positive numbers, got {text!r}", param="sigma")
    return [check_number("sigma", p, lo=0, lo_open=True) for p in parts]


@click.command("membership")
@click.option("--model", "model_path", required=True,
              help="A diffmem run folder or snapshot, a diffusers UNet2DModel folder, or a TorchScript file.")
@click.option("--train", "train_path", required=True, help="The model's training images (members).")
@click.option("--heldout", "heldout_path", required=True, help="Held-out images of the same distribution.")
@click.option("--method", type=click.Choice(METHODS), default="loss", show_default=True,
              help="loss: per-image denoising loss; secmi: SecMI's t-error (Duan et al. 2023).")
@click.option("--sigma", default=None,
              help=f"Noise level(s), comma-separated (default loss: {DEFAULT_SIGMAS['loss']}, "
                   f"secmi: {DEFAULT_SIGMAS['secmi'][0]:.3f} = DDPM t 100).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the loss noise.")
@click.option("--batch", type=int, default=256, show_default=True)
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="Resamples of the AUC's 95 % CI (0: none).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--allow-pickle", is_flag=True, help="Allow pickled (.bin) diffusers weights; only for files you trust.")
@click.option("--out", "out_dir", default=None, help="Folder for scores.npz, roc.png, summary.json.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def membership_cmd(model_path, train_path, heldout_path, method, sigma, seed, batch, bootstrap, device, allow_pickle,
                   out_dir, as_json):
    """Membership inference: AUC and TPR at 1 % FPR of telling --train from --heldout images by the
    model's per-image denoising loss (or SecMI t-error); lower = more likely a training image."""
    from diffmem.runs import load_denoiser

    sigmas = parse_sigmas(sigma, method)
    seed = check_seed(seed)
    batch = check_number("batch", batch, lo=1, integer=True)
    bootstrap = check_number("bootstrap", bootstrap, lo=0, hi=100_000, integer=True)
    if out_dir is not None:
        prepare_output(out_dir, kind="folder", names=OUTPUTS, create=False)
    device = resolve_device(device)
    train = load_image_set(train_path, what="train")
    heldout = load_image_set(heldout_path, what="heldout")
    D = load_denoiser(model_path, device=device, allow_pickle=allow_pickle)
    result = membership(D, train, heldout, sigmas=sigmas, method=method, seed=seed, batch=batch, device=device,
                        bootstrap=bootstrap)
    summary = {"model": str(model_path), "train": str(train_path), "heldout": str(heldout_path), "seed": seed,
               **result.summary()}
    if out_dir is not None:
        out = prepare_output(out_dir, kind="folder", names=OUTPUTS)
        write_npz(out / "scores.npz", train_stats=result.train_stats, heldout_stats=result.heldout_stats,
                  train_scores=result.train_scores, heldout_scores=result.heldout_scores, fpr=result.fpr,
                  tpr=result.tpr, sigmas=result.sigmas)
        from diffmem.plots import save_figure

        save_figure(roc_figure(result), out / "roc.png")
        write_json(out / "summary.json", summary, allow_nan=False)
    click.echo(json.dumps(summary, allow_nan=False) if as_json else result.explain())
