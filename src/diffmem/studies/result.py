"""The one shape of a study's answer.

Every study module has ``run(spec, out=None, *, engine="local", workers=1, threads=None, log=None,
progress=False)`` (sweep, EMM, timescales, two-split, random features, regularization) and returns a
:class:`StudyResult`: its folder, :meth:`~StudyResult.summary` (the lines the command prints),
:meth:`~StudyResult.rows` (its table, as in ``OUT/results.csv`` or the study's own CSV) and
:meth:`~StudyResult.report` (the HTML report of the folder, :func:`diffmem.studies.report.make_report`).
The study's own result object (``SweepResult``, ``EMMEstimate``, the timescales analysis...) is
``detail``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StudyResult:
    study: str  # sweep | emm | timescales | two-split | random-features | regularization
    out: Path
    table: list[dict] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    detail: object = None

    def summary(self) -> str:
        """What the study found, in the lines its command prints."""
        return "\n".join(self.lines)

    def rows(self) -> list[dict]:
        """The study's table, one dict per row."""
        return [dict(row) for row in self.table]

    def report(self, out=None) -> Path:
        """Write the HTML report of this study's folder (default ``OUT/report``); its ``index.html``."""
        from diffmem.studies.report import make_report

        return make_report(self.out, out)
