"""The sections of the report built from metric values: the headline table, the
likelihood-quality gap, quality-diversity frontiers, paired comparisons against MLE and every
metric by decoding."""

from __future__ import annotations

import math

import pandas as pd

from beyondmle.reports import analysis, catalogue, plots, stats
from beyondmle.reports import formatting as fmt
from beyondmle.reports.context import Context, decoding_name, per_corpus
from beyondmle.reports.document import Cell, Details, Figure, Paragraph, Section, Table
from beyondmle.reports.load import sort_decodings

STATS_NOTE = (
    f"Values are means over seeds with a {stats.CONFIDENCE:.0%} interval in brackets. For "
    "metrics of the model itself (perplexity, bits per byte, rep/wrep/uniq on the whole test "
    "stream) the interval is over seeds: Student-t, mean ± t(n−1)·s/√n, as wide as a few seeds "
    "must make it. For metrics of the evaluation prompts and the generated text it is over seeds "
    "and prompts: the same seed term, plus the bootstrap spread over the prompts (every seed and "
    "objective resampled the same prompts). MAUVE and FED are over seeds only: a resample would "
    "need its own clustering. 'n/a (1 seed)': one seed gives no interval. Only finished cells "
    "count. ↑ higher is better, ↓ lower is better."
)


# the metric tables


def _metric_table(
    ctx: Context, corpus: str, decoding_of: dict[str, str], metrics: list[str], caption: str
) -> Table:
    """Objectives as rows, metrics as columns: mean [interval], the best of each column bold,
    † where a value carried a warning. `decoding_of` says which decoding each metric is read
    at ('' for decoding-independent metrics)."""
    objectives = [
        o
        for o in ctx.objectives_in(corpus)
        if any(ctx.summary.get(corpus, o, decoding_of[m], m) is not None for m in metrics)
    ]
    rows_by_objective = {o: {} for o in objectives}
    for m in metrics:
        for o in objectives:
            rows_by_objective[o][m] = ctx.summary.get(corpus, o, decoding_of[m], m)
    best = {}
    for m in metrics:
        means = [r["mean"] for o in objectives if (r := rows_by_objective[o][m]) is not None]
        direction = catalogue.info(m).higher_is_better
        if direction is not None and len(means) >= 2:
            best[m] = max(means) if direction else min(means)
    rows = []
    for o in objectives:
        seeds = [int(r["n"]) for r in rows_by_objective[o].values() if r is not None]
        row = [Cell(o), Cell(str(max(seeds)) if seeds else "0")]
        for m in metrics:
            r = rows_by_objective[o][m]
            if r is None:
                row.append(Cell("—", tone="muted"))
                continue
            text, interval = fmt.estimate_parts(
                r["mean"], r["low"], r["high"], r["n"], spec=catalogue.info(m).format
            )
            warning = r["warning"] if isinstance(r["warning"], str) else ""
            if warning:
                text += " †"
            is_best = m in best and math.isclose(r["mean"], best[m], rel_tol=1e-12, abs_tol=0)
            title = warning or f"n={int(r['n'])} seeds"
            row.append(Cell(text, bold=is_best, detail=interval, title=title))
        rows.append(row)
    columns = ["objective", "seeds"] + [catalogue.display(m) for m in metrics]
    return Table(columns, rows, caption=caption, numeric_from=1)


def headline_section(ctx: Context) -> Section:
    def make(corpus: str) -> list:
        seeds = ctx.corpus_seeds(corpus)
        if seeds.empty:
            return [Paragraph("No finished cell has metrics yet.")]
        headline = ctx.headline[corpus]
        present = set(seeds["metric"])
        metrics = [m for m in catalogue.HEADLINE_METRICS if m in present]
        missing = [m for m in catalogue.HEADLINE_METRICS if m not in present]
        decoding_of = {m: _metric_decoding(seeds, m, headline) for m in metrics}
        blocks = []
        if metrics:
            caption = f"Headline at decoding {headline}" if headline else "Headline (no decodings)"
            blocks.append(_metric_table(ctx, corpus, decoding_of, metrics, caption))
        blocks.append(Paragraph(STATS_NOTE + " Bold: the best mean of its column.", note=True))
        regime = analysis.regime_note(ctx.results.cells[ctx.results.cells["corpus"] == corpus])
        if regime:
            blocks.append(Paragraph(regime, note=True))
        blocks += _compute_blocks(ctx, corpus)
        if missing:
            names = ", ".join(catalogue.info(m).display for m in missing)
            blocks.append(Paragraph(f"Not computed in these results, left out: {names}.", True))
        if headline:
            others = [d for d in analysis.decodings_of(seeds) if d != headline]
            text = f"Generation metrics are read at the headline decoding {headline}"
            text += (
                f"; the other decodings ({', '.join(others)}) are in 'All metrics by decoding'."
                if others
                else "."
            )
            blocks.append(Paragraph(text, note=True))
        return blocks

    return per_corpus(ctx, "Headline", "headline", make)


def _compute_blocks(ctx: Context, corpus: str) -> list:
    table = analysis.compute_table(ctx.results, corpus, ctx.baseline)
    if table.empty:
        return []
    order = {o: i for i, o in enumerate(ctx.order)}
    table = table.sort_values("objective", key=lambda c: c.map(order))
    relative = "flops_vs_baseline" in table.columns
    rows = []
    for r in table.itertuples():
        row = [
            Cell(r.objective),
            Cell(str(int(r.cells))),
            Cell(f"{r.train_flops:.3g}" if fmt.finite(getattr(r, "train_flops", None)) else "—"),
        ]
        if relative:
            row.append(Cell(f"{r.flops_vs_baseline:.2f}×"))
        for key in ("train_tokens", "forward_tokens", "generated_tokens"):
            value = getattr(r, key, None)
            row.append(Cell(f"{value:,.0f}" if fmt.finite(value) else "—"))
        row.append(Cell(fmt.duration(r.train_seconds)))
        rows.append(row)
    columns = ["objective", "cells", "training FLOPs"]
    if relative:
        columns.append(f"FLOPs vs {ctx.baseline}")
    columns += ["target tokens", "positions run forward", "tokens generated", "training time"]
    return [
        Table(columns, rows, caption="Training compute (mean per cell)", numeric_from=1),
        Paragraph(
            "FLOPs of every matrix multiply in training, forward and backward, counted as each "
            "pass runs: extra passes (scheduled sampling), generation (the GAN's samples, "
            "sequence-level unlikelihood), an objective's own models (the discriminator) and "
            "longer rows (denoising) are all in. Target tokens are the training data the budget "
            "counts. Training time is wall time on the machine that ran the cell.",
            note=True,
        ),
    ]


def _metric_decoding(seeds: pd.DataFrame, metric: str, headline: str) -> str:
    """'' for a decoding-independent metric, else the headline decoding."""
    decodings = set(seeds.loc[seeds["metric"] == metric, "decoding"])
    return "" if "" in decodings else headline


def all_metrics_section(ctx: Context) -> Section:
    def make(corpus: str) -> list:
        seeds = ctx.corpus_seeds(corpus)
        if seeds.empty:
            return [Paragraph("No finished cell has metrics yet.")]
        blocks = [Paragraph(STATS_NOTE, note=True)]
        independent = catalogue.metric_order(seeds.loc[seeds["decoding"] == "", "metric"])
        if independent:
            blocks.append(
                _metric_table(
                    ctx,
                    corpus,
                    dict.fromkeys(independent, ""),
                    independent,
                    "Decoding-independent metrics",
                )
            )
        for decoding in analysis.decodings_of(seeds):
            metrics = catalogue.metric_order(seeds.loc[seeds["decoding"] == decoding, "metric"])
            blocks.append(
                _metric_table(
                    ctx,
                    corpus,
                    dict.fromkeys(metrics, decoding),
                    metrics,
                    f"Decoding {decoding}",
                )
            )
        return blocks

    return per_corpus(ctx, "All metrics by decoding", "all-metrics", make)


# the likelihood-quality gap


def gap_section(ctx: Context) -> Section:
    def make(corpus: str) -> list:
        pts = analysis.points(ctx.corpus_seeds(corpus))
        pts = pts[pts["decoding"] != ""] if "decoding" in pts.columns else pts
        likelihood = analysis.first_present(pts.columns, catalogue.LIKELIHOOD_PREFERENCE)
        quality = analysis.first_present(pts.columns, catalogue.QUALITY_PREFERENCE)
        if likelihood is None or quality is None:
            missing = "a likelihood metric" if likelihood is None else "a quality metric"
            return [Paragraph(f"No chart: these results have no {missing} with decodings.")]
        blocks = []
        if quality != "mauve":
            blocks.append(
                Paragraph(
                    f"MAUVE was not computed; the chart uses {catalogue.info(quality).display} "
                    "as its quality axis instead.",
                    note=True,
                )
            )
        png = plots.gap_chart(pts, likelihood, quality, ctx.colours)
        blocks.append(
            Figure(
                png,
                f"gap{ctx.figure_suffix[corpus]}.png",
                f"{catalogue.info(likelihood).display} against {catalogue.info(quality).display}",
                caption=(
                    f"{catalogue.display(likelihood)} against {catalogue.display(quality)}: one "
                    "point per trained model and decoding, coloured by objective, marker by kind "
                    "of decoding. Decoding changes the text but not the likelihood, so each "
                    "model's points share one x value."
                ),
            )
        )
        corr = analysis.gap_correlations(pts, likelihood, ctx.headline[corpus])
        if corr.empty:
            blocks.append(Paragraph("No quality metric to correlate with likelihood."))
            return blocks
        headline = ctx.headline[corpus]
        rows = []
        for r in corr.itertuples():
            rows.append(
                [
                    Cell(catalogue.display(r.metric)),
                    Cell(fmt.signed(r.rho)),
                    Cell(str(r.n)),
                    Cell(fmt.signed(r.agreement), tone=_tone(r.agreement)),
                    Cell(fmt.signed(r.rho_headline)),
                    Cell(str(r.n_headline)),
                    Cell(fmt.signed(r.agreement_headline), tone=_tone(r.agreement_headline)),
                ]
            )
        lik = catalogue.info(likelihood).display
        blocks.append(
            Table(
                [
                    "metric",
                    "Spearman ρ (all points)",
                    "n",
                    "agreement",
                    f"ρ at {headline}",
                    "n",
                    f"agreement at {headline}",
                ],
                rows,
                caption=f"Spearman rank correlation between {lik} and each text metric",
            )
        )
        blocks.append(
            Paragraph(
                f"ρ is Spearman's rank correlation of {lik} with the metric over every cell x "
                "decoding (and over the headline decoding alone); n counts the pairs, and ρ is "
                "left out ('—') below three pairs or when a side is constant. 'Agreement' is ρ "
                "signed so that +1 means a better likelihood always goes with better text by that "
                "metric and −1 the opposite: the likelihood-quality gap in one number.",
                note=True,
            )
        )
        return blocks

    return per_corpus(ctx, "Likelihood–quality gap", "gap", make)


def _tone(value) -> str:
    if not fmt.finite(value):
        return "muted"
    return "good" if value > 0 else "bad" if value < 0 else ""


# quality-diversity frontiers


def frontier_section(ctx: Context) -> Section:
    def make(corpus: str) -> list:
        front = analysis.frontiers(ctx.summary.table, corpus, ctx.order)
        if front is None:
            return [
                Paragraph(
                    "No frontier: it needs a quality metric (MAUVE or seq-rep-4) and a diversity "
                    "metric (Self-BLEU-4 or distinct-4) at some decoding."
                )
            ]
        sweep = {"temperature": "temperature", "top_p": "top-p"}.get(front.sweep)
        (q_lo, q_hi), (d_lo, d_hi) = front.ranges
        if sweep:
            which = (
                f"Each objective's curve is its {sweep} sweep (decodings that set only {sweep}"
                + ("; plain sampling counts as top-p = 1" if front.sweep == "top_p" else "")
                + "), one point per setting, the mean over seeds."
            )
        else:
            which = (
                "No temperature or top-p sweep with two or more settings: every decoding is "
                "a point, the mean over seeds."
            )
        blocks = [
            Paragraph(
                f"Quality-diversity frontiers after Caccia et al. (2020, 'Language GANs Falling "
                f"Short', §4). Quality: {front.axes.quality_label}; diversity: "
                f"{front.axes.diversity_label}. {which}"
            ),
            Figure(
                plots.frontier_chart(front, ctx.colours),
                f"frontier{ctx.figure_suffix[corpus]}.png",
                "quality-diversity frontiers",
                caption=(
                    "Filled markers: Pareto-optimal points of the objective (no other setting of "
                    "it is at least as good on both axes and better on one); hollow: dominated."
                ),
            ),
        ]
        rows = []
        for r in front.areas.sort_values(["rank", "objective"], na_position="last").itertuples():
            rows.append(
                [
                    Cell(str(r.rank) if not pd.isna(r.rank) else "—"),
                    Cell(r.objective),
                    Cell(str(r.points)),
                    Cell(str(r.pareto_points)),
                    Cell(fmt.number(r.area), bold=(r.rank == 1)),
                ]
            )
        blocks.append(
            Table(
                ["rank", "objective", "points", "Pareto points", "frontier area ↑"],
                rows,
                caption="Area under each objective's frontier",
                numeric_from=2,
            )
        )
        blocks.append(
            Paragraph(
                "Frontier area: both axes are min-max normalised to [0, 1] over the points of "
                f"all objectives (quality {fmt.number(q_lo)}–{fmt.number(q_hi)}, diversity "
                f"{fmt.number(d_lo)}–{fmt.number(d_hi)}), so areas compare across objectives. "
                "The objective's Pareto-optimal points, sorted by diversity, are joined by "
                "straight lines; the curve is closed by a flat segment from diversity 0 at the "
                "quality of the least diverse point and a drop to quality 0 at the most diverse "
                "point, and integrated with the trapezoid rule. It is the share of the unit "
                "square the frontier dominates: 0 to 1, higher is better; a single point (d, q) "
                "gives d·q. It depends on the other objectives through the normalisation.",
                note=True,
            )
        )
        return blocks

    return per_corpus(ctx, "Quality–diversity frontiers", "frontiers", make)


# paired comparisons against MLE


def _paired_cell(r, with_share: bool = True) -> Cell:
    direction = catalogue.info(r.metric).higher_is_better
    text, interval = fmt.estimate_parts(r.diff, r.low, r.high, r.n, sign=True)
    if fmt.finite(r.p_value):
        interval += f" p={fmt.number(r.p_value)}"
    if with_share and direction is not None:
        interval += f" · {r.n_better}/{r.n}"
    tone, bold = "", False
    if direction is not None and fmt.finite(r.low) and fmt.finite(r.high):
        better = r.low > 0 if direction else r.high < 0
        worse = r.high < 0 if direction else r.low > 0
        tone = "good" if better else "bad" if worse else ""
        bold = better
    title = f"better than MLE on {r.n_better} of {r.n} paired seeds"
    return Cell(text, bold=bold, tone=tone, title=title, detail=interval)


def paired_section(ctx: Context) -> Section:
    def make(corpus: str) -> list:
        if ctx.baseline is None:
            return [Paragraph("No MLE cells (objective 'mle'): nothing to compare against.")]
        seeds = ctx.corpus_seeds(corpus)
        paired = analysis.paired_against(seeds, ctx.baseline)
        if paired.empty:
            return [
                Paragraph(
                    f"No objective shares a finished seed with {ctx.baseline}: nothing to pair."
                )
            ]
        headline = ctx.headline[corpus]
        present = set(paired["metric"])
        metrics = [m for m in catalogue.HEADLINE_METRICS if m in present]
        blocks = [
            Paragraph(
                f"Each objective minus {ctx.baseline}, paired by seed (the same seed on both "
                "sides, so the same data order, initialisation and evaluation prompts; seeds "
                "missing on either side are left out) and, for the prompt part, by prompt "
                "resample: the mean difference with its "
                f"{stats.CONFIDENCE:.0%} interval (over seeds, or over seeds and prompts, as in "
                "the headline), the paired t-test's p-value (n − 1 degrees of freedom), then "
                "'k/n': on k of the n paired seeds the objective was better. Bold green: the "
                "interval lies wholly on the better side; red: wholly on the worse side. "
                f"Generation metrics at {headline or 'no decoding'}."
            )
        ]
        if metrics:
            rows = []
            for objective in [o for o in ctx.order if o != ctx.baseline]:
                mine = paired[paired["objective"] == objective]
                if mine.empty:
                    continue
                row = [Cell(objective)]
                for m in metrics:
                    decoding = _metric_decoding(seeds, m, headline)
                    hit = mine[(mine["metric"] == m) & (mine["decoding"] == decoding)]
                    row.append(_paired_cell(next(hit.itertuples())) if not hit.empty else Cell("—"))
                rows.append(row)
            columns = ["objective"] + [f"Δ {catalogue.display(m)}" for m in metrics]
            blocks.append(Table(columns, rows, caption=f"Against {ctx.baseline}: headline"))
        full_rows = []
        order = {o: i for i, o in enumerate(ctx.order)}
        decoding_rank = {
            d: i for i, d in enumerate(["", *sort_decodings(d for d in paired["decoding"] if d)])
        }
        metric_rank = {m: i for i, m in enumerate(catalogue.metric_order(paired["metric"]))}
        paired = paired.assign(
            _o=paired["objective"].map(order),
            _d=paired["decoding"].map(decoding_rank),
            _m=paired["metric"].map(metric_rank),
        ).sort_values(["_o", "_d", "_m"])
        for r in paired.itertuples():
            share = fmt.number(r.share_better) if fmt.finite(r.share_better) else "—"
            full_rows.append(
                [
                    Cell(r.objective),
                    Cell(decoding_name(r.decoding)),
                    Cell(catalogue.display(r.metric)),
                    Cell(str(r.n)),
                    _paired_cell(r, with_share=False),
                    Cell(f"{r.n_better}/{r.n}" if share != "—" else "—"),
                    Cell(share),
                ]
            )
        blocks.append(
            Details(
                f"Every metric and decoding against {ctx.baseline} ({len(full_rows)} rows)",
                [
                    Table(
                        [
                            "objective",
                            "decoding",
                            "metric",
                            "paired seeds",
                            f"Δ vs {ctx.baseline} [95% CI] p",
                            "seeds better",
                            "share better",
                        ],
                        full_rows,
                        numeric_from=3,
                    )
                ],
            )
        )
        return blocks

    return per_corpus(ctx, "Paired comparisons against MLE", "paired", make)
