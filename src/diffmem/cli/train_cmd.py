"""``diffmem train``: flags → :class:`~diffmem.config.TrainConfig` → :func:`diffmem.training.train`.

Each knob flag is the config field of the same name (``--weight-decay`` → ``weight_decay``); the
help texts and choices come from the library's tables. With ``--resume`` the run's stored config
fills every flag not given on the command line; a given flag that differs from it is refused by the
library (naming the field, reported as the flag).
"""

from __future__ import annotations

import json
import os
import sys

import click
from click.core import ParameterSource

from diffmem.config import OPTIMIZERS, DEVICES, TrainConfig
from diffmem.denoisers.networks import ARCHS, PRESETS
from diffmem.denoisers.precond import PRECONDS
from diffmem.errors import InputError

_D = TrainConfig.__dataclass_fields__  # defaults shown in the help come from the config itself


def _default(name: str) -> str:
    return f"[{_D[name].default}]"


KNOBS = [
    click.option("--arch", type=click.Choice(ARCHS), default=None, help="Network [the preset's, else ddpmpp]."),
    click.option("--preset", type=click.Choice(list(PRESETS)), default=None, help="Named network preset."),
    click.option("--channels", type=int, default=None, help="Base channel count."),
    click.option("--channel-mult", type=str, default=None, help="Channel multipliers per resolution, e.g. 2,2,2."),
    click.option("--blocks", type=int, default=None, help="Residual blocks per resolution."),
    click.option("--attn", type=str, default=None, help="Resolutions with self-attention, e.g. 16 (none: none)."),
    click.option("--embed", type=click.Choice(["positional", "fourier"]), default=None, help="Noise-level embedding."),
    click.option("--skips", type=str, default=None, help="0/1 mask over the encoder->decoder skips, e.g. 1,1,0,..."),
    click.option("--dropout", type=float, default=None, help="Dropout probability."),
    click.option("--hidden", type=int, default=None, help="MLP width."),
    click.option("--depth", type=int, default=None, help="MLP hidden layers."),
    click.option("--precond", type=click.Choice(list(PRECONDS)), default=None,
                 help=f"Preconditioning and loss {_default('precond')}."),
    click.option("--sigma-data", type=float, default=None,
                 help=f"EDM's data standard deviation sigma_data {_default('sigma_data')} (1.0 suits unit-variance toys)."),
    click.option("--tikhonov", type=float, default=None, metavar="C",
                 help=f"Tikhonov penalty c·‖score‖² in the loss {_default('tikhonov')}: its minimizer is the "
                      "optimum regularized by c (diffmem sample --regularize tikhonov:C)."),
    click.option("--epochs", type=float, default=None, help="Duration in epochs (steps = ceil(epochs*|D|/batch))."),
    click.option("--steps", type=int, default=None, help="Duration in optimizer steps."),
    click.option("--batch", type=int, default=None, help=f"Global batch size {_default('batch')}."),
    click.option("--lr", type=float, default=None, help=f"Learning rate {_default('lr')} (at REF_BATCH with --lr-scaling)."),
    click.option("--weight-decay", type=float, default=None,
                 help=f"Weight decay {_default('weight_decay')} (L2 on the gradient for adam/sgd)."),
    click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None, help=f"Optimizer {_default('optimizer')}."),
    click.option("--lr-warmup", type=str, default=None,
                 help=f"Linear lr warm-up: images (10000) or epochs (20ep) {_default('lr_warmup')}."),
    click.option("--lr-scaling", type=int, default=None, metavar="REF_BATCH",
                 help="Linear scaling rule: lr_used = lr * batch / REF_BATCH."),
    click.option("--ema", type=str, default=None, metavar="HALFLIFE",
                 help="EMA half-life in images (500000) or in epochs, i.e. scaled by |D| (0.5ep) [500000]."),
    click.option("--ema-rate", type=float, default=None,
                 help="EMA decay per step instead of --ema, exactly, once --ema-warmup is over (0 = no averaging)."),
    click.option("--ema-warmup", type=str, default=None,
                 help="EMA warm-up: the half-life grows linearly to its value over these images (10000) or "
                      "epochs (20ep), as Gu et al. [none]."),
    click.option("--ema-rampup", type=float, default=None,
                 help="EDM's EMA ramp instead: half-life <= ratio * images seen [0.05 for --ema, off for "
                      "--ema-rate]; 0 = off."),
    click.option("--seed", type=int, default=None, help=f"Random seed {_default('seed')}."),
    click.option("--device", type=click.Choice(DEVICES), default=None, help="Device [cuda if available]."),
    click.option("--snapshots", type=str, default=None, help="EMA snapshot epochs, e.g. 10,50,log:8 (the final one always)."),
    click.option("--track-every", type=int, default=None, metavar="EPOCHS",
                 help=f"Track the memorization ratio every K epochs {_default('track_every')} (0 = off)."),
    click.option("--track-samples", type=int, default=None, help=f"Samples per measurement {_default('track_samples')}."),
    click.option("--guard", type=float, default=None, metavar="F",
                 help="Stop (keeping every snapshot) once the tracked ratio exceeds F; needs --track-every."),
    click.option("--checkpoint-every", type=int, default=None, metavar="STEPS",
                 help=f"Save state.pt every K steps {_default('checkpoint_every')}."),
    click.option("--log-every", type=int, default=None, metavar="STEPS",
                 help=f"Append to stats.jsonl every K steps {_default('log_every')}."),
    click.option("--compile", "compile", is_flag=True, default=None, help="torch.compile the network."),
    click.option("--channels-last", is_flag=True, default=None, help="Channels-last memory format."),
    click.option("--amp", is_flag=True, default=None, help="bf16 autocast (CUDA only)."),
]


def _with_knobs(fn):
    for option in reversed(KNOBS):
        fn = option(fn)
    return fn


def config_from_flags(knobs: dict, explicit: set, stored: dict | None) -> TrainConfig:
    """The config: the stored run's (on resume) or the defaults, overridden by the flags given."""
    given = {k: v for k, v in knobs.items() if v is not None and (stored is None or k in explicit)}
    if stored is None:
        return TrainConfig(**given)
    try:
        base = TrainConfig.from_dict(stored)
    except InputError as err:
        raise InputError(f"the stored config.json is not valid ({err})", param="out") from None
    return base.replace(**given)


@click.command("train")
@click.option("--data", type=str, default=None,
              help="Training set (EDM zip, PNG folder, .npz); labels make the net conditional. On --resume: the run's.")
@click.option("--out", type=str, required=True, help="Run folder (must be new or empty unless --resume).")
@_with_knobs
@click.option("--resume", is_flag=True, help="Continue the run in --out from its state.pt.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config as JSON and train nothing.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr [when it is a terminal].")
@click.pass_context
def train_cmd(ctx, data, out, resume, dry_run, progress, **knobs):
    """Train a denoiser: diffmem train --data D.zip --out RUN [knobs]."""
    from diffmem.runs import read_record
    from diffmem.training import TrainingDiverged, dry_run as plan, train

    explicit = {name for name in knobs if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    stored = None
    if resume and not dry_run:
        if not out or not os.path.isdir(out):
            raise InputError(f"{out}: no run to resume (no such folder)", param="out")
        stored = read_record(out)
    config = config_from_flags(knobs, explicit, stored)
    if data is None and stored is not None:
        data = stored.get("data")
    if data is None:
        raise InputError("required", param="data")
    if dry_run:
        click.echo(json.dumps(plan(config, data, out)))
        return
    try:
        summary = train(config, data, out, resume=resume, progress=sys.stderr.isatty() if progress is None else progress,
              log=lambda msg: click.echo(msg, err=True))
    except TrainingDiverged as err:  # one line on stderr, exit status 2, last good state kept
        raise click.ClickException(str(err)) from None
    if int(os.environ.get("RANK", 0)) == 0:  # torchrun: only the first process reports
        stopped = summary.get("stopped")
        click.echo(f"{stopped['message']}; run in {out}" if stopped else
                   f"trained {summary['steps']} steps ({summary['epochs']:g} epochs); run in {out}")
