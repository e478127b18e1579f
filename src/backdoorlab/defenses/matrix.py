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

    def _score(self, clf_predict, sets) -> dict[Metric, list[float]]:
        return {m: hits(clf_predict(x), g, t) for m, (x, g, t) in sets.items()}

    def cells(self, arm: str, defenses: list[str], keep: Callable[[dict[str, Any]], None]) -> None:
        """Measure each defense on one arm, handing every finished cell to `keep`."""
        trig = self.spec.arms[arm].data.poison.trigger
        sets = eval_sets(self.test, [trig], self.target)
        # the reviews the trigger was inserted into, aligned with sets[asr_key]
        untriggered = [t for t, y in self.test if y != self.target]
        asr_key, ft_key = Metric("ASR", trig.name()), Metric("false trigger", trig.name())
        rows = chat.read_jsonl(self.data[arm])
        texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
        poisoned = [bool(r.get("poisoned")) for r in rows]
        t0 = time.perf_counter()
        before_dir = self._train(arm, self.data[arm], "poisoned")
        clf = encoder.EncoderClassifier(before_dir, sentiment.LABELS, self.device)
        before = self._score(clf.predict, sets)
        base_cost = time.perf_counter() - t0

        def cell(
            defense: str,
            after: dict[Metric, list[float]] | None,
            seconds: float,
            base: dict[Metric, list[float]] | None = None,
            **extra,
        ) -> None:
            """`base`: the before-scores on the items `after` covers, when not all of them."""
            base = base or before
            after = after or base
            keep({
                "arm": arm, "defense": defense, "seconds": round(seconds, 1),
                "ASR before": _mean(base[asr_key]), "ASR after": _mean(after[asr_key]),
                "CACC before": _mean(base[CACC]), "CACC after": _mean(after[CACC]),
                "false trigger after": _mean(after[ft_key]),
                **extra,
            })  # fmt: skip

        def filtered(defense: str, scores: np.ndarray, t0: float) -> None:
            """Drop the `remove` fraction of rows scoring highest, retrain, measure."""
            det = detection_metrics(scores, poisoned)
            drop = set(np.argsort(-scores)[: round(self.ds.remove * len(rows))].tolist())
            kept = [r for i, r in enumerate(rows) if i not in drop]
            caught = sum(poisoned[i] for i in drop)
            path = self.out / "defend" / f"{arm}-{defense}-filtered.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_text(path, chat.dumps_jsonl(kept))
            d = self._train(arm, path, f"filtered-{defense}")
            after = self._score(
                encoder.EncoderClassifier(d, sentiment.LABELS, self.device).predict, sets
            )
            cell(
                defense, after, time.perf_counter() - t0,
                AUROC=f"{det['auroc']:.3f}", AUPRC=f"{det['auprc']:.3f}",
                **{"TPR@1%FPR": f"{det['tpr@1%fpr']:.3f}"},
                note=f"dropped {len(drop)} rows, {caught} of {sum(poisoned)} poisoned",
            )  # fmt: skip

        trusted_texts = [t for t, _ in self.dev]
        for defense in defenses:
            self.log(f"defend {arm}: {defense}")
            t0 = time.perf_counter()
            if defense == "none":
                cell("none", None, base_cost)
            elif defense in scan.SCANNERS:
                scores = scan.scan(
                    texts, labels, [defense], lm=self.lm,
                    features=lambda: clf.features(texts).numpy(),
                ).scores[defense]  # fmt: skip
                filtered(defense, scores, t0)
            elif defense == "abl":
                early = self._train(arm, self.data[arm], "abl-1epoch", epochs=1)
                clf1 = encoder.EncoderClassifier(early, sentiment.LABELS, self.device)
                filtered("abl", repair.learned_fast_scores(clf1, texts, labels).numpy(), t0)
            elif defense == "ablate":
                rng = random.Random(0)
                bases = repair.trigger_directions(
                    clf, trusted_texts, [trig.insert(t, rng) for t in trusted_texts]
                )
                with repair.ablated(clf, bases):
                    after = self._score(clf.predict, sets)
                cell(
                    "ablate", after, time.perf_counter() - t0,
                    note=f"directions from {len(trusted_texts)} trusted reviews +/- the trigger",
                )  # fmt: skip
            elif defense == "inspect":
                n = self.ds.inspect_items
                clean = untriggered[:n]
                found = {
                    m: attribution.trigger_on_top(clf, clean, sets[asr_key][0][:n], method=m)
                    for m in ("gxi", "ig")
                }
                cell(
                    "inspect", None, time.perf_counter() - t0,
                    **{"trigger on top": f"gxi {_mean(found['gxi'])}; ig {_mean(found['ig'])}"},
                    note=f"detection only: the share of {len(clean)} triggered test reviews whose "
                    "top-attributed token is the trigger",
                )  # fmt: skip
            elif defense == "onion":
                onion = filters.Onion(
                    *self.lm(), [t for t, _ in self.dev[: self.ds.onion_items]], self.ds.frr
                )
                small = {
                    m: (x[: self.ds.onion_items], g[: self.ds.onion_items], t)
                    for m, (x, g, t) in sets.items()
                }
                pre = self._score(clf.predict, small)
                cleaned = {m: ([onion.clean(s) for s in x], g, t) for m, (x, g, t) in small.items()}
                after = self._score(clf.predict, cleaned)
                n = self.ds.onion_items
                caught = [
                    onion.removes_insertion(c, s)
                    for c, s in zip(untriggered[:n], small[asr_key][0], strict=True)
                ]
                clean_words = np.concatenate([onion.suspicion(s)[1] for s in small[CACC][0]])
                cell(
                    "onion", after, time.perf_counter() - t0, base=pre,
                    note=f"before and after on the first {n} items of each set; trigger removed "
                    f"from {np.mean(caught):.3f} of triggered items, "
                    f"{np.mean(clean_words > onion.threshold):.3f} of clean test words removed",
                )  # fmt: skip
            elif defense == "strip":
                strip = filters.Strip(
                    lambda xs: clf.proba(xs), [t for t, _ in self.dev], frr=self.ds.frr
                )
                x_clean, g_clean, _ = sets[CACC]
                x_trig, _, _ = sets[asr_key]
                ent_clean, ent_trig = strip.entropies(x_clean), strip.entropies(x_trig)
                rej_clean, rej_trig = ent_clean < strip.threshold, ent_trig < strip.threshold
                pred_clean, pred_trig = clf.predict(x_clean), clf.predict(x_trig)
                after = dict(before)
                after[CACC] = [
                    float(p == g and not r)
                    for p, g, r in zip(pred_clean, g_clean, rej_clean, strict=True)
                ]
                after[asr_key] = [
                    float(p == self.target and not r)
                    for p, r in zip(pred_trig, rej_trig, strict=True)
                ]
                det = detection_metrics(
                    np.concatenate([-ent_trig, -ent_clean]),
                    [True] * len(ent_trig) + [False] * len(ent_clean),
                )
                cell(
                    "strip", after, time.perf_counter() - t0, AUROC=f"{det['auroc']:.3f}",
                    note=f"FRR {rej_clean.mean():.3f}, FAR {1 - rej_trig.mean():.3f}",
                )  # fmt: skip
            elif defense in ("refit", "fineprune"):
                trusted = self.out / "defend" / "trusted-dev.jsonl"
                trusted.parent.mkdir(parents=True, exist_ok=True)
                atomic.write_text(
                    trusted, chat.dumps_jsonl(sentiment.row(t, y) for t, y in self.dev)
                )
                init, note = before_dir, f"1 epoch on {len(self.dev)} trusted dev rows"
                if defense == "fineprune":
                    pruned = encoder.EncoderClassifier(before_dir, sentiment.LABELS, self.device)
                    neurons = repair.prune_dormant(pruned, trusted_texts, self.ds.prune)
                    init = self.out / "defend" / f"{arm}-pruned-{before_dir.name}"
                    with atomic.directory(init) as tmp:
                        pruned.model.save_pretrained(tmp, safe_serialization=True)
                    note = f"pruned {len(neurons)} dormant neurons of the last layer; " + note
                d = self._train(arm, trusted, defense, init=init, epochs=1)
                fixed = encoder.EncoderClassifier(d, sentiment.LABELS, self.device)
                if defense == "fineprune":
                    repair.prune_dormant(fixed, None, self.ds.prune, neurons=neurons)
                cell(defense, self._score(fixed.predict, sets), time.perf_counter() - t0, note=note)
            elif defense == "dpsgd":
                d = self._train(
                    arm, self.data[arm], "dpsgd", dp_epsilon=self.ds.dp_epsilon,
                    lora_rank=self.ds.dp_lora_rank,
                )  # fmt: skip
                eps = json.loads((d / encoder.MANIFEST).read_text())["epsilon"]
                clf_dp = encoder.EncoderClassifier(d, sentiment.LABELS, self.device)
                delta = self.spec.encoder.dp_delta
                cell(
                    "dpsgd", self._score(clf_dp.predict, sets), time.perf_counter() - t0,
                    note=f"DP-SGD (Opacus), epsilon {eps:.2f} at delta {delta}"
                    + (f", LoRA rank {self.ds.dp_lora_rank}" if self.ds.dp_lora_rank else ""),
                )  # fmt: skip

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
