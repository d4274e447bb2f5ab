"""The entry point: read a results directory, write its report.

`build_report(DIR)` writes `DIR/report/index.html` (one self-contained page: inline styles,
figures as base64 PNG, no script, nothing fetched) and `DIR/report/report.md` with its figures
as PNG files beside it, and returns the path of `index.html`. It reads only the results
database and the artifact files the database names.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from beyondmle.reports import (
    artifacts,
    catalogue,
    known_truth,
    preferences,
    provenance,
    sections,
)
from beyondmle.reports.context import Context
from beyondmle.reports.document import Document
from beyondmle.reports.load import load_results
from beyondmle.reports.render import to_html, to_markdown

HTML_NAME = "index.html"
MARKDOWN_NAME = "report.md"
FIGURE_PREFIXES = ("gap", "frontier", "curves", "oracle", "preferences")


def build_document(results_dir: str | Path, generated_at: float | None = None) -> Document:
    """The report of a results directory as a `Document` (nothing written)."""
    results = load_results(results_dir)
    with catalogue.using(catalogue.from_table(results.metric_info)):
        return _document(results, results_dir, generated_at)


def _document(results, results_dir: str | Path, generated_at: float | None) -> Document:
    ctx = Context.build(results)
    generated_at = time.time() if generated_at is None else generated_at
    doc = Document(
        title="beyondmle: likelihood against text quality",
        subtitle=f"Results in {Path(results_dir).resolve().name}",
    )
    doc.sections = [
        provenance.overview_section(ctx, generated_at),
        sections.headline_section(ctx),
        sections.gap_section(ctx),
        sections.frontier_section(ctx),
        sections.paired_section(ctx),
        known_truth.section(ctx),
        preferences.section(ctx),
        artifacts.curves_section(ctx),
        artifacts.samples_section(ctx),
        sections.all_metrics_section(ctx),
        provenance.warnings_section(ctx),
        provenance.cells_section(ctx),
        provenance.provenance_section(ctx),
    ]
    doc.sections = [s for s in doc.sections if s is not None]
    return doc


def build_report(results_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the report of `results_dir` into `out_dir` (default `results_dir/report`):
    `index.html`, `report.md` and the Markdown's PNG figures. Returns the `index.html` path."""
    results_dir = Path(results_dir)
    out = Path(out_dir) if out_dir is not None else results_dir / "report"
    doc = build_document(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):
        if stale.name.startswith(FIGURE_PREFIXES):
            stale.unlink()
    for figure in doc.figures():
        _atomic_write(out / figure.filename, figure.png)
    _atomic_write(out / MARKDOWN_NAME, to_markdown(doc).encode("utf-8"))
    index = out / HTML_NAME
    _atomic_write(index, to_html(doc).encode("utf-8"))
    return index


def _atomic_write(path: Path, data: bytes) -> None:
    """Whole or not at all: a temporary sibling, then rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
