"""The `beyondmle` command: run a benchmark spec, list plugins, generate, evaluate, report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from beyondmle.api import CorpusError, SettingsError, UnknownPluginError


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N, e.g. 0/4, got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"expected 0 <= I < N, got {text!r}")
    return index, count


def cmd_run(args: argparse.Namespace) -> int:
    from beyondmle.runner import run_spec
    from beyondmle.spec import parse_spec

    spec = parse_spec(args.spec)
    out = Path(args.out or Path("runs") / spec.name)
    if args.dry_run:
        from beyondmle.console import RunConsole
        from beyondmle.plan import make_plan, print_plan

        console = RunConsole(0, _verbosity(args))
        with console.capture():
            plans = make_plan(spec, out, args.shard, lambda m: print(m, file=sys.stderr), console)
        print_plan(spec, plans, out)
        return 0
    from beyondmle.launch import choose_launcher, launch

    launcher = choose_launcher(spec, args.launcher, args.shard)
    if launcher:
        overrides = {"max_parallel": args.max_parallel} if args.max_parallel else {}
        summary = launch(spec, out, launcher, overrides, args.retry_failed, _verbosity(args))
    else:
        summary = run_spec(
            spec, out, shard=args.shard, retry_failed=args.retry_failed, verbosity=_verbosity(args)
        )
    print(
        f"{len(summary.done)} cells done, {len(summary.failed)} failed, "
        f"{len(summary.skipped)} skipped; results in {out / 'results.sqlite'}"
    )
    for cell_id, reason in summary.failed.items():
        print(f"  failed {cell_id}: {reason.splitlines()[-1]}")
    if not args.no_report:
        _build_report([out], out)
    return 1 if summary.failed else 0


def cmd_run_cell(args: argparse.Namespace) -> int:
    from beyondmle.launch import run_single_cell
    from beyondmle.spec import parse_spec

    spec = parse_spec(args.spec)
    out = Path(args.out or Path("runs") / spec.name)
    status = run_single_cell(spec, args.cell, out, args.retry_failed, _verbosity(args))
    print(f"cell {args.cell}: {status}")
    return 0 if status in ("done", "trained") else 1


def cmd_merge(args: argparse.Namespace) -> int:
    from beyondmle.launch import RESULT_FILE
    from beyondmle.results import merge, merge_file

    into = Path(args.into or args.dirs[0])
    db = merge(into, [Path(d) for d in args.dirs if Path(d).resolve() != into.resolve()])
    try:
        files = sorted((into / "cells").glob(f"*/{RESULT_FILE}"))
        for path in files:  # cell result files written by run-cell, on any machine
            merge_file(db, path)
    finally:
        db.close()
    print(f"merged {len(args.dirs)} directories and {len(files)} cell result files into {into}")
    return 0


def _verbosity(args: argparse.Namespace) -> int:
    from beyondmle.console import NORMAL, QUIET, VERBOSE

    return QUIET if args.quiet else VERBOSE if args.verbose else NORMAL


def _build_report(dirs: list[Path], into: Path) -> None:
    from beyondmle.reports import build_report
    from beyondmle.results import merge

    merge(into, [d for d in dirs if d.resolve() != into.resolve()]).close()
    index = build_report(into)
    print(f"report: {index}")


def cmd_report(args: argparse.Namespace) -> int:
    dirs = [Path(d) for d in args.dirs]
    _build_report(dirs, Path(args.into) if args.into else dirs[0])
    return 0


def _first_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def cmd_list(args: argparse.Namespace) -> int:
    from beyondmle.api import (
        CORPORA,
        FEATURIZERS,
        METRICS,
        OBJECTIVES,
        PREFERENCE_SOURCES,
        REWARD_FUNCTIONS,
    )

    print("objectives:")
    for name, cls in OBJECTIVES.items().items():
        print(f"  {name:20s} {_first_line(cls)}")
    print("corpora:")
    for name, cls in CORPORA.items().items():
        print(f"  {name:20s} {_first_line(cls)}")
    print("metrics:")
    for name, metric in METRICS.items().items():
        scope = "per decoding" if metric.per_decoding else "per model"
        values = ", ".join(o.name for o in metric.outputs)
        print(f"  {name:20s} {scope}, needs {', '.join(sorted(metric.needs))}: {values}")
    print("featurizers:")
    for name, cls in FEATURIZERS.items().items():
        print(f"  {name:20s} {_first_line(cls)}")
    print("preference sources:")
    for name, cls in PREFERENCE_SOURCES.items().items():
        print(f"  {name:20s} {_first_line(cls)}")
    print("reward functions:")
    for name, fn in REWARD_FUNCTIONS.items().items():
        print(f"  {name:20s} {_first_line(fn)}")
    return 0


def _decoding(args: argparse.Namespace):
    from beyondmle.decoding import DecodingConfig

    return DecodingConfig(
        greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p
    )


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from beyondmle.decoding import generate
    from beyondmle.training import load_model

    model, tokenizer, _ = load_model(args.checkpoint)
    ids = tokenizer.encode(args.prompt)
    if not ids:
        raise SystemExit("error: --prompt encodes to no tokens")
    room = model.config.block_size - len(ids)
    if room < 1:
        raise SystemExit(
            f"error: the prompt has {len(ids)} tokens; the model's context is "
            f"{model.config.block_size}"
        )
    generator = torch.Generator().manual_seed(args.seed)
    for _ in range(args.num):
        out = generate(
            model,
            torch.tensor([ids]),
            min(args.max_new_tokens, room),
            _decoding(args),
            eos_id=tokenizer.eos_id if args.stop_at_eos else None,
            generator=generator,
        )[0]
        print(args.prompt + " " + tokenizer.decode(out))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from beyondmle.api import load_corpus
    from beyondmle.evaluation import EvaluationConfig, Evaluator
    from beyondmle.training import load_model

    spec = None
    if args.spec:
        from beyondmle.spec import parse_spec

        spec = parse_spec(args.spec)
        evaluation, decodings = spec.evaluation, list(spec.decodings)
    else:
        evaluation = EvaluationConfig(
            num_samples=args.num_samples, metrics=args.metrics or EvaluationConfig().metrics
        )
        decodings = [_decoding(args)]
    path = Path(args.target)
    pretrained = _pretrained_directory(args.target)
    if pretrained is not None:  # a pretrained model as it is, before any training here
        from beyondmle.hf_model import HFCausalLM
        from beyondmle.model import ModelConfig
        from beyondmle.tokenization import PretrainedTokenizer

        window = ModelConfig(**spec.model).block_size if spec else None
        model = HFCausalLM.from_directory(pretrained, window=window)
        first = spec.corpora[0] if spec else None
        corpus_settings = {"name": first.name, **first.settings} if first else {"name": "ptb"}
        corpus = load_corpus(corpus_settings.pop("name"), **corpus_settings)
        corpus = corpus.retokenized(PretrainedTokenizer.from_directory(pretrained))
    else:
        checkpoint = path / "model.ckpt" if path.is_dir() else path
        if not checkpoint.exists():
            raise SystemExit(
                f"error: {checkpoint} does not exist (give a checkpoint, a cell directory, a "
                "Hugging Face model directory or a GGUF file)"
            )
        model, tokenizer, hparams = load_model(checkpoint)
        corpus_settings = dict(hparams.get("corpus") or {"name": "ptb"})
        corpus = load_corpus(corpus_settings.pop("name"), **corpus_settings)
        if tokenizer.to_json() != corpus.tokenizer.to_json():  # a pretrained model's own
            corpus = corpus.retokenized(tokenizer)
    evaluator = Evaluator(model, corpus, evaluation)
    rows, _ = evaluator.model_metrics()
    for decoding in decodings:
        more, _ = evaluator.sample_metrics(decoding, evaluator.generate(decoding, args.seed))
        rows += more
    results = [
        {
            "decoding": r.decoding,
            "metric": r.metric,
            "value": r.value,
            "fingerprint": r.fingerprint,
            **({"warning": r.warning} if r.warning else {}),
        }
        for r in rows
    ]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            note = f"  ({r['warning']})" if "warning" in r else ""
            value = "undefined" if r["value"] is None else f"{r['value']:.4f}"
            print(f"{r['decoding'] or '-':24s} {r['metric']:18s} {value}{note}")
    return 0


def _pretrained_directory(target: str) -> Path | None:
    """The Hugging Face directory of an `evaluate` target that is a pretrained model (a
    directory with config.json and no model.ckpt, or a GGUF file), else None."""
    from beyondmle.hf_model import from_gguf

    path = Path(target)
    if target.endswith(".gguf"):
        return from_gguf(target)
    if path.is_dir() and (path / "config.json").is_file() and not (path / "model.ckpt").exists():
        return path
    return None


def cmd_new_objective(args: argparse.Namespace) -> int:
    from beyondmle.skeleton import write_skeleton

    for path in write_skeleton(args.name, Path(args.dir), Path(args.tests)):
        print(f"wrote {path}")
    return 0


def _add_decoding_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--greedy", action="store_true", help="greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="beyondmle", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run every cell of a spec, then write the report")
    p.add_argument("spec", help="a benchmark spec (TOML), e.g. benchmarks/quick.toml")
    p.add_argument("--out", help="results directory (default: runs/<benchmark name>)")
    p.add_argument(
        "--shard",
        type=_shard,
        default=(0, 1),
        metavar="I/N",
        help="run every N-th cell starting at I",
    )
    p.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    p.add_argument("--no-report", action="store_true", help="do not build the report")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (cells, decodings, tokens, FLOPs, a time estimate from a short "
        "probe on this machine) without training",
    )
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="print cell events only")
    loud.add_argument(
        "-v", "--verbose", action="store_true", help="print everything the frameworks print"
    )
    p.add_argument(
        "--launcher",
        choices=("local", "submitit", "ray"),
        help="run each cell through `run-cell` on this machine (local), a SLURM cluster "
        "(submitit) or a Ray cluster (ray); settings in the spec's [launcher] table",
    )
    p.add_argument("--max-parallel", type=int, help="cells at once (launchers)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "run-cell", help="train and evaluate one cell into its own result file (idempotent)"
    )
    p.add_argument("spec")
    p.add_argument("--cell", required=True, help="the cell id (see run --dry-run)")
    p.add_argument("--out", help="results directory (default: runs/<benchmark name>)")
    p.add_argument("--retry-failed", action="store_true", help="run the cell again if it failed")
    p.add_argument("-q", "--quiet", action="store_true", help="print cell events only")
    p.add_argument("-v", "--verbose", action="store_true", help="print everything")
    p.set_defaults(func=cmd_run_cell)

    p = sub.add_parser("merge", help="merge results directories and cell result files (idempotent)")
    p.add_argument("dirs", nargs="+", help="results directories")
    p.add_argument("--into", help="merge into this directory (default: the first)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("list", help="list registered objectives, corpora and metrics")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("generate", help="continue a prompt with a trained checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--num", type=int, default=1, help="number of continuations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-at-eos", action="store_true")
    _add_decoding_flags(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("evaluate", help="compute the metrics of a checkpoint or a cell dir")
    p.add_argument(
        "target",
        help="a model checkpoint, a cell directory holding model.ckpt, or a pretrained model "
        "as it is (a Hugging Face directory or a GGUF file), on the spec's first corpus",
    )
    p.add_argument("--spec", help="take evaluation settings and decodings from this spec")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--metrics", nargs="*", help="metric groups (default: all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_decoding_flags(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="merge result directories and build the report")
    p.add_argument("dirs", nargs="+", help="results directories")
    p.add_argument("--into", help="merge into this directory (default: the first)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("new-objective", help="write a documented objective skeleton and test")
    p.add_argument("name")
    p.add_argument("--dir", default="objectives", help="where the module goes")
    p.add_argument("--tests", default="tests", help="where its test goes")
    p.set_defaults(func=cmd_new_objective)
    return parser


def main(argv: list[str] | None = None) -> int:
    from beyondmle.launch import DependencyNotDone, LaunchError
    from beyondmle.results import ResultsError
    from beyondmle.spec import SpecError
    from beyondmle.training import UnsafeCheckpointError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (
        SpecError,
        CorpusError,
        SettingsError,
        UnknownPluginError,
        ResultsError,
        UnsafeCheckpointError,
        LaunchError,
        DependencyNotDone,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
