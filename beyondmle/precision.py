"""`precision = "auto"`: the fastest training precision this hardware really has.

bf16 is not a free win. On CPUs with native bf16 matrix units (Intel AMX, or AVX512-BF16) a bf16
matmul runs about 3x faster than fp32; on CPUs without them PyTorch emulates bf16 and the same
matmul is 5-7x *slower* (`../shared/reference-results.md`: 21-34 against 123-148 GFLOP/s). On
GPUs, bf16 needs Ampere or newer; a V100 or T4 has fast fp16 instead.

The rule:
- CUDA: `bf16-mixed` where `torch.cuda.is_bf16_supported()`, else `16-mixed`.
- CPU: `bf16-mixed` only where the CPU advertises native bf16 (the `amx_bf16` or `avx512_bf16`
  flag) *and* a short measured matmul probe confirms bf16 is at least `BF16_MIN_SPEEDUP` times
  faster than fp32; otherwise `32-true`. The probe (about a second) is cached per machine: CPU
  model, flags, thread count and torch version.

Every choice carries its reason, which goes into the cell's provenance and the report. The
environment variable `BEYONDMLE_PRECISION` (e.g. `32-true`) overrides what `auto` picks, for
every run and the featurizers alike: to compare precisions on one machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from beyondmle.paths import atomic_write_text, default_cache_dir

AUTO = "auto"
OVERRIDE_ENV = "BEYONDMLE_PRECISION"
BF16_MIN_SPEEDUP = 1.3
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class PrecisionChoice:
    """A Lightning precision string and why it was chosen."""

    precision: str
    reason: str

    @property
    def bf16(self) -> bool:
        return self.precision.startswith("bf16")


@dataclass(frozen=True)
class MatmulProbe:
    """Measured matrix-multiply throughput (GFLOP/s) on this CPU."""

    fp32: float
    bf16: float

    @property
    def speedup(self) -> float:
        return self.bf16 / self.fp32


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux: /proc/cpuinfo); empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16_flags(flags: set[str]) -> list[str]:
    return [f for f in NATIVE_BF16_FLAGS if f in flags]


def measure_matmul(n: int = 1024, repeats: int = 5) -> MatmulProbe:
    """GFLOP/s of an n x n matmul in fp32 and in bf16, the best of `repeats` timings each
    (the best, not the mean, so a busy neighbour on a shared machine does not decide)."""
    rates = []
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b  # warm-up: kernel selection, page faults
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        rates.append(2 * n**3 / best / 1e9)
    return MatmulProbe(fp32=rates[0], bf16=rates[1])


# Settings that change which kernels run without changing the CPU's flags: a probe measured
# under one of them says nothing about the others (`ONEDNN_MAX_CPU_ISA=AVX512_CORE` turns
# oneDNN's native bf16 off on a CPU that advertises it).
KERNEL_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def _probe_key(flags: set[str]) -> str:
    kernel_env = {name: os.environ.get(name, "") for name in KERNEL_ENV}
    blob = json.dumps(
        [cpu_model(), sorted(flags), torch.get_num_threads(), torch.__version__, kernel_env],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_probe(cache_dir: Path | None = None, flags: set[str] | None = None) -> MatmulProbe:
    """`measure_matmul()`, measured once per machine and kept in the cache directory."""
    flags = cpu_flags() if flags is None else flags
    path = (cache_dir or default_cache_dir()) / "probes" / f"matmul-{_probe_key(flags)}.json"
    if path.exists():
        try:
            return MatmulProbe(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            pass  # a damaged cache file is measured again
    probe = measure_matmul()
    atomic_write_text(path, json.dumps(asdict(probe)))
    return probe


def choose_cpu_precision(flags: set[str], probe: MatmulProbe | None) -> PrecisionChoice:
    """The CPU rule (see the module docstring) from the CPU's flags and, where they promise
    native bf16, the measured probe."""
    native = native_bf16_flags(flags)
    if not native:
        return PrecisionChoice(
            "32-true", "CPU without native bf16 (no amx_bf16 / avx512_bf16 flag): bf16 is emulated"
        )
    assert probe is not None
    measured = (
        f"bf16 {probe.bf16:.0f} vs fp32 {probe.fp32:.0f} GFLOP/s ({probe.speedup:.1f}x) "
        f"with {', '.join(native)}"
    )
    if probe.speedup >= BF16_MIN_SPEEDUP:
        return PrecisionChoice("bf16-mixed", f"CPU with native bf16: {measured}")
    return PrecisionChoice("32-true", f"bf16 not faster on this CPU: {measured}")


def choose_precision(
    requested: str, accelerator: str = "auto", cache_dir: Path | None = None
) -> PrecisionChoice:
    """The precision to train in: `requested` itself unless it is `auto`."""
    if requested != AUTO:
        return PrecisionChoice(requested, "set in the spec")
    forced = os.environ.get(OVERRIDE_ENV)
    if forced:
        return PrecisionChoice(forced, f"auto overridden by {OVERRIDE_ENV}={forced}")
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16-mixed", f"GPU with bf16: {torch.cuda.get_device_name()}")
        return PrecisionChoice("16-mixed", f"GPU without bf16: {torch.cuda.get_device_name()}")
    flags = cpu_flags()
    probe = cached_probe(cache_dir, flags) if native_bf16_flags(flags) else None
    return choose_cpu_precision(flags, probe)


def bf16_autocast_is_fast(device: str = "cpu") -> bool:
    """Whether bf16 autocast pays on `device` (the featurizers' rule, the same as training's)."""
    accelerator = "cuda" if torch.device(device).type == "cuda" else "cpu"
    return choose_precision(AUTO, accelerator).bf16


def describe_cpu() -> str:
    """One line naming the CPU kind, for every figure a benchmark prints."""
    flags = cpu_flags()
    native = native_bf16_flags(flags) or ["no native bf16"]
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{cpu_model()}, {os.cpu_count()} cores, {capability}, {'/'.join(native)}"
