"""The report's figures, drawn with seaborn on matplotlib's Agg canvas and returned as PNG bytes.

Figures are made with `matplotlib.figure.Figure` and a `FigureCanvasAgg`, never pyplot: no
interactive backend, no global figure state, and styles are applied in a context only.
"""

from __future__ import annotations

import io
import math
from contextlib import contextmanager

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from beyondmle.reports import catalogue
from beyondmle.reports.analysis import Frontiers
from beyondmle.reports.load import decoding_family

DPI = 110
_MARKERS = {"greedy": "s", "temperature": "o", "top_p": "D", "top_k": "^", "combined": "P"}


def palette(objectives: list[str]) -> dict[str, tuple]:
    """One colour per objective, the same in every figure."""
    colours = sns.color_palette("colorblind", max(len(objectives), 1))
    if len(objectives) > len(colours):
        colours = sns.color_palette("husl", len(objectives))
    return dict(zip(objectives, colours, strict=False))


@contextmanager
def _style():
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        yield


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _axis_label(metric: str) -> str:
    return catalogue.display(metric)


def _use_log(values: pd.Series, metric: str) -> bool:
    v = values.dropna()
    return metric.startswith("ppl") and len(v) > 0 and v.min() > 0 and v.max() / v.min() > 5


def gap_chart(pts: pd.DataFrame, likelihood: str, quality: str, colours: dict[str, tuple]) -> bytes:
    """Likelihood (x) against quality (y), one point per cell x decoding, colour = objective,
    marker = decoding family."""
    data = pts.dropna(subset=[likelihood, quality]).copy()
    data["decoding kind"] = [decoding_family(d) or "none" for d in data["decoding"]]
    markers = {k: _MARKERS.get(k, "X") for k in data["decoding kind"].unique()}
    with _style():
        fig = _new_figure(8.5, 5.2)
        ax = fig.add_subplot()
        sns.scatterplot(
            data=data,
            x=likelihood,
            y=quality,
            hue="objective",
            hue_order=[o for o in colours if o in set(data["objective"])],
            palette=colours,
            style="decoding kind",
            markers=markers,
            s=60,
            alpha=0.85,
            edgecolor="white",
            linewidth=0.6,
            ax=ax,
        )
        if _use_log(data[likelihood], likelihood):
            ax.set_xscale("log")
        ax.set_xlabel(_axis_label(likelihood))
        ax.set_ylabel(_axis_label(quality))
        ax.set_title("Likelihood against text quality (one point per cell × decoding)")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8)
        return _png(fig)


def frontier_chart(front: Frontiers, colours: dict[str, tuple]) -> bytes:
    """Each objective's sweep as a line in the quality-diversity plane; Pareto-optimal points
    filled, dominated ones hollow, sweep values written beside the points."""
    pts = front.points
    with _style():
        fig = _new_figure(8.5, 5.4)
        ax = fig.add_subplot()
        for objective in [o for o in colours if o in set(pts["objective"])]:
            mine = pts[pts["objective"] == objective]
            if front.sweep is not None:
                mine = mine.sort_values("parameter")
            else:
                mine = mine.sort_values("diversity")
            colour = colours[objective]
            sns.lineplot(
                data=mine,
                x="diversity",
                y="quality",
                sort=False,
                color=colour,
                lw=1.4,
                alpha=0.8,
                label=objective,
                ax=ax,
            )
            front_pts = mine[mine["pareto"]]
            other = mine[~mine["pareto"]]
            ax.scatter(front_pts["diversity"], front_pts["quality"], color=colour, s=40, zorder=3)
            ax.scatter(
                other["diversity"],
                other["quality"],
                facecolors="white",
                edgecolors=[colour],
                s=40,
                zorder=3,
            )
            for row in mine.itertuples():
                text = f"{row.parameter:g}" if not math.isnan(row.parameter) else str(row.decoding)
                ax.annotate(
                    text,
                    (row.diversity, row.quality),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                    color=colour,
                )
        ax.set_xlabel(f"diversity: {front.axes.diversity_label} (higher is more diverse)")
        ax.set_ylabel(f"quality: {front.axes.quality_label} (higher is better)")
        sweep = {"temperature": "temperature", "top_p": "top-p"}.get(front.sweep, "decoding")
        ax.set_title(f"Quality-diversity frontiers ({sweep} sweep; filled = Pareto-optimal)")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8)
        return _png(fig)


def training_curves(logs: pd.DataFrame, colours: dict[str, tuple]) -> bytes:
    """Like with like: the teacher-forced NLL of the training batch (left) and the validation
    NLL (right), the same quantities for every objective, against tokens seen; one colour per
    objective, one thin line per seed. `logs` holds objective, seed, tokens, step, split,
    loss."""
    objectives = [o for o in colours if o in set(logs["objective"])]
    use_tokens = logs["tokens"].notna().all()
    x = "tokens" if use_tokens else "step"
    with _style():
        fig = _new_figure(10.0, 3.6)
        axes = fig.subplots(1, 2, sharey=True)
        for ax, split, title in (
            (axes[0], "train", "training batch, teacher-forced NLL"),
            (axes[1], "val", "validation NLL"),
        ):
            part = logs[(logs["split"] == split) & logs["objective"].isin(objectives)].copy()
            if part.empty:
                ax.set_visible(False)
                continue
            part["seed"] = part["seed"].astype(str)
            sns.lineplot(
                data=part,
                x=x,
                y="loss",
                hue="objective",
                hue_order=objectives,
                palette=colours,
                units="seed",
                estimator=None,
                lw=0.8,
                alpha=0.8,
                ax=ax,
            )
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("tokens seen" if use_tokens else "step")
            ax.set_ylabel("NLL (nats per token)")
            if use_tokens:
                ax.xaxis.set_major_formatter(EngFormatter(sep=""))
            if ax.get_legend() is not None:
                ax.legend(fontsize=7, frameon=False)
        return _png(fig)


def objective_losses(logs: pd.DataFrame, colours: dict[str, tuple]) -> bytes:
    """Each objective's own training loss (its terms differ: an unlikelihood penalty, a GAN's
    generator loss), one panel per objective, one thin line per seed."""
    objectives = [o for o in colours if o in set(logs["objective"])]
    use_tokens = logs["tokens"].notna().all()
    x = "tokens" if use_tokens else "step"
    ncols = min(3, len(objectives))
    nrows = math.ceil(len(objectives) / ncols)
    with _style():
        fig = _new_figure(4.2 * ncols + 0.6, 3.0 * nrows)
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        for ax, objective in zip(axes, objectives, strict=False):
            mine = logs[(logs["objective"] == objective) & (logs["split"] == "objective")].copy()
            mine["seed"] = mine["seed"].astype(str)
            if not mine.empty:
                sns.lineplot(
                    data=mine, x=x, y="loss", units="seed", estimator=None, lw=0.8,
                    color=colours[objective], ax=ax,
                )  # fmt: skip
            ax.set_title(objective, fontsize=10)
            ax.set_xlabel("tokens seen" if use_tokens else "step")
            ax.set_ylabel("objective's loss")
            if use_tokens:
                ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        for ax in axes[len(objectives) :]:
            ax.set_visible(False)
        return _png(fig)


def quality_coverage(points: pd.DataFrame, colours: dict[str, tuple]) -> bytes:
    """NLL-test (coverage, x) against NLL-oracle (quality, y), one line per objective through
    its decodings; lower-left is better on both."""
    with _style():
        fig = _new_figure(6.4, 4.4)
        ax = fig.subplots()
        for objective, part in points.groupby("objective", sort=False):
            part = part.sort_values("nll_oracle")
            ax.plot(part["nll_test"], part["nll_oracle"], marker="o", lw=1.0,
                    color=colours.get(objective), label=objective)  # fmt: skip
            for r in part.itertuples():
                ax.annotate(r.decoding, (r.nll_test, r.nll_oracle), fontsize=6, alpha=0.7)
        ax.set_xlabel("NLL-test (coverage) ↓")
        ax.set_ylabel("NLL-oracle (quality) ↓")
        ax.legend(fontsize=7, frameon=False)
        return _png(fig)


def exposure_curve(points: pd.DataFrame, colours: dict[str, tuple]) -> bytes:
    """%ExAccErr against the share of the continuation, one line per objective."""
    with _style():
        fig = _new_figure(6.0, 3.8)
        ax = fig.subplots()
        for objective, part in points.groupby("objective", sort=False):
            part = part.sort_values("length")
            ax.plot(part["length"], part["value"], marker="o", lw=1.0,
                    color=colours.get(objective), label=objective)  # fmt: skip
        ax.axhline(0.0, color="#999999", lw=0.6)
        ax.set_xlabel("length l (% of the continuation)")
        ax.set_ylabel("%ExAccErr ↓")
        ax.legend(fontsize=7, frameon=False)
        return _png(fig)


def overoptimization(points: pd.DataFrame, colours: dict[str, tuple]) -> bytes:
    """Gold and proxy reward against sqrt(KL to the reference) as training goes (Gao et al.
    2022's axes), one line per objective through its probes (mean over seeds per step)."""
    rewards = [
        r for r in ("gold_reward", "proxy_reward") if r in points and points[r].notna().any()
    ]
    with _style():
        fig = _new_figure(4.2 * len(rewards), 3.6)
        axes = fig.subplots(1, len(rewards), squeeze=False)[0]
        for ax, reward in zip(axes, rewards, strict=True):
            for objective, part in points.groupby("objective", sort=False):
                mean = part.groupby("step")[["sqrt_kl", reward]].mean().sort_index()
                ax.plot(mean["sqrt_kl"], mean[reward], marker=".", lw=1.0,
                        color=colours.get(objective), label=objective)  # fmt: skip
            ax.set_xlabel("√KL(policy ‖ reference), nats^½")
            ax.set_ylabel(("gold" if reward == "gold_reward" else "proxy") + " reward ↑")
        axes[0].legend(fontsize=7, frameon=False)
        return _png(fig)
