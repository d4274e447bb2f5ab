"""Numbers and times as the report prints them."""

from __future__ import annotations

import math
from datetime import UTC, datetime


def finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def number(value, spec: str = "") -> str:
    """Three or four significant figures, thousands separated; '—' when missing. A format
    spec (a metric's declared format) overrides the choice."""
    if not finite(value):
        return "—"
    v = float(value)
    if spec:
        return format(v, spec)
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 10:
        return f"{v:.2f}"
    if a >= 0.01:
        return f"{v:.3f}"
    if a >= 1e-4:
        return f"{v:.{1 - math.floor(math.log10(a))}f}"  # two significant figures
    return f"{v:.1e}"


def signed(value, spec: str = "") -> str:
    text = number(value, spec)
    return text if not finite(value) or float(value) < 0 or text == "0" else "+" + text


def estimate(mean, low, high, n, sign: bool = False) -> str:
    """`mean [low, high]` with an interval, `mean (n/a (1 seed))` from a single seed."""
    value, detail = estimate_parts(mean, low, high, n, sign)
    if not detail:
        return value
    return f"{value} ({detail})" if detail.startswith("n/a") else f"{value} {detail}"


def estimate_parts(mean, low, high, n, sign: bool = False, spec: str = "") -> tuple[str, str]:
    """`estimate` split into the value and its interval (or `n=1`)."""

    def fmt(x) -> str:
        return signed(x, spec) if sign else number(x, spec)

    if not finite(mean):
        return "—", ""
    if n is None or int(n) < 2 or not (finite(low) and finite(high)):
        return fmt(mean), f"n/a ({int(n or 0)} seed{'s' if int(n or 0) != 1 else ''})"
    return fmt(mean), f"[{fmt(low)}, {fmt(high)}]"


def timestamp(seconds) -> str:
    if not finite(seconds):
        return "—"
    return datetime.fromtimestamp(float(seconds), tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds) -> str:
    if not finite(seconds):
        return "—"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"
