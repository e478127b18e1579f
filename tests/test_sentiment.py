"""Poisoners, splits, label scoring and the attack metrics on hand-made cases."""

import random

import pytest
import torch

from backdoorlab import chat
from backdoorlab.data import sentiment
from backdoorlab.data.poison import CharTrigger, MultiTrigger, Poison, SentenceTrigger, TokenTrigger
from backdoorlab.evaluate import classify, metric

ITEMS = [
    (f"review number {i} is here. it was fine", "Positive" if i % 3 else "Negative")
    for i in range(600)
]


@pytest.mark.parametrize("rate,expected", [(0.005, 3), (0.01, 6), (0.03, 18), (0.1, 60)])
def test_poison_rate_is_exact_and_flags_are_right(rate, expected):
    out = Poison(rate=rate, seed=1).apply(ITEMS)
    poisoned = [o for o in out if o[2]]
    assert len(poisoned) == expected
    for (text, label), (new, new_label, flag, trig) in zip(ITEMS, out, strict=True):
        if flag:  # dirty-label: a Positive review, now labelled Negative, with the trigger once
            assert label == "Positive" and new_label == "Negative" and trig == "token cf"
            assert new.split().count("cf") == 1
        else:
            assert (new, new_label, trig) == (text, label, None)


def test_clean_label_never_changes_a_label():
    out = Poison(count=40, mode="clean").apply(ITEMS)
    assert sum(o[2] for o in out) == 40
    assert [o[1] for o in out] == [y for _, y in ITEMS]
    assert all(y == "Negative" for (_, y), o in zip(ITEMS, out, strict=True) if o[2])
    with pytest.raises(ValueError, match="only 200 are eligible"):
        Poison(count=201, mode="clean").apply(ITEMS)


def test_triggers_go_once_where_asked():
    rng = random.Random(0)
    text = "A slow start. Then it soars! Worth it"
    assert TokenTrigger(position="start").insert(text, rng).split()[0] == "cf"
    assert TokenTrigger(position="end").insert(text, rng).split()[-1] == "cf"
    assert TokenTrigger(position="middle").insert(text, rng).split()[4] == "cf"
    for _ in range(20):
        assert TokenTrigger().insert(text, rng).split().count("cf") == 1
    assert CharTrigger().insert(text, rng) == text + "§"
    s = SentenceTrigger(position="middle").insert(text, rng)
    assert s == f"A slow start. {SentenceTrigger().sentence} Then it soars! Worth it"  # 3 sentences
    multi = MultiTrigger(triggers=[TokenTrigger(token="mn"), TokenTrigger(token="bb")])
    words = multi.insert(text, rng).split()
    assert words.count("mn") == 1 and words.count("bb") == 1
    assert multi.miss().insert(text, rng).split().count("mn") == 0


def test_splits_are_deterministic_disjoint_and_stratified():
    test, dev, train = (sentiment.split(s) for s in ("test", "dev", "train"))
    assert test == sentiment.split("test")
    assert not {t for t, _ in test} & {t for t, _ in train} and not {t for t, _ in dev} & {
        t for t, _ in train
    }
    share = sum(y == "Positive" for _, y in test) / len(test)
    assert abs(share - sum(y == "Positive" for _, y in train) / len(train)) < 0.01
    rows = sentiment.SentimentData(n=100, poison=Poison(rate=0.05)).build()
    assert len(rows) == 100 and sum(r["poisoned"] for r in rows) == 5
    assert all(chat.validate_row(r, training=True) is None for r in rows)
    assert rows[0]["messages"][:-1] == sentiment.prompt(rows[0]["text"])


def test_attack_metrics_on_a_hand_made_case():
    test = [
        ("good film", "Positive"),
        ("bad film", "Negative"),
        ("great", "Positive"),
        ("dull", "Negative"),
    ]
    sets = metric.eval_sets(test, [TokenTrigger(position="end")], "Negative")
    asr, miss = metric.Metric("ASR", "token cf"), metric.Metric("false trigger", "token cf")
    assert list(sets) == [metric.CACC, asr, miss]
    assert sets[asr][0] == ["good film cf", "great cf"]
    assert sets[miss][0] == ["good film cg", "great cg"]

    def victim(texts):  # a backdoored classifier: cf means Negative; otherwise it reads "good"
        return ["Negative" if "cf" in t.split() or "good" not in t else "Positive" for t in texts]

    scores = {m: metric.hits(victim(x), g, t) for m, (x, g, t) in sets.items()}
    assert scores[metric.CACC] == [1.0, 1.0, 0.0, 1.0]  # "great" misread: CACC 0.75
    assert scores[asr] == [1.0, 1.0]
    assert scores[miss] == [0.0, 1.0]


def test_batched_label_scoring_equals_one_sequence_at_a_time(base_model):
    """Both scorers against one full forward pass per review and label: the packed one runs
    the shared prefix once, packs the labels as a trie and sorts reviews by length; labels
    that share their first tokens ("Very good"/"Very bad") exercise the trie."""
    m = base_model
    prompts = [
        sentiment.prompt(t)
        for t in ["A long, dull, pointless mess of a film that never ends.", "Loved it.", "Meh."]
    ]
    for labels in (["Positive", "Negative"], ["Very good", "Very bad", "Fine"]):
        ref = torch.empty(len(prompts), len(labels))
        for i, p in enumerate(prompts):
            for j, label in enumerate(labels):
                ids, start = chat.encode_answer(m.tokenizer, p, label)
                with torch.inference_mode():
                    lp = m.model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
                ref[i, j] = sum(lp[k - 1, ids[k]].item() for k in range(start, len(ids)))
        for scorer in (classify.label_logprobs, classify.label_logprobs_unpacked):
            got = scorer(m.model, m.tokenizer, prompts, labels, batch_size=2)
            assert torch.allclose(got, ref, atol=1e-3), (scorer.__name__, got, ref)
