"""Every benchmark behind a figure in BENCHMARKS.md still runs (`--smoke`: tiny sizes), so a
change that breaks one fails here rather than the next time someone measures."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).parent.parent / "benchmarks").glob("*.py"))


def test_every_benchmark_is_covered():
    assert {b.stem for b in BENCHMARKS} >= {"probe_speed", "train_throughput", "label_scoring"}


@pytest.mark.slow
@pytest.mark.parametrize("script", BENCHMARKS, ids=[b.stem for b in BENCHMARKS])
def test_benchmark_smoke(script):
    r = subprocess.run([sys.executable, str(script), "--smoke"], capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.strip(), "a benchmark prints its figures"
