"""``diffmem train``: train a preconditioned denoiser on an image set (see :mod:`diffmem.training`)."""

from __future__ import annotations

import json
import os
import sys

import click
from click.core import ParameterSource

from diffmem.cli import main


@main.command("train")
@click.option("--data", type=str, default=None, help="Training set (EDM zip, PNG folder, .npz); labels make the net conditional.")
@click.option("--out", type=str, required=True, help="Run folder (must be new or empty unless --resume).")
@click.option("--arch", type=click.Choice(["ddpmpp", "ncsnpp", "mlp"]), default=None, help="Network [ddpmpp].")
@click.option("--preset", type=str, default=None, help="Named network preset (diffmem.denoisers.networks.PRESETS).")
@click.option("--channels", type=int, default=None, help="Base channel count.")
@click.option("--channel-mult", type=str, default=None, help="Channel multipliers per resolution, e.g. 2,2,2.")
@click.option("--blocks", type=int, default=None, help="Residual blocks per resolution.")
@click.option("--attn", type=str, default=None, help="Resolutions with self-attention, e.g. 16.")
@click.option("--embed", type=click.Choice(["positional", "fourier"]), default=None, help="Noise-level embedding.")
@click.option("--skips", type=str, default=None, help="0/1 mask over the encoder->decoder skips, e.g. 1,1,0,...")
@click.option("--dropout", type=float, default=None, help="Dropout probability.")
@click.option("--hidden", type=int, default=None, help="MLP width.")
@click.option("--depth", type=int, default=None, help="MLP hidden layers.")
@click.option("--precond", type=click.Choice(["edm", "vp"]), default=None, help="Preconditioning and loss [vp].")
@click.option("--epochs", type=float, default=None, help="Duration in epochs (steps = ceil(epochs*|D|/batch)).")
@click.option("--steps", type=int, default=None, help="Duration in optimizer steps.")
@click.option("--batch", type=int, default=None, help="Global batch size [512].")
@click.option("--lr", type=float, default=None, help="Learning rate [2e-4] (at the reference batch with --lr-scaling).")
@click.option("--weight-decay", type=float, default=None, help="Weight decay [0] (L2 on the gradient for adam/sgd).")
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "sgd"]), default=None, help="Optimizer [adam].")
@click.option("--lr-warmup", type=str, default=None, help="Linear lr warm-up: images (10000) or epochs (20ep) [0].")
@click.option("--lr-scaling", type=int, default=None, metavar="REF_BATCH",
              help="Linear scaling rule: lr_used = lr * batch / REF_BATCH.")
@click.option("--ema", type=str, default=None, metavar="HALFLIFE",
              help="EMA half-life in images (500000) or in epochs, i.e. scaled by |D| (0.5ep) [500000].")
@click.option("--ema-rate", type=float, default=None, help="EMA decay per step instead of --ema (0 = no averaging).")
@click.option("--ema-rampup", type=float, default=None, help="EMA warm-up: half-life <= ratio * images seen [0.05]; 0 = off.")
@click.option("--seed", type=int, default=None, help="Random seed [0].")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Device [cuda if available].")
@click.option("--snapshots", type=str, default=None, help="EMA snapshot epochs, e.g. 10,50,log:8 (the final one always).")
@click.option("--track-every", type=int, default=None, metavar="EPOCHS", help="Track the memorization ratio every K epochs [0 = off].")
@click.option("--track-samples", type=int, default=None, help="Samples per memorization measurement [1000].")
@click.option("--checkpoint-every", type=int, default=None, metavar="STEPS", help="Save state.pt every K steps [500].")
@click.option("--log-every", type=int, default=None, metavar="STEPS", help="Append to stats.jsonl every K steps [100].")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the network.")
@click.option("--channels-last", is_flag=True, default=None, help="Channels-last memory format.")
@click.option("--amp", is_flag=True, default=None, help="bf16 autocast (CUDA only).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its state.pt.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config as JSON and train nothing.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr [when it is a terminal].")
@click.pass_context
def train(ctx, resume, dry_run, progress, compile_, **flags):
    """Train a denoiser: diffmem train --data D.zip --out RUN [knobs]."""
    from diffmem.training import TrainingDiverged, run_training

    flags["compile"] = compile_
    explicit = {("compile" if name == "compile_" else name) for name in ctx.params
                if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    flags = {k: v for k, v in flags.items() if v is not None}
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        config = run_training(flags, explicit=explicit, resume=resume, dry_run=dry_run, progress=progress,
                              log=lambda msg: click.echo(msg, err=True))
    except TrainingDiverged as err:  # one line on stderr, exit status 2, last good state kept
        raise click.ClickException(str(err)) from None
    if int(os.environ.get("RANK", 0)) != 0:  # torchrun: only the first process reports
        return
    if dry_run:
        click.echo(json.dumps(config))
    else:
        click.echo(f"trained {config['total_steps']} steps ({config['total_epochs']:g} epochs); run in {config['out']}")
