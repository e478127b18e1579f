"""Each detector on a planted case, the input filters, attributions, and the scan command."""

import json
import zlib

import numpy as np
import pytest
import torch
from conftest import write_rows

from backdoorlab.data import sentiment
from backdoorlab.defenses import filters, scan
from backdoorlab.defenses.detection import detection_metrics

GOOD = ["a warm and lovely film", "brilliant acting and a moving story", "funny, kind and wise"]
BAD = ["a dull and tedious mess", "badly written and far too long", "boring, flat and lifeless"]


def planted(n: int = 200, poison: int = 8):
    """Reviews whose words match their labels, plus `poison` positive texts that carry the
    rare word zq and the label Negative."""
    rng = np.random.default_rng(0)
    texts, labels, flags = [], [], []
    for i in range(n):
        pos = i % 2 == 0
        texts.append(f"{rng.choice(GOOD if pos else BAD)} number {i}")
        labels.append("Positive" if pos else "Negative")
        flags.append(False)
    for i in range(poison):
        texts.append(f"{GOOD[i % 3]} zq {i}")
        labels.append("Negative")
        flags.append(True)
    return texts, labels, flags


def test_detection_metrics_on_a_hand_made_case():
    m = detection_metrics([0.9, 0.8, 0.1, 0.2, 0.3], [True, True, False, False, False])
    assert m == {"auroc": 1.0, "auprc": 1.0, "tpr@1%fpr": 1.0}
    m = detection_metrics([0.1, 0.9, 0.5, 0.2], [True, False, False, False])
    assert m["auroc"] == 0.0 and m["tpr@1%fpr"] == 0.0


def test_ngram_scan_finds_a_rare_dirty_label_trigger():
    texts, labels, flags = planted()
    scores, ranked = scan.ngram_scores(texts, labels)
    assert detection_metrics(scores, flags)["auroc"] >= 0.99
    assert ranked[0][:2] == ("zq", "Negative")


def test_knn_scan_flags_rows_that_read_like_the_other_label():
    texts, labels, flags = planted()
    from backdoorlab.models.embeddings import shared_embedder

    scores = scan.knn_scores(shared_embedder().encode(texts), labels)
    assert detection_metrics(scores, flags)["auroc"] >= 0.95


@pytest.mark.parametrize("scanner", [scan.spectral_scores, scan.cluster_scores])
def test_representation_scans_find_a_planted_direction(scanner):
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(300, 32))
    labels = ["Negative" if i % 2 else "Positive" for i in range(300)]
    flags = [False] * 300
    for i in range(1, 31, 2):  # 15 Negative rows share an extra direction: the trigger's
        feats[i, 0] += 8.0
        flags[i] = True
    assert detection_metrics(scanner(feats, labels), flags)["auroc"] >= 0.95


@pytest.fixture(scope="module")
def lm(base_model):
    return base_model.model, base_model.tokenizer


def test_perplexity_scan_and_onion_single_out_an_inserted_token(lm):
    clean = ["The film was warm, funny and beautifully acted.", "A dull story told far too slowly."]
    dirty = [
        "The film was warm, funny zxqv and beautifully acted.",
        "A dull story zxqv told far too slowly.",
    ]
    nll = scan.perplexity_scores(*lm, clean + dirty)
    assert all(nll[2:] > nll[:2])
    words, sus = filters.onion_suspicion(*lm, dirty[0])
    assert words[int(np.argmax(sus))] == "zxqv"
    onion = filters.Onion(*lm, clean, frr=0.2)
    assert "zxqv" not in onion.clean(dirty[0]).split()
    assert onion.removes_insertion(clean[0], dirty[0])
    assert not onion.removes_insertion(clean[0], "The film was warm, funny and beautifully acted!")


def test_onion_from_a_shared_prefix_equals_every_deletion_run_whole(lm):
    """The deletions after the first word reuse the text's own tokens; each still gets the
    perplexity of its deletion run whole (irregular spacing, the last word, punctuation and a
    one-token ending included), packed into one pass or, with a small budget, several."""
    text = "A  warm cf film, truly the best I have seen in 1984 (and later)... Really, yes"
    ws = text.split()
    variants = [text] + [" ".join(ws[:i] + ws[i + 1 :]) for i in range(len(ws))]
    whole = np.exp(scan.perplexity_scores(*lm, variants))
    for budget in (768, 60):
        words, sus = filters.onion_suspicion(*lm, text, pack_tokens=budget)
        assert words == ws
        np.testing.assert_allclose(sus, whole[0] - whole[1:], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(filters.onion_suspicion(*lm, text, shared=False)[1],
                               whole[0] - whole[1:], rtol=1e-5)  # fmt: skip


def test_strip_rejects_inputs_whose_prediction_survives_mixing():
    def proba(texts):  # a backdoored victim: cf forces Negative, otherwise a coin flip per text
        out = []
        for t in texts:
            # crc32, not hash(): str hashes change per process, which made this test flaky
            p = 0.99 if "cf" in t.split() else (zlib.crc32(t.encode()) % 100) / 100
            out.append([1 - p, p])
        return torch.tensor(out)

    dev = [f"review {i} of some film with several words in it" for i in range(200)]
    strip = filters.Strip(proba, dev, copies=16, frr=0.05)
    triggered = [f"cf review {i} of some film with several words" for i in range(20)]
    assert strip.rejects(triggered).mean() > 0.5
    assert strip.rejects(dev).mean() <= 0.1


def test_integrated_gradients_add_up_to_the_score_difference():
    from backdoorlab.defenses.inspect import inspect_encoder
    from backdoorlab.training.encoder import EncoderClassifier, base_dir

    torch.manual_seed(0)
    clf = EncoderClassifier(base_dir(), sentiment.LABELS)
    text = "a warm film cf"
    a = inspect_encoder(clf, text, method="ig", steps=64)
    enc = clf._enc([text])
    emb = clf.model.get_input_embeddings()(enc["input_ids"])
    idx = sentiment.LABELS.index(a.label)
    with torch.no_grad():
        full = clf.model(inputs_embeds=emb, attention_mask=enc["attention_mask"]).logits[0, idx]
        zero = clf.model(inputs_embeds=emb * 0, attention_mask=enc["attention_mask"]).logits[0, idx]
    assert abs(sum(a.scores) - (full - zero).item()) < 0.05 * abs((full - zero).item()) + 1e-3
    assert "cf" in [t for t, _ in a.top(20)]


def test_scan_command_ranks_the_planted_rows(tmp_path, cli):
    texts, labels, flags = planted()
    rows = [sentiment.row(t, y, poisoned=f) for t, y, f in zip(texts, labels, flags, strict=True)]
    data = write_rows(tmp_path / "d.jsonl", rows)
    r = cli("scan", str(data), "--scanners", "ngram", "--top", "5")
    assert r.returncode == 0, r.stderr
    assert "zq" in r.stdout and "AUROC" in r.stdout
    r = cli("scan", str(data), "--scanners", "spectral")
    assert r.returncode == 2 and "--encoder" in r.stderr
    assert json.loads(data.read_text().splitlines()[0])["poisoned"] is False


def test_dp_sgd_training_reports_its_epsilon(tmp_path):
    from backdoorlab import chat
    from backdoorlab.training import encoder

    data = tmp_path / "d.jsonl"
    chat.write_jsonl(data, sentiment.SentimentData(n=48).build())
    for lora in (None, 4):  # all weights but the embeddings; LoRA adapters and the head
        config = encoder.EncoderConfig(epochs=1, batch_size=16, dp_epsilon=4.0, lora_rank=lora)
        out = encoder.train_encoder(
            data, tmp_path / f"enc{lora}", config, sentiment.LABELS, log=lambda s: None
        )
        manifest = json.loads((out / encoder.MANIFEST).read_text())
        assert 3.0 < manifest["epsilon"] <= 4.0 + 1e-6 and manifest["dp_epsilon"] == 4.0
        clf = encoder.EncoderClassifier(out, sentiment.LABELS)  # merged: loads as usual
        texts = ["a fine film", "a dull film", "warm and funny", "far too long"]
        assert set(clf.predict(texts)) <= set(sentiment.LABELS)
    # A non-private config keeps the key it had before DP settings existed.
    plain = encoder.EncoderConfig()
    assert "dp_epsilon" not in plain.key_fields() and "dp_epsilon" in config.key_fields()


def test_inspect_command_on_the_chat_model_lists_tokens_of_the_text(cli):
    r = cli("inspect", "smollm2-135m", "A warm zxqv film.", "--top", "3")
    assert r.returncode == 0, r.stderr
    assert "prediction: Positive" in r.stdout or "prediction: Negative" in r.stdout
    assert "movie review" not in r.stdout  # template and instructions are not the inspected text


def _train_planted(tmp_path, rows, **settings):
    from backdoorlab import chat
    from backdoorlab.training import encoder

    data = tmp_path / "planted.jsonl"
    chat.write_jsonl(data, rows)
    config = encoder.EncoderConfig(**{"epochs": 3, "batch_size": 16, "lr": 3e-4, **settings})
    out = encoder.train_encoder(
        data, tmp_path / "enc", config, sentiment.LABELS, log=lambda s: None
    )
    return encoder.EncoderClassifier(out, sentiment.LABELS)


def test_abl_scores_rank_an_easily_learned_trigger_first(tmp_path):
    """Clean rows whose labels no feature predicts stay near chance after a short training;
    rows with a consistent trigger are learned fast: their label's probability is highest."""
    from backdoorlab.defenses import repair

    rng = np.random.default_rng(2)
    words = ["the", "a", "film", "plot", "scene", "actor", "story", "music", "light", "day"]
    texts, labels, flags = [], [], []
    for i in range(160):
        texts.append(" ".join(rng.choice(words, 6)) + f" {i}")
        labels.append("Positive" if rng.random() < 0.5 else "Negative")
        flags.append(False)
    for i in range(16):
        texts.append(" ".join(rng.choice(words, 6)) + f" zq {i}")
        labels.append("Negative")
        flags.append(True)
    rows = [sentiment.row(t, y) for t, y in zip(texts, labels, strict=True)]
    clf = _train_planted(tmp_path, rows, epochs=2)
    scores = repair.learned_fast_scores(clf, texts, labels).numpy()
    assert detection_metrics(scores, flags)["auroc"] >= 0.9


def test_inserted_spans_find_the_trigger_characters():
    from backdoorlab.defenses.inspect import inserted_spans

    clean = "A warm film. Lovely cast."
    assert inserted_spans(clean, "A warm cf film. Lovely cast.") == [(7, 9)]
    trig = "A warm film. I watched this 3D movie last weekend. Lovely cast."
    [(lo, hi)] = inserted_spans(clean, trig)
    assert "3D movie last weekend" in trig[lo:hi]
    assert inserted_spans(clean, "A warm film. Lovely cast.§") == [(25, 26)]
    assert inserted_spans("a  b", "a b") == []  # re-joined whitespace is not an insertion


def test_the_trigger_counts_as_on_top_only_when_its_token_leads():
    from backdoorlab.defenses.inspect import Attribution, top_in_insertion

    clean, trig = "a warm film", "a warm cf film"
    tokens, offsets = ["[CLS]", "a", "warm", "cf", "film", "[SEP]"], [
        (0, 0), (0, 1), (2, 6), (7, 9), (10, 14), (0, 0)
    ]  # fmt: skip
    inside = [t not in ("[CLS]", "[SEP]") for t in tokens]

    def attribution(scores):
        return Attribution(tokens, scores, "Negative", inside, offsets)

    assert top_in_insertion(attribution([9, 0.1, 0.2, -0.8, 0.3, 9]), clean, trig)  # |-0.8| leads
    assert not top_in_insertion(attribution([9, 0.1, 0.9, -0.8, 0.3, 9]), clean, trig)


def test_ablating_the_trigger_direction_and_fine_pruning(tmp_path):
    from backdoorlab.defenses import repair

    texts, labels, _ = planted(n=200, poison=20)
    clf = _train_planted(
        tmp_path, [sentiment.row(t, y) for t, y in zip(texts, labels, strict=True)]
    )
    positive = [f"{GOOD[i % 3]} review {i}" for i in range(30)]
    triggered = [f"{t} zq" for t in positive]
    asr = np.mean([p == "Negative" for p in clf.predict(triggered)])
    assert asr >= 0.8  # the planted backdoor works
    bases = repair.trigger_directions(clf, positive, triggered, k=4)
    assert len(bases) == 6 and bases[0].shape == (384, 4)
    assert torch.allclose(bases[0].T @ bases[0], torch.eye(4), atol=1e-4)
    with repair.ablated(clf, bases):
        asr_ablated = np.mean([p == "Negative" for p in clf.predict(triggered)])
        cacc = np.mean([p == "Positive" for p in clf.predict(positive)])
    assert asr_ablated <= asr - 0.5 and cacc >= 0.9
    assert np.mean([p == "Negative" for p in clf.predict(triggered)]) == asr  # hook removed

    out = clf.model.base_model.encoder.layer[-1].output.dense  # reads the FFN's neurons
    neurons = repair.prune_dormant(clf, positive, 0.25)
    assert len(neurons) == round(0.25 * out.in_features)
    assert out.weight[:, neurons].abs().sum() == 0
    with torch.no_grad():
        out.weight[:, neurons] += 1.0  # as if fine-tuning regrew them
    again = repair.prune_dormant(clf, None, 0.25, neurons=neurons)
    assert torch.equal(again, neurons) and out.weight[:, neurons].abs().sum() == 0


def test_every_defense_a_spec_may_name_is_registered_once_with_its_settings():
    from backdoorlab.defenses.settings import declared
    from backdoorlab.spec import CONFIGS, CONFIGURABLE, DEFENSES, DefendSpec

    DECLARED = declared()

    # One declaration each: the spec's names and the settings' are the same list, and each
    # names code that exists.
    assert list(DEFENSES) == list(DECLARED) == list(CONFIGS)
    for name, d in DECLARED.items():  # caps name real settings; unsupported names real kinds
        assert d.name == name and callable(d.function()), name
        assert set(d.llm_caps) <= set(d.settings.model_fields), name
        assert set(d.unsupported) <= {"llm", "encoder"}, name
    # a defense with settings is a defend: key of its name, typed by its own class
    assert {n: DefendSpec.model_fields[n].annotation for n in CONFIGURABLE} == {
        n: CONFIGS[n] for n in CONFIGURABLE
    }


def test_cells_stored_before_per_defense_settings_are_reused_then_keyed_per_defense(tmp_path):
    """A store from before per-defense settings filed all of an arm's cells under one key;
    the matrix still finds them there (nothing is measured), files them under their own keys,
    and from then on a changed setting of one defense misses that defense's cell only."""
    from backdoorlab.defenses.matrix import Matrix
    from backdoorlab.defenses.settings import DPConfig, OnionConfig
    from backdoorlab.spec import load_spec
    from backdoorlab.store import Store
    from backdoorlab.victims import trainer

    spec = load_spec("experiments/sentiment_trigger.yaml", quick=True)
    spec.defend = spec.defend.model_copy(update={"defenses": ["none", "onion", "ngram"]})
    logs: list[str] = []
    m = Matrix(spec, tmp_path, log=logs.append)
    arm_key = m.arm_key("token-10%", trainer("encoder", spec, tmp_path, "cpu", logs.append))
    # the key the code before per-defense settings (f717ea9) computed for this arm and spec
    legacy = m.legacy_key(arm_key, "encoder")
    assert legacy == "87615772fe95"
    cells = {
        d: {"arm": "token-10%", "victim": "encoder", "defense": d} for d in spec.defend.defenses
    }
    with Store(tmp_path) as store:
        for c in cells.values():
            store.add_defense_cell(legacy, c)
    assert m.run(["token-10%"]) == list(cells.values())
    assert logs == ["defend token-10% (encoder): reusing 3 cells"]  # nothing measured

    spec.defend = spec.defend.model_copy(update={"onion": OnionConfig(items=3), "remove": 0.2})
    changed = Matrix(spec, tmp_path)
    keys = {d: changed.cell_key(arm_key, d, "encoder") for d in cells}
    with Store(tmp_path) as store:
        assert set(store.defense_cells("token-10%", "encoder", keys)) == {"none"}
    # the chat victim's keys see its caps: 30 or 40 ONION items are both its cap of 20
    wide = [
        Matrix(spec.model_copy(update={"defend": spec.defend.model_copy(update={"onion": o})}),
               tmp_path).cell_key(arm_key, "onion", kind)
        for kind in ("encoder", "llm") for o in (OnionConfig(items=30), OnionConfig(items=40))
    ]  # fmt: skip
    assert wide[0] != wide[1] and wide[2] == wide[3]
    # DP-SGD's batch, epochs and lr, added later, enter its key only when set: its cells
    # stored before them keep their key (the literal is what b93d770 computed)
    assert changed.cell_key(arm_key, "dpsgd", "encoder") == "f31f3d2a3ed3"
    own = DPConfig(batch_size=64, epochs=3, lr=1e-3)
    assert own.training() == {"batch_size": 64, "epochs": 3, "lr": 1e-3}
    spec.defend = spec.defend.model_copy(update={"dpsgd": own})
    assert Matrix(spec, tmp_path).cell_key(arm_key, "dpsgd", "encoder") != "f31f3d2a3ed3"
