"""The report builder: its statistics on hand examples, and whole reports built from small
fixture databases (escaping, failed cells, best values, missing metrics)."""

from __future__ import annotations

import math
import re
import sqlite3
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from report_fixture import (
    FAILED_ERROR,
    FEATURIZER,
    MAUVE_WARNING,
    PLANTED,
    cell_id,
    make_results,
)

from beyondmle.reports import build_report, stats
from beyondmle.reports.analysis import choose_sweep, headline_decoding
from beyondmle.reports.load import parse_decoding, read_train_log
from beyondmle.reports.render import md_escape

# statistics on hand examples


def test_identical_seed_values_give_a_zero_width_interval_at_the_value() -> None:
    est = stats.seed_interval([0.1] * 5)
    assert est.mean == pytest.approx(0.1)
    assert est.low == pytest.approx(0.1) and est.high == pytest.approx(0.1)
    assert est.n == 5 and est.over == "seeds"


def test_two_seeds_hand_checked() -> None:
    # [0, 1]: mean 0.5, s = sqrt(0.5), se = s / sqrt(2) = 0.5; t(1) at 97.5% = 12.7062.
    est = stats.seed_interval([0.0, 1.0])
    assert (est.mean, est.n) == (0.5, 2)
    assert est.low == pytest.approx(0.5 - 12.7062 * 0.5, abs=1e-3)
    assert est.high == pytest.approx(0.5 + 12.7062 * 0.5, abs=1e-3)


def test_a_lower_confidence_gives_a_narrower_interval_around_the_same_mean() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    est = stats.seed_interval(values)
    narrower = stats.seed_interval(values, confidence=0.5)
    assert est.mean == narrower.mean == pytest.approx(4.0)
    assert est.low < narrower.low < narrower.high < est.high


def test_one_value_has_no_interval_and_missing_values_are_dropped() -> None:
    one = stats.seed_interval([3.0, math.nan])
    assert one.mean == 3.0 and one.n == 1 and not one.has_interval
    assert math.isnan(one.low) and math.isnan(one.high)
    assert stats.seed_interval([]).n == 0


def test_paired_difference_hand_example() -> None:
    objective = {0: 1.0, 1: 0.5, 2: 0.75, 3: 0.5}
    baseline = {0: 0.75, 1: 0.625, 2: 0.5, 4: 0.125}  # seeds 3 and 4 have no partner
    cmp = stats.paired_difference(objective, baseline, higher_is_better=True)
    # paired seeds 0, 1, 2: differences +0.25, -0.125, +0.25 (exact in binary)
    assert cmp.n == 3
    assert cmp.diff.mean == pytest.approx(0.125)
    assert cmp.n_better == 2 and cmp.share_better == pytest.approx(2 / 3)
    # s² = (0.125² + 0.25² + 0.125²) / 2 = 0.046875, se = sqrt(s² / 3) = 0.125;
    # t(2) at 97.5% = 4.3027; the paired t statistic 0.125 / 0.125 = 1 gives p = 0.4226.
    assert cmp.diff.low == pytest.approx(0.125 - 4.3027 * 0.125, abs=1e-4)
    assert cmp.diff.high == pytest.approx(0.125 + 4.3027 * 0.125, abs=1e-4)
    assert cmp.diff.p_value == pytest.approx(0.4226, abs=1e-4)
    lower = stats.paired_difference(objective, baseline, higher_is_better=False)
    assert lower.n_better == 1 and lower.diff == cmp.diff
    assert stats.paired_difference(objective, baseline, None).n_better == 0


def test_paired_difference_pairs_by_seed_not_by_position() -> None:
    cmp = stats.paired_difference({1: 5.0, 0: 1.0}, {0: 0.0, 1: 4.0}, higher_is_better=True)
    assert cmp.diff.mean == pytest.approx(1.0)
    assert cmp.diff.low == pytest.approx(1.0) and cmp.diff.high == pytest.approx(1.0)
    assert cmp.n_better == 2


def test_frontier_area_hand_example() -> None:
    # (diversity, quality): three Pareto points and one dominated point (0.1, 0.1).
    d = [0.6, 0.2, 0.1, 1.0]
    q = [0.5, 1.0, 0.1, 0.0]
    assert list(stats.pareto_mask(d, q)) == [True, True, False, True]
    # flat 1.0 over [0, 0.2] = 0.2; trapezoid (1.0 + 0.5) / 2 * 0.4 = 0.3; (0.5 + 0) / 2 * 0.4
    # = 0.1: 0.6 in all
    assert stats.frontier_area(d, q) == pytest.approx(0.6)
    assert stats.frontier_area(d[::-1], q[::-1]) == pytest.approx(0.6)
    assert stats.frontier_area([0.5], [0.4]) == pytest.approx(0.2)  # one point: d * q
    assert math.isnan(stats.frontier_area([], []))


def test_normalise_onto_a_common_axis() -> None:
    assert list(stats.normalise([2.0, 3.0, 4.0], 2.0, 4.0)) == [0.0, 0.5, 1.0]
    assert list(stats.normalise([5.0], 5.0, 5.0)) == [1.0]


def test_spearman() -> None:
    c = stats.spearman([1, 2, 3, 4], [10, 20, 30, 100])
    assert c.rho == pytest.approx(1.0) and c.n == 4
    assert stats.spearman([1, 2, 3], [3, 2, 1]).rho == pytest.approx(-1.0)
    assert math.isnan(stats.spearman([1, 2], [1, 2]).rho)  # too few pairs
    assert stats.spearman([1, 2, math.nan, 4], [1, 2, 3, 4]).n == 3


# loading and choices


def test_parse_decoding_labels() -> None:
    assert parse_decoding("") == {}
    assert parse_decoding("greedy") == {"greedy": True}
    assert parse_decoding("top_p=0.9,temperature=0.8") == {"top_p": 0.9, "temperature": 0.8}
    assert parse_decoding("top_k=40") == {"top_k": 40.0}


def test_headline_prefers_top_p_and_sweep_choice() -> None:
    seeds = pd.DataFrame(
        {
            "decoding": ["greedy", "temperature=0.7", "top_p=0.8", "top_p=0.9", ""],
            "objective": ["mle"] * 5,
        }
    )
    assert headline_decoding(seeds) == "top_p=0.9"
    assert headline_decoding(seeds[seeds["decoding"] != "top_p=0.9"]) == "top_p=0.8"
    assert headline_decoding(seeds.iloc[[0, 1]]) == "greedy"
    combined = pd.DataFrame(
        {"decoding": ["top_k=40", "top_p=0.9,temperature=0.8"], "objective": "a"}
    )
    assert headline_decoding(combined) == "top_p=0.9,temperature=0.8"
    assert choose_sweep(["temperature=0.7", "temperature=1.3", "top_p=0.9"]) == "temperature"
    assert choose_sweep(["top_p=0.8", "top_p=0.9", "temperature=1"]) == "top_p"
    assert choose_sweep(["greedy", "top_p=0.9"]) is None


def test_train_log_gives_validation_rows_tokens(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text(
        "step,train/loss,train/tokens,val/loss\n0,5.0,100,\n10,4.0,1100,\n10,,,4.5\n",
        encoding="utf-8",
    )
    log = read_train_log(path)
    val = log[log["split"] == "val"]
    assert list(val["tokens"]) == [1100.0] and list(val["loss"]) == [4.5]
    # train/loss is the objective's own loss, not comparable across objectives
    assert list(log.loc[log["split"] == "objective", "tokens"]) == [100.0, 1100.0]
    assert log.loc[log["split"] == "train"].empty


def test_train_log_takes_the_teacher_forced_nll_as_the_train_curve(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text(
        "step,train/loss,train/tf_nll,train/nll,train/tokens\n0,9.0,5.0,6.0,100\n10,8.0,,,1100\n",
        encoding="utf-8",
    )
    log = read_train_log(path)
    train = log[log["split"] == "train"]
    assert list(train["loss"]) == [5.0] and list(train["tokens"]) == [100.0]
    assert list(log.loc[log["split"] == "objective", "loss"]) == [9.0, 8.0]


def test_markdown_escaping_neutralises_markup() -> None:
    text = md_escape("<script>x</script> | *a* [l](u)")
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "\\|" in text and "\\*a\\*" in text and "\\[l\\]" in text


# whole reports


class _Tables(HTMLParser):
    """The tables inside one `<section id=...>` as rows of (text, bold) cells."""

    def __init__(self, section_id: str) -> None:
        super().__init__()
        self.section_id, self.depth, self.inside = section_id, 0, False
        self.tables: list[list[list[tuple[str, bool]]]] = []
        self.cell: list[str] | None = None
        self.bold = False

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            if self.inside:
                self.depth += 1
            elif dict(attrs).get("id") == self.section_id:
                self.inside, self.depth = True, 0
        if not self.inside:
            return
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell, self.bold = [], False
        elif tag == "strong" and self.cell is not None:
            self.bold = True

    def handle_endtag(self, tag):
        if tag == "section" and self.inside:
            if self.depth == 0:
                self.inside = False
            self.depth -= 1
        if self.inside and tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append(("".join(self.cell).strip(), self.bold))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def tables_in(page: str, section_id: str):
    parser = _Tables(section_id)
    parser.feed(page)
    return parser.tables


def column(table, name: str) -> dict[str, tuple[str, bool]]:
    """objective -> (cell text, bold) of the column whose header starts with `name`."""
    header = [text for text, _ in table[0]]
    index = next(i for i, h in enumerate(header) if h.startswith(name))
    return {row[0][0]: row[index] for row in table[1:]}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str, str]:
    directory = make_results(tmp_path_factory.mktemp("results"))
    index = build_report(directory)
    html = index.read_text(encoding="utf-8")
    markdown = (index.parent / "report.md").read_text(encoding="utf-8")
    return index, html, markdown


def test_report_files_are_written(built) -> None:
    index, _, markdown = built
    assert index.name == "index.html" and index.parent.name == "report"
    for png in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        path = index.parent / png
        assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"gap.png", "frontier.png", "curves.png"} <= {p.name for p in index.parent.iterdir()}


def test_the_overview_names_the_featurizer_of_mauve_and_fed(built) -> None:
    _, html, markdown = built
    assert f"Sentence features for MAUVE and FED: {FEATURIZER}" in markdown
    assert f"Sentence features for MAUVE and FED: {FEATURIZER}" in html


def test_generated_text_is_escaped(built) -> None:
    _, html, markdown = built
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert PLANTED not in html
    assert "<script" not in html.lower()  # the page has no script of its own either
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markdown
    assert PLANTED not in markdown


def test_page_is_self_contained(built) -> None:
    _, html, _ = built
    sources = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert sources and all(s.startswith(("data:image/png;base64,", "#")) for s in sources)
    assert "http://" not in html and "https://" not in html
    assert "Content-Security-Policy" in html
    assert html.count("<img ") == 4  # gap, frontier, training and objective curves


def test_failed_cell_is_listed_with_its_escaped_error(built) -> None:
    _, html, markdown = built
    assert "ObjectiveDiverged: loss became NaN at step 12 &lt;b&gt;boom&lt;/b&gt;" in html
    assert "<b>boom</b>" not in html
    assert FAILED_ERROR.splitlines()[0] in markdown
    # The failed cell's partial metric (perplexity 1.0) stays out of the tables: still 2 seeds.
    headline = tables_in(html, "headline")[0]
    assert column(headline, "seeds")["unlikelihood[alpha=0.5]"][0] == "2"


def test_best_value_in_each_column_is_bold(built) -> None:
    _, html, markdown = built
    headline = tables_in(html, "headline")[0]
    assert [text for text, _ in headline[0]][:3] == ["objective", "seeds", "test perplexity ↓"]
    ppl = column(headline, "test perplexity")
    mauve = column(headline, "MAUVE")
    self_bleu = column(headline, "Self-BLEU-4")
    # The fixture gives MLE the lower perplexity and unlikelihood the better text.
    assert ppl["mle"][1] and not ppl["unlikelihood[alpha=0.5]"][1]
    assert mauve["unlikelihood[alpha=0.5]"][1] and not mauve["mle"][1]
    assert self_bleu["unlikelihood[alpha=0.5]"][1] and not self_bleu["mle"][1]
    # An interval under each value, and a dagger for MAUVE's warning.
    assert re.fullmatch(r"[\d.]+\[[\d.]+, [\d.]+\]", ppl["mle"][0])
    assert "†" in mauve["mle"][0]
    mle_ppl = ppl["mle"][0].split("[")[0].strip()
    assert f"| **{mle_ppl}** \\[" in markdown


def test_sections_present(built) -> None:
    _, html, _ = built
    for anchor in ("overview", "headline", "gap", "frontiers", "paired", "curves", "samples",
                   "all-metrics", "warnings", "cells", "provenance"):  # fmt: skip
        assert f'<section id="{anchor}">' in html
    assert "Headline at decoding top_p=0.9" in html
    gap = tables_in(html, "gap")[0]
    assert [row[0][0] for row in gap[1:]][:2] == ["MAUVE ↑", "FED ↓"]
    assert html.count("the human continuation 0.") == 1
    assert MAUVE_WARNING.replace("<", "&lt;") in html
    paired = tables_in(html, "paired")[0]
    assert column(paired, "Δ MAUVE")["unlikelihood[alpha=0.5]"][0].endswith("· 2/2")
    for text in ("0123abcd", "specs/tiny.yaml", "fp-mauve", "torch", "seeds: [0, 1]"):
        assert text in html


def test_report_degrades_without_mauve_and_with_one_seed(tmp_path: Path) -> None:
    directory = make_results(tmp_path / "r", seeds=(3,), with_mauve=False, failed=False)
    html = build_report(directory, tmp_path / "out").read_text(encoding="utf-8")
    assert (tmp_path / "out" / "report.md").exists()
    headline = tables_in(html, "headline")[0]
    header = [text for text, _ in headline[0]]
    assert not any(h.startswith(("MAUVE", "FED")) for h in header)
    assert "Not computed in these results, left out: MAUVE, FED." in html
    assert "MAUVE was not computed" in html  # the gap chart says what it uses instead
    assert "Quality: 1 − seq-rep-4" in html
    ppl = column(headline, "test perplexity")["mle"][0]
    assert "n/a (1 seed)" in ppl and "[" not in ppl
    assert "No cell failed." in html


def test_report_with_two_corpora(tmp_path: Path) -> None:
    directory = make_results(tmp_path / "r", seeds=(0,), failed=False)
    with sqlite3.connect(directory / "results.sqlite") as conn:
        for table, key in (("cells", "id"), ("metrics", "cell_id")):
            conn.execute(
                f"UPDATE {table} SET corpus = 'wiki' WHERE {key} = ?", (cell_id("mle", 0),)
            )
    html = build_report(directory).read_text(encoding="utf-8")
    assert html.count("<h3>Corpus tinystories</h3>") == html.count("<h3>Corpus wiki</h3>") > 3
    assert "No objective shares a finished seed with mle" in html
    assert (directory / "report" / "gap-2-wiki.png").exists()


def test_report_of_a_database_with_only_a_failed_cell(tmp_path: Path) -> None:
    from beyondmle.results import ResultsDB

    db = ResultsDB(tmp_path)
    db.register_cell("c1", {"seed": 0}, "wiki", "mle", 0)
    db.claim("c1", "w")
    db.fail_cell("c1", "run-x", "RuntimeError: <out of memory>")
    db.close()
    html = build_report(tmp_path).read_text(encoding="utf-8")
    assert "RuntimeError: &lt;out of memory&gt;" in html
    assert "No finished cell has metrics yet." in html
    assert "No run was recorded" in html
