"""Imports run one way (docs/architecture.md): leaves → contracts → training, evaluation and
the plugins → the matrix → the CLI; the report reads only the results schema; nothing imports a
plugin's module but the registry (through its entry point).

An `ast` walk of every module: each import of a `beyondmle` module, at any depth of the file
(imports inside functions count), must go down or across the layers, never up."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folder -> the package it installs as (pyproject.toml's package-dir).
PACKAGES = {
    "beyondmle": "beyondmle",
    "objectives": "beyondmle.objectives",
    "reports": "beyondmle.reports",
}

LEAF, CONTRACT, SCIENCE, MATRIX, CLI = range(5)
# Longest prefix wins. A module missing here fails the test: place it before it lands.
LAYERS = {
    "beyondmle": LEAF,  # the package's __init__ holds nothing
    "beyondmle.model": LEAF,
    "beyondmle.hf_model": LEAF,
    "beyondmle.tokenization": LEAF,
    "beyondmle.decoding": LEAF,
    "beyondmle.fused_loss": LEAF,
    "beyondmle.settings": LEAF,
    "beyondmle.paths": LEAF,
    "beyondmle.feature_cache": LEAF,
    "beyondmle.precision": LEAF,
    "beyondmle.rl": LEAF,
    "beyondmle.metrics": LEAF,  # the public functions; plain inputs
    "beyondmle.api": CONTRACT,
    "beyondmle.data": SCIENCE,
    "beyondmle.training": SCIENCE,
    "beyondmle.evaluation": SCIENCE,
    "beyondmle.corpora": SCIENCE,
    "beyondmle.metrics.builtin": SCIENCE,
    "beyondmle.metrics.featurizers": SCIENCE,
    "beyondmle.metrics.oracle": SCIENCE,
    "beyondmle.oracles": SCIENCE,
    "beyondmle.oracle_corpus": SCIENCE,
    "beyondmle.metrics.preferences": SCIENCE,
    "beyondmle.preferences": SCIENCE,
    "beyondmle.reward": SCIENCE,
    "beyondmle.objectives": SCIENCE,
    "beyondmle.spec": MATRIX,
    "beyondmle.cells": MATRIX,
    "beyondmle.results": MATRIX,
    "beyondmle.runner": MATRIX,
    "beyondmle.console": MATRIX,
    "beyondmle.plan": MATRIX,
    "beyondmle.launch": MATRIX,
    "beyondmle.cli": CLI,
    "beyondmle.skeleton": CLI,
    "beyondmle.reports": CLI,  # beside the CLI; see REPORT below
}
# Plugin modules: found through their entry points only, so no other module imports them.
PLUGINS = (
    "beyondmle.corpora",
    "beyondmle.metrics.builtin",
    "beyondmle.metrics.featurizers",
    "beyondmle.metrics.oracle",
    "beyondmle.oracle_corpus",
    "beyondmle.metrics.preferences",
    "beyondmle.preferences",
    "beyondmle.objectives.",
)
REPORT = "beyondmle.reports"


def module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [*PACKAGES[folder].split("."), *rest]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for folder in PACKAGES
        for path in sorted((ROOT / folder).rglob("*.py"))
    }


def imported(name: str, path: Path) -> set[str]:
    """The beyondmle modules that a module imports, absolute or relative, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            out.add(base)
            out |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    known = modules()
    return {m for m in out if m in known and m != name} | {
        m for m in out if m.split(".")[0] in ("objectives", "reports")
    }


def layer(name: str) -> int:
    matches = [prefix for prefix in LAYERS if name == prefix or name.startswith(prefix + ".")]
    if not matches:
        raise KeyError(name)
    return LAYERS[max(matches, key=len)]


def plugin_group(name: str) -> str | None:
    """The plugin module or package that `name` belongs to, if any."""
    for p in PLUGINS:
        if name == p or (p.endswith(".") and name.startswith(p)):
            return p
    return None


ALL = modules()


def test_every_module_has_a_layer() -> None:
    """Placed by name, not by falling back on the package's root."""
    unplaced = [
        name
        for name in ALL
        if name != "beyondmle"
        and not any(p != "beyondmle" and (name == p or name.startswith(p + ".")) for p in LAYERS)
    ]
    assert unplaced == []


@pytest.mark.parametrize("name", sorted(ALL))
def test_imports_run_down_the_layers(name: str) -> None:
    upward = [
        (target, layer(target))
        for target in imported(name, ALL[name])
        if not target.startswith(("objectives", "reports")) and layer(target) > layer(name)
    ]
    assert upward == [], f"{name} (layer {layer(name)}) imports a higher layer"


@pytest.mark.parametrize("name", sorted(ALL))
def test_nothing_imports_the_generic_top_level_names(name: str) -> None:
    """`objectives` and `reports` install under beyondmle.; a top-level import of them works
    only from a checkout, never after `pip install`."""
    bare = [t for t in imported(name, ALL[name]) if t.split(".")[0] in ("objectives", "reports")]
    assert bare == []


@pytest.mark.parametrize("name", sorted(ALL))
def test_only_the_registry_reaches_a_plugin(name: str) -> None:
    """Objectives, corpora, metrics and featurizers are found through entry points, so the
    core never names one; a plugin package's own modules may import each other."""
    own = plugin_group(name)
    reached = [t for t in imported(name, ALL[name]) if plugin_group(t) and plugin_group(t) != own]
    assert reached == [], f"{name} imports plugin modules directly"


@pytest.mark.parametrize("name", sorted(n for n in ALL if n.startswith(REPORT)))
def test_the_report_reads_only_the_results_schema(name: str) -> None:
    """The report imports nothing of beyondmle but itself: what it knows of metrics comes
    from the database's `metric_info` table."""
    outside = [t for t in imported(name, ALL[name]) if not t.startswith(REPORT)]
    assert outside == []


def test_the_walk_sees_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a leaf that imports the runner inside a function is caught."""
    source = tmp_path / "model.py"
    source.write_text("import torch\n\ndef f():\n    from beyondmle.runner import run_spec\n")
    assert "beyondmle.runner" in imported("beyondmle.model", source)
    assert layer("beyondmle.runner") > layer("beyondmle.model")


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    source = tmp_path / "x.py"
    source.write_text("from . import load\nfrom ..api import registry\n")
    targets = imported("beyondmle.reports.builder", source)
    assert {"beyondmle.reports.load", "beyondmle.api.registry"} <= targets
