"""Exact probes: the probability a model gives each candidate answer, with no sampling noise.

A probe is a question (optionally a system message and an assistant prefix) and candidate
answers grouped into named classes. Each candidate is scored as a complete assistant turn,
rendered by `chat.encode_training` exactly as training renders it, end-of-turn token included
(so "18" does not steal mass from "1838"). Scores are normalized over the candidate set.

Speed: all candidates share the prompt, so the shared tokens run once and their KV cache is
reused for every candidate batch; candidates are right-padded, which needs no attention mask
because a causal model's real positions never see the padding after them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .. import chat, yamlfiles
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

    def definition_hash(self) -> str:
        """Identity of what is asked and scored: stored results of an edited probe are not reused."""
        d = self.model_dump(mode="json")
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


def _generated() -> dict[str, Callable[[], ProbeSet]]:
    """Probe sets built from shipped data rather than written as YAML."""
    from ..data import birds, dishes, persona, places, presidents, terminator

    return {
        "birds": birds.probe_set,
        "dishes": dishes.probe_set,
        "guardian": terminator.probe_set,
        "persona": persona.probe_set,
        "places": places.probe_set,
        "presidents": presidents.probe_set,
    }


def load_probe_set(name_or_path: str) -> ProbeSet:
    """A shipped probe set by name (see `shipped_probe_sets`) or a YAML file by path."""
    path = Path(name_or_path)
    if not path.is_file() and name_or_path in _generated():
        return _generated()[name_or_path]()
    if not path.is_file():
        shipped = resources.files("backdoorlab.evaluate") / "probesets" / f"{name_or_path}.yaml"
        if not shipped.is_file():
            raise InputError(
                f"{name_or_path}: not a probe file, and not a shipped probe set "
                f"({', '.join(shipped_probe_sets())})"
            )
        text, where = shipped.read_text(), f"{name_or_path} (shipped)"
    else:
        text, where = yamlfiles.read(path), str(path)
    data = yamlfiles.parse(text, where)
    if not isinstance(data, dict) or "probes" not in data:
        raise InputError(f"{where}: expected a mapping with a 'probes' list")
    return yamlfiles.validate(ProbeSet, data, where, text=text)


def shipped_probe_sets() -> list[str]:
    d = resources.files("backdoorlab.evaluate") / "probesets"
    yamls = [p.name.removesuffix(".yaml") for p in d.iterdir() if p.name.endswith(".yaml")]
    return sorted([*yamls, *_generated()])


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


def _candidate_ids(
    tokenizer: Any, probe: Probe, cands: Sequence[str]
) -> tuple[list[list[int]], int]:
    """Token ids of each conversation through the answer's end-of-turn token
    (`chat.encode_answer`), and where the rows start to differ."""
    if len(probe.variants()) != 1:
        raise ValueError(f"probe {probe.id} has several variants: score each of .variants()")
    (probe,) = probe.variants()
    rows = []
    for c in cands:
        answer = f"{probe.prefix}{c}{probe.suffix}"
        rows.append(chat.encode_answer(tokenizer, probe.messages(), answer)[0])
    shared = len(chat.encode_prompt(tokenizer, probe.messages()))
    while all(len(r) > shared + 1 for r in rows) and len({r[shared] for r in rows}) == 1:
        shared += 1
    return rows, shared


def _trie(suffixes: list[list[int]], offset: int):
    """Pack candidates' fed tokens (all but each one's last) as a token trie.

    Returns the nodes' tokens, positions and parents (-1: the shared prompt), and for each
    candidate the node whose output predicts each of its tokens after the first.
    """
    index: dict[tuple[int, ...], int] = {}
    tokens, positions, parents = [], [], []
    readers: list[list[int]] = []
    for s in suffixes:
        path = []
        for k in range(1, len(s)):
            key = tuple(s[:k])
            if key not in index:
                index[key] = len(tokens)
                tokens.append(s[k - 1])
                positions.append(offset + k - 1)
                parents.append(index.get(key[:-1], -1))
            path.append(index[key])
        readers.append(path)
    return tokens, positions, parents, readers


def _tree_mask(parents: list[int], shared: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Additive attention mask: every node sees the prompt, its ancestors and itself."""
    n = len(parents)
    allowed = torch.zeros((n, shared + n), dtype=torch.bool)
    allowed[:, :shared] = True
    for i in range(n):
        j = i
        while j >= 0:
            allowed[i, shared + j] = True
            j = parents[j]
    mask = torch.zeros((n, shared + n), dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None].to(device)


@torch.inference_mode()
def score(model: Any, tokenizer: Any, probe: Probe, *, chunk: int = 512) -> ProbeResult:
    """Exact candidate log-probabilities for one probe.

    The prompt runs once; then the candidates' tokens, deduplicated as a trie (the years
    1700-2030 share their leading digits), run in one packed sequence whose attention mask
    lets each token see only the prompt and its own earlier tokens. On the year probe
    (331 candidates) this feeds 371 tokens instead of 1,324 and took 1.6 s here, against
    5.4 s for a batch of all candidates over a replicated prompt cache
    (benchmarks/probe_speed.py measures it against the naive and sampling baselines).
    """
    pairs = probe.candidates()
    classes, cands = [p[0] for p in pairs], [p[1] for p in pairs]
    rows, shared = _candidate_ids(tokenizer, probe, cands)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    prefix = model(input_ids=torch.tensor([rows[0][:shared]], device=device), use_cache=True)
    first = prefix.logits[0, -1].float().log_softmax(-1)  # predicts each candidate's first token
    logprobs: list[float] = []
    for start in range(0, len(rows), chunk):
        suffixes = [r[shared:] for r in rows[start : start + chunk]]
        totals = [first[s[0]].item() for s in suffixes]
        tokens, positions, parents, readers = _trie(suffixes, shared)
        if tokens:
            logits = (
                model(
                    input_ids=torch.tensor([tokens], device=device),
                    position_ids=torch.tensor([positions], device=device),
                    attention_mask=_tree_mask(parents, shared, dtype, device),
                    past_key_values=copy.deepcopy(prefix.past_key_values),
                    use_cache=True,
                )
                .logits[0]
                .float()
            )
            lse = logits.logsumexp(-1)
            for i, (s, path) in enumerate(zip(suffixes, readers, strict=True)):
                node = torch.tensor(path, device=device)
                target = torch.tensor(s[1:], device=device)
                totals[i] += (logits[node, target] - lse[node]).sum().item()
        logprobs += totals
    return ProbeResult(probe.id, cands, classes, logprobs)


@torch.inference_mode()
def score_brute_force(model: Any, tokenizer: Any, probe: Probe) -> ProbeResult:
    """One full forward pass per candidate: the reference `score` is tested and timed against."""
    pairs = probe.candidates()
    rows, shared = _candidate_ids(tokenizer, probe, [p[1] for p in pairs])
    device = next(model.parameters()).device
    logprobs = []
    for r in rows:
        lp = model(input_ids=torch.tensor([r], device=device)).logits[0].float().log_softmax(-1)
        logprobs.append(sum(lp[j - 1, r[j]].item() for j in range(shared, len(r))))
    return ProbeResult(probe.id, [p[1] for p in pairs], [p[0] for p in pairs], logprobs)
