"""`beyondmle new-objective NAME`: write a documented objective module and its test.

The skeleton is a working objective (next-token NLL plus a placeholder term with weight 0),
so the generated test passes at once; replace the loss with yours and tighten the test. In
this repository's `objectives/` folder it also declares the objective's entry point in
`pyproject.toml`, the one way every objective is found.
"""

from __future__ import annotations

import keyword
from pathlib import Path

MODULE_TEMPLATE = '''"""{title}: <one line on what the objective does and why>.

<Cite the paper you follow: author, year, section. Say what it changes relative to MLE, and
which of its choices this implementation makes.>
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from beyondmle.api import (
    CausalLM,
    Objective,
    ObjectiveOutput,
    ObjectiveSettings,
    TrainingState,
    register_objective,
    setting,
)


@dataclass(frozen=True)
class {cls}Settings(ObjectiveSettings):
    """Every field is a key of the spec's `[[objective]]` table, and can be swept in
    `[objective.sweep]`. Declare each range with `setting(...)`: a bad value then fails when
    the spec is checked, before anything trains, with every problem of the table listed."""

    weight: float = setting(0.0, ge=0.0)


@register_objective("{name}")
class {cls}(Objective):
    """<What the loss is, in one sentence, with the citation.>"""

    Settings = {cls}Settings
    # Set True (and implement manual_step) if the objective updates modules of its own, such as
    # a discriminator, with optimizers returned by configure_optimizers.
    manual_optimization = False
    # Set True if the objective starts from an MLE-trained model; the trainer then runs the
    # `mle` objective for the first `warm_start_fraction` of the token budget.
    warm_start = False

    def loss(self, model: CausalLM, batch: torch.Tensor, state: TrainingState) -> ObjectiveOutput:
        # batch: (B, T + 1) token ids; inputs batch[:, :-1], next-token targets batch[:, 1:].
        # The model is reached only through its interface (beyondmle.api.CausalLM).
        hidden = model.hidden_states(batch[:, :-1])  # (B, T, C)
        nll = model.next_token_loss(hidden, batch[:, 1:])  # fused: no (B, T, V) logits
        extra = model.logits(hidden).float().logsumexp(-1).mean()  # replace with your term
        loss = nll + self.settings.weight * extra
        return ObjectiveOutput(loss=loss, logs={{"nll": nll.detach(), "extra": extra.detach()}})
'''

TEST_TEMPLATE = '''"""Tests of the `{name}` objective: pin down its loss, not only that it runs.

Expected values come from an independent computation (here a hand-written cross-entropy on
the model's logits), never from the objective's own code."""

import torch
import torch.nn.functional as F

from beyondmle.api import SpecialTokens, TrainingState, get_objective
from beyondmle.model import GPT, ModelConfig
from {package}.{name} import {cls}

CONFIG = ModelConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
SPECIAL = SpecialTokens(eos=0, mask=1, sep=2, pad=3)
STATE = TrainingState(step=0, progress=0.0)


def make(**settings) -> {cls}:
    return {cls}({cls}.Settings(**settings), GPT(CONFIG).info, SPECIAL)


def test_{name}_is_registered() -> None:
    assert get_objective("{name}") is {cls}


def test_{name}_with_zero_weight_is_the_cross_entropy_of_the_next_token() -> None:
    torch.manual_seed(0)
    model = GPT(CONFIG)
    batch = torch.randint(4, 32, (2, 17))
    logits = model(batch[:, :-1])  # (2, 16, 32)
    expected = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    ours = make(weight=0.0).loss(model, batch, STATE).loss
    assert torch.allclose(ours, expected, atol=1e-5)


def test_{name}_training_steps_stay_finite() -> None:
    torch.manual_seed(0)
    model = GPT(CONFIG)
    objective = make(weight=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(3):
        batch = torch.randint(4, 32, (4, 17))
        out = objective.loss(model, batch, TrainingState(step=step, progress=step / 3))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        assert torch.isfinite(out.loss)
'''

ENTRY_POINTS = '[project.entry-points."beyondmle.objectives"]'


def _package_of(directory: Path) -> str:
    """The dotted package a module in `directory` imports as: `beyondmle.objectives` for this
    repository's `objectives/` folder, else the folders up to the first one without an
    `__init__.py`."""
    import beyondmle.objectives as builtin

    if directory.resolve() in {Path(p).resolve() for p in builtin.__path__}:
        return "beyondmle.objectives"
    parts, current = [], directory.resolve()
    while (current / "__init__.py").exists():
        parts.append(current.name)
        current = current.parent
    if not parts:
        raise ValueError(f"{directory} is not a Python package (it has no __init__.py)")
    return ".".join(reversed(parts))


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def write_skeleton(name: str, module_dir: Path, tests_dir: Path) -> list[Path]:
    """Write `<module_dir>/<name>.py` and `<tests_dir>/test_objective_<name>.py`; refuse to
    overwrite anything or to use a name that is not a Python identifier."""
    if not name.isidentifier() or keyword.iskeyword(name) or name != name.lower():
        raise ValueError(f"objective name must be a lowercase Python identifier, got {name!r}")
    module = module_dir / f"{name}.py"
    _package_of(module_dir)
    test = tests_dir / f"test_objective_{name}.py"
    for path in (module, test):
        if path.exists():
            raise FileExistsError(f"{path} already exists; choose another name")
    module_dir.mkdir(parents=True, exist_ok=True)
    tests_dir.mkdir(parents=True, exist_ok=True)
    fields = {
        "name": name,
        "cls": _class_name(name),
        "title": name.replace("_", " ").title(),
        "package": _package_of(module_dir),
    }
    module.write_text(MODULE_TEMPLATE.format(**fields))
    test.write_text(TEST_TEMPLATE.format(**fields))
    written = [module, test]
    if fields["package"] == "beyondmle.objectives":
        pyproject = module_dir.resolve().parent / "pyproject.toml"
        if _declare_entry_point(pyproject, name, f"beyondmle.objectives.{name}:{fields['cls']}"):
            written.append(pyproject)
    return written


def _declare_entry_point(pyproject: Path, name: str, target: str) -> bool:
    """Add `name = "target"` to this repository's objective entry points, so the registry finds
    the new objective once the project is re-installed (`pip install -e .`)."""
    if not pyproject.is_file():
        return False
    lines = pyproject.read_text().splitlines()
    if ENTRY_POINTS not in lines:
        return False
    end = lines.index(ENTRY_POINTS) + 1
    while end < len(lines) and lines[end].strip() and not lines[end].startswith("["):
        end += 1
    lines.insert(end, f'{name} = "{target}"')
    pyproject.write_text("\n".join(lines) + "\n")
    return True
