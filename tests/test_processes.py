"""Training as two processes (torchrun, gloo on this CPU; accelerate launch does the same on
GPUs): the same global batch gives the one-process adapter within float tolerance, and a run
killed mid-way, accumulating gradients over one-row passes, resumes to it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli
from safetensors.torch import load_file

from backdoorlab.models.loading import CHECKPOINT

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parent.parent / "examples" / "demo_birds.jsonl"
# At the default lr the adapters differ by ~2e-6 (fp32 sums in another order); at lr 1e-3
# Adam carries that to ~2e-5 over 12 steps (6 here). fp32 explicitly: on a CPU with native
# bf16 (AVX-512-BF16) training picks bf16 autocast, whose rounding (~0.4%) hides the
# difference between splitting a batch right and wrong.
ARGS = ["--max-steps", "6", "--batch-size", "4", "--checkpoint-every", "2", "--no-bf16"]


def adapter(out: Path) -> dict:
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def torchrun(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "-m", "backdoorlab", "train", str(DATA), "--out", str(out), *ARGS, *extra]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    r = run_cli("train", str(DATA), "--out", str(out), *ARGS)
    assert r.returncode == 0, r.stderr
    return out


def close(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_processes_train_the_one_process_adapter(one, tmp_path):
    p = torchrun(tmp_path / "two")
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log[-3000:]
    assert "batch 4: 2 processes x up to 2 rows" in log
    assert log.count("done ") == 1  # only the main process prints and writes
    two = manifest(tmp_path / "two")
    assert two["processes"] == 2 and manifest(one)["processes"] == 1
    assert two["key"] == manifest(one)["key"]  # the process count is not part of the run
    assert abs(two["final_loss"] - manifest(one)["final_loss"]) < 1e-4
    assert close(adapter(tmp_path / "two"), adapter(one)) < 1e-4


def test_a_killed_two_process_run_resumes(one, tmp_path):
    out = tmp_path / "killed"
    p = torchrun(out, "--micro-batch-size", "1")
    state = out / CHECKPOINT / "state.json"
    deadline = time.monotonic() + 300
    while not state.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)  # `kill` the launcher mid-run: it stops both workers
    p.wait(timeout=120)
    assert state.exists() and not (out / "manifest.json").exists()
    p = torchrun(out, "--resume", "--micro-batch-size", "1")
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log[-3000:]
    assert "Resuming" in log
    assert "2 processes x up to 2 rows, 2 passes of up to 1 rows, gradients accumulated" in log
    m = manifest(out)
    assert m["resumed_from"] and m["steps"] == 6
    assert close(adapter(out), adapter(one)) < 1e-4
