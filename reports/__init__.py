"""The report builder: from a results directory (its `results.sqlite` and the artifact files it
names) to `DIR/report/index.html` and `DIR/report/report.md`.

Modules, one concept each: `load` (the database into pandas, artifact readers), `catalogue`
(metric names and directions), `stats` (bootstrap intervals, paired comparisons, frontier area,
Spearman), `analysis` (the tables the report shows), `plots` (seaborn figures as PNG),
`document` (the report as blocks), `context` (what the sections share), `sections` (the
sections from metric values), `artifacts` (training curves and samples from artifact files),
`provenance` (overview, warnings, failures, provenance), `render` (HTML and Markdown, with all
escaping), `formatting` (numbers and times), `builder` (the entry point).
"""

from beyondmle.reports.builder import build_document, build_report

__all__ = ["build_document", "build_report"]
