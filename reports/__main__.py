"""`python -m reports RESULTS_DIR [OUT_DIR]`: build the report of a results directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from beyondmle.reports.builder import build_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports", description=__doc__)
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("out_dir", type=Path, nargs="?", default=None)
    args = parser.parse_args(argv)
    print(build_report(args.results_dir, args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
