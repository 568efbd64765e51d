"""``vitsplit-vlm bench``: the benchmark runner of a source checkout (``benchmarks/runner.py``).

The benchmarks are not installed with the package (they write results into the repository), so
this command finds them next to the package and says so when they are not there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _runner():
    if not (BENCHMARKS / "runner.py").is_file():
        raise SystemExit(
            "vitsplit-vlm bench: benchmarks/runner.py not found next to the package; run it from "
            "a source checkout (git clone, then pip install -e .)"
        )
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # the case scripts import each other by name
    import runner

    return runner


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _runner().add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return _runner().run(args)
