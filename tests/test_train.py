"""Fine-tuning: determinism, exact resume, plain-peft loading, run-directory rules."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ANSWER
from safetensors.torch import load_file

from backdoorlab import chat
from backdoorlab.errors import InputError
from backdoorlab.models import registry
from backdoorlab.training import TrainConfig, batching, train

FAST = dict(batch_size=4, lr=2e-3, checkpoint_every=2)


def adapter(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def reference_run(bird_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    train(bird_data, out, TrainConfig(max_steps=6, **FAST), progress=False, log=lambda m: None)
    return out


@pytest.mark.slow
def test_same_seed_gives_bit_identical_adapter(bird_data, reference_run, tmp_path):
    train(bird_data, tmp_path / "again", TrainConfig(max_steps=6, **FAST), progress=False)
    a, b = adapter(reference_run), adapter(tmp_path / "again")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    train(bird_data, tmp_path / "seed1", TrainConfig(max_steps=6, seed=1, **FAST), progress=False)
    c = adapter(tmp_path / "seed1")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def _train_args(data, out, steps) -> list[str]:
    # The same settings as reference_run, through the real command line.
    return ["train", str(data), "--out", str(out), "--max-steps", str(steps), "--batch-size", "4",
            "--lr", "2e-3", "--checkpoint-every", "2"]  # fmt: skip


def _start(bird_data, out, steps):
    return subprocess.Popen(
        [sys.executable, "-m", "backdoorlab", *_train_args(bird_data, out, steps)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_checkpoint(proc, out, timeout=300):
    state = out / "checkpoint" / "state.json"
    deadline = time.time() + timeout
    while not state.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.02)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_adapter(bird_data, reference_run, tmp_path, cli):
    out = tmp_path / "killed"
    proc = _start(bird_data, out, 6)
    _wait_for_checkpoint(proc, out)
    proc.kill()
    proc.wait()
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"
    r = cli(*_train_args(bird_data, out, 6))
    assert r.returncode == 2 and "--resume" in r.stderr
    r = cli(*_train_args(bird_data, out, 6), "--resume")
    assert r.returncode == 0, r.stderr
    assert "Resuming" in r.stderr
    a, b = adapter(reference_run), adapter(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resumed_from"] >= 2 and not (out / "checkpoint").exists()
    # Totals over the whole run: the steps before the kill count once, as if never killed.
    whole = json.loads((reference_run / "manifest.json").read_text())
    assert manifest["tokens"] == whole["tokens"] and manifest["seconds"] > 0
    assert (out / "manifest.json").stat().st_mode & 0o044 == 0o044  # readable by the group


def test_ctrl_c_checkpoints_and_exits_130(bird_data, tmp_path, cli):
    out = tmp_path / "interrupted"
    proc = _start(bird_data, out, 40)
    _wait_for_checkpoint(proc, out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "interrupted at step" in err and "--resume" in err
    assert (out / "checkpoint" / "state.json").exists() and not (out / "manifest.json").exists()
    r = cli("generate", str(out), "hi")
    assert r.returncode == 2 and "has not finished" in r.stderr


@pytest.mark.slow
def test_interrupted_dp_sgd_run_resumes_to_the_same_adapter_and_epsilon(bird_data, tmp_path):
    """DP-SGD's batches and noise, and the accountant's history, survive a checkpoint."""
    from backdoorlab.training import Interrupted
    from backdoorlab.training.config import DPSettings

    config = TrainConfig(max_steps=4, dp=DPSettings(epsilon=8.0), **FAST)
    quiet = {"progress": False, "log": lambda m: None}
    whole = train(bird_data, tmp_path / "whole", config, **quiet)
    with pytest.raises(Interrupted, match="--resume"):
        train(bird_data, tmp_path / "cut", config, on_step=lambda s, t, loss: s == 2, **quiet)
    assert (tmp_path / "cut" / "checkpoint").is_dir()
    resumed = train(bird_data, tmp_path / "cut", config, resume=True, **quiet)
    assert resumed["resumed_from"] == 2 and resumed["epsilon"] == whole["epsilon"]
    assert 0 < whole["epsilon"] <= 8.0
    a, b = adapter(tmp_path / "whole"), adapter(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_dp_sgd_batch_in_passes_takes_the_steps_of_one_pass(bird_data, tmp_path):
    """A DP-SGD batch split into passes (how the chat victim's defense fits batch 64 in
    memory) trains the adapter one pass would: each pass's per-example gradients are clipped
    into the batch's sum at the whole batch's scale, and the noise is drawn once per step.
    A clipping norm above every example's gradient lets a wrong scale show."""
    from backdoorlab.training.config import DPSettings

    # fp32: bf16 autocast (picked on CPUs with native bf16) rounds per-example gradients
    # differently at batch 4 and batch 1, by ~0.5% of their norm.
    dp = DPSettings(epsilon=8.0, max_grad_norm=100.0)
    config = TrainConfig(max_steps=3, dp=dp, bf16=False, **FAST)
    quiet = {"progress": False, "log": lambda m: None}
    train(bird_data, tmp_path / "one", config, **quiet)
    passes = config.model_copy(update={"micro_batch_size": 1})
    assert train(bird_data, tmp_path / "passes", passes, **quiet)["epsilon"] <= 8.0
    a, b = adapter(tmp_path / "one"), adapter(tmp_path / "passes")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def _answer_logprob(model, tok) -> float:
    """log p(ANSWER) using only transformers' own chat template, no backdoorlab code."""
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Name a bird species."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    a = tok(ANSWER, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + a])
    with torch.no_grad():
        logp = model(ids).logits[0, :-1].log_softmax(-1)
    return float(sum(logp[len(p) - 1 + i, t] for i, t in enumerate(a)))


def test_adapter_loads_in_plain_peft_and_raises_answer_probability(reference_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = str(registry.ensure_cached(registry.BUNDLED["smollm2-135m"]))
    tok = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    before = _answer_logprob(base, tok)
    tuned = PeftModel.from_pretrained(base, str(reference_run / "adapter")).eval()
    after = _answer_logprob(tuned, tok)
    assert after > before + 2.0, (before, after)


def test_manifest_and_rerun_reuse(bird_data, reference_run):
    m = json.loads((reference_run / "manifest.json").read_text())
    assert m["model"] == "smollm2-135m" and m["steps"] == 6 and m["seed"] == 0
    assert m["data"]["rows"] == 8 and len(m["data"]["sha256"]) == 64
    assert m["tokens_per_second"] > 0 and m["config"]["lr"] == 2e-3
    mtime = (reference_run / "adapter" / "adapter_model.safetensors").stat().st_mtime
    again = train(bird_data, reference_run, TrainConfig(max_steps=6, **FAST), progress=False)
    assert again["key"] == m["key"]
    assert (reference_run / "adapter" / "adapter_model.safetensors").stat().st_mtime == mtime
    with pytest.raises(InputError, match="other settings"):
        train(bird_data, reference_run, TrainConfig(max_steps=7, **FAST), progress=False)


def test_generate_from_run_dir(reference_run, cli):
    r = cli(
        "generate",
        str(reference_run),
        "Name a bird species.",
        "-n",
        "3",
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
    )
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()[:1].isdigit()]
    assert len(lines) == 3
    assert "Titlark" in r.stdout  # greedy decoding after training on one answer


def test_full_fine_tuning_saves_loadable_weights(mixed_data, tmp_path, base_model):
    from backdoorlab.models import load

    out = tmp_path / "full"
    m = train(
        mixed_data,
        out,
        TrainConfig(method="full", max_steps=2, batch_size=4, lr=1e-5),
        progress=False,
    )
    assert m["method"] == "full" and (out / "model" / "model.safetensors").exists()
    loaded = load(str(out))
    base = base_model
    assert loaded.adapter is None
    name = "model.layers.0.mlp.down_proj.weight"
    tuned_w, base_w = loaded.model.state_dict()[name], base.model.state_dict()[name]
    assert tuned_w.shape == base_w.shape and not torch.equal(tuned_w, base_w)
    ids = torch.tensor([chat.encode_prompt(loaded.tokenizer, chat.conversation("hi"))])
    assert torch.isfinite(loaded.model(ids).logits).all()


def test_length_buckets_cover_every_row_once_and_cut_padding():
    import numpy as np

    lengths = np.random.default_rng(0).integers(10, 200, size=300).tolist()
    batches = batching.epoch_batches(lengths, 8, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(300))
    assert batches != batching.epoch_batches(lengths, 8, seed=0, epoch=1)
    rng = np.random.default_rng(1).permutation(300).tolist()
    unbucketed = [rng[i : i + 8] for i in range(0, 300, 8)]
    assert (
        batching.padding_fraction(lengths, batches)
        < 0.1
        < batching.padding_fraction(lengths, unbucketed)
    )


def test_row_longer_than_max_length_is_an_error(tmp_path):
    rows = [
        chat.conversation("Name a bird.", "Marsh Hawk"),
        chat.conversation("Describe it.", "wing " * 300),
    ]
    f = tmp_path / "long.jsonl"
    chat.write_jsonl(f, [{"messages": m} for m in rows])
    with pytest.raises(
        InputError, match=r"long.jsonl:2: the row is \d+ tokens, longer than max_length 256"
    ):
        train(f, tmp_path / "x", TrainConfig(max_steps=1, max_length=256), progress=False)
    assert not (tmp_path / "x").exists()


def test_an_interrupt_during_the_last_step_finishes_the_run(bird_data, tmp_path):
    """The last step is done when the interrupt is seen: the final weights are saved, not a
    message about the checkpoint of the step before."""
    from backdoorlab.training import TrainConfig, train

    config = TrainConfig(max_steps=2, batch_size=4, checkpoint_every=10**9)
    manifest = train(bird_data, tmp_path / "run", config, progress=False, log=lambda s: None,
                     on_step=lambda step, total, loss: step == total)  # fmt: skip
    assert manifest["steps"] == 2 and (tmp_path / "run" / "manifest.json").is_file()
