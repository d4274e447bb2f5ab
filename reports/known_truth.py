"""The report's section "Against a known truth": on an oracle corpus, the quality-coverage
plane (NLL-oracle against NLL-test across each objective's decodings, Caccia et al. 2020's
figure), the KL table, the exposure-bias curve (%ExAccErr against length, Arora et al. 2022)
and the mode-coverage table. Built from the metrics the oracle tier registers; absent when the
results hold none."""

from __future__ import annotations

import pandas as pd

from beyondmle.reports import formatting as fmt
from beyondmle.reports import plots
from beyondmle.reports.context import Context, decoding_name, per_corpus
from beyondmle.reports.document import Cell, Figure, Paragraph, Section, Table
from beyondmle.reports.load import sort_decodings

EXPOSURE = ["ex_acc_err_25", "ex_acc_err_50", "ex_acc_err_75", "ex_acc_err_100"]


def _mean(ctx: Context, corpus: str, objective: str, decoding: str, metric: str) -> dict | None:
    return ctx.summary.get(corpus, objective, decoding, metric)


def _cell(r) -> Cell:
    if r is None:
        return Cell("—", tone="muted")
    text, interval = fmt.estimate_parts(r["mean"], r["low"], r["high"], r["n"])
    return Cell(text, detail=interval)


def section(ctx: Context) -> Section | None:
    if not ctx.seeds["metric"].isin(["nll_oracle", "nll_test"]).any():
        return None

    def make(corpus: str) -> list:
        seeds = ctx.corpus_seeds(corpus)
        objectives = ctx.objectives_in(corpus)
        decodings = sort_decodings(d for d in seeds["decoding"].unique() if d)
        blocks: list = []
        plane = []
        for o in objectives:
            test = _mean(ctx, corpus, o, "", "nll_test")
            for d in decodings:
                quality = _mean(ctx, corpus, o, d, "nll_oracle")
                if test is not None and quality is not None:
                    plane.append(
                        {"objective": o, "decoding": d, "nll_test": test["mean"],
                         "nll_oracle": quality["mean"]}
                    )  # fmt: skip
        if plane:
            blocks.append(
                Figure(
                    plots.quality_coverage(pd.DataFrame(plane), ctx.colours),
                    f"oracle-plane{ctx.figure_suffix[corpus]}.png",
                    "quality against coverage",
                    caption=(
                        "Each objective's decodings in the plane of coverage (NLL-test: the "
                        "model's NLL of held-out oracle text, lower covers more) and quality "
                        "(NLL-oracle: the oracle's NLL of the model's text, lower is better), "
                        "as Caccia et al. 2020 draw it. Means over seeds."
                    ),
                )
            )
        rows = []
        headline = ctx.headline.get(corpus, "")
        for o in objectives:
            rows.append(
                [
                    Cell(o),
                    _cell(_mean(ctx, corpus, o, "", "nll_test")),
                    _cell(_mean(ctx, corpus, o, "", "forward_kl")),
                    _cell(_mean(ctx, corpus, o, headline, "nll_oracle")),
                    _cell(_mean(ctx, corpus, o, headline, "reverse_kl")),
                ]
            )
        blocks.append(
            Table(
                ["objective", "NLL-test ↓", "forward KL ↓",
                 f"NLL-oracle ↓ ({decoding_name(headline)})",
                 f"reverse KL ↓ ({decoding_name(headline)})"],
                rows,
                caption="KL per token to the oracle (forward: on its samples; reverse: on the "
                "model's, under the decoding's own distribution)",
                numeric_from=1,
            )
        )  # fmt: skip
        curve = []
        for o in objectives:
            for m in EXPOSURE:
                r = _mean(ctx, corpus, o, headline, m)
                if r is not None:
                    curve.append(
                        {"objective": o, "length": int(m.rsplit("_", 1)[1]), "value": r["mean"]}
                    )
        if curve:
            blocks.append(
                Figure(
                    plots.exposure_curve(pd.DataFrame(curve), ctx.colours),
                    f"oracle-exposure{ctx.figure_suffix[corpus]}.png",
                    "exposure bias",
                    caption=(
                        "%ExAccErr against the length l of the continuation (Arora et al. "
                        "2022): the excess error a model accumulates on its own prefixes over "
                        f"l times its per-step error on the oracle's, at {decoding_name(headline)}."
                    ),
                )
            )
        modes = seeds[
            seeds["metric"].str.startswith("mode_weight_") & ~seeds["metric"].str.endswith("_se")
        ]
        if not modes.empty:
            k = sorted({int(m.rsplit("_", 1)[1]) for m in modes["metric"]})
            rows = []
            for o in objectives:
                row = [Cell(o)]
                for i in k:
                    target = _mean(ctx, corpus, o, headline, f"mode_target_{i}")
                    implied = _mean(ctx, corpus, o, headline, f"mode_weight_{i}")
                    text = "—" if implied is None else fmt.number(implied["mean"])
                    if target is not None:
                        text += f" / {fmt.number(target['mean'])}"
                    row.append(Cell(text))
                row.append(_cell(_mean(ctx, corpus, o, headline, "mode_tv")))
                row.append(_cell(_mean(ctx, corpus, o, headline, "modes_dropped")))
                rows.append(row)
            blocks.append(
                Table(
                    ["objective", *[f"mode {i}: ŵ / w" for i in k], "TV(w, ŵ) ↓", "dropped ↓"],
                    rows,
                    caption=f"Mode coverage at {decoding_name(headline)}: the implied weights "
                    "(mean posterior of unprompted samples) against the oracle's",
                    numeric_from=1,
                )
            )  # fmt: skip
        blocks.append(
            Paragraph(
                "Every value here is exact up to Monte-Carlo error: the data's distribution is "
                "the oracle's. Intervals as in the headline.",
                note=True,
            )
        )
        return blocks

    return per_corpus(ctx, "Against a known truth", "known-truth", make)
