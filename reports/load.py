"""Reading a results directory into pandas: the database tables, and the artifact files the
database names (sample JSONL files, Lightning training logs). Nothing else is read."""

from __future__ import annotations

import json
import math
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DB_NAME = "results.sqlite"

_TABLES = ("runs", "cells", "steps", "metrics", "fingerprints", "artifacts")
# Tables added in schema version 2, empty when an older database lacks them.
OPTIONAL_TABLES = {
    "metric_info": [
        "metric", "metric_group", "display", "higher_is_better", "per_decoding", "format"
    ],
    "cell_provenance": ["cell_id", "key", "value"],
    "run_warnings": ["run_id", "category", "message", "count"],
    "replicates": ["cell_id", "decoding", "metric", "vals"],
    "cell_compute": ["cell_id", "key", "value"],
}  # fmt: skip


@dataclass
class Results:
    """The tables of one results directory, as read (nothing derived yet)."""

    directory: Path
    runs: pd.DataFrame
    cells: pd.DataFrame
    steps: pd.DataFrame
    metrics: pd.DataFrame
    fingerprints: pd.DataFrame
    artifacts: pd.DataFrame
    metric_info: pd.DataFrame
    cell_provenance: pd.DataFrame
    run_warnings: pd.DataFrame
    replicates: pd.DataFrame
    cell_compute: pd.DataFrame

    def artifact_path(self, cell_id: str, kind: str, decoding: str = "") -> Path | None:
        """The file of an artifact, resolved against the results directory; None if the
        database names none."""
        a = self.artifacts
        row = a[(a["cell_id"] == cell_id) & (a["kind"] == kind) & (a["decoding"] == decoding)]
        if row.empty:
            return None
        path = Path(row["path"].iloc[0])
        return path if path.is_absolute() else self.directory / path


def load_results(results_dir: str | Path) -> Results:
    """Read every table of `results_dir/results.sqlite` (read only)."""
    directory = Path(results_dir)
    path = directory / DB_NAME
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a results directory (no {DB_NAME})")
    with closing(sqlite3.connect(path, timeout=60.0)) as conn:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA busy_timeout = 60000")
        tables = {t: pd.read_sql_query(f"SELECT * FROM {t}", conn) for t in _TABLES}
        present = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        for table, columns in OPTIONAL_TABLES.items():
            tables[table] = (
                pd.read_sql_query(f"SELECT * FROM {table} ORDER BY rowid", conn)
                if table in present
                else pd.DataFrame(columns=columns)
            )
    tables["metrics"]["value"] = pd.to_numeric(tables["metrics"]["value"], errors="coerce")
    for column in ("decoding", "warning"):
        tables["metrics"][column] = tables["metrics"][column].astype(object)
    tables["metrics"]["decoding"] = tables["metrics"]["decoding"].fillna("")
    tables["artifacts"]["decoding"] = tables["artifacts"]["decoding"].fillna("")
    tables["replicates"]["decoding"] = tables["replicates"]["decoding"].astype(object).fillna("")
    return Results(directory=directory, **tables)


# decoding labels


def parse_decoding(label: str) -> dict[str, float | bool]:
    """`''` -> {}, `greedy` -> {'greedy': True}, `top_p=0.9,temperature=0.8` ->
    {'top_p': 0.9, 'temperature': 0.8}. Values that are not numbers are kept as text."""
    out: dict[str, float | bool | str] = {}
    for part in filter(None, (p.strip() for p in label.split(","))):
        if "=" not in part:
            out[part] = True
            continue
        key, value = (s.strip() for s in part.split("=", 1))
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = value
    return out


def decoding_family(label: str) -> str:
    """`greedy`, `temperature`, `top_p`, `top_k`, `combined` (several knobs) or `''`."""
    keys = list(parse_decoding(label))
    if not keys:
        return ""
    return keys[0] if len(keys) == 1 else "combined"


_FAMILY_ORDER = {"greedy": 0, "temperature": 1, "top_k": 2, "top_p": 3, "combined": 4}


def decoding_sort_key(label: str) -> tuple:
    """Greedy first, then temperature, top-k, top-p and combinations, each by value."""
    parsed = parse_decoding(label)
    values = tuple(v if isinstance(v, float) else math.inf for v in parsed.values())
    return (_FAMILY_ORDER.get(decoding_family(label), 5), values, label)


def sort_decodings(labels) -> list[str]:
    return sorted(set(labels), key=decoding_sort_key)


# artifact files


class DamagedFile(ValueError):
    """An artifact file that exists but cannot be read whole."""


def read_samples(path: Path) -> list[dict]:
    """The lines of a samples JSONL file; a line that is not a JSON object (a file cut short
    by an interrupted copy, say) raises `DamagedFile` naming the file and the line."""
    samples = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                item = None
            if not isinstance(item, dict):
                raise DamagedFile(f"{path}: line {number} is not a whole JSON record")
            samples.append(item)
    return samples


def read_train_log(path: Path) -> pd.DataFrame:
    """Lightning's `metrics.csv` as long form: step, tokens, split (`train`: teacher-forced NLL
    of the training batch, `val`: validation NLL, `objective`: the objective's own loss), loss.

    Validation rows usually lack `train/tokens`; their token count is interpolated from the
    training rows by step. Without a token column at all, `tokens` is NaN.
    """
    log = pd.read_csv(path)
    if "step" not in log.columns:
        log["step"] = range(len(log))
    log = log.sort_values("step", kind="stable")
    step = pd.to_numeric(log["step"], errors="coerce")
    tokens = pd.Series(np.nan, index=log.index)
    if "train/tokens" in log.columns:
        known = log[["step", "train/tokens"]].apply(pd.to_numeric, errors="coerce").dropna()
        known = known.drop_duplicates("step")
        if not known.empty:
            tokens[:] = np.interp(step, known["step"], known["train/tokens"])
    parts = []
    # "train": the teacher-forced NLL of the training batch, the same quantity for every
    # objective; "val": the validation NLL; "objective": the objective's own loss.
    train_column = "train/tf_nll" if "train/tf_nll" in log.columns else "train/nll"
    for split, column in (
        ("train", train_column),
        ("val", "val/loss"),
        ("objective", "train/loss"),
    ):
        if column in log.columns:
            part = pd.DataFrame(
                {
                    "step": step,
                    "tokens": tokens,
                    "split": split,
                    "loss": pd.to_numeric(log[column], errors="coerce"),
                }
            ).dropna(subset=["loss"])
            parts.append(part)
    if not parts:
        return pd.DataFrame(columns=["step", "tokens", "split", "loss"])
    return pd.concat(parts, ignore_index=True)


PROBE_COLUMNS = {
    "probe/kl_k1": "kl_k1",
    "probe/kl_k3": "kl_k3",
    "probe/proxy_reward": "proxy_reward",
    "probe/gold_reward": "gold_reward",
}


def read_probe_log(path: Path) -> pd.DataFrame:
    """The over-optimization probe's rows of a `metrics.csv`: step, KL (k1, k3), proxy and
    gold reward (NaN where the run has none); empty when the run logged no probe."""
    log = pd.read_csv(path)
    present = [c for c in PROBE_COLUMNS if c in log.columns]
    if not present or "step" not in log.columns:
        return pd.DataFrame(columns=["step", *PROBE_COLUMNS.values()])
    rows = log[["step", *present]].apply(pd.to_numeric, errors="coerce")
    rows = rows.dropna(subset=present, how="all").rename(columns=PROBE_COLUMNS)
    rows = rows.groupby("step", as_index=False).first()
    for column in PROBE_COLUMNS.values():
        if column not in rows:
            rows[column] = np.nan
    return rows.reset_index(drop=True)
