"""From the raw tables to what the report shows: per-seed values, means with intervals, paired
comparisons against MLE, the likelihood-quality correlations and the quality-diversity
frontiers. Returns plain DataFrames; rendering happens elsewhere."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from beyondmle.reports import catalogue, stats
from beyondmle.reports.load import Results, decoding_family, parse_decoding, sort_decodings

KEY = ["corpus", "objective", "decoding", "metric"]


def objective_order(objectives, baseline: str | None = None) -> list[str]:
    """The baseline first, then the others alphabetically."""
    rest = sorted(set(objectives) - {baseline})
    return ([baseline] if baseline in set(objectives) else []) + rest


def find_baseline(cells: pd.DataFrame) -> str | None:
    """The MLE objective label: `mle` itself, else the only label whose configured objective
    is named `mle`."""
    labels = set(cells["objective"])
    if catalogue.BASELINE_OBJECTIVE in labels:
        return catalogue.BASELINE_OBJECTIVE
    named = {
        row.objective
        for row in cells.itertuples()
        if _objective_name(row.config) == catalogue.BASELINE_OBJECTIVE
    }
    return named.pop() if len(named) == 1 else None


def cell_role(config_json: str) -> str:
    """A cell's role: "train", "base" (a shared MLE base), "pretrained" (a loaded model as it
    is, the base of fine-tuning) or "reward" (a reward model)."""
    try:
        return json.loads(config_json).get("role", "train")
    except (TypeError, ValueError, AttributeError):
        return "train"


def reward_labels(cells: pd.DataFrame) -> set[str]:
    """The labels of reward-model cells, which are not objectives of the comparison."""
    return {r.objective for r in cells.itertuples() if cell_role(r.config) == "reward"}


def _objective_name(config_json: str) -> str | None:
    try:
        return json.loads(config_json).get("objective", {}).get("name")
    except (ValueError, AttributeError):
        return None


def done_metrics(results: Results) -> pd.DataFrame:
    """Metric rows of finished cells with a value (failed and unfinished cells are left out),
    with their prompt-resampling replicates (an array, or None) where the database has them."""
    done = set(results.cells.loc[results.cells["status"] == "done", "id"])
    m = results.metrics
    m = m[m["cell_id"].isin(done) & m["value"].notna()].copy()
    reps = results.replicates
    lookup = {
        (r.cell_id, r.decoding, r.metric): np.asarray(json.loads(r.vals), dtype=float)
        for r in reps.itertuples()
        if r.cell_id in done
    }
    m["replicates"] = [
        lookup.get(key) for key in zip(m["cell_id"], m["decoding"], m["metric"], strict=True)
    ]
    return m


def _mean_replicates(arrays) -> np.ndarray | None:
    """Cells that share a seed are averaged; so are their replicates (all, or none)."""
    arrays = list(arrays)
    if not arrays or any(a is None for a in arrays):
        return None
    if len({len(a) for a in arrays}) != 1:
        return None
    return np.mean(np.vstack(arrays), axis=0)


def seed_values(metrics: pd.DataFrame) -> pd.DataFrame:
    """One value per (corpus, objective, decoding, metric, seed): cells sharing all of these
    (e.g. a sweep over something other than the objective) are averaged, and `cells` says
    how many were. Warnings are joined."""
    columns = [*KEY, "seed", "value", "cells", "warning", "replicates"]
    if metrics.empty:
        return pd.DataFrame(columns=columns)
    if "replicates" not in metrics.columns:
        metrics = metrics.assign(replicates=None)
    grouped = metrics.groupby([*KEY, "seed"], sort=False)
    return grouped.agg(
        value=("value", "mean"),
        cells=("cell_id", "nunique"),
        warning=("warning", _join_warnings),
        replicates=("replicates", _mean_replicates),
    ).reset_index()


def _join_warnings(values) -> str | None:
    texts = sorted({str(v) for v in values if isinstance(v, str) and v})
    return "; ".join(texts) if texts else None


def _by_seed(group: pd.DataFrame) -> tuple[dict[int, float], dict[int, np.ndarray] | None]:
    values = dict(zip(group["seed"], group["value"], strict=True))
    if "replicates" not in group.columns:
        return values, None
    reps = {s: r for s, r in zip(group["seed"], group["replicates"], strict=True) if r is not None}
    return values, (reps if len(reps) == len(values) else None)


@dataclass
class Summary:
    """Means over seeds with intervals: one row per (corpus, objective, decoding, metric)."""

    table: pd.DataFrame  # KEY + mean, low, high, n, over, warning

    def __post_init__(self) -> None:
        self._index = {tuple(row[k] for k in KEY): row for row in self.table.to_dict("records")}

    def get(self, corpus, objective, decoding, metric) -> dict | None:
        """The row of one value (mean, low, high, n, over, warning), None when there is none."""
        return self._index.get((corpus, objective, decoding, metric))


def summarise(seeds: pd.DataFrame) -> Summary:
    rows = []
    for key, group in seeds.groupby(KEY, sort=False):
        est = stats.interval(*_by_seed(group))
        rows.append(
            {
                **dict(zip(KEY, key, strict=True)),
                "mean": est.mean,
                "low": est.low,
                "high": est.high,
                "n": est.n,
                "over": est.over,
                "warning": _join_warnings(group["warning"]),
            }
        )
    columns = [*KEY, "mean", "low", "high", "n", "over", "warning"]
    return Summary(pd.DataFrame(rows, columns=columns))


def decodings_of(seeds: pd.DataFrame) -> list[str]:
    """The decoding labels with values, in display order (no decoding-independent '')."""
    return sort_decodings(d for d in seeds["decoding"].unique() if d)


HEADLINE_TOP_P = 0.9


def headline_decoding(seeds: pd.DataFrame) -> str:
    """The decoding of the headline table: a plain top-p setting if there is one, else one
    that combines top-p with other knobs, else any; among those the one most objectives
    have, then the p closest to 0.9, then the first in display order. '' when nothing was
    decoded."""
    labels = decodings_of(seeds)
    if not labels:
        return ""
    plain = [d for d in labels if decoding_family(d) == "top_p"]
    combined = [d for d in labels if "top_p" in parse_decoding(d)]
    candidates = plain or combined or labels
    coverage = {d: seeds.loc[seeds["decoding"] == d, "objective"].nunique() for d in candidates}
    best = max(coverage.values())
    tied = [d for d in candidates if coverage[d] == best]

    def distance(label: str) -> float:
        p = parse_decoding(label).get("top_p")
        return abs(p - HEADLINE_TOP_P) if isinstance(p, float) else math.inf

    return min(tied, key=distance)  # min keeps the first of equals


def points(seeds: pd.DataFrame) -> pd.DataFrame:
    """Wide form, one row per (corpus, objective, seed, decoding) with every metric as a
    column; decoding-independent metrics are repeated on each decoding of their cell."""
    if seeds.empty:
        return pd.DataFrame(columns=["corpus", "objective", "seed", "decoding"])
    index = ["corpus", "objective", "seed"]
    wide = seeds.pivot_table(
        index=[*index, "decoding"], columns="metric", values="value", aggfunc="mean"
    ).reset_index()
    wide.columns.name = None
    independent = wide[wide["decoding"] == ""].drop(columns="decoding")
    decoded = wide[wide["decoding"] != ""]
    if decoded.empty:
        return wide
    independent = independent.dropna(axis=1, how="all")
    shared = [c for c in independent.columns if c not in index]
    decoded = decoded.drop(columns=[c for c in shared if c in decoded.columns])
    merged = decoded.merge(independent, on=index, how="left")
    return merged.dropna(axis=1, how="all")


# regimes


def regime_note(cells: pd.DataFrame) -> str | None:
    """What the intervals cover in the fine-tuning regime (None when nothing is fine-tuned):
    one shared base fixes the base's training seed, so only the fine-tuning seeds vary."""
    bases = {}
    for row in cells.itertuples():
        try:
            base = json.loads(row.config).get("base")
        except (TypeError, ValueError, AttributeError):
            base = None
        if base:
            bases[row.id] = (base.get("id"), base.get("seed"), row.seed)
    if not bases:
        return None
    ids = {b for b, _, _ in bases.values()}
    roles = {cell_role(row.config) for row in cells.itertuples() if row.id in ids}
    if roles == {"pretrained"}:
        return (
            f"Every objective fine-tunes one pretrained model (cell {', '.join(sorted(ids))}), "
            "evaluated as loaded, before any fine-tuning: the intervals cover the fine-tuning "
            "seeds only."
        )
    per_seed = all(base_seed == seed for _, base_seed, seed in bases.values()) and len(ids) > 1
    if per_seed:
        return (
            "Every objective fine-tunes an MLE base trained with its own seed: the intervals "
            "cover the base's training seed as well as the fine-tuning."
        )
    return (
        f"Every objective fine-tunes one shared MLE base (cell {', '.join(sorted(ids))}): the "
        "intervals cover the fine-tuning seeds only, not the base's training, which all share."
    )


# compute


COMPUTE_KEYS = ("train_flops", "train_tokens", "forward_tokens", "generated_tokens")


def compute_table(results: Results, corpus: str, baseline: str | None) -> pd.DataFrame:
    """Per objective, the mean training compute of its finished cells: FLOPs, target tokens,
    positions run forward, tokens generated, training wall time, and FLOPs relative to the
    baseline's."""
    cells = results.cells
    done = cells[(cells["status"] == "done") & (cells["corpus"] == corpus)]
    compute = results.cell_compute
    if done.empty or compute.empty:
        return pd.DataFrame()
    wide = compute.pivot_table(index="cell_id", columns="key", values="value", aggfunc="first")
    wide = done.set_index("id")[["objective", "train_seconds"]].join(wide, how="inner")
    if wide.empty:
        return pd.DataFrame()
    table = wide.groupby("objective").agg(
        cells=("train_seconds", "size"),
        **{k: (k, "mean") for k in COMPUTE_KEYS if k in wide.columns},
        train_seconds=("train_seconds", "mean"),
    )
    if baseline in table.index and "train_flops" in table.columns:
        table["flops_vs_baseline"] = table["train_flops"] / table.loc[baseline, "train_flops"]
    return table.reset_index()


# paired comparisons


def paired_against(seeds: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Every other objective against `baseline`, per corpus, decoding and metric, paired by
    seed and by prompt resample: mean difference (objective - baseline) with its interval,
    the paired test's p-value and the seeds on which the objective is better."""
    rows = []
    base = seeds[seeds["objective"] == baseline]
    base_index = {
        key: _by_seed(g) for key, g in base.groupby(["corpus", "decoding", "metric"], sort=False)
    }
    others = seeds[seeds["objective"] != baseline]
    for (corpus, objective, decoding, metric), group in others.groupby(KEY, sort=False):
        reference = base_index.get((corpus, decoding, metric))
        if not reference:
            continue
        direction = catalogue.info(metric).higher_is_better
        values, reps = _by_seed(group)
        cmp = stats.paired_difference(values, reference[0], direction, reps, reference[1])
        if cmp.n == 0:
            continue
        rows.append(
            {
                "corpus": corpus,
                "objective": objective,
                "decoding": decoding,
                "metric": metric,
                "diff": cmp.diff.mean,
                "low": cmp.diff.low,
                "high": cmp.diff.high,
                "p_value": cmp.diff.p_value,
                "over": cmp.diff.over,
                "n": cmp.n,
                "n_better": cmp.n_better,
                "share_better": cmp.share_better if direction is not None else math.nan,
            }
        )
    columns = [*KEY, "diff", "low", "high", "p_value", "over", "n", "n_better", "share_better"]
    return pd.DataFrame(rows, columns=columns)


# the likelihood-quality gap


def first_present(columns, preference: list[str]) -> str | None:
    return next((m for m in preference if m in set(columns)), None)


def gap_correlations(
    pts: pd.DataFrame, likelihood: str, headline: str, metrics: list[str] | None = None
) -> pd.DataFrame:
    """Spearman's rho between `likelihood` and each quality metric, over every point (cell x
    decoding) and over the headline decoding alone. `agreement` is rho signed so that a
    positive value means better likelihood goes with better text."""
    rows = []
    lik_higher = catalogue.info(likelihood).higher_is_better
    for metric in metrics or catalogue.GAP_METRICS:
        if metric not in pts.columns:
            continue
        everything = stats.spearman(pts[likelihood], pts[metric])
        at_headline = pts[pts["decoding"] == headline]
        head = stats.spearman(at_headline[likelihood], at_headline[metric])
        q_higher = catalogue.info(metric).higher_is_better
        sign = 1.0 if (lik_higher is False) == (q_higher is False) else -1.0
        rows.append(
            {
                "metric": metric,
                "rho": everything.rho,
                "p_value": everything.p_value,
                "n": everything.n,
                "agreement": sign * everything.rho,
                "rho_headline": head.rho,
                "n_headline": head.n,
                "agreement_headline": sign * head.rho,
            }
        )
    columns = [
        "metric", "rho", "p_value", "n", "agreement", "rho_headline", "n_headline",
        "agreement_headline",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


# quality-diversity frontiers


@dataclass(frozen=True)
class FrontierAxes:
    quality: str  # column name in the frontier points
    quality_label: str
    diversity: str
    diversity_label: str


def frontier_axes(available) -> FrontierAxes | None:
    """Quality: MAUVE, else 1 - seq-rep-4. Diversity: 1 - Self-BLEU-4, else distinct-4."""
    available = set(available)
    if "mauve" in available:
        quality = ("mauve", "MAUVE")
    elif "seq_rep_4" in available:
        quality = ("1 - seq_rep_4", "1 − seq-rep-4")
    else:
        return None
    if "self_bleu_4" in available:
        diversity = ("1 - self_bleu_4", "1 − Self-BLEU-4")
    elif "distinct_4" in available:
        diversity = ("distinct_4", "distinct-4")
    else:
        return None
    return FrontierAxes(quality[0], quality[1], diversity[0], diversity[1])


def _axis_value(summary: pd.DataFrame, column: str) -> pd.Series:
    if column.startswith("1 - "):
        return 1.0 - summary[column.removeprefix("1 - ")]
    return summary[column]


def sweep_parameter(label: str, family: str) -> float | None:
    """The swept value of a decoding in a temperature or top-p sweep, else None. Plain
    sampling (`temperature=1`) is the top-p = 1 end of a top-p sweep."""
    parsed = parse_decoding(label)
    if family == "temperature" and list(parsed) == ["temperature"]:
        return float(parsed["temperature"])
    if family == "top_p":
        if list(parsed) == ["top_p"]:
            return float(parsed["top_p"])
        if parsed == {"temperature": 1.0}:
            return 1.0
    return None


def choose_sweep(decodings: list[str]) -> str | None:
    """The swept knob: temperature or top-p, whichever has more settings (temperature on a
    tie); None when neither has two."""
    counts = {
        family: sum(sweep_parameter(d, family) is not None for d in decodings)
        for family in ("temperature", "top_p")
    }
    family = max(counts, key=lambda f: (counts[f], f == "temperature"))
    return family if counts[family] >= 2 else None


@dataclass(frozen=True)
class Frontiers:
    axes: FrontierAxes
    sweep: str | None  # 'temperature', 'top_p' or None (every decoding is a point)
    points: pd.DataFrame  # objective, decoding, parameter, quality, diversity, pareto
    areas: pd.DataFrame  # objective, points, pareto_points, area, rank
    ranges: tuple[tuple[float, float], tuple[float, float]]  # (quality, diversity) min/max


def frontiers(summary: pd.DataFrame, corpus: str, order: list[str]) -> Frontiers | None:
    """Per objective the quality-diversity points of its decoding sweep (means over seeds)
    and the area under its frontier on axes min-max normalised over all objectives' points.
    None when no quality or diversity metric is available."""
    s = summary[(summary["corpus"] == corpus) & (summary["decoding"] != "")]
    wide = s.pivot_table(
        index=["objective", "decoding"], columns="metric", values="mean"
    ).reset_index()
    axes = frontier_axes(wide.columns)
    if axes is None or wide.empty:
        return None
    sweep = choose_sweep(sort_decodings(wide["decoding"]))
    pts = pd.DataFrame(
        {
            "objective": wide["objective"],
            "decoding": wide["decoding"],
            "quality": _axis_value(wide, axes.quality),
            "diversity": _axis_value(wide, axes.diversity),
        }
    )
    if sweep is not None:
        pts["parameter"] = [sweep_parameter(d, sweep) for d in pts["decoding"]]
        pts = pts[pts["parameter"].notna()]
    else:
        pts["parameter"] = math.nan
    pts = pts.dropna(subset=["quality", "diversity"]).copy()
    if pts.empty:
        return None
    q_range = (float(pts["quality"].min()), float(pts["quality"].max()))
    d_range = (float(pts["diversity"].min()), float(pts["diversity"].max()))
    pts["quality_norm"] = stats.normalise(pts["quality"], *q_range)
    pts["diversity_norm"] = stats.normalise(pts["diversity"], *d_range)
    pts["pareto"] = False
    rows = []
    for objective in [o for o in order if o in set(pts["objective"])]:
        mine = pts["objective"] == objective
        mask = stats.pareto_mask(pts.loc[mine, "diversity_norm"], pts.loc[mine, "quality_norm"])
        pts.loc[mine, "pareto"] = mask
        rows.append(
            {
                "objective": objective,
                "points": int(mine.sum()),
                "pareto_points": int(mask.sum()),
                "area": stats.frontier_area(
                    pts.loc[mine, "diversity_norm"], pts.loc[mine, "quality_norm"]
                ),
            }
        )
    areas = pd.DataFrame(rows, columns=["objective", "points", "pareto_points", "area"])
    areas["rank"] = areas["area"].rank(ascending=False, method="min").astype("Int64")
    pts = pts.sort_values(["objective", "parameter", "diversity"]).reset_index(drop=True)
    return Frontiers(axes, sweep, pts, areas, (q_range, d_range))
