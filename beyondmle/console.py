"""The console of a long matrix: one line per cell event, one live progress line, each distinct
warning once.

- Cell events (`running`, `done`, `FAILED: ...`, `skipped`) are one line each, with the matrix's
  progress and ETA.
- While a cell trains, one line is redrawn in place (on a terminal only): its step out of the
  steps its token budget makes, tokens/s, and the ETA of the cell and of the matrix.
- Framework banners and tips are silenced (Lightning's INFO logging, third-party loading bars).
  Every warning — Python's `warnings`, WARNING log records, and what C libraries such as faiss
  print on stderr inside `captured_stderr` — is counted by its text; the first of each is
  printed as one line, and all of them, with their counts, go into the results database for
  the report's Warnings section.
- `verbosity` 0 (`--quiet`): cell events only. 1: the default above. 2 (`-v`): everything, as
  the frameworks print it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

QUIET, NORMAL, VERBOSE = 0, 1, 2
# Loggers whose INFO lines are banners and tips (accelerator lists, "💡 Tip", load reports).
CHATTY_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "sentence_transformers",
    "transformers",
    "torch.distributed",
)
REDRAW_SECONDS = 0.5
MAX_SHOWN = 240  # characters of a warning on the console; the database keeps it whole


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class RunConsole:
    """What a `beyondmle run` prints; see the module docstring."""

    total_cells: int
    verbosity: int = NORMAL
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    counts: Counter = field(default_factory=Counter)  # (category, text) -> occurrences
    # Per cell, in run order: its kind (cells of one kind take about as long) and its training
    # tokens; without them every cell counts the same in the matrix ETA.
    costs: list[tuple[str, float]] | None = None

    def __post_init__(self) -> None:
        self.started = time.monotonic()
        self.finished = 0
        self.cell_started = self.started
        self._live = False
        self._last_draw = 0.0
        self.durations: dict[str, list[float]] = {}
        self.seconds_per_token: list[tuple[float, float]] = []  # (seconds, tokens) per cell
        self.live_enabled = self.verbosity >= NORMAL and self.stream.isatty()

    # -- cell events ---------------------------------------------------------------------------

    def cell(self, index: int, description: str, status: str) -> None:
        if status == "running":
            self.cell_started = time.monotonic()
        eta = self.matrix_eta(index - 1 if status == "running" else index, 0.0)
        suffix = f", matrix ETA {_duration(eta)}" if eta is not None else ""
        self._line(f"[{index}/{self.total_cells}] {description}: {status}{suffix}")

    def cell_finished(self, index: int = 0) -> None:
        self.finished += 1
        if self.costs and 1 <= index <= len(self.costs):
            kind, tokens = self.costs[index - 1]
            seconds = time.monotonic() - self.cell_started
            self.durations.setdefault(kind, []).append(seconds)
            self.seconds_per_token.append((seconds, tokens))

    def _expected(self, kind: str, tokens: float) -> float:
        """Seconds a cell should take: the mean of finished cells of its kind, else the
        finished cells' seconds per training token times its tokens."""
        if kind in self.durations:
            return sum(self.durations[kind]) / len(self.durations[kind])
        seconds = sum(s for s, _ in self.seconds_per_token)
        spent = sum(t for _, t in self.seconds_per_token)
        return seconds / spent * tokens if spent else seconds / len(self.seconds_per_token)

    def matrix_eta(self, cells_before: int, cell_fraction: float) -> float | None:
        """Seconds left in the matrix: each remaining cell as long as finished cells of its
        kind (a shared base is not a fine-tuning cell), or, without costs, the mean cell."""
        if not self.finished:
            return None
        if not self.costs or not self.seconds_per_token:
            per_cell = (time.monotonic() - self.started) / self.finished
            return max(0.0, (self.total_cells - cells_before - cell_fraction) * per_cell)
        left = self.costs[cells_before:]
        total = sum(self._expected(kind, tokens) for kind, tokens in left)
        if left and cell_fraction:
            total -= cell_fraction * self._expected(*left[0])
        return max(0.0, total)

    # -- the live line -------------------------------------------------------------------------

    def progress(self, index: int, phase: str, done: int, total: int, rate: str = "") -> None:
        """Redraw the live line: `phase` `done`/`total` of cell `index`."""
        if not self.live_enabled:
            return
        now = time.monotonic()
        if now - self._last_draw < REDRAW_SECONDS and done < total:
            return
        self._last_draw = now
        fraction = done / total if total else 0.0
        elapsed = now - self.cell_started
        cell_eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        matrix = self.matrix_eta(index - 1, fraction)
        parts = [f"[{index}/{self.total_cells}] {phase} {done}/{total}"]
        if rate:
            parts.append(rate)
        if cell_eta is not None:
            parts.append(f"cell ETA {_duration(cell_eta)}")
        if matrix is not None:
            parts.append(f"matrix ETA {_duration(matrix)}")
        text = " • ".join(parts)
        self.stream.write("\r\033[K" + text)
        self.stream.flush()
        self._live = True

    def _line(self, text: str) -> None:
        if self._live:
            self.stream.write("\r\033[K")
            self._live = False
        print(text, file=self.stream, flush=True)

    # -- warnings ------------------------------------------------------------------------------

    def warn(self, category: str, text: str) -> None:
        """Count a warning; print it the first time its text is seen."""
        text = " ".join(str(text).split())
        key = (category, text)
        self.counts[key] += 1
        if self.counts[key] == 1 and self.verbosity >= NORMAL:
            shown = text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"
            self._line(f"warning ({category}): {shown}")

    def summary(self) -> list[tuple[str, str, int]]:
        """(category, text, count) of every distinct warning, most frequent first."""
        return [(c, t, n) for (c, t), n in self.counts.most_common()]

    @contextlib.contextmanager
    def capture(self) -> Iterator[RunConsole]:
        """Route warnings and framework logging through this console for the block."""
        if self.verbosity >= VERBOSE:
            yield self
            return
        handler = _ConsoleHandler(self)
        saved = {name: logging.getLogger(name) for name in CHATTY_LOGGERS}
        state = {name: (lg.level, list(lg.handlers), lg.propagate) for name, lg in saved.items()}
        env = {k: os.environ.get(k) for k in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")}
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # "Loading weights" and download bars
        os.environ["TQDM_DISABLE"] = "1"
        for lg in saved.values():
            lg.setLevel(logging.WARNING)
            lg.handlers = [handler]
            lg.propagate = False
        bars = _progress_bars(False)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = self._show_warning  # type: ignore[assignment]
            try:
                yield self
            finally:
                for name, (level, handlers, propagate) in state.items():
                    lg = saved[name]
                    lg.setLevel(level)
                    lg.handlers = handlers
                    lg.propagate = propagate
                for key, value in env.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
                _progress_bars(bars)

    def _show_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        self.warn(category.__name__, str(message))


def _progress_bars(enabled: bool) -> bool:
    """Turn the Hugging Face loading bars ("Loading weights") on or off; returns whether they
    were on. Their environment switch is read once, at import, so it comes too late here."""
    try:
        import transformers.utils.logging as hf_logging
    except ImportError:
        return enabled
    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    return was


class _ConsoleHandler(logging.Handler):
    def __init__(self, console: RunConsole) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.warn(f"{record.name} {record.levelname.lower()}", record.getMessage())


@contextlib.contextmanager
def captured_stderr(console: RunConsole | None) -> Iterator[None]:
    """Send what C code writes to file descriptor 2 inside the block (faiss's k-means
    warnings, say) to the console as warnings, one per distinct line. Without a console, or
    when verbose, the block runs untouched."""
    if console is None or console.verbosity >= VERBOSE:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    own_stream = console.stream
    redirect = own_stream is sys.stderr or getattr(own_stream, "fileno", lambda: -1)() == 2
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        if redirect:  # the console itself keeps printing where stderr went before
            console.stream = open(saved, "w", closefd=False)  # noqa: SIM115
        try:
            yield
        finally:
            sys.stderr.flush()
            if redirect:
                console.stream.flush()
                console.stream = own_stream
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode("utf-8", "replace").splitlines():
                if line.strip():
                    console.warn("stderr", line.strip())
