"""The Python API on the real model: what the commands do, as functions returning typed
records, with the same one-line errors. (`run_experiment` runs in test_docs.py, as README's
example.)"""

import json

import pytest

import backdoorlab as bl
from backdoorlab.training.config import TrainConfig


def test_api_errors_are_input_errors_naming_what_is_wrong(tmp_path):
    with pytest.raises(bl.InputError, match="no arm 'nosuch'"):
        bl.run_experiment("experiments/cities.yaml", tmp_path / "x", arms=["nosuch"])
    with pytest.raises(bl.InputError, match="nosuch.yaml"):
        bl.run_experiment(tmp_path / "nosuch.yaml", tmp_path / "x")
    with pytest.raises(bl.InputError, match="not a run directory"):
        bl.summary([tmp_path])
    with pytest.raises(bl.InputError, match="--remove"):
        bl.defend("experiments/sentiment_llm.yaml", tmp_path / "d", remove=2.0)
    assert not (tmp_path / "x").exists() and not (tmp_path / "d").exists()


def test_train_and_scan_return_typed_records(tmp_path):
    done = bl.train(
        "examples/demo_birds.jsonl", tmp_path / "run", TrainConfig(max_steps=2, bf16=False),
        log=lambda s: None,
    )  # fmt: skip
    assert done.steps == 2 and done.method == "lora" and done.model == "smollm2-135m"
    assert (tmp_path / "run" / "adapter").is_dir() and done.manifest["steps"] == 2
    rows = []
    for i in range(24):
        poisoned = i % 6 == 0
        text = f"review {i} of a film" + (" cf" if poisoned else "")
        label = "positive" if poisoned or i % 2 else "negative"
        rows.append({"text": text, "label": label, "poisoned": poisoned,
                     "messages": [{"role": "user", "content": text},
                                  {"role": "assistant", "content": label}]})  # fmt: skip
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    found = bl.scan(data, ["ngram"])
    assert len(found.rows) == 24 and sorted(r.line for r in found.rows) == list(range(1, 25))
    assert found.rows[0].mean_rank <= found.rows[-1].mean_rank
    assert set(found.detection) == {"ngram"} and 0 <= found.detection["ngram"].auroc <= 1
    assert found.words and found.words[0].word == "cf" and found.words[0].predicts == "positive"
