"""``diffmem report DIR``: figures and one self-contained HTML page (:mod:`diffmem.studies.report`)."""

from __future__ import annotations

import click


@click.command("report")
@click.argument("dir")
@click.option("--out", default=None, help="Report folder [DIR/report].")
def report_cmd(dir, out):  # noqa: A002 (the argument is named as in the CLI contract)
    """Report of a run, EMM or sweep folder: PNG figures and DIR/report/index.html."""
    from diffmem.studies.report import make_report

    index = make_report(dir, out)
    click.echo(f"wrote {index}")
