"""A small synthetic results directory for the report tests, written through `ResultsDB` exactly
as the runner writes one: cells, steps, long-form metrics with fingerprints and warnings,
sample JSONL files, Lightning-style training logs, a failed cell."""

from __future__ import annotations

import json
import math
from pathlib import Path

from beyondmle.evaluation import (
    DEFAULT_METRICS,
    FingerprintRow,
    MetricInfoRow,
    MetricRow,
    metric_info,
)
from beyondmle.results import ResultsDB

PLANTED = "<script>alert(1)</script>"
FAILED_ERROR = (
    "Traceback (most recent call last):\n"
    '  File "runner.py", line 1, in run\n'
    "ObjectiveDiverged: loss became NaN at step 12 <b>boom</b>"
)
MAUVE_WARNING = "MAUVE from 200 samples (< 1,000): high variance"
CORPUS = "tinystories"
RUN_ID = "run-1"

# Per objective: (perplexity, quality bonus, diversity bonus).
PROFILES = {
    "mle": (30.0, 0.00, 0.00),
    "unlikelihood[alpha=0.5]": (32.0, 0.06, 0.08),
    "scheduled_sampling": (31.0, 0.03, -0.02),
}


def _randomness(decoding: str) -> float:
    settings = dict(part.split("=") for part in decoding.split(",") if "=" in part)
    if decoding == "greedy":
        return 0.3
    return float(settings.get("temperature", 1.0)) * float(settings.get("top_p", 1.0))


def _noise(*keys) -> float:
    """A deterministic value in [-1, 1] from the keys."""
    h = 0
    for ch in json.dumps(keys):
        h = (h * 131 + ord(ch)) % 1_000_003
    return math.sin(h) * 1.0


def cell_id(objective: str, seed: int) -> str:
    return f"{CORPUS}-{objective}-s{seed}".replace("[", "_").replace("]", "").replace("=", "")


FEATURIZER = "char-tfidf"


def _fingerprint(metric: str) -> FingerprintRow:
    features = {"featurizer": FEATURIZER} if metric in ("mauve", "fed") else {}
    return FingerprintRow(f"fp-{metric}", metric, "1", {"samples": 200, **features})


def _decode_metrics(objective: str, seed: int, decoding: str, with_mauve: bool) -> list:
    _, q_bonus, d_bonus = PROFILES.get(objective, (30.0, 0.0, 0.0))
    r = _randomness(decoding)
    n = _noise(objective, seed, decoding)
    quality = 0.85 + q_bonus - 0.4 * (r - 0.9) ** 2 + 0.01 * n
    self_bleu = min(0.95, max(0.05, 0.75 - 0.35 * r - d_bonus + 0.01 * n))
    values = {
        "distinct_4": min(1.0, 0.3 + 0.5 * r + d_bonus + 0.01 * n),
        "self_bleu_4": self_bleu,
        "seq_rep_4": max(0.0, 0.2 - 0.15 * r - q_bonus + 0.005 * n),
        "entropy_4": 8.0 + 2 * r + 0.1 * n,
        "zipf": 1.1 - 0.1 * r,
    }
    rows = [MetricRow(decoding, m, v, f"fp-{m}") for m, v in values.items()]
    if with_mauve:
        rows.append(MetricRow(decoding, "mauve", quality, "fp-mauve", MAUVE_WARNING))
        rows.append(MetricRow(decoding, "fed", 0.5 - quality / 2, "fp-fed"))
    return rows


def _likelihood_metrics(objective: str, seed: int) -> list:
    ppl, _, _ = PROFILES.get(objective, (30.0, 0.0, 0.0))
    ppl = ppl + 0.5 * _noise(objective, seed)
    values = {
        "ppl_test": ppl,
        "ppl_valid": ppl * 0.98,
        "bpb_test": math.log2(ppl) / 4.2,
        "rep": 0.4 + 0.01 * _noise(objective, seed, "rep"),
        "wrep": 0.3,
        "uniq": 9000 + 100 * _noise(objective, seed, "uniq"),
    }
    return [MetricRow("", m, v, f"fp-{m}") for m, v in values.items()]


def _write_samples(path: Path, objective: str, seed: int, decoding: str, planted: bool) -> None:
    lines = []
    for i in range(5):
        generation = f"{objective} says {i} at {decoding} (seed {seed})."
        if planted and i == 0:
            generation = f"Once upon a time {PLANTED} & they lived."
        lines.append(
            json.dumps(
                {
                    "index": i,
                    "prompt": f"Prompt number {i}: the cat",
                    "generation": generation,
                    "reference": f"the human continuation {i}.",
                }
            )
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_train_log(path: Path, objective: str, seed: int) -> None:
    ppl, _, _ = PROFILES.get(objective, (30.0, 0.0, 0.0))
    final = math.log(ppl)
    rows = ["step,epoch,train/loss,train/tokens,val/loss"]
    for step in range(0, 40, 2):
        loss = final + 4.0 * math.exp(-step / 10) + 0.05 * _noise(objective, seed, step)
        rows.append(f"{step},0,{loss:.4f},{(step + 1) * 4096},")
        if step % 10 == 8:
            rows.append(f"{step},0,,,{loss + 0.1:.4f}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def make_results(
    directory: Path,
    objectives: tuple[str, ...] = ("mle", "unlikelihood[alpha=0.5]"),
    seeds: tuple[int, ...] = (0, 1),
    decodings: tuple[str, ...] = ("top_p=0.9", "temperature=0.7"),
    with_mauve: bool = True,
    failed: bool = True,
    extra_info: list[MetricInfoRow] = (),
) -> Path:
    """Write a results directory; the planted `<script>` is in sample 0 of every objective's
    first seed at every decoding."""
    directory = Path(directory)
    db = ResultsDB(directory)
    spec = f"corpus: {CORPUS}\nobjectives: {list(objectives)}\nseeds: {list(seeds)}\n"
    db.start_run(RUN_ID, "specs/tiny.yaml", spec, "0123abcd", {"python": "3.11", "torch": "2.4"})
    db.record_metric_info(metric_info(list(DEFAULT_METRICS)) + list(extra_info))
    metric_names = {
        "ppl_test", "ppl_valid", "bpb_test", "rep", "wrep", "uniq", "distinct_4",
        "self_bleu_4", "seq_rep_4", "entropy_4", "zipf",
    }  # fmt: skip
    if with_mauve:
        metric_names |= {"mauve", "fed"}
    fingerprints = [_fingerprint(m) for m in sorted(metric_names)]
    for objective in objectives:
        for seed in seeds:
            cid = cell_id(objective, seed)
            name, _, settings = objective.partition("[")
            config = {
                "corpus": {"name": CORPUS},
                "model": {"n_layer": 2},
                "training": {"max_tokens": 100_000},
                "objective": {"name": name, "settings": {"raw": settings.rstrip("]")}},
                "seed": seed,
                "evaluation": {},
                "decodings": list(decodings),
            }
            db.register_cell(cid, config, CORPUS, objective, seed)
            assert db.claim(cid, "worker-1")
            cell_dir = directory / "cells" / cid
            cell_dir.mkdir(parents=True, exist_ok=True)
            _write_train_log(cell_dir / "metrics.csv", objective, seed)
            db.record_step(
                cid,
                "train",
                artifacts={
                    ("", "train_log"): f"cells/{cid}/metrics.csv",
                    ("", "checkpoint"): f"cells/{cid}/model.ckpt",
                },
                train_seconds=12.5 + seed,
            )
            db.record_step(cid, "likelihood", _likelihood_metrics(objective, seed), fingerprints)
            for decoding in decodings:
                name = decoding.replace("=", "").replace(",", "_")
                samples = cell_dir / f"samples_{name}.jsonl"
                _write_samples(samples, objective, seed, decoding, planted=seed == seeds[0])
                db.record_step(
                    cid,
                    f"decode:{decoding}",
                    _decode_metrics(objective, seed, decoding, with_mauve),
                    fingerprints,
                    artifacts={(decoding, "samples"): f"cells/{cid}/{samples.name}"},
                )
            db.finish_cell(cid, RUN_ID, 12.5 + seed)
    if failed:
        cid = cell_id(objectives[-1], 99)
        db.register_cell(cid, {"seed": 99}, CORPUS, objectives[-1], 99)
        assert db.claim(cid, "worker-1")
        # A partial metric from a failed cell must not reach the tables.
        db.record_step(cid, "likelihood", [MetricRow("", "ppl_test", 1.0, "fp-ppl_test")])
        db.fail_cell(cid, RUN_ID, FAILED_ERROR)
    db.finish_run(RUN_ID)
    db.close()
    return directory
