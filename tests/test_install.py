"""A non-editable install ships the top-level folders `objectives/` and `reports/` as
`beyondmle.objectives` and `beyondmle.reports` (the package-dir mapping in pyproject.toml): no
generic top-level name lands in site-packages, and every built-in plugin is found through its
entry point from the installed copy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]

BUILTIN = {
    "objectives": {
        "mle",
        "scheduled_sampling",
        "adversarial",
        "denoising",
        "unlikelihood",
        "rloo",
        "ppo",
        "dpo",
    },
    "corpora": {"oracle", "ptb", "text"},
    "metrics": {
        "perplexity",
        "continuation",
        "distinct",
        "self_bleu",
        "seq_rep",
        "entropy",
        "zipf",
        "mauve",
        "fed",
        "repetition",
        "oracle_quality",
        "oracle_coverage",
        "exposure_bias",
        "modes",
        "reward",
        "policy_kl",
        "reward_model",
    },
    "featurizers": {"minilm", "gpt2-large"},
}

WHERE = """
import importlib.metadata, json
import beyondmle, beyondmle.objectives, beyondmle.objectives.mle, beyondmle.reports
dist = importlib.metadata.distribution("beyondmle")
print(json.dumps({
    "beyondmle": beyondmle.__file__,
    "objectives": beyondmle.objectives.__file__,
    "mle": beyondmle.objectives.mle.__file__,
    "reports": beyondmle.reports.__file__,
    "dist": str(dist.locate_file("")),
    "direct_url": dist.read_text("direct_url.json"),
}))
"""


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout


def _build_litter() -> dict[str, int]:
    """What building in place would leave in the checkout (build/, dist/, *.egg-info), each with
    the newest modification time under it: the editable install's beyondmle.egg-info may exist
    already, and a build would rewrite it. (Not the whole `git status`: other work may change
    the checkout while this test runs.)"""
    litter = {}
    for path in [REPO / "build", REPO / "dist", *REPO.glob("*.egg-info")]:
        if path.exists():
            litter[path.name] = max(p.stat().st_mtime_ns for p in [path, *path.rglob("*")])
    return litter


def _copy_source_tree(into: Path) -> None:
    """The checkout's files as git sees them (tracked, plus untracked files not ignored), so the
    build's build/ and *.egg-info land in the copy, never in the repository."""
    listed = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is not shipped
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)


def _listed(stdout: str) -> dict[str, set[str]]:
    """`beyondmle list` output as {section: {names}}."""
    sections: dict[str, set[str]] = {}
    current = None
    for line in stdout.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1]
            sections[current] = set()
        elif line.startswith("  ") and current is not None:
            sections[current].add(line.split()[0])
    return sections


@pytest.mark.slow
def test_non_editable_install_ships_objectives_and_reports_only_under_beyondmle(
    tmp_path: Path,
) -> None:
    if not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to know which files are the source tree")
    start = time.monotonic()
    before = _build_litter()
    source = tmp_path / "source"
    _copy_source_tree(source)

    # --without-pip: the pip and setuptools that ensurepip would seed into the venv are older
    # than the system's (setuptools 65 has no bdist_wheel without `wheel`) and would shadow
    # them; the system's pip, run by the venv's interpreter, installs into the venv.
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    # Outside the repository, with nothing of it on sys.path: no PYTHONPATH, and a working
    # directory (sys.path[0] for `python -c`) that holds no objectives/ or reports/.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            args, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
        )

    for name in ("objectives", "reports"):
        imported = run(str(python), "-c", f"import {name}")
        assert imported.returncode != 0, f"`import {name}` worked after a non-editable install"
        assert f"ModuleNotFoundError: No module named '{name}'" in imported.stderr

    # The system site-packages (visible through --system-site-packages) holds an editable
    # install of this project: a `__editable__` .pth whose finder maps beyondmle,
    # beyondmle.objectives and beyondmle.reports to the checkout. The venv's copy still wins:
    # site puts the venv's site-packages on sys.path before the system's, and the editable
    # finder is appended to sys.meta_path, after the standard PathFinder, so it is only asked
    # for names PathFinder cannot find on sys.path; PathFinder finds beyondmle in the venv,
    # and its subpackages are then looked up in that package's __path__. importlib.metadata
    # likewise keeps the first distribution of a name on sys.path, so the entry points come
    # from the venv's (non-editable) dist-info. The finder never maps the bare name
    # `objectives`, so the checks above hold with it installed.
    where = run(str(python), "-c", WHERE)
    assert where.returncode == 0, where.stderr
    paths = json.loads(where.stdout)
    site_packages = venv.resolve() / "lib"
    for key in ("beyondmle", "objectives", "mle", "reports", "dist"):
        path = Path(paths[key]).resolve()
        assert path.is_relative_to(site_packages), f"{key} from {path}, not the venv"
        assert "site-packages" in path.parts, f"{key} from {path}"
        assert not path.is_relative_to(REPO.resolve()), f"{key} from the repository: {path}"
        assert not path.is_relative_to(source.resolve()), f"{key} from the source copy: {path}"
    assert Path(paths["objectives"]).parent.name == "objectives"
    assert Path(paths["objectives"]).parent.parent.name == "beyondmle"
    assert Path(paths["reports"]).parent.parent.name == "beyondmle"
    assert not json.loads(paths["direct_url"]).get("dir_info", {}).get("editable", False)

    listed = run(str(venv / "bin" / "beyondmle"), "list")
    assert listed.returncode == 0, listed.stderr
    assert "PluginWarning" not in listed.stderr, listed.stderr
    sections = _listed(listed.stdout)
    for kind, names in BUILTIN.items():
        assert names <= sections.get(kind, set()), (kind, sections.get(kind))

    assert _build_litter() == before, "the install built in the repository"
    elapsed = time.monotonic() - start
    assert elapsed < 60, f"the install check took {elapsed:.0f} s"
