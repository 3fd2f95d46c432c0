"""Command-line interface: ``diffmem <command>``.

Every command reports bad input as one line on stderr naming the file or flag, and exits with
status 2. Subcommands live in one module each and register themselves on :data:`main`.
"""

from __future__ import annotations

import sys

import click

from diffmem.errors import InputError, flag_name


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="diffmem")
def main():
    """Measure, explain and control memorization in diffusion models."""


def run(argv: list[str] | None = None) -> int:
    """Entry point: runs :data:`main`, turning every input error into one line and exit status 2."""
    try:
        main.main(args=argv, prog_name="diffmem", standalone_mode=False)
    except InputError as err:  # the library names a parameter; the command line names its flag
        message = f"{flag_name(err.param)}: {err.detail}" if err.param else str(err)
        click.echo(f"diffmem: error: {message}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("diffmem: aborted", err=True)
        return 130
    except click.ClickException as err:  # usage errors: bad flag, missing option, bad value
        click.echo(f"diffmem: error: {' '.join(err.format_message().split())}", err=True)
        return 2
    except click.exceptions.Exit as err:
        return err.exit_code
    return 0


def entry() -> None:
    sys.exit(run())


# Subcommands register themselves on `main` when imported.
from diffmem.cli import data_cmd, memorization_cmd, sample_cmd, train_cmd, demo_cmd  # noqa: E402,F401
