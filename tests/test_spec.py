"""Benchmark specs: a valid spec expands into cells with stable ids; every problem of a bad spec
is reported at once with the file, the key and what was expected, before anything trains."""

from __future__ import annotations

from pathlib import Path

import pytest

from beyondmle.cells import expand, select_shard
from beyondmle.cli import main
from beyondmle.decoding import DecodingConfig
from beyondmle.spec import SpecError, parse_spec

# -- a valid spec --------------------------------------------------------------------------------

VALID = """
[benchmark]
name = "unit"
seeds = [0, 1]

[[corpus]]
name = "ptb"

[[corpus]]
name = "text"
paths = ["{text}"]
vocab_size = 300

[model]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 32

[training]
budget_tokens = 1000
batch_size = 4
precision = "32-true"

[[objective]]
name = "mle"
[objective.sweep]
label_smoothing = [0.0, 0.1]

[[objective]]
name = "unlikelihood"
alpha = 0.5
[objective.sweep]
sequence_fraction = [0.0, 0.5]
ngram = [3, 4]

[decoding]
greedy = true
temperature = [0.7]
top_p = [0.9]
top_k = [40]

[evaluation]
prompt_tokens = 8
continuation_tokens = 16
num_samples = 8
metrics = ["perplexity", "distinct"]
"""


def write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("one line\nanother line\n")
    path = tmp_path / name
    path.write_text(text.replace("{text}", str(corpus)))
    return path


def test_valid_spec_parses_with_its_settings(tmp_path):
    spec = parse_spec(write(tmp_path, VALID))
    assert spec.name == "unit"
    assert spec.seeds == (0, 1)
    assert [c.name for c in spec.corpora] == ["ptb", "text"]
    assert spec.corpora[1].settings == {"paths": [str(tmp_path / "corpus.txt")], "vocab_size": 300}
    assert spec.model == {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 32}
    assert (spec.training.budget_tokens, spec.training.batch_size) == (1000, 4)
    assert spec.training.precision == "32-true"
    assert spec.training.lr == 1e-3  # a default
    assert spec.evaluation.num_samples == 8
    assert spec.evaluation.metrics == ["perplexity", "distinct"]
    assert [d.label for d in spec.decodings] == [
        "greedy",
        "temperature=0.7",
        "top_p=0.9",
        "top_k=40",
    ]
    assert spec.decodings[0] == DecodingConfig(greedy=True)
    assert "budget_tokens = 1000" in spec.text


def test_sweeps_expand_into_every_combination_of_objective_settings(tmp_path):
    spec = parse_spec(write(tmp_path, VALID))
    assert [v.label for v in spec.objectives] == [
        "mle[label_smoothing=0.0]",
        "mle[label_smoothing=0.1]",
        "unlikelihood[ngram=3,sequence_fraction=0.0]",
        "unlikelihood[ngram=3,sequence_fraction=0.5]",
        "unlikelihood[ngram=4,sequence_fraction=0.0]",
        "unlikelihood[ngram=4,sequence_fraction=0.5]",
    ]
    ul = spec.objectives[3].settings
    assert (ul["alpha"], ul["ngram"], ul["sequence_fraction"]) == (0.5, 3, 0.5)
    assert ul["prefix_len"] == 50  # defaults are filled in
    assert spec.objectives[1].settings["label_smoothing"] == 0.1


def test_cells_are_corpora_times_seeds_times_objective_variants(tmp_path):
    spec = parse_spec(write(tmp_path, VALID))
    cells = expand(spec)
    assert len(cells) == 2 * 2 * 6
    assert [(c.corpus.name, c.seed) for c in cells[::6]] == [
        ("ptb", 0),
        ("ptb", 1),
        ("text", 0),
        ("text", 1),
    ]
    assert [c.objective.label for c in cells[:6]] == [v.label for v in spec.objectives]
    assert len({c.id for c in cells}) == len(cells)
    assert cells[0].describe() == "ptb / mle[label_smoothing=0.0] / seed 0"


def test_an_objective_restricted_to_corpora_runs_on_those_only(tmp_path):
    restricted = VALID.replace(
        'name = "unlikelihood"\n', 'name = "unlikelihood"\ncorpora = ["text"]\n'
    )
    everywhere = expand(parse_spec(write(tmp_path, VALID)))
    cells = expand(parse_spec(write(tmp_path, restricted, "restricted.toml")))
    pairs = {(c.corpus.name, c.objective.name) for c in cells}
    assert ("ptb", "unlikelihood") not in pairs and ("text", "unlikelihood") in pairs
    assert len(cells) == 2 * 2 + 2 * 6  # ptb: mle's 2 variants; text: all 6, per seed
    # The restriction is not part of what a cell computes: the same cells keep their ids.
    assert {c.id for c in cells} <= {c.id for c in everywhere}


@pytest.mark.parametrize("given", ['["wiki"]', "[]", '"text"', '["text", "text"]'])
def test_objective_corpora_must_name_corpora_of_the_spec(tmp_path, given):
    bad = VALID.replace('name = "unlikelihood"\n', f'name = "unlikelihood"\ncorpora = {given}\n')
    with pytest.raises(SpecError) as err:
        parse_spec(write(tmp_path, bad))
    assert "objective[1].corpora: expected a non-empty list of this spec's corpora (ptb, text)" in (
        str(err.value)
    )


def test_cell_ids_are_stable_and_differ_per_seed(tmp_path):
    first = [c.id for c in expand(parse_spec(write(tmp_path, VALID)))]
    again = [c.id for c in expand(parse_spec(write(tmp_path, VALID, "again.toml")))]
    assert first == again
    cells = expand(parse_spec(write(tmp_path, VALID)))
    seed0 = {(c.corpus.name, c.objective.label): c.id for c in cells if c.seed == 0}
    seed1 = {(c.corpus.name, c.objective.label): c.id for c in cells if c.seed == 1}
    assert seed0.keys() == seed1.keys()
    assert all(seed0[k] != seed1[k] for k in seed0)
    assert all(len(i) == 12 and set(i) <= set("0123456789abcdef") for i in first)


def test_cell_ids_ignore_key_order_defaults_decoding_and_evaluation(tmp_path):
    base = [c.id for c in expand(parse_spec(write(tmp_path, VALID)))]
    # The same trained models, written differently and decoded / evaluated differently.
    reordered = (
        VALID.replace(
            "n_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 32",
            "block_size = 32\nn_embd = 16\nn_head = 2\nn_layer = 1\ndropout = 0.1",
        )
        .replace("top_k = [40]", "top_k = [5]")
        .replace("num_samples = 8", "num_samples = 4")
        .replace('name = "unit"', 'name = "renamed"')
    )
    assert [c.id for c in expand(parse_spec(write(tmp_path, reordered, "b.toml")))] == base
    # A different trained model: another budget.
    longer = VALID.replace("budget_tokens = 1000", "budget_tokens = 2000")
    assert not set(base) & {c.id for c in expand(parse_spec(write(tmp_path, longer, "c.toml")))}


def test_shards_partition_the_cells(tmp_path):
    cells = expand(parse_spec(write(tmp_path, VALID)))
    shards = [select_shard(cells, (i, 5)) for i in range(5)]
    assert sorted(c.id for shard in shards for c in shard) == sorted(c.id for c in cells)
    assert [len(s) for s in shards] == [5, 5, 5, 5, 4]


def test_minimal_spec_uses_the_defaults(tmp_path):
    path = write(tmp_path, MINIMAL)
    spec = parse_spec(path)
    assert spec.name == "benchmark"
    assert spec.decodings == (DecodingConfig(greedy=True),)
    assert [v.label for v in spec.objectives] == ["mle"]


# -- errors --------------------------------------------------------------------------------------

MINIMAL = """
[benchmark]
seeds = [0]

[[corpus]]
name = "ptb"

[model]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 32

[evaluation]
prompt_tokens = 8
continuation_tokens = 16

[[objective]]
name = "mle"
"""


def spec_error(tmp_path: Path, text: str) -> tuple[Path, list[str]]:
    """The lines of the SpecError of `text`, and the file it was written to."""
    path = write(tmp_path, text, "bad.toml")
    with pytest.raises(SpecError) as info:
        parse_spec(path)
    lines = str(info.value).splitlines()
    assert info.value.path == str(path)
    assert len(lines) == len(info.value.issues)
    assert all(line.startswith(f"{path}: ") for line in lines)  # every line names the file
    return path, lines


def test_minimal_spec_is_valid(tmp_path):
    parse_spec(write(tmp_path, MINIMAL))


def test_unknown_objective_is_reported_with_the_registered_ones(tmp_path):
    path, lines = spec_error(tmp_path, MINIMAL.replace('name = "mle"', 'name = "mmi"'))
    assert lines == [
        f"{path}: objective[0].name: expected an objective name, one of adversarial, denoising, "
        "dpo, mle, ppo, rloo, scheduled_sampling, unlikelihood, got 'mmi'"
    ]


def test_objective_without_a_name_is_reported(tmp_path):
    path, lines = spec_error(tmp_path, MINIMAL.replace('name = "mle"', "alpha = 1.0"))
    assert lines == [
        f"{path}: objective[0].name: expected an objective name, one of adversarial, denoising, "
        "dpo, mle, ppo, rloo, scheduled_sampling, unlikelihood"
    ]


def test_wrong_type_is_reported(tmp_path):
    path, lines = spec_error(tmp_path, MINIMAL.replace("n_layer = 1", 'n_layer = "four"'))
    assert lines == [f"{path}: model.n_layer: expected an integer >= 1, got 'four'"]


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        ("n_head = 2", "n_head = 2.0", "model.n_head", "an integer >= 1, got 2.0"),
        ("seeds = [0]", 'seeds = ["zero"]', "benchmark.seeds", "a list of integers"),
        ("seeds = [0]", "seeds = [0]\nname = 3", "benchmark.name", "a string, got 3"),
        ("n_layer = 1", "n_layer = 1\nbias = 1", "model.bias", "true or false, got 1"),
        ('name = "mle"', 'name = "mle"\nlabel_smoothing = "a bit"', "objective[0].label_smoothing",
         "a number in [0, 1), got 'a bit'"),
        ('name = "mle"', 'name = "mle"\nwarm_start_checkpoint = 3',
         "objective[0].warm_start_checkpoint", "a string or nothing, got 3"),
    ],
)  # fmt: skip
def test_wrong_types_name_the_key_and_the_expected_type(tmp_path, old, new, key, expected):
    path, lines = spec_error(tmp_path, MINIMAL.replace(old, new))
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: {key}: expected {expected}")


def test_unknown_key_in_model_is_reported(tmp_path):
    path, lines = spec_error(tmp_path, MINIMAL.replace("n_layer = 1", "n_layers = 1"))
    assert lines == [
        f"{path}: model.n_layers: expected a known key (bias, block_size, dropout, gguf, hf, "
        "n_embd, n_head, n_layer), got 'n_layers'"
    ]


def test_unknown_key_in_an_objective_is_reported(tmp_path):
    path, lines = spec_error(tmp_path, MINIMAL.replace('name = "mle"', 'name = "mle"\nalpha = 1'))
    assert lines == [
        f"{path}: objective[0].alpha: expected a known key (label_smoothing, "
        "warm_start_checkpoint, warm_start_fraction), got 'alpha'"
    ]


def test_unknown_key_in_a_sweep_is_reported(tmp_path):
    text = MINIMAL.replace('name = "mle"', 'name = "mle"\n[objective.sweep]\nalpha = [1, 2]')
    path, lines = spec_error(tmp_path, text)
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: objective[0].sweep.alpha: expected a known key (")


def test_unknown_top_level_section_is_reported(tmp_path):
    path, lines = spec_error(tmp_path, MINIMAL + "\n[optimizer]\nlr = 0.1\n")
    assert lines == [
        f"{path}: optimizer: expected a known section (base, benchmark, corpus, decoding, "
        "evaluation, launcher, model, objective, preferences, regime, training), got 'optimizer'"
    ]


def test_missing_seeds_are_reported(tmp_path):
    path, lines = spec_error(tmp_path, MINIMAL.replace("seeds = [0]", 'name = "x"'))
    assert lines == [f"{path}: benchmark.seeds: expected a list of integer seeds (it is required)"]


@pytest.mark.parametrize(("seeds", "shown"), [("[]", "[]"), ("[1, 1]", "[1, 1]")])
def test_empty_or_repeated_seeds_are_reported(tmp_path, seeds, shown):
    path, lines = spec_error(tmp_path, MINIMAL.replace("seeds = [0]", f"seeds = {seeds}"))
    assert lines == [
        f"{path}: benchmark.seeds: expected a non-empty list of distinct seeds, got {shown}"
    ]


def test_missing_sections_are_reported(tmp_path):
    text = MINIMAL.replace("[benchmark]\nseeds = [0]", "").replace('[[corpus]]\nname = "ptb"', "")
    path, lines = spec_error(tmp_path, text.replace('[[objective]]\nname = "mle"', ""))
    assert lines == [
        f"{path}: [benchmark]: expected a table (it is required)",
        f"{path}: [[corpus]]: expected at least one table (it is required)",
        f"{path}: [[objective]]: expected at least one table (it is required)",
    ]


def test_missing_paths_of_a_text_corpus_are_reported(tmp_path):
    path, lines = spec_error(tmp_path, MINIMAL.replace('name = "ptb"', 'name = "text"'))
    assert lines == [f"{path}: corpus[0].paths: expected a value (it is required)"]


def test_nonexistent_text_corpus_path_is_reported(tmp_path):
    missing = tmp_path / "missing.txt"
    text = MINIMAL.replace('name = "ptb"', f'name = "text"\npaths = ["{missing}"]')
    path, lines = spec_error(tmp_path, text)
    assert lines == [f"{path}: corpus[0].paths: expected readable files ({missing} does not exist)"]


def test_a_directory_as_text_corpus_path_is_reported(tmp_path):
    text = MINIMAL.replace('name = "ptb"', f'name = "text"\npaths = ["{tmp_path}"]')
    path, lines = spec_error(tmp_path, text)
    assert lines == [f"{path}: corpus[0].paths: expected readable files ({tmp_path} is not a file)"]


def test_unknown_corpus_and_corpus_settings_are_reported(tmp_path):
    text = MINIMAL.replace(
        'name = "ptb"', 'name = "ptb"\nvocab_size = 100\n[[corpus]]\nname = "c4"'
    )
    path, lines = spec_error(tmp_path, text)
    assert lines == [
        f"{path}: corpus[0].vocab_size: expected a known key (none), got 'vocab_size'",
        f"{path}: corpus[1].name: expected a corpus name, one of "
        "oracle, peoples_daily, ptb, text, got 'c4'",
    ]


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        ("[evaluation]", "[decoding]\ngreedy = true\ntop_p = [1.5]\n[evaluation]", "decoding.top_p",
         r"a number in (0, 1] or nothing, got 1.5"),
        ("[evaluation]", "[decoding]\ngreedy = true\ntemperature = [0.0]\n[evaluation]",
         "decoding.temperature", "a number > 0, got 0.0"),
        ("[evaluation]", "[decoding]\ngreedy = true\ntop_k = [0]\n[evaluation]", "decoding.top_k",
         "an integer >= 1 or nothing, got 0"),
        ('name = "mle"', 'name = "mle"\nlabel_smoothing = 1.5', "objective[0].label_smoothing",
         "a number in [0, 1), got 1.5"),
        ('name = "mle"', 'name = "mle"\nwarm_start_fraction = 1.5',
         "objective[0].warm_start_fraction", "a number in [0, 1), got 1.5"),
        ("n_embd = 16", "n_embd = 15", "model.n_embd", "divisible by n_head=2, got 15"),
        ("continuation_tokens = 16", "continuation_tokens = 16\nnum_samples = 0",
         "evaluation.num_samples", "an integer >= 1, got 0"),
        ("continuation_tokens = 16", "continuation_tokens = 16\nmetrics = [\"bleurt\"]",
         "evaluation.metrics", "registered metrics (continuation, distinct, "),
        ("continuation_tokens = 16", "continuation_tokens = 30", "evaluation.continuation_tokens",
         "prompt_tokens + continuation_tokens <= model.block_size, got 38"),
    ],
)  # fmt: skip
def test_values_out_of_range_name_the_key_and_the_range(tmp_path, old, new, key, expected):
    path, lines = spec_error(tmp_path, MINIMAL.replace(old, new))
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: {key}: expected {expected}")


def test_a_bad_sweep_value_is_reported(tmp_path):
    text = MINIMAL.replace(
        'name = "mle"', 'name = "mle"\n[objective.sweep]\nlabel_smoothing = [0.1, 2.0]'
    )
    path, lines = spec_error(tmp_path, text)
    assert lines == [
        f"{path}: objective[0].sweep.label_smoothing: expected a number in [0, 1), got 2.0"
    ]


def test_dropout_out_of_range_is_reported(tmp_path):
    path, lines = spec_error(tmp_path, MINIMAL.replace("n_layer = 1", "n_layer = 1\ndropout = 1.5"))
    assert len(lines) == 1
    assert lines == [f"{path}: model.dropout: expected a number in [0, 1), got 1.5"]


def test_zero_heads_are_reported(tmp_path):
    path, lines = spec_error(tmp_path, MINIMAL.replace("n_head = 2", "n_head = 0"))
    assert lines == [f"{path}: model.n_head: expected an integer >= 1, got 0"]


def test_zero_batch_size_is_reported(tmp_path):
    path, lines = spec_error(tmp_path, MINIMAL + "\n[training]\nbatch_size = 0\n")
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: training")


def test_invalid_toml_is_reported(tmp_path):
    path, lines = spec_error(tmp_path, MINIMAL.replace("seeds = [0]", "seeds = [0"))
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: (file): expected valid TOML (")
    assert "(at line 5, column 1)" in lines[0]  # MINIMAL starts with an empty line


def test_missing_spec_file_is_reported(tmp_path):
    path = tmp_path / "nowhere.toml"
    with pytest.raises(SpecError) as info:
        parse_spec(path)
    assert str(info.value) == (
        f"{path}: (file): expected a readable TOML file (No such file or directory)"
    )


def test_several_errors_are_all_reported_at_once(tmp_path):
    text = (
        MINIMAL.replace("seeds = [0]", 'name = "x"')
        .replace("n_layer = 1", 'n_layer = "four"\nwidth = 3')
        .replace('name = "mle"', 'name = "mmi"')
        .replace("continuation_tokens = 16", "continuation_tokens = 16\n[decoding]\ntop_p = [1.5]")
        + "\n[extras]\nx = 1\n"
    )
    path, lines = spec_error(tmp_path, text)
    keys = [line.removeprefix(f"{path}: ").split(":")[0] for line in lines]
    assert sorted(keys) == sorted(
        [
            "extras",
            "benchmark.seeds",
            "model.n_layer",
            "model.width",
            "objective[0].name",
            "decoding.top_p",
            "decoding",  # no valid setting left in [decoding]
        ]
    )


# -- the CLI -------------------------------------------------------------------------------------


def test_cli_run_of_a_bad_spec_exits_2_with_the_errors_before_training(tmp_path, capsys):
    text = MINIMAL.replace("n_layer = 1", 'n_layer = "four"').replace('"mle"', '"mmi"')
    bad = write(tmp_path, text, "BAD.toml")
    out = tmp_path / "out"
    assert main(["run", str(bad), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.splitlines()
    assert err[0] == f"error: {bad}: model.n_layer: expected an integer >= 1, got 'four'"
    assert err[1].startswith(f"{bad}: objective[0].name: expected an objective name, one of")
    assert len(err) == 2
    assert not out.exists()
    assert not list(tmp_path.rglob("cells"))
    assert not list(tmp_path.rglob("results.sqlite"))


def test_cli_run_of_a_missing_spec_exits_2(tmp_path, capsys):
    missing = tmp_path / "missing.toml"
    assert main(["run", str(missing), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {missing}: (file): expected a readable")


def test_every_bad_value_of_one_table_is_reported(tmp_path):
    text = MINIMAL + '\n[training]\nprecision = "fp8"\nbudget_tokens = 0\nlr = -1.0\n'
    path, lines = spec_error(tmp_path, text)
    assert lines == [
        f"{path}: training.budget_tokens: expected an integer >= 1, got 0",
        f"{path}: training.lr: expected a number > 0, got -1.0",
        f"{path}: training.precision: expected one of 'auto', 'bf16-mixed', '16-mixed', "
        "'32-true', 'bf16-true', '64-true', got 'fp8'",
    ]


def test_bad_values_of_several_objective_settings_are_all_reported(tmp_path):
    text = MINIMAL.replace(
        'name = "mle"',
        'name = "scheduled_sampling"\nmixing = "blend"\npasses = 1\ntemperature = 0.0',
    )
    path, lines = spec_error(tmp_path, text)
    assert lines == [
        f"{path}: objective[0].mixing: expected one of 'sample', 'argmax', 'soft', got 'blend'",
        f"{path}: objective[0].temperature: expected a number in (0, inf), got 0.0",
        f"{path}: objective[0].passes: expected an integer >= 2, got 1",
    ]
