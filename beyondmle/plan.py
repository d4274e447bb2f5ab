"""`beyondmle run SPEC --dry-run`: the plan of a matrix, without training.

Lists the cells with their status in the results directory (if there is one), the decodings,
and per cell the training steps, tokens and FLOPs, and an estimated time. The estimate comes
from a short probe on this machine: each distinct objective variant trains a few real steps
(the real objective, model size, batch and precision) at three points of its budget — early,
middle and late, so warm starts and late phases such as sequence-level unlikelihood are seen —
one batch of perplexity windows is scored, and one batch of evaluation prompts is generated,
featurized and scored with MAUVE where the spec asks for it. Seeds share their variant's probe.
An objective that learns from preferences is probed with stand-ins of the same size for its
reference, reward model and pairs (the real ones do not exist before the run); a reward model's
cell is estimated from its pairs: two samples per pair, and Bradley-Terry steps as
forward-backward passes over both sides. Nothing is written to the results directory.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from beyondmle.api import (
    DEFAULT_FEATURIZER,
    CausalLM,
    Corpus,
    PreferencePairs,
    Resources,
    get_featurizer,
    get_preference_source,
)
from beyondmle.cells import Cell, expand, select_shard
from beyondmle.console import RunConsole, captured_stderr
from beyondmle.data import LanguageDataModule
from beyondmle.decoding import DecodingConfig, generate
from beyondmle.hf_model import build_model
from beyondmle.metrics.distributional import mauve
from beyondmle.metrics.likelihood import LIKELIHOOD_BATCH, score_stream, sliding_windows
from beyondmle.model import ModelConfig
from beyondmle.precision import choose_precision, describe_cpu
from beyondmle.reward import reward_model_from
from beyondmle.runner import corpus_key, load_corpora
from beyondmle.spec import Spec
from beyondmle.training import ObjectiveModule, build_trainer

PROBE_POINTS = (0.2, 0.6, 0.9)
PROBE_STEPS = 3  # per point; the first is a warm-up and is not timed


@dataclass(frozen=True)
class Probe:
    seconds_per_step: float
    flops_per_step: float


@dataclass(frozen=True)
class CellPlan:
    cell: Cell
    status: str
    steps: int
    tokens: int
    flops: float
    train_seconds: float
    eval_seconds: float


class _StepTimer(Callback):
    def __init__(self, steps: int) -> None:
        self.steps, self.times, self.flops = steps, [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.start = time.perf_counter()
        self.flops_before = float(module.flops_done)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self.start)
        self.flops.append(float(module.flops_done) - self.flops_before)
        if len(self.times) >= self.steps:
            trainer.should_stop = True


def stand_in_resources(model_config: ModelConfig, spec: Spec) -> Resources:
    """A reference, a reward model and pairs of the real sizes, for timing only."""
    reference = build_model(model_config).eval().requires_grad_(False)
    reward = reward_model_from(reference).eval().requires_grad_(False)
    e = spec.evaluation
    n = 256
    V = model_config.vocab_size
    pairs = PreferencePairs(
        torch.randint(4, V, (n, e.prompt_tokens)),
        torch.randint(4, V, (n, e.continuation_tokens)),
        torch.randint(4, V, (n, e.continuation_tokens)),
    )
    return Resources(reference, reward.score_all, reward, pairs, None)


def probe_training(
    cell: Cell, corpus: Corpus, precision: str, resources: Resources | None = None
) -> Probe:
    """Seconds and FLOPs per training step of a cell's variant, at PROBE_POINTS."""
    model_config = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, **cell.model)
    training = replace(cell.training, val_every_steps=10**9, checkpoint_every_steps=10**9)
    data = LanguageDataModule(corpus, model_config.block_size, training.batch_size)
    times, flops = [], []
    torch.manual_seed(cell.seed)
    for point in PROBE_POINTS:
        module = ObjectiveModule(
            asdict(model_config),
            cell.objective.name,
            cell.objective.settings,
            asdict(training),
            asdict(corpus.tokenizer.special),
            resources=resources,
        )
        if training.by_flops:
            module.flops_done.fill_(point * training.budget_flops)
        else:
            module.steps_done.fill_(int(point * module.total_steps))
        timer = _StepTimer(PROBE_STEPS)
        with tempfile.TemporaryDirectory() as out:
            trainer = build_trainer(
                training, Path(out), module.objective.manual_optimization, [timer], False, precision
            )
            trainer.logger = None
            trainer.fit(module, data)
        times += timer.times[1:]
        flops += timer.flops[1:]
    return Probe(float(np.mean(times)), float(np.mean(flops)))


def probe_likelihood(spec: Spec, corpus: Corpus, model: CausalLM) -> float:
    """Seconds of the metrics of the model itself, paid once per cell: the sliding-window pass
    over each perplexity split (the test split's also serves rep / wrep), timed on one batch of
    windows, and the references' NLL under their prompts."""
    e = spec.evaluation
    block = model.info.context_length
    stride = e.eval_stride or max(1, block // 2)
    splits = set(e.perplexity_splits) if "perplexity" in e.metrics else set()
    if "repetition" in e.metrics:
        splits.add("test")
    windows = sum(
        len(sliding_windows(len(corpus.stream(split)), block, stride)) for split in splits
    )
    positions = windows * block
    if "continuation" in e.metrics:
        positions += e.num_samples * (e.prompt_tokens + e.continuation_tokens)
    if not positions:
        return 0.0
    tokens = torch.randint(4, corpus.tokenizer.vocab_size, (LIKELIHOOD_BATCH * block + 1,))
    start = time.perf_counter()
    score_stream(model, tokens, block, stride=block, batch_size=LIKELIHOOD_BATCH, predictions=True)
    return (time.perf_counter() - start) * positions / (LIKELIHOOD_BATCH * block)


def probe_evaluation(
    spec: Spec, cell: Cell, corpus: Corpus, console: RunConsole | None = None
) -> float:
    """Seconds to evaluate a cell: the model's own metrics once (`probe_likelihood`), then for
    each decoding its continuations generated, featurized and scored."""
    model = build_model(ModelConfig(vocab_size=corpus.tokenizer.vocab_size, **cell.model)).eval()
    return probe_likelihood(spec, corpus, model) + len(spec.decodings) * probe_decoding(
        spec, corpus, model, console
    )


def probe_decoding(
    spec: Spec, corpus: Corpus, model: CausalLM, console: RunConsole | None = None
) -> float:
    """Seconds to generate, featurize and score one decoding's continuations."""
    evaluation = spec.evaluation
    batch = min(evaluation.batch_size, evaluation.num_samples)
    prompts = torch.randint(4, corpus.tokenizer.vocab_size, (batch, evaluation.prompt_tokens))
    start = time.perf_counter()
    rows = generate(model, prompts, evaluation.continuation_tokens, DecodingConfig())
    seconds = (time.perf_counter() - start) * evaluation.num_samples / batch
    if {"mauve", "fed"} & set(evaluation.metrics):
        featurizer = get_featurizer(
            evaluation.featurizer or corpus.featurizer or DEFAULT_FEATURIZER
        )
        texts = [corpus.tokenizer.decode(r) for r in rows]
        if hasattr(featurizer, "fit"):  # a real run fits on as many human texts
            featurizer.fit(texts)
        featurizer.encode(texts[:2])  # load the model outside the timing
        start = time.perf_counter()
        featurizer.encode(texts)
        seconds += (time.perf_counter() - start) * evaluation.num_samples / batch
        if "mauve" in evaluation.metrics:
            rng = np.random.default_rng(0)
            p = rng.normal(size=(evaluation.num_samples, featurizer.dim))
            q = rng.normal(size=(evaluation.num_samples, featurizer.dim))
            start = time.perf_counter()
            with captured_stderr(console):  # faiss's k-means warnings, as in a real run
                mauve(p, q, seeds=tuple(evaluation.mauve_seeds), scaling=evaluation.mauve_scaling)
            seconds += time.perf_counter() - start
    return seconds


def existing_status(out_dir: Path) -> dict[str, str]:
    """Cell statuses of an existing results directory, read only; empty if there is none."""
    path = out_dir / "results.sqlite"
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT id, status FROM cells"))
    except sqlite3.DatabaseError:
        return {}
    finally:
        conn.close()


def make_plan(
    spec: Spec,
    out_dir: Path,
    shard: tuple[int, int] = (0, 1),
    report: Callable[[str], None] = print,
    console: RunConsole | None = None,
) -> list[CellPlan]:
    cells = select_shard(expand(spec), shard)
    status = existing_status(out_dir)
    corpora = load_corpora(spec)
    probes: dict[str, Probe] = {}
    evals: dict[str, float] = {}
    plans = []
    for cell in cells:
        corpus = corpora[corpus_key(cell.corpus)]
        if cell.role == "reward":
            plans.append(reward_plan(spec, cell, corpus, status, probes, report))
            continue
        key = repr((cell.corpus, cell.model))
        if key not in evals:
            evals[key] = probe_evaluation(spec, cell, corpus, console)
        if cell.role == "pretrained":  # evaluated as loaded, trained nothing
            plans.append(CellPlan(cell, status.get(cell.id, "new"), 0, 0, 0.0, 0.0, evals[key]))
            continue
        variant = repr((cell.corpus, cell.model, cell.training, cell.objective))
        precision = choose_precision(cell.training.precision, cell.training.accelerator)
        if variant not in probes:
            report(f"probing {cell.describe().rsplit(' / seed', 1)[0]} ...")
            resources = None
            if cell.base is not None and (cell.reward or cell.scorer) is not None:
                model_config = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, **cell.model)
                resources = stand_in_resources(model_config, spec)
            probes[variant] = probe_training(cell, corpus, precision.precision, resources)
        probe = probes[variant]
        block = cell.model.get("block_size", ModelConfig.block_size)
        steps = cell.training.total_steps(block)
        if cell.training.by_flops:  # as many steps as the FLOP budget buys
            steps = max(1, round(cell.training.budget_flops / probe.flops_per_step))
        tokens = steps * cell.training.tokens_per_step(block)
        plans.append(
            CellPlan(
                cell,
                status.get(cell.id, "new"),
                steps,
                tokens,
                probe.flops_per_step * steps,
                probe.seconds_per_step * steps,
                evals[key],
            )
        )
    return plans


def reward_plan(
    spec: Spec, cell: Cell, corpus: Corpus, status: dict, probes: dict, report
) -> CellPlan:
    """A reward cell's estimate: sampling both sides of every pair, then Bradley-Terry steps,
    timed as MLE steps of the base's size over the same number of token positions."""
    settings = get_preference_source(cell.objective.name).Settings(**cell.objective.settings)
    e = spec.evaluation
    width = e.prompt_tokens + e.continuation_tokens
    pairs = settings.pairs + settings.heldout_pairs
    model_config = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, **cell.model)
    mle = Cell(cell.corpus, cell.model, cell.training, cell.base.objective, cell.seed)
    key = repr((mle.corpus, mle.model, mle.training, mle.objective))
    if key not in probes:
        report(f"probing {cell.corpus.name} / mle for the reward model ...")
        precision = choose_precision(cell.training.precision, cell.training.accelerator)
        probes[key] = probe_training(mle, corpus, precision.precision)
    probe = probes[key]
    positions = 2 * settings.pairs * width * settings.reward_epochs
    step_positions = cell.training.tokens_per_step(model_config.block_size)
    model = build_model(model_config).eval()
    prompts = torch.randint(4, model_config.vocab_size, (64, e.prompt_tokens))
    start = time.perf_counter()
    generate(model, prompts, e.continuation_tokens, DecodingConfig())
    sampling = (time.perf_counter() - start) * 2 * pairs / 64
    steps = max(1, -(-settings.pairs // settings.reward_batch_size)) * settings.reward_epochs
    return CellPlan(
        cell,
        status.get(cell.id, "new"),
        steps,
        0,
        probe.flops_per_step * positions / step_positions,
        sampling + probe.seconds_per_step * positions / step_positions,
        0.0,
    )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def print_plan(spec: Spec, plans: list[CellPlan], out_dir: Path) -> None:
    precision = choose_precision(spec.training.precision, spec.training.accelerator)
    todo = [p for p in plans if p.status != "done"]
    print(f"plan of {spec.path} into {out_dir}")
    print(f"machine: {describe_cpu()}; precision {precision.precision} ({precision.reason})")
    print(
        f"cells: {len(plans)} ({len(plans) - len(todo)} done, {len(todo)} to run); decodings: "
        + ", ".join(d.label for d in spec.decodings)
    )
    header = (
        f"{'cell':12}  {'objective':28} {'seed':>4}  {'status':7} {'steps':>6} "
        f"{'tokens':>10} {'train FLOPs':>11} {'train':>8} {'evaluation':>10}"
    )
    print(header)
    for p in plans:
        print(
            f"{p.cell.id:12}  {p.cell.objective.label[:28]:28} {p.cell.seed:>4}  {p.status:7} "
            f"{p.steps:>6} {p.tokens:>10,} {p.flops:>11.3g} {_minutes(p.train_seconds):>8} "
            f"{_minutes(p.eval_seconds):>10}"
        )
    train = sum(p.train_seconds for p in todo)
    evaluation = sum(p.eval_seconds for p in todo)
    print(
        f"estimated time for the {len(todo)} cells to run: {_minutes(train + evaluation)} "
        f"(training {_minutes(train)}, evaluation {_minutes(evaluation)}), from a probe of "
        f"{PROBE_STEPS - 1} timed steps at {len(PROBE_POINTS)} points of each budget on this "
        "machine"
    )
