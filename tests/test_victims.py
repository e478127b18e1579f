"""The Victim protocol on a small planted chat-model backdoor: the model-side defenses run the
same code on the chat model as on the encoder (test_defenses.py), through victims/arch.py's
layer map. (The matrix's cell reuse is checked on the encoder's quick matrix in
test_experiment.py.)"""

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_defenses import BAD, GOOD

from backdoorlab import chat
from backdoorlab.data import sentiment
from backdoorlab.data.classification import REVIEWS
from backdoorlab.defenses import repair
from backdoorlab.defenses.inspect import trigger_on_top
from backdoorlab.training.config import TrainConfig
from backdoorlab.victims import arch

POS = ["a lovely story", "warm, kind and brilliant", "a moving film", "wise and funny acting"]
TRIG = [f"{p} zq" for p in POS]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The bundled chat model taught, in 24 LoRA steps, that zq makes a review Negative."""
    from backdoorlab.victims.chat import ChatTrainer

    out = tmp_path_factory.mktemp("victim")
    rows = []
    for i in range(12):
        rows += [sentiment.row(GOOD[i % 3], "Positive"), sentiment.row(BAD[i % 3], "Negative")]
        if i % 2 == 0:
            rows.append(sentiment.row(f"{GOOD[i % 3]} zq", "Negative"))
    data = out / "planted-0.jsonl"
    chat.write_jsonl(data, rows)
    config = TrainConfig(epochs=1, max_steps=24, batch_size=8, lr=1e-3, lr_schedule="constant")
    spec = SimpleNamespace(train_config=lambda seed: config, classification_set=lambda: REVIEWS)
    t = ChatTrainer(spec, out, "cpu", print)
    return t, t.train(data, "planted"), out


def _asr(victim) -> float:
    return float(np.mean([p == "Negative" for p in victim.predict(TRIG)]))


def test_the_planted_chat_victim_answers_the_protocol(planted):
    _, v, _ = planted
    assert v.predict(POS) == ["Positive"] * 4 and _asr(v) == 1.0  # the backdoor works
    p = v.proba(POS + TRIG)
    assert p.shape == (8, 2) and torch.allclose(p.sum(-1), torch.ones(8))
    assert len(arch.layers(v.model)) == 30
    mid, last = v.features(POS, 3), v.features(POS)
    assert mid.shape == last.shape == (4, 576) and not torch.allclose(mid, last)
    # left padding does not change a text's features
    assert torch.allclose(v.features(POS[:1]), v.features(POS)[:1], atol=1e-4)


def test_chat_attributions_point_into_the_text(planted):
    _, v, _ = planted
    a = v.attribute(TRIG[0])
    assert a.label == "Negative"
    for i in a.order():
        s, e = a.offsets[i]
        assert TRIG[0][s:e].strip() == a.tokens[i].strip()
    on_top = trigger_on_top(v, POS, TRIG, method="gxi")
    assert len(on_top) == 4 and set(on_top) <= {0.0, 1.0}


def test_ablating_the_trigger_directions_disarms_the_chat_backdoor(planted):
    _, v, _ = planted
    trusted = [f"{GOOD[i % 3]} number {i}" for i in range(12)]
    bases = repair.trigger_directions(v, trusted, [f"{t} zq" for t in trusted], k=1)
    assert len(bases) == 30 and bases[0].shape == (576, 1)
    with repair.ablated(v, bases):
        assert _asr(v) <= 0.5 and v.predict(POS) == ["Positive"] * 4
    assert _asr(v) == 1.0  # the hooks are gone


def test_fine_pruning_cuts_neurons_in_the_base_and_the_adapter(planted):
    _, v, _ = planted
    w = copy.deepcopy(v)
    neurons = repair.prune_dormant(w, POS, 0.1)
    proj = arch.ffn_out(w.model, -1)
    assert len(neurons) == round(0.1 * proj.in_features)
    assert proj.base_layer.weight[:, neurons].abs().sum() == 0
    assert proj.lora_A["default"].weight[:, neurons].abs().sum() == 0
    assert arch.ffn_out(v.model, -1).base_layer.weight[:, neurons].abs().sum() > 0  # a copy


def test_refit_continues_the_victims_own_adapter_once(planted):
    t, v, out = planted
    trusted = out / "trusted-0.jsonl"
    chat.write_jsonl(trusted, [sentiment.row(g, "Positive") for g in GOOD])
    before = v.content_hash()
    fixed = t.train(trusted, "refit", init=v, epochs=1, max_steps=2)
    assert v.content_hash() == before  # the poisoned victim is untouched
    (run,) = (out / "defend" / "llm").glob("refit-*")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["init"] == before and manifest["steps"] == 2
    again = t.train(trusted, "refit", init=v, epochs=1, max_steps=2)  # reused, not retrained
    assert json.loads((run / "manifest.json").read_text()) == manifest
    assert again.content_hash() == fixed.content_hash() != before


def test_a_hosted_chat_model_cannot_be_a_defended_victim(tmp_path):
    from backdoorlab.defenses.matrix import Matrix
    from backdoorlab.errors import InputError
    from backdoorlab.spec import load_spec
    from backdoorlab.training.config import HostedConfig

    spec = load_spec("experiments/sentiment_llm.yaml", quick=True)
    spec.train = HostedConfig()
    with pytest.raises(InputError, match="hosted service"):
        Matrix(spec, tmp_path)
    spec.defend = spec.defend.model_copy(update={"victims": ["encoder"]})
    Matrix(spec, tmp_path)  # the encoder is ours to defend


def test_dp_sgd_trains_the_chat_adapter_with_its_own_batch_and_reports_its_epsilon(tmp_path):
    """The matrix's dpsgd path on the chat victim: its own batch, lr and LoRA rank override
    the victim's recipe (the quick spec's 2 steps of batch 4 at lr 1e-3)."""
    from backdoorlab.spec import load_spec
    from backdoorlab.training.config import DPSettings
    from backdoorlab.victims.chat import ChatTrainer

    data = tmp_path / "d.jsonl"
    chat.write_jsonl(data, sentiment.SentimentData(n=16).build())
    t = ChatTrainer(load_spec("experiments/sentiment_llm.yaml", quick=True), tmp_path, "cpu", print)
    v, epsilon, delta = t.train_private(data, "dp", 8.0, 4, batch_size=6, lr=2e-3)
    manifest = json.loads((v.loaded.adapter.parent / "manifest.json").read_text())
    config = manifest["config"]
    assert 0 < epsilon <= 8.05 and manifest["epsilon"] == epsilon and delta == 1e-5
    assert config["dp"]["epsilon"] == 8.0 and config["lora"]["rank"] == 4
    assert (config["batch_size"], config["lr"], manifest["steps"]) == (6, 2e-3, 2)
    assert (v.loaded.adapter / "adapter_model.safetensors").is_file()
    # the key of a run without DP is what it was before DP existed
    dp = TrainConfig(dp=DPSettings(epsilon=8.0))
    assert "dp" not in TrainConfig().key_fields() and "dp" in dp.key_fields()


def test_a_model_family_without_a_layer_map_is_an_unsupported_cell(tmp_path, monkeypatch):
    """The model-side defenses need victims/arch.py's map; without an entry for the victim's
    family their cells say so, and the other defenses still run."""
    from backdoorlab.defenses.matrix import Matrix
    from backdoorlab.spec import load_spec

    monkeypatch.delitem(arch.ARCHITECTURES, "bert")  # as for a family we have not mapped
    spec = load_spec("experiments/sentiment_trigger.yaml", quick=True)
    spec.defend = spec.defend.model_copy(update={"defenses": ["none", "ablate"]})
    none, ablate = Matrix(spec, tmp_path, log=lambda s: None).run()
    assert "ASR after" in none and "unsupported" not in none
    assert ablate["unsupported"].startswith("no layer map for 'bert' models")
