"""What every section shares: the loaded results, per-seed values and their summary, the
MLE baseline, the objective order and colours, and the headline decoding of each corpus."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

from beyondmle.reports import analysis, plots
from beyondmle.reports.document import Paragraph, Section
from beyondmle.reports.load import Results


@dataclass
class Context:
    """Everything the sections share, computed once."""

    results: Results
    seeds: pd.DataFrame
    summary: analysis.Summary
    baseline: str | None
    order: list[str]
    colours: dict
    corpora: list[str]
    headline: dict[str, str] = field(default_factory=dict)  # corpus -> headline decoding
    figure_suffix: dict[str, str] = field(default_factory=dict)  # corpus -> file name suffix

    @classmethod
    def build(cls, results: Results) -> Context:
        seeds = analysis.seed_values(analysis.done_metrics(results))
        baseline = analysis.find_baseline(results.cells)
        policies = results.cells[
            ~results.cells["objective"].isin(analysis.reward_labels(results.cells))
        ]
        order = analysis.objective_order(policies["objective"], baseline)
        corpora = sorted(set(results.cells["corpus"]))
        ctx = cls(
            results=results,
            seeds=seeds,
            summary=analysis.summarise(seeds),
            baseline=baseline,
            order=order,
            colours=plots.palette(order),
            corpora=corpora,
        )
        for i, corpus in enumerate(corpora):
            ctx.headline[corpus] = analysis.headline_decoding(ctx.corpus_seeds(corpus))
            slug = re.sub(r"[^A-Za-z0-9_-]+", "-", corpus).strip("-")[:40] or "corpus"
            ctx.figure_suffix[corpus] = "" if len(corpora) == 1 else f"-{i + 1}-{slug}"
        return ctx

    def corpus_seeds(self, corpus: str) -> pd.DataFrame:
        return self.seeds[self.seeds["corpus"] == corpus]

    def objectives_in(self, corpus: str) -> list[str]:
        present = set(self.results.cells.loc[self.results.cells["corpus"] == corpus, "objective"])
        return [o for o in self.order if o in present]


def per_corpus(ctx: Context, title: str, anchor: str, make) -> Section:
    """A section whose content is made per corpus; with one corpus no sub-headings."""
    section = Section(title, anchor)
    if len(ctx.corpora) <= 1:
        for corpus in ctx.corpora:
            section.blocks += make(corpus)
        if not ctx.corpora:
            section.blocks.append(Paragraph("No cells in the database."))
        return section
    for i, corpus in enumerate(ctx.corpora):
        sub = Section(f"Corpus {corpus}", f"{anchor}-{i + 1}", make(corpus), level=3)
        section.blocks.append(sub)
    return section


def decoding_name(label: str) -> str:
    return label or "decoding-independent"
