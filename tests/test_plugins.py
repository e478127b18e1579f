"""Extension points: a package outside backdoorlab adds a data builder (and its probe set)
through the `backdoorlab.builders` entry-point group and a classification data set through
`backdoorlab.classification`, and specs run with them."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import backdoorlab as bl

PLUGIN = Path(__file__).parent / "plugin"
SPEC = """\
name: echo
description: a builder from an installed plugin
seeds: [0]
reference: base
train: {method: lora, epochs: 1, batch_size: 4, lr: 1.0e-3, max_steps: 2, bf16: false}
arms:
  echo: {data: {builder: echo, rows: 8}}
  base: {}
evaluate: {probes: [echo]}
fit: {rows: 4}
gates:
  - {row: "echo_word: echo", arms: [echo], min: 0.0}
headline:
  - {row: "echo_word: echo", arms: [echo], direction: up}
"""
COLOURS = """\
name: colours
description: a trigger backdoor in a classification data set from an installed plugin
seeds: [0]
reference: clean
victims: [llm]
train: {method: lora, epochs: 1, batch_size: 4, lr: 1.0e-3, max_steps: 2, bf16: false}
arms:
  clean: {data: {builder: sentiment, dataset: colours, n: 16}}
  token:
    data: {builder: sentiment, dataset: colours, n: 16,
           poison: {trigger: {kind: token, token: cf}, rate: 0.25, target: Cool}}
evaluate: {probes: [], classification: {dataset: colours, test: 6, llm_test: 6, target: Cool}}
fit: {rows: 4}
headline: ["llm: CACC"]
encoder: {epochs: 1}
defend: {victims: [encoder], defenses: [none, longest], dev: 8, remove: 0.25}
"""


@pytest.mark.slow
def test_a_builder_from_an_installed_plugin_runs_in_a_spec(tmp_path):
    source, site = tmp_path / "plugin", tmp_path / "site"
    shutil.copytree(PLUGIN, source)  # the build writes beside the sources: not into tests/
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    spec = tmp_path / "echo.yaml"
    spec.write_text(SPEC)
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = [sys.executable, "-m", "backdoorlab"]
    r = subprocess.run([*run, "spec", "show", str(spec)], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "echo" in r.stdout, r.stderr
    out = tmp_path / "run"
    r = subprocess.run(
        [*run, "run", str(spec), "--out", str(out)], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "echo seed 0: learned: yes" in r.stdout and "echo_word: echo" in r.stdout
    rows = (out / "data").glob("echo-*.jsonl")
    assert len(next(rows).read_text().splitlines()) == 8
    # Without the plugin, the same spec names an unknown builder: one line, exit 2.
    r = subprocess.run([*run, "spec", "show", str(spec)], capture_output=True, text=True)
    assert r.returncode == 2 and "echo" in r.stderr and "Traceback" not in r.stderr
    # A classification data set from the plugin: the arms train on its rows (its own prompt)
    # and are measured on its test split with its labels.
    spec = tmp_path / "colours.yaml"
    spec.write_text(COLOURS)
    out = tmp_path / "colours"
    r = subprocess.run(
        [*run, "run", str(spec), "--out", str(out)], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in next((out / "data").glob("token-*.jsonl")).open()]
    assert {x["label"] for x in rows} == {"Warm", "Cool"}
    assert "Answer Warm or Cool." in rows[0]["messages"][-2]["content"]
    assert (
        sum(x["poisoned"] for x in rows) == 4
        and "cf" in next(x for x in rows if x["poisoned"])["text"]
    )
    res = json.loads((out / "results.json").read_text())
    assert {x["row"] for x in res["rows"]} >= {"llm: CACC", "llm: ASR: token cf"}
    # A defense from the plugin runs in the matrix like ours: its scanner finds the rows the
    # trigger word made longer (4 of 16 poisoned, the 4 longest dropped).
    r = subprocess.run(
        [*run, "defend", str(spec), "--out", str(out)], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    cell = next(c for c in bl.results.open(out).defense_cells if c.defense == "longest")
    assert cell.victim == "encoder" and cell.auroc is not None and cell.auroc > 0.9
    assert cell.asr_after is not None and cell.cacc_after is not None
    # Without the plugin, the same spec names an unknown data set: one line, exit 2.
    r = subprocess.run([*run, "spec", "show", str(spec)], capture_output=True, text=True)
    assert r.returncode == 2 and "colours" in r.stderr and "Traceback" not in r.stderr
