"""The report's section "Preferences": what learning from preferences bought and cost.

- the over-optimization curves (Gao et al. 2022): gold and proxy reward against the square root
  of KL(policy || reference), from the probes every cell logged while it trained;
- reward and KL per method, and the gold reward gained over MLE's control per unit of √KL;
- the reward models: held-out and training accuracy, and how often their labels agree with
  the gold order (the labels' known noise);
- the diversity cost against MLE (distinct-4, Self-BLEU-4, mode coverage where the oracle has
  modes), as paired differences.

Built from the metrics and logs the RLHF plugins register; absent when the results hold none.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from beyondmle.reports import analysis, plots
from beyondmle.reports import formatting as fmt
from beyondmle.reports.context import Context, decoding_name, per_corpus
from beyondmle.reports.document import Cell, Figure, Paragraph, Section, Table
from beyondmle.reports.load import DamagedFile, read_probe_log

DIVERSITY = [
    ("distinct_4", "distinct-4"),
    ("self_bleu_4", "Self-BLEU-4"),
    ("mode_tv", "mode TV"),
]


def _get(ctx: Context, corpus: str, objective: str, decoding: str, metric: str) -> dict | None:
    return ctx.summary.get(corpus, objective, decoding, metric)


def _cell(r, sign: bool = False) -> Cell:
    if r is None:
        return Cell("—", tone="muted")
    text, interval = fmt.estimate_parts(r["mean"], r["low"], r["high"], r["n"], sign=sign)
    return Cell(text, detail=interval)


def _probes(ctx: Context, corpus: str) -> pd.DataFrame:
    c = ctx.results.cells
    rewards = analysis.reward_labels(c)
    done = c[(c["corpus"] == corpus) & (c["status"] == "done") & ~c["objective"].isin(rewards)]
    parts = []
    for cell in done.itertuples():
        path = ctx.results.artifact_path(cell.id, "train_log")
        if path is None:
            continue
        try:
            log = read_probe_log(path)
        except (OSError, ValueError, pd.errors.ParserError, DamagedFile):
            continue
        if not log.empty:
            parts.append(log.assign(objective=cell.objective, seed=cell.seed))
    if not parts:
        return pd.DataFrame()
    data = pd.concat(parts, ignore_index=True)
    data["sqrt_kl"] = np.sqrt(data["kl_k3"].clip(lower=0))
    return data


def _reward_table(ctx: Context, corpus: str, objectives: list[str], headline: str) -> Table:
    base = ctx.baseline
    base_gold = _get(ctx, corpus, base, headline, "gold_reward") if base else None
    rows = []
    for o in objectives:
        gold = _get(ctx, corpus, o, headline, "gold_reward")
        kl = _get(ctx, corpus, o, "", "kl_k3")
        per_kl = "—"
        if gold and base_gold and kl and o != base and kl["mean"] > 0:
            per_kl = fmt.signed((gold["mean"] - base_gold["mean"]) / math.sqrt(kl["mean"]))
        rows.append(
            [
                Cell(o),
                _cell(_get(ctx, corpus, o, headline, "proxy_reward")),
                _cell(gold),
                _cell(_get(ctx, corpus, o, "", "kl_k1")),
                _cell(kl),
                Cell(per_kl),
            ]
        )
    return Table(
        ["objective", f"proxy reward ↑ ({decoding_name(headline)})",
         f"gold reward ↑ ({decoding_name(headline)})", "KL k1 (nats)", "KL k3 (nats)",
         f"gold gain over {base or 'MLE'} per √KL"],
        rows,
        caption="Rewards of the continuations, and KL(policy ‖ reference) of a whole "
        "continuation sampled at temperature 1, by the k1 and k3 estimators (Schulman 2020); "
        "the last column: the gold reward gained over MLE's control, divided by √(KL k3), "
        "on the means",
        numeric_from=1,
    )  # fmt: skip


def _reward_models(ctx: Context, corpus: str) -> Table | None:
    seeds = ctx.corpus_seeds(corpus)
    rm = seeds[seeds["objective"].isin(analysis.reward_labels(ctx.results.cells))]
    if rm.empty:
        return None
    rows = []
    for seed, part in rm.groupby("seed"):
        values = dict(zip(part["metric"], part["value"], strict=False))
        rows.append(
            [Cell(str(seed))]
            + [
                Cell(fmt.number(values.get(m)))
                for m in ("reward_pairs", "reward_accuracy_train", "reward_accuracy",
                          "label_agreement")
            ]
        )  # fmt: skip
    return Table(
        ["seed", "pairs", "training accuracy", "held-out accuracy ↑", "labels agreeing with gold"],
        rows,
        caption="The reward models, one per seed: Bradley-Terry on the preference pairs; the "
        "last column is the share of training labels that agree with the gold order (1 for "
        "noiseless labels; absent where the source has no gold)",
        numeric_from=1,
    )


def _diversity_cost(ctx: Context, corpus: str, objectives: list[str], headline: str):
    base = ctx.baseline
    if base is None:
        return None
    paired = analysis.paired_against(ctx.corpus_seeds(corpus), base)
    paired = paired[paired["decoding"] == headline]
    present = [(m, name) for m, name in DIVERSITY if (paired["metric"] == m).any()]
    if not present:
        return None
    rows = []
    for o in objectives:
        if o == base:
            continue
        row = [Cell(o)]
        for metric, _ in present:
            hit = paired[(paired["objective"] == o) & (paired["metric"] == metric)]
            if hit.empty:
                row.append(Cell("—", tone="muted"))
                continue
            r = hit.iloc[0]
            text, interval = fmt.estimate_parts(r["diff"], r["low"], r["high"], r["n"], sign=True)
            row.append(Cell(text, detail=interval))
        rows.append(row)
    return Table(
        ["objective", *[f"Δ {name}" for _, name in present]],
        rows,
        caption=f"The diversity cost against {base} at {decoding_name(headline)}: paired "
        "differences over seeds and prompts (distinct-4 ↑, Self-BLEU-4 ↓, mode TV ↓)",
        numeric_from=1,
    )


def section(ctx: Context) -> Section | None:
    if not ctx.seeds["metric"].isin(["proxy_reward", "kl_k3"]).any():
        return None

    def make(corpus: str) -> list:
        objectives = ctx.objectives_in(corpus)
        headline = ctx.headline.get(corpus, "")
        blocks: list = []
        probes = _probes(ctx, corpus)
        if not probes.empty:
            blocks.append(
                Figure(
                    plots.overoptimization(probes, ctx.colours),
                    f"preferences-overoptimization{ctx.figure_suffix[corpus]}.png",
                    "over-optimization",
                    caption=(
                        "Gold and proxy reward against √KL(policy ‖ reference) while training "
                        "(Gao et al. 2022): each point is a probe of the same validation prompts "
                        "at temperature 1 with the same noise, every few steps; mean over seeds. "
                        "Where the proxy keeps rising after the gold reward turns down, the "
                        "policy is exploiting the reward model."
                    ),
                )
            )
        blocks.append(_reward_table(ctx, corpus, objectives, headline))
        for table in (
            _reward_models(ctx, corpus),
            _diversity_cost(ctx, corpus, objectives, headline),
        ):
            if table is not None:
                blocks.append(table)
        blocks.append(
            Paragraph(
                "The reward model, the KL and the probes are the same for every cell of a seed, "
                "MLE's control included, so a method's gain is read against that control. "
                "Intervals as in the headline.",
                note=True,
            )
        )
        return blocks

    return per_corpus(ctx, "Preferences", "preferences", make)
