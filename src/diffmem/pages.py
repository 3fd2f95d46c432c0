"""A report page: a title, summary lines, figures (PNG files) and tables, rendered as one
self-contained HTML file (figures embedded as data URIs). The studies' reports
(:mod:`diffmem.studies.report`) and the audit's (:mod:`diffmem.auditing.report`) both write one;
a folder holding :data:`MARKER` is a report folder, which only another report may replace.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

MARKER = ".diffmem-report"


@dataclass
class Report:
    title: str
    lines: list[str] = field(default_factory=list)  # summary sentences
    figures: list[tuple[str, Path]] = field(default_factory=list)  # (caption, PNG)
    table: list[dict] = field(default_factory=list)
    tables: list[tuple[str, list[dict]]] = field(default_factory=list)  # further (title, rows) tables


def _table_html(rows: list[dict], title: str = "Results") -> str:
    if not rows:
        return ""
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def cell(v):
        return "" if v is None else html.escape(f"{v:.4g}" if isinstance(v, float) else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows)
    return f"<h2>{html.escape(title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: Report) -> str:
    """One self-contained page: figures embedded as data URIs. A small script marks how many
    figures the browser decoded (``data-figures-decoded`` on ``<body>``)."""
    figures = "".join(
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"><figcaption>{html.escape(caption)}</figcaption></figure>'
        for caption, path in report.figures)
    lines = "".join(f"<p>{html.escape(line)}</p>" for line in report.lines)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}figure{display:inline-block;"
             "margin:0.5em;vertical-align:top}img{max-width:520px}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}")
    script = ("window.addEventListener('load',()=>{const i=[...document.images];document.body.dataset.figuresDecoded="
              "i.filter(x=>x.complete&&x.naturalWidth>0).length;document.body.dataset.figures=i.length;});")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(report.title)}</h1>{lines}{figures}"
            f"{_table_html(report.table)}{''.join(_table_html(rows, title) for title, rows in report.tables)}<script>{script}</script></body></html>")
