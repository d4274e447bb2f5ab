"""The matrix ETA: a long shared base must not make every fine-tuning cell look as long."""

from __future__ import annotations

import io

import pytest

import beyondmle.console as console_module
from beyondmle.console import RunConsole


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(console_module.time, "monotonic", c.monotonic)
    return c


def run_cell(console: RunConsole, clock: Clock, index: int, seconds: float) -> None:
    console.cell(index, "cell", "running")
    clock.now += seconds
    console.cell_finished(index)


def test_the_eta_counts_each_kind_of_cell_at_its_own_pace(clock) -> None:
    costs = [("base", 1000.0), ("mle", 10.0), ("mle", 10.0), ("unlikelihood", 10.0)]
    console = RunConsole(4, stream=io.StringIO(), costs=costs)
    run_cell(console, clock, 1, 100.0)
    # No fine-tuning cell has finished: 0.1 s per training token, 10 tokens each.
    assert console.matrix_eta(1, 0.0) == pytest.approx(3 * 1.0)
    run_cell(console, clock, 2, 20.0)
    # mle as long as the mle cell took; unlikelihood at 120 s / 1010 tokens per token.
    assert console.matrix_eta(2, 0.0) == pytest.approx(20.0 + 120.0 / 1010.0 * 10.0)
    # Half-way through the third cell, half of its expected time is left.
    assert console.matrix_eta(2, 0.5) == pytest.approx(10.0 + 120.0 / 1010.0 * 10.0)


def test_without_costs_every_cell_counts_the_same(clock) -> None:
    console = RunConsole(4, stream=io.StringIO())
    run_cell(console, clock, 1, 100.0)
    assert console.matrix_eta(1, 0.0) == pytest.approx(300.0)
