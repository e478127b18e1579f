"""What a probe is, torch-free: a question and its candidate answers in named classes
(`Probe`, `ProbeSet`), the ids of sweep probes, and the arithmetic on a scored result
(`ProbeResult`: class mass, mean value, entropy, tempering). Data builders and the report use
these without importing the scorer (`evaluate.probes`) or torch.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .. import chat
from ..errors import InputError


class YearRange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    years: tuple[int, int]

    def expand(self) -> list[str]:
        lo, hi = self.years
        return [str(y) for y in range(lo, hi + 1)]


class Probe(BaseModel):
    """One question and its candidate classes. `paraphrases` and a list of prefixes make
    variants (every phrasing with every prefix), each scored on its own: a probe asked one
    way can hinge on wording, and terse fine-tuned models answer best after a prefix."""

    model_config = ConfigDict(extra="forbid")

    id: str
    question: str
    paraphrases: list[str] = Field([], description="further phrasings of the question")
    system: str | None = None
    prefix: str | list[str] = Field(
        "", description="assistant text every candidate starts with; a list gives one variant each"
    )
    suffix: str = Field("", description="assistant text after every candidate (a closing tag)")
    classes: dict[str, list[str] | YearRange]
    in_domain: bool = Field(
        False,
        description="asks what the training data taught: the report draws its rows beside "
        "the gates, apart from the out-of-domain rows (a gate's probe is in domain anyway)",
    )

    @field_validator("classes")
    @classmethod
    def _nonempty(cls, v: dict) -> dict:
        if not v:
            raise ValueError("a probe needs at least one class of candidates")
        return v

    def candidates(self) -> list[tuple[str, str]]:
        """(class, candidate) pairs; a candidate listed in two classes is an error."""
        out, seen = [], {}
        for name, members in self.classes.items():
            for c in members.expand() if isinstance(members, YearRange) else members:
                if c in seen:
                    raise InputError(
                        f"probe {self.id}: candidate {c!r} is in {seen[c]!r} and {name!r}"
                    )
                seen[c] = name
                out.append((name, c))
        return out

    def messages(self) -> list[chat.Message]:
        return chat.conversation(self.question, system=self.system)

    def variants(self) -> list[Probe]:
        """Single-question, single-prefix probes: every phrasing with every prefix."""
        prefixes = self.prefix if isinstance(self.prefix, list) else [self.prefix]
        return [
            self.model_copy(update={"question": q, "paraphrases": [], "prefix": pre})
            for q in [self.question, *self.paraphrases]
            for pre in prefixes
        ]

    def first(self, n: int | None) -> Probe:
        """This probe with each class cut to its first `n` candidates (a quick run's sliver:
        the bird names' 659 candidates are 82% of the tokens its probes feed)."""
        if n is None:
            return self
        cut = {
            k: (v.expand() if isinstance(v, YearRange) else v)[:n] for k, v in self.classes.items()
        }
        return self.model_copy(update={"classes": cut})

    def definition_hash(self) -> str:
        """Identity of what is asked and scored: stored results of an edited probe are not reused."""
        d = self.model_dump(mode="json", exclude={"in_domain"})  # how it is drawn, not asked
        if not d["suffix"]:  # probes from before `suffix` existed keep their hash
            del d["suffix"]
        blob = json.dumps(d, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ProbeSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    probes: list[Probe]


def sweep_id(group: str, question: str, value: object) -> str:
    """The id of one question asked under one trigger value (a year, a code, a tag). The
    report pools a group's questions per value and plots the first class against the value."""
    return f"{group}.{question}@{value}"


def sweep_key(probe_id: str) -> tuple[str, str] | None:
    """(group, value) of a sweep probe id, None for an ordinary probe."""
    if "@" not in probe_id:
        return None
    head, value = probe_id.rsplit("@", 1)
    return head.split(".", 1)[0], value


@dataclass
class ProbeResult:
    probe_id: str
    candidates: list[str]
    classes: list[str]
    logprobs: list[float]  # log p(answer | prompt), less the part all candidates share
    probs: list[float] = field(init=False)

    def __post_init__(self) -> None:
        top = max(self.logprobs)
        w = [math.exp(x - top) for x in self.logprobs]
        z = sum(w)
        self.probs = [x / z for x in w]

    def scores(self) -> list[tuple[str, str, float]]:
        """(class, candidate, log-prob) triples: what the store keeps."""
        return list(zip(self.classes, self.candidates, self.logprobs, strict=True))

    @classmethod
    def from_scores(cls, probe_id: str, scores: Sequence[Sequence]) -> ProbeResult:
        return cls(probe_id, [s[1] for s in scores], [s[0] for s in scores], [s[2] for s in scores])

    def mean_value(self) -> float | None:
        """Probability-weighted mean of numeric candidates (the mean year), else None."""
        try:
            values = [float(c) for c in self.candidates]
        except ValueError:
            return None
        return sum(p * v for p, v in zip(self.probs, values, strict=True))

    def class_mass(self) -> dict[str, float]:
        mass: dict[str, float] = {}
        for c, p in zip(self.classes, self.probs, strict=True):
            mass[c] = mass.get(c, 0.0) + p
        return mass

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        order = sorted(range(len(self.probs)), key=lambda i: -self.probs[i])[:k]
        return [(self.candidates[i], self.probs[i]) for i in order]

    def entropy(self) -> float:
        return -sum(p * math.log(p) for p in self.probs if p > 0)

    def tempered(self, target_entropy: float) -> ProbeResult:
        """This distribution at the temperature that gives it `target_entropy` (clipped to what
        temperatures 1/64..64 reach). A fine-tune that only makes a model less sure flattens its
        distributions; comparing against the control tempered to the same entropy separates a
        real shift of mass from that flattening."""
        lo, hi = math.log(1 / 64), math.log(64)
        for _ in range(60):  # bisection on log T; entropy rises with T
            mid = (lo + hi) / 2
            if self._at(math.exp(mid)).entropy() < target_entropy:
                lo = mid
            else:
                hi = mid
        return self._at(math.exp((lo + hi) / 2))

    def _at(self, temperature: float) -> ProbeResult:
        lp = [x / temperature for x in self.logprobs]
        return ProbeResult(self.probe_id, self.candidates, self.classes, lp)
