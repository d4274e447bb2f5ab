"""docs/adding-an-objective.md, followed step by step: write the skeleton into a separate
package, declare the entry point, pip-install the package, and run the new objective in a
smoke-sized matrix beside MLE, without touching this repository."""

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from beyondmle.cli import main

PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "beyondmle-demo-plugin"
version = "0.0.1"

[project.entry-points."beyondmle.objectives"]
word_noise = "demo_objectives.word_noise:WordNoise"

[tool.setuptools]
packages = ["demo_objectives"]
"""

SPEC = """
[benchmark]
name = "plugin"
seeds = [0]
[[corpus]]
name = "ptb"
[model]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 32
[training]
budget_tokens = 1024
batch_size = 4
precision = "32-true"
[[objective]]
name = "mle"
[[objective]]
name = "word_noise"
weight = 0.1
[decoding]
greedy = true
[evaluation]
prompt_tokens = 8
continuation_tokens = 8
num_samples = 8
self_bleu_samples = 8
metrics = ["perplexity", "distinct", "seq_rep"]
"""


def _run(args: list[str], env_path: Path, cwd: Path) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "PYTHONPATH": str(env_path)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_objective_from_a_separate_package_runs_in_a_matrix(tmp_path: Path) -> None:
    package = tmp_path / "plugin"
    (package / "demo_objectives").mkdir(parents=True)
    (package / "demo_objectives" / "__init__.py").write_text("")
    (package / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    assert (
        main(
            [
                "new-objective",
                "word_noise",
                "--dir",
                str(package / "demo_objectives"),
                "--tests",
                str(package / "tests"),
            ]
        )
        == 0
    )

    site = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(package),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr

    listed = _run([sys.executable, "-m", "beyondmle.cli", "list"], site, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "word_noise" in listed.stdout

    tests = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package / "tests")],
        site,
        tmp_path,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr

    spec = tmp_path / "plugin.toml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    run = _run(
        [sys.executable, "-m", "beyondmle.cli", "run", str(spec), "--out", str(out), "--no-report"],
        site,
        tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    with sqlite3.connect(out / "results.sqlite") as db:
        cells = dict(db.execute("SELECT objective, status FROM cells"))
        metrics = db.execute(
            "SELECT COUNT(*) FROM metrics WHERE objective = 'word_noise' AND metric = 'ppl_test'"
        ).fetchone()[0]
    assert cells == {"mle": "done", "word_noise": "done"}
    assert metrics == 1
