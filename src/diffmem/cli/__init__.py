"""Command-line interface: ``diffmem <command>``.

Every command reports bad input as one line on stderr naming the file or flag, and exits with
status 2: the library raises :class:`~diffmem.errors.InputError` naming a parameter, and
:func:`run` prints it under the flag of that name. Subcommands live in one module each.
"""

from __future__ import annotations

import sys

import click

from diffmem.errors import InputError, flag_name


# Library parameters whose flag is not simply the name with dashes.
FLAG_OF = {"batch_size": "batch"}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="diffmem")
def main():
    """Measure, explain and control memorization in diffusion models."""


def run(argv: list[str] | None = None) -> int:
    """Entry point: runs :data:`main`, turning every input error into one line and exit status 2."""
    try:
        code = main.main(args=argv, prog_name="diffmem", standalone_mode=False)
    except InputError as err:  # the library names a parameter; the command line names its flag
        message = f"{flag_name(FLAG_OF.get(err.param, err.param))}: {err.detail}" if err.param else str(err)
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
    # click returns (not raises) the status of a command that raised Exit(n) (a CI gate's 1)
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def entry() -> None:
    sys.exit(run())


# One module a command, each a plain click command over a library function (they import nothing from here).
from diffmem.cli.audit_cmd import audit_cmd  # noqa: E402
from diffmem.cli.data_cmd import data_cmd  # noqa: E402
from diffmem.cli.demo_cmd import demo_cmd  # noqa: E402
from diffmem.cli.memorization_cmd import memorization_cmd  # noqa: E402
from diffmem.cli.membership_cmd import membership_cmd  # noqa: E402
from diffmem.cli.regularization_cmd import regularization_cmd  # noqa: E402
from diffmem.cli.quality_cmd import quality_cmd  # noqa: E402
from diffmem.cli.report_cmd import report_cmd  # noqa: E402
from diffmem.cli.rf_cmd import rf_cmd  # noqa: E402
from diffmem.cli.sample_cmd import sample_cmd  # noqa: E402
from diffmem.cli.select_cmd import select_cmd  # noqa: E402
from diffmem.cli.sweep_cmd import emm_cmd, sweep_cmd  # noqa: E402
from diffmem.cli.timescales_cmd import timescales_cmd  # noqa: E402
from diffmem.cli.train_cmd import train_cmd  # noqa: E402
from diffmem.cli.twosplit_cmd import twosplit_cmd  # noqa: E402

for _command in (data_cmd, memorization_cmd, sample_cmd, train_cmd, emm_cmd, sweep_cmd, report_cmd, demo_cmd, audit_cmd,
                 twosplit_cmd, regularization_cmd, quality_cmd, rf_cmd, membership_cmd, timescales_cmd, select_cmd):
    main.add_command(_command)
