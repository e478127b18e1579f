"""Every benchmark behind a figure in BENCHMARKS.md still runs (`--smoke`: tiny sizes), so a
change that breaks one fails here rather than the next time someone measures."""

import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))
# Options that reach further than --smoke alone: label_scoring times another checkout's ONION
# in a process of its own (here this checkout's, so the comparison's plumbing runs too).
EXTRA = {"label_scoring": ["--onion-before", str(ROOT / "src")]}


def test_every_benchmark_is_covered():
    assert {b.stem for b in BENCHMARKS} >= {"probe_speed", "train_throughput", "label_scoring"}


@pytest.mark.slow
@pytest.mark.parametrize("script", BENCHMARKS, ids=[b.stem for b in BENCHMARKS])
def test_benchmark_smoke(script, capsys, monkeypatch):
    # In this process, as `python SCRIPT --smoke` runs it: a process of its own would pay
    # about 8 s of imports per benchmark before any work.
    monkeypatch.setattr(sys, "argv", [str(script), "--smoke", *EXTRA.get(script.stem, [])])
    monkeypatch.syspath_prepend(str(script.parent))  # as python puts the script's folder first
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert out.strip(), "a benchmark prints its figures"
    assert "FAILED" not in out, out  # benchmarks/gpu.py names a section that failed so
    if script.stem == "label_scoring":  # the same code in both processes: the same words
        assert "same words removed in 1/1 reviews" in out.split("code at")[-1]
