"""The built report in a real browser: headless Debian Chromium loads it without a console
message (no script error, no blocked fetch, no policy violation), its DOM has the report's
structure with the planted script as text, and a screenshot comes out non-trivial."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from report_fixture import make_results

from beyondmle.reports import build_report

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]
TIMEOUT = 120
# Every console message of the page: errors, uncaught exceptions, CSP violations, blocked loads.
CONSOLE = re.compile(r":CONSOLE[:(]|Uncaught|Refused to|Content Security Policy")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (Debian chromium)"),
]


def chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    profile.mkdir()
    return subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CONSOLE.search(line)]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    directory = make_results(
        tmp_path_factory.mktemp("results"),
        objectives=("mle", "unlikelihood[alpha=0.5]", "scheduled_sampling"),
        seeds=(0, 1, 2),
        decodings=("greedy", "temperature=0.7", "temperature=1", "temperature=1.3", "top_p=0.9"),
    )
    return build_report(directory)


def test_console_check_sees_errors(tmp_path: Path) -> None:
    """Control: a page that throws shows up in the log, so a silent log means a clean page."""
    page = tmp_path / "control.html"
    page.write_text(
        '<!DOCTYPE html><meta charset="utf-8"><p>x</p>'
        '<script>throw new Error("control-error")</script>',
        encoding="utf-8",
    )
    result = chromium(tmp_path, page.as_uri(), "--dump-dom")
    assert any("control-error" in line for line in console_lines(result.stderr)), result.stderr


def test_report_loads_without_console_messages(report: Path, tmp_path: Path) -> None:
    result = chromium(tmp_path, report.as_uri(), "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    assert console_lines(result.stderr) == []
    dom = result.stdout
    for anchor in ("headline", "gap", "frontiers", "paired", "curves", "samples", "provenance"):
        assert f'<section id="{anchor}">' in dom
    figures = re.findall(r'<img src="data:image/png;base64,[^"]+" alt="([^"]*)"', dom)
    assert figures == [
        "test perplexity against MAUVE",
        "quality-diversity frontiers",
        "training curves",
        "each objective's own loss",
    ]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert "<script" not in dom.lower()


def test_report_screenshot(report: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "report.png"
    result = chromium(tmp_path, report.as_uri(), f"--screenshot={shot}", "--window-size=1280,2000")
    assert result.returncode == 0, result.stderr[-2000:]
    assert console_lines(result.stderr) == []
    assert shot.exists() and shot.stat().st_size > 20_000
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (1280, 2000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # text, tables and a figure, not blank
