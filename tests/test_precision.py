"""`precision = "auto"`: bf16 only where this hardware really runs it faster.

The probes below are figures measured on real machines (`../shared/reference-results.md` and
the README): a CPU without native bf16 (fp32 148, bf16 21 GFLOP/s), one with AMX (fp32 316,
bf16 1,323), and an AVX512-BF16 CPU with oneDNN capped at AVX512_CORE (fp32 166, bf16 142).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from beyondmle import precision
from beyondmle.precision import MatmulProbe, cached_probe, choose_cpu_precision, choose_precision


def test_a_cpu_without_bf16_flags_trains_in_fp32_without_probing() -> None:
    choice = choose_cpu_precision({"avx512f", "avx512bw"}, probe=None)
    assert choice.precision == "32-true"
    assert "emulated" in choice.reason


def test_emulated_bf16_behind_a_native_flag_falls_back_to_fp32() -> None:
    slow = choose_cpu_precision({"avx512_bf16"}, MatmulProbe(fp32=148.0, bf16=21.0))
    capped = choose_cpu_precision({"avx512_bf16"}, MatmulProbe(fp32=166.0, bf16=142.0))
    assert slow.precision == capped.precision == "32-true"
    assert "not faster" in slow.reason


def test_native_bf16_that_measures_faster_trains_in_bf16() -> None:
    choice = choose_cpu_precision({"amx_bf16", "avx512_bf16"}, MatmulProbe(316.0, 1323.0))
    assert choice.precision == "bf16-mixed"
    assert "amx_bf16" in choice.reason and "4.2x" in choice.reason


def test_the_speedup_threshold_is_inclusive_and_only_just_met() -> None:
    at = MatmulProbe(fp32=100.0, bf16=100.0 * precision.BF16_MIN_SPEEDUP)
    below = MatmulProbe(fp32=100.0, bf16=100.0 * precision.BF16_MIN_SPEEDUP - 0.01)
    assert choose_cpu_precision({"avx512_bf16"}, at).precision == "bf16-mixed"
    assert choose_cpu_precision({"avx512_bf16"}, below).precision == "32-true"


def test_a_precision_set_in_the_spec_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(precision.OVERRIDE_ENV, "bf16-mixed")
    choice = choose_precision("32-true", "cpu")
    assert (choice.precision, choice.reason) == ("32-true", "set in the spec")


def test_the_environment_overrides_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(precision.OVERRIDE_ENV, "32-true")
    choice = choose_precision("auto", "cpu")
    assert choice.precision == "32-true"
    assert precision.OVERRIDE_ENV in choice.reason


class CountingProbe:
    """Stands in for the timed matmul: returns a fixed probe and counts the measurements."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> MatmulProbe:
        self.calls += 1
        return MatmulProbe(fp32=100.0, bf16=400.0)


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> CountingProbe:
    """The timed matmul replaced by a counter, with no kernel cap set."""
    counting = CountingProbe()
    monkeypatch.setattr(precision, "measure_matmul", counting)
    for name in precision.KERNEL_ENV:
        monkeypatch.delenv(name, raising=False)
    return counting


def test_the_probe_is_measured_once_per_machine(tmp_path: Path, counter: CountingProbe) -> None:
    flags = {"avx512_bf16"}
    first = cached_probe(tmp_path, flags)
    second = cached_probe(tmp_path, flags)
    assert first == second == MatmulProbe(fp32=100.0, bf16=400.0)
    assert counter.calls == 1


def test_a_kernel_cap_or_other_flags_measure_again(
    tmp_path: Path, counter: CountingProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached_probe(tmp_path, {"avx512_bf16"})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    cached_probe(tmp_path, {"avx512_bf16"})
    cached_probe(tmp_path, {"amx_bf16"})
    assert counter.calls == 3


def test_a_damaged_probe_cache_is_measured_again(tmp_path: Path, counter: CountingProbe) -> None:
    cached_probe(tmp_path, {"avx512_bf16"})
    (cache_file,) = (tmp_path / "probes").iterdir()
    cache_file.write_text("{not json")
    assert cached_probe(tmp_path, {"avx512_bf16"}) == MatmulProbe(fp32=100.0, bf16=400.0)
    assert counter.calls == 2
