"""The attack x defense matrix: for each poisoned arm of a sentiment spec (encoder victim),
each defense's detection quality, attack success and clean accuracy before and after, and its
cost in seconds.

Data scanners score every training row, the `remove` fraction scoring highest is dropped and
the victim retrained on the rest; `abl` does the same with the rows a one-epoch model has
learned best (anti-backdoor-learning isolation). ONION cleans test inputs; STRIP rejects them.
`refit` fine-tunes the poisoned victim one more epoch on a small trusted clean set (the dev
reviews); `fineprune` first prunes the last layer's feed-forward neurons that the trusted set
leaves dormant, fine-tunes, and prunes them again; `ablate` projects the trigger directions
(the top 4 directions of the hidden-state differences between trusted reviews with and
without the trigger, at every layer) out of the victim at inference. `ablate` is given the true trigger, as a
defender would have it from `backdoorlab inspect` or a scan: an upper bound on what it does.
`dpsgd` trains the victim on the poisoned data with DP-SGD (Opacus) at a chosen epsilon.
`inspect` changes nothing: it measures how often gradient x input and integrated gradients
put the trigger at the top of a triggered review's attributions (what `backdoorlab inspect`
would show a person).

Each defense is one function registered by name (`REGISTRY`) over an `ArmContext`, the rows,
test sets and poisoned victim every defense of an arm shares; adding a defense is one more
registered function (and its name in `spec.DEFENSES`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import atomic, chat
from ..data import sentiment
from ..data.sentiment import SentimentData
from ..errors import InputError
from ..evaluate.aggregate import rate
from ..evaluate.metric import CACC, Metric, eval_sets, hits
from ..rundata import build_data, digest
from ..train import encoder
from . import filters, repair, scan
from . import inspect as attribution
from .detection import detection_metrics


def _mean(xs: list[float]) -> str:
    return rate({0: xs}, unit="reviews").short() if xs else "-"


def _poisoned(arm) -> bool:
    return isinstance(arm.data, SentimentData) and arm.data.poison is not None


class Matrix:
    def __init__(self, spec, out: Path, *, log: Callable[[str], None] = print, device: str = "cpu"):
        self.spec, self.out, self.log, self.device = spec, out, log, device
        self.ds = spec.defend
        ce = spec.evaluate.classification
        if ce is None:
            raise InputError(f"spec {spec.name}: defend needs evaluate.classification")
        self.target = ce.target
        self.test = sentiment.balanced(sentiment.split("test", ce.split_seed), ce.test)
        self.dev = sentiment.balanced(sentiment.split("dev", ce.split_seed), self.ds.dev)
        self._lm = None

    @functools.cached_property
    def data(self) -> dict[str, Path]:
        """Each arm's rows, built on first use: after the arms asked for are checked."""
        return build_data(self.spec, self.out, self.device)

    def lm(self) -> tuple[Any, Any]:
        if self._lm is None:
            from ..models import load

            loaded = load(self.spec.model, device=self.device)
            self._lm = (loaded.model, loaded.tokenizer)
        return self._lm

    def _train(self, arm: str, data: Path, tag: str, init: Path | None = None, **settings: Any):
        config = self.spec.encoder.model_copy(update=settings)
        d = self.out / "defend" / f"{arm}-{tag}-{data.stem.rsplit('-', 1)[-1]}"
        encoder.train_encoder(
            data, d, config, sentiment.LABELS, init=init, log=lambda s: None, device=self.device
        )
        return d

    def cells(self, arm: str, defenses: list[str], keep: Callable[[dict[str, Any]], None]) -> None:
        """Measure each defense on one arm, handing every finished cell to `keep`."""
        ctx = ArmContext(self, arm)
        for name in defenses:
            self.log(f"defend {arm}: {name}")
            keep(REGISTRY[name](ctx, name, time.perf_counter()))

    def cached_cells(self, arm: str) -> list[dict[str, Any]]:
        """`cells`, stored per arm under a key of everything that decides them (the arm's data,
        the victim and defense settings, the model, the test set) and saved after every
        defense, so an interrupted matrix, or one with a defense added, measures only what is
        missing. Each cell keeps the seconds measured when it was computed."""
        settings = [
            self.spec.model, self.spec.encoder.model_dump(),
            self.ds.model_dump(exclude={"arms", "defenses"}),
            self.spec.evaluate.classification.model_dump(),
            hashlib.sha256(self.data[arm].read_bytes()).hexdigest(),
        ]  # fmt: skip
        path = self.out / "defend" / "cells" / f"{arm}-{digest(settings)}.json"
        stored = {c["defense"]: c for c in json.loads(path.read_text())} if path.is_file() else {}
        missing = [d for d in self.ds.defenses if d not in stored]
        if len(missing) < len(self.ds.defenses):
            self.log(f"defend {arm}: reusing {len(self.ds.defenses) - len(missing)} cells")

        def keep(c: dict[str, Any]) -> None:
            stored[c["defense"]] = c
            atomic.write_json(path, list(stored.values()))

        if missing:
            self.cells(arm, missing, keep)
        return [stored[d] for d in self.ds.defenses]

    def run(self, arms: list[str] | None = None) -> list[dict[str, Any]]:
        chosen = arms or self.ds.arms or [n for n, a in self.spec.arms.items() if _poisoned(a)]
        unknown = [a for a in chosen if a not in self.spec.arms]
        if unknown:
            raise InputError(f"no arm {unknown[0]!r} in spec {self.spec.name}")
        clean = [a for a in chosen if not _poisoned(self.spec.arms[a])]
        if clean:
            raise InputError(f"arm {clean[0]!r} is not a poisoned sentiment arm")
        cells = [c for arm in chosen for c in self.cached_cells(arm)]
        atomic.write_json(self.out / "defenses.json", cells)  # what the report shows
        return cells


class ArmContext:
    """What every defense of one poisoned arm shares: its rows, the test sets, the poisoned
    victim trained once and its scores (the "before" of every cell)."""

    def __init__(self, m: Matrix, arm: str):
        self.m, self.arm, self.ds = m, arm, m.ds
        self.trig = m.spec.arms[arm].data.poison.trigger
        self.sets = eval_sets(m.test, [self.trig], m.target)
        # the reviews the trigger was inserted into, aligned with sets[asr_key]
        self.untriggered = [t for t, y in m.test if y != m.target]
        self.asr_key = Metric("ASR", self.trig.name())
        self.ft_key = Metric("false trigger", self.trig.name())
        self.rows = chat.read_jsonl(m.data[arm])
        self.texts = [r["text"] for r in self.rows]
        self.labels = [r["label"] for r in self.rows]
        self.poisoned = [bool(r.get("poisoned")) for r in self.rows]
        self.trusted_texts = [t for t, _ in m.dev]
        t0 = time.perf_counter()
        self.before_dir = m._train(arm, m.data[arm], "poisoned")
        self.clf = self.classifier(self.before_dir)
        self.before = self.score(self.clf.predict)
        self.base_cost = time.perf_counter() - t0

    def classifier(self, d: Path) -> encoder.EncoderClassifier:
        return encoder.EncoderClassifier(d, sentiment.LABELS, self.m.device)

    def score(self, predict, sets=None) -> dict[Metric, list[float]]:
        return {m: hits(predict(x), g, t) for m, (x, g, t) in (sets or self.sets).items()}

    def cell(
        self,
        defense: str,
        after: dict[Metric, list[float]] | None,
        seconds: float,
        base: dict[Metric, list[float]] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """`base`: the before-scores on the items `after` covers, when not all of them."""
        base = base or self.before
        after = after or base
        return {
            "arm": self.arm, "defense": defense, "seconds": round(seconds, 1),
            "ASR before": _mean(base[self.asr_key]), "ASR after": _mean(after[self.asr_key]),
            "CACC before": _mean(base[CACC]), "CACC after": _mean(after[CACC]),
            "false trigger after": _mean(after[self.ft_key]),
            **extra,
        }  # fmt: skip

    def filtered(self, defense: str, scores: np.ndarray, t0: float) -> dict[str, Any]:
        """Drop the `remove` fraction of rows scoring highest, retrain, measure."""
        det = detection_metrics(scores, self.poisoned)
        drop = set(np.argsort(-scores)[: round(self.ds.remove * len(self.rows))].tolist())
        kept = [r for i, r in enumerate(self.rows) if i not in drop]
        caught = sum(self.poisoned[i] for i in drop)
        path = self.m.out / "defend" / f"{self.arm}-{defense}-filtered.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, chat.dumps_jsonl(kept))
        d = self.m._train(self.arm, path, f"filtered-{defense}")
        after = self.score(self.classifier(d).predict)
        return self.cell(
            defense, after, time.perf_counter() - t0,
            AUROC=f"{det['auroc']:.3f}", AUPRC=f"{det['auprc']:.3f}",
            **{"TPR@1%FPR": f"{det['tpr@1%fpr']:.3f}"},
            note=f"dropped {len(drop)} rows, {caught} of {sum(self.poisoned)} poisoned",
        )  # fmt: skip


# name -> (the arm's context, the defense's name, its start time) -> the finished cell. A
# defense is one function here; spec.DEFENSES lists the names a spec may use (a test checks
# both agree).
Defense = Callable[[ArmContext, str, float], dict[str, Any]]
REGISTRY: dict[str, Defense] = {}


def defense(*names: str) -> Callable[[Defense], Defense]:
    def register(fn: Defense) -> Defense:
        for name in names:
            REGISTRY[name] = fn
        return fn

    return register


@defense("none")
def _none(a: ArmContext, name: str, t0: float) -> dict[str, Any]:
    return a.cell("none", None, a.base_cost)


@defense(*scan.SCANNERS)
def _scanner(a: ArmContext, name: str, t0: float) -> dict[str, Any]:
    scores = scan.scan(
        a.texts, a.labels, [name], lm=a.m.lm, features=lambda: a.clf.features(a.texts).numpy()
    ).scores[name]
    return a.filtered(name, scores, t0)


@defense("abl")
def _abl(a: ArmContext, name: str, t0: float) -> dict[str, Any]:
    early = a.classifier(a.m._train(a.arm, a.m.data[a.arm], "abl-1epoch", epochs=1))
    return a.filtered("abl", repair.learned_fast_scores(early, a.texts, a.labels).numpy(), t0)


@defense("ablate")
def _ablate(a: ArmContext, name: str, t0: float) -> dict[str, Any]:
    rng = random.Random(0)
    bases = repair.trigger_directions(
        a.clf, a.trusted_texts, [a.trig.insert(t, rng) for t in a.trusted_texts]
    )
    with repair.ablated(a.clf, bases):
        after = a.score(a.clf.predict)
    return a.cell(
        "ablate", after, time.perf_counter() - t0,
        note=f"directions from {len(a.trusted_texts)} trusted reviews +/- the trigger",
    )  # fmt: skip


@defense("inspect")
def _inspect(a: ArmContext, name: str, t0: float) -> dict[str, Any]:
    n = a.ds.inspect_items
    clean = a.untriggered[:n]
    found = {
        m: attribution.trigger_on_top(a.clf, clean, a.sets[a.asr_key][0][:n], method=m)
        for m in ("gxi", "ig")
    }
    return a.cell(
        "inspect", None, time.perf_counter() - t0,
        **{"trigger on top": f"gxi {_mean(found['gxi'])}; ig {_mean(found['ig'])}"},
        note=f"detection only: the share of {len(clean)} triggered test reviews whose "
        "top-attributed token is the trigger",
    )  # fmt: skip


@defense("onion")
def _onion(a: ArmContext, name: str, t0: float) -> dict[str, Any]:
    n = a.ds.onion_items
    onion = filters.Onion(*a.m.lm(), [t for t, _ in a.m.dev[:n]], a.ds.frr)
    small = {m: (x[:n], g[:n], t) for m, (x, g, t) in a.sets.items()}
    pre = a.score(a.clf.predict, small)
    cleaned = {m: ([onion.clean(s) for s in x], g, t) for m, (x, g, t) in small.items()}
    after = a.score(a.clf.predict, cleaned)
    caught = [
        onion.removes_insertion(c, s)
        for c, s in zip(a.untriggered[:n], small[a.asr_key][0], strict=True)
    ]
    clean_words = np.concatenate([onion.suspicion(s)[1] for s in small[CACC][0]])
    return a.cell(
        "onion", after, time.perf_counter() - t0, base=pre,
        note=f"before and after on the first {n} items of each set; trigger removed "
        f"from {np.mean(caught):.3f} of triggered items, "
        f"{np.mean(clean_words > onion.threshold):.3f} of clean test words removed",
    )  # fmt: skip


@defense("strip")
def _strip(a: ArmContext, name: str, t0: float) -> dict[str, Any]:
    strip = filters.Strip(lambda xs: a.clf.proba(xs), [t for t, _ in a.m.dev], frr=a.ds.frr)
    x_clean, g_clean, _ = a.sets[CACC]
    x_trig, _, _ = a.sets[a.asr_key]
    ent_clean, ent_trig = strip.entropies(x_clean), strip.entropies(x_trig)
    rej_clean, rej_trig = ent_clean < strip.threshold, ent_trig < strip.threshold
    pred_clean, pred_trig = a.clf.predict(x_clean), a.clf.predict(x_trig)
    after = dict(a.before)
    after[CACC] = [
        float(p == g and not r) for p, g, r in zip(pred_clean, g_clean, rej_clean, strict=True)
    ]
    after[a.asr_key] = [
        float(p == a.m.target and not r) for p, r in zip(pred_trig, rej_trig, strict=True)
    ]
    det = detection_metrics(
        np.concatenate([-ent_trig, -ent_clean]),
        [True] * len(ent_trig) + [False] * len(ent_clean),
    )
    return a.cell(
        "strip", after, time.perf_counter() - t0, AUROC=f"{det['auroc']:.3f}",
        note=f"FRR {rej_clean.mean():.3f}, FAR {1 - rej_trig.mean():.3f}",
    )  # fmt: skip


@defense("refit", "fineprune")
def _refit(a: ArmContext, name: str, t0: float) -> dict[str, Any]:
    trusted = a.m.out / "defend" / "trusted-dev.jsonl"
    trusted.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(trusted, chat.dumps_jsonl(sentiment.row(t, y) for t, y in a.m.dev))
    init, note = a.before_dir, f"1 epoch on {len(a.m.dev)} trusted dev rows"
    if name == "fineprune":
        pruned = a.classifier(a.before_dir)
        neurons = repair.prune_dormant(pruned, a.trusted_texts, a.ds.prune)
        init = a.m.out / "defend" / f"{a.arm}-pruned-{a.before_dir.name}"
        with atomic.directory(init) as tmp:
            pruned.model.save_pretrained(tmp, safe_serialization=True)
        note = f"pruned {len(neurons)} dormant neurons of the last layer; " + note
    fixed = a.classifier(a.m._train(a.arm, trusted, name, init=init, epochs=1))
    if name == "fineprune":
        repair.prune_dormant(fixed, None, a.ds.prune, neurons=neurons)
    return a.cell(name, a.score(fixed.predict), time.perf_counter() - t0, note=note)


@defense("dpsgd")
def _dpsgd(a: ArmContext, name: str, t0: float) -> dict[str, Any]:
    d = a.m._train(
        a.arm, a.m.data[a.arm], "dpsgd", dp_epsilon=a.ds.dp_epsilon, lora_rank=a.ds.dp_lora_rank
    )
    eps = json.loads((d / encoder.MANIFEST).read_text())["epsilon"]
    return a.cell(
        "dpsgd", a.score(a.classifier(d).predict), time.perf_counter() - t0,
        note=f"DP-SGD (Opacus), epsilon {eps:.2f} at delta {a.m.spec.encoder.dp_delta}"
        + (f", LoRA rank {a.ds.dp_lora_rank}" if a.ds.dp_lora_rank else ""),
    )  # fmt: skip
