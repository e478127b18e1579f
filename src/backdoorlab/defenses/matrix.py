"""The attack x defense matrix: for each poisoned arm of a sentiment spec and each victim (the
encoder classifier, the chat model), each defense's detection quality, attack success and
clean accuracy before and after, and its cost in seconds.

Every defense reaches its victim through victims.Victim and victims.Trainer, so one function
per defense serves both. Data scanners score every training row, the `remove` fraction
scoring highest is dropped and the victim retrained on the rest; `abl` does the same with the
rows a short training has learned best (anti-backdoor-learning isolation). ONION cleans test
inputs; STRIP rejects them. `refit` fine-tunes the poisoned victim one more epoch on a small
trusted clean set (the dev reviews; the chat victim refits its adapter); `fineprune` first
prunes the last block's feed-forward neurons that the trusted set leaves dormant, fine-tunes,
and prunes them again; `ablate` projects the trigger directions (the top 4 directions of the
hidden-state differences between trusted reviews with and without the trigger, at every
layer) out of the victim at inference. `ablate` is given the true trigger, as a defender would
have it from `backdoorlab inspect` or a scan: an upper bound on what it does. `dpsgd` trains
the victim on the poisoned data with DP-SGD (Opacus) at a chosen epsilon. `inspect` changes
nothing: it measures how often gradient x input and integrated gradients put the trigger at
the top of a triggered review's attributions (what `backdoorlab inspect` would show a person).

Each defense is one function over an `ArmContext` (the rows, test sets and poisoned victim
every defense of an arm and victim shares) and its own settings, declared once in
`settings.declared()` (its code, settings class, chat-victim caps, the victim kinds that cannot
run it); another package adds one under the entry-point group `backdoorlab.defenses`.
A defense a victim kind cannot run is a cell saying why.
Cells are numbers in the results store, each keyed by what decides it (`cell_key`);
defenses/cells.py formats them.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import atomic, chat
from ..data.sentiment import SentimentData
from ..errors import InputError
from ..evaluate.aggregate import rate
from ..evaluate.metric import CACC, Metric, eval_sets, hits
from ..rundata import build_data, digest
from ..store import Store
from ..training.config import HostedConfig
from ..victims import Trainer, Victim, arch, trainer
from . import filters, repair, scan, settings
from .detection import detection_metrics
from .inspect import trigger_on_top


def _rate(xs: list[float]) -> dict[str, Any] | None:
    return dataclasses.asdict(rate({0: xs}, unit="reviews")) if xs else None


def _poisoned(arm) -> bool:
    return isinstance(arm.data, SentimentData) and arm.data.poison is not None


class Matrix:
    def __init__(self, spec, out: Path, *, log: Callable[[str], None] = print, device: str = "cpu"):
        self.spec, self.out, self.log, self.device = spec, out, log, device
        self.ds = spec.defend
        ce = spec.evaluate.classification
        if ce is None:
            raise InputError(f"spec {spec.name}: defend needs evaluate.classification")
        if "llm" in self.ds.victims and isinstance(spec.train, HostedConfig):
            raise InputError(
                f"spec {spec.name}: defend.victims has llm, but its chat model trains on a "
                "hosted service, where a defense cannot reach the weights; defend the encoder"
            )
        self.target = ce.target
        self.dataset = cs = spec.classification_set()
        test = cs.balanced(cs.split("test", ce.split_seed), ce.test)
        # the chat model classifies the first llm_test, as in `run`
        self.test = {"encoder": test, "llm": cs.balanced(test, ce.llm_test or ce.test)}
        self.dev = cs.balanced(cs.split("dev", ce.split_seed), self.ds.dev)
        self._lm = None

    @functools.cached_property
    def data(self) -> dict[str, Path]:
        """Each arm's rows, built on first use: after the arms asked for are checked."""
        return build_data(self.spec, self.out, self.device)

    def lm(self) -> tuple[Any, Any]:
        """The base chat model: the perplexity scanner's and ONION's language model."""
        if self._lm is None:
            from ..models import load

            loaded = load(self.spec.model, device=self.device)
            self._lm = (loaded.model, loaded.tokenizer)
        return self._lm

    @functools.cache  # noqa: B019 (one matrix per command: the cache lives as long as it)
    def scan_scores(self, arm: str, name: str) -> np.ndarray:
        """A victim-agnostic scanner's scores, computed once for every victim of the arm."""
        rows = chat.read_jsonl(self.data[arm])
        texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
        return scan.scan(texts, labels, [name], lm=self.lm).scores[name]

    def arm_key(self, arm: str, t: Trainer) -> list[Any]:
        """What decides every cell of an arm on one victim: the model, the victim's training
        settings, the test, the arm's data."""
        return [
            self.spec.model, t.settings(), self.spec.evaluate.classification.key_fields(),
            hashlib.sha256(self.data[arm].read_bytes()).hexdigest(),
        ]  # fmt: skip

    def cell_key(self, arm_key: list[Any], defense: str, kind: str) -> str:
        """A cell's key: its arm's, its defense's own settings on this victim and the shared
        settings it reads; another defense's settings do not enter it."""
        conf = self.ds.config(defense, kind)
        shared = {u: getattr(self.ds, u) for u in conf.uses}
        return digest([arm_key, defense, conf.key_fields(), shared])

    def legacy_key(self, arm_key: list[Any], kind: str) -> str:
        """The one key stores written before per-defense settings filed all of an arm's cells
        under on a victim: every defend setting, flat, as the spec then had them."""
        flat: dict[str, Any] = {"remove": self.ds.remove, "frr": self.ds.frr, "dev": self.ds.dev}
        for old, (name, field) in settings.LEGACY.items():
            flat[old] = getattr(self.ds.config(name, kind), field)
        flat["llm"] = {
            old: self.ds.llm.get(name, {}).get(field)
            for old, (name, field) in settings.LEGACY.items()
            if old in settings.LEGACY_CAPS
        }
        model, trainer_settings, classification, data = arm_key
        return digest([model, trainer_settings, flat, classification, data])

    def cells(self, arm: str, kind: str, store: Store) -> list[dict[str, Any]]:
        """The arm's cells for one victim: those the store has under the same settings are
        reused; each missing one is measured and stored as soon as it is done, so an
        interrupted matrix, one with a defense added or one with a defense's setting changed
        measures only what is missing. Each cell keeps the seconds measured when it was
        computed."""
        t = trainer(kind, self.spec, self.out, self.device, self.log)
        arm_key = self.arm_key(arm, t)
        keys = {d: self.cell_key(arm_key, d, kind) for d in self.ds.defenses}
        stored = store.defense_cells(arm, kind, keys)
        if len(stored) < len(keys):  # cells an earlier version stored, filed under their keys
            legacy = self.legacy_key(arm_key, kind)
            found = store.defense_cells(arm, kind, {d: legacy for d in keys if d not in stored})
            for d, c in found.items():
                store.add_defense_cell(keys[d], c)
            stored.update(found)
        missing = [d for d in self.ds.defenses if d not in stored]
        if len(missing) < len(self.ds.defenses):
            self.log(f"defend {arm} ({kind}): reusing {len(self.ds.defenses) - len(missing)} cells")
        ctx = None
        for name in missing:
            self.log(f"defend {arm} ({kind}): {name}")
            why = settings.declared()[name].unsupported.get(kind)
            if why is None:
                ctx = ctx or ArmContext(self, arm, t)
                try:
                    run = settings.declared()[name].function()
                    c = run(ctx, name, self.ds.config(name, kind), time.perf_counter())
                except arch.UnsupportedArchitecture as e:  # a model family without a layer map
                    why = str(e)
            if why is not None:
                c = {"arm": arm, "victim": kind, "defense": name, "unsupported": why}
            store.add_defense_cell(keys[name], c)
            stored[name] = c
        return [stored[d] for d in self.ds.defenses]

    def run(self, arms: list[str] | None = None) -> list[dict[str, Any]]:
        chosen = arms or self.ds.arms or [n for n, a in self.spec.arms.items() if _poisoned(a)]
        unknown = [a for a in chosen if a not in self.spec.arms]
        if unknown:
            raise InputError(f"no arm {unknown[0]!r} in spec {self.spec.name}")
        clean = [a for a in chosen if not _poisoned(self.spec.arms[a])]
        if clean:
            raise InputError(f"arm {clean[0]!r} is not a poisoned sentiment arm")
        with Store(self.out) as store:
            return [c for arm in chosen for v in self.ds.victims for c in self.cells(arm, v, store)]


class ArmContext:
    """What every defense of one poisoned arm and victim shares: its rows, the test sets, the
    poisoned victim trained once and its scores (the "before" of every cell)."""

    def __init__(self, m: Matrix, arm: str, t: Trainer):
        self.m, self.arm, self.t = m, arm, t
        self.ds = m.ds
        self.trig = m.spec.arms[arm].data.poison.trigger
        test = m.test[t.kind]
        self.sets = eval_sets(test, [self.trig], m.target)
        # the reviews the trigger was inserted into, aligned with sets[asr_key]
        self.untriggered = [x for x, y in test if y != m.target]
        self.asr_key = Metric("ASR", self.trig.name())
        self.ft_key = Metric("false trigger", self.trig.name())
        self.rows = chat.read_jsonl(m.data[arm])
        self.texts = [r["text"] for r in self.rows]
        self.labels = [r["label"] for r in self.rows]
        self.poisoned = [bool(r.get("poisoned")) for r in self.rows]
        self.trusted_texts = [x for x, _ in m.dev]
        t0 = time.perf_counter()
        self.victim: Victim = t.poisoned(arm, m.data[arm])
        self.before = self.score(self.victim.predict)
        self.base_cost = time.perf_counter() - t0

    def tag(self, what: str) -> str:
        return f"{self.arm}-{what}"

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
            "arm": self.arm, "victim": self.t.kind, "defense": defense,
            "seconds": round(seconds, 1),
            "ASR before": _rate(base[self.asr_key]), "ASR after": _rate(after[self.asr_key]),
            "CACC before": _rate(base[CACC]), "CACC after": _rate(after[CACC]),
            "false trigger after": _rate(after[self.ft_key]),
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
        after = self.score(self.t.train(path, self.tag(f"filtered-{defense}")).predict)
        return self.cell(
            defense, after, time.perf_counter() - t0,
            AUROC=det["auroc"], AUPRC=det["auprc"], **{"TPR@1%FPR": det["tpr@1%fpr"]},
            note=f"dropped {len(drop)} rows, {caught} of {sum(self.poisoned)} poisoned",
        )  # fmt: skip


# Each defense's code: (the arm's context, the defense's name, its settings on this victim,
# its start time) -> the finished cell, declared by name in settings.declared() (with its
# settings class, caps and the victims it cannot run on).


def none(a: ArmContext, name: str, conf: settings.DefenseConfig, t0: float) -> dict[str, Any]:
    return a.cell("none", None, a.base_cost)


def scanner(a: ArmContext, name: str, conf: settings.Filtered, t0: float) -> dict[str, Any]:
    if name in scan.NEEDS_FEATURES:  # the victim's own representations of the rows
        scores = scan.scan(
            a.texts, a.labels, [name], features=lambda: a.victim.features(a.texts).numpy()
        ).scores[name]
    else:
        scores = a.m.scan_scores(a.arm, name)
    return a.filtered(name, scores, t0)


def abl(a: ArmContext, name: str, conf: settings.Filtered, t0: float) -> dict[str, Any]:
    early = a.t.train(a.m.data[a.arm], a.tag("abl-early"), epochs=a.t.abl_epochs)
    return a.filtered("abl", repair.learned_fast_scores(early, a.texts, a.labels).numpy(), t0)


def ablate(a: ArmContext, name: str, conf: settings.AblateConfig, t0: float) -> dict[str, Any]:
    rng = random.Random(0)
    k = conf.directions
    bases = repair.trigger_directions(
        a.victim, a.trusted_texts, [a.trig.insert(t, rng) for t in a.trusted_texts], k=k
    )
    with repair.ablated(a.victim, bases):
        after = a.score(a.victim.predict)
    return a.cell(
        "ablate", after, time.perf_counter() - t0,
        note=f"{k} direction{'s' * (k > 1)} per block from {len(a.trusted_texts)} trusted "
        "reviews +/- the trigger",
    )  # fmt: skip


def inspect(a: ArmContext, name: str, conf: settings.InspectConfig, t0: float) -> dict[str, Any]:
    n = conf.items
    clean = a.untriggered[:n]
    triggered = a.sets[a.asr_key][0][:n]
    found = {m: _rate(trigger_on_top(a.victim, clean, triggered, method=m)) for m in ("gxi", "ig")}
    return a.cell(
        "inspect", None, time.perf_counter() - t0, **{"trigger on top": found},
        note=f"detection only: the share of {len(clean)} triggered test reviews whose "
        "top-attributed token is the trigger",
    )  # fmt: skip


def onion(a: ArmContext, name: str, conf: settings.OnionConfig, t0: float) -> dict[str, Any]:
    n = conf.items
    onion = filters.Onion(*a.m.lm(), [t for t, _ in a.m.dev[:n]], a.ds.frr)
    small = {m: (x[:n], g[:n], t) for m, (x, g, t) in a.sets.items()}
    pre = a.score(a.victim.predict, small)
    cleaned = {m: ([onion.clean(s) for s in x], g, t) for m, (x, g, t) in small.items()}
    after = a.score(a.victim.predict, cleaned)
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


def strip(a: ArmContext, name: str, conf: settings.StripConfig, t0: float) -> dict[str, Any]:
    strip = filters.Strip(a.victim.proba, [t for t, _ in a.m.dev], copies=conf.copies, frr=a.ds.frr)
    x_clean, g_clean, _ = a.sets[CACC]
    x_trig, _, _ = a.sets[a.asr_key]
    ent_clean, ent_trig = strip.entropies(x_clean), strip.entropies(x_trig)
    rej_clean, rej_trig = ent_clean < strip.threshold, ent_trig < strip.threshold
    pred_clean, pred_trig = a.victim.predict(x_clean), a.victim.predict(x_trig)
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
        "strip", after, time.perf_counter() - t0, AUROC=det["auroc"],
        note=f"{conf.copies} mixed copies per input; FRR {rej_clean.mean():.3f}, "
        f"FAR {1 - rej_trig.mean():.3f}",
    )  # fmt: skip


def refit(
    a: ArmContext, name: str, conf: settings.Trusted | settings.FinepruneConfig, t0: float
) -> dict[str, Any]:
    trusted = a.m.out / "defend" / "trusted-dev.jsonl"
    trusted.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(trusted, chat.dumps_jsonl(a.m.dataset.row(t, y) for t, y in a.m.dev))
    init, note = a.victim, f"1 epoch on {len(a.m.dev)} trusted dev rows"
    if name == "fineprune":
        init = copy.deepcopy(a.victim)  # pruned in memory: the poisoned victim stays whole
        neurons = repair.prune_dormant(init, a.trusted_texts, conf.share)
        note = f"pruned {len(neurons)} dormant neurons of the last block; " + note
    fixed = a.t.train(trusted, a.tag(name), init=init, epochs=1)
    if name == "fineprune":
        repair.prune_dormant(fixed, None, conf.share, neurons=neurons)
    return a.cell(name, a.score(fixed.predict), time.perf_counter() - t0, note=note)


def dpsgd(a: ArmContext, name: str, conf: settings.DPConfig, t0: float) -> dict[str, Any]:
    rank, training = conf.lora_rank, conf.training()
    victim, eps, delta = a.t.train_private(
        a.m.data[a.arm], a.tag("dpsgd"), conf.epsilon, rank, **training
    )
    return a.cell(
        "dpsgd", a.score(victim.predict), time.perf_counter() - t0,
        note=f"DP-SGD (Opacus), epsilon {eps:.2f} at delta {delta}"
        + (f", LoRA rank {rank}" if rank else "")
        + "".join(f", {k.replace('_', ' ')} {v:g}" for k, v in training.items()),
    )  # fmt: skip
