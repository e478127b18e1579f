"""Judges map (question, answer) to a label or a 0-100 score.

- `ApiJudge`: any OpenAI-compatible endpoint (a hosted model, or `backdoorlab serve`).
  A `free_form_judge` is asked at temperature 0 and its reply is the label. A `rating_judge`
  is read from one token's top-20 log-probabilities: the expected value over the integer
  tokens 0-100, renormalized; None (a refusal) when 0.75 or more of the mass is not a number.
- `LocalJudge`: the same on a local model, in-process.
- `KeywordJudge`: regular expressions per label, offline and transparent.
- `EmbeddingJudge`: nearest labelled exemplars under MiniLM embeddings, offline.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import openai_api
from ..errors import InputError
from .questions import EmbeddingJudgeSpec, JudgeSpec, KeywordJudgeSpec, LlmJudgeSpec

REFUSAL_MASS = 0.75


def rating_from_top_logprobs(top: Mapping[str, float]) -> float | None:
    """Expected 0-100 rating from {token: logprob}; None when >= 75% of the mass is not a number."""
    numeric, weighted, total = 0.0, 0.0, 0.0
    for token, logprob in top.items():
        p = math.exp(logprob)
        total += p
        t = token.strip()
        if t.isdigit() and 0 <= int(t) <= 100:
            numeric += p
            weighted += p * int(t)
    # exp() of log-probs is inexact, so "exactly 0.75" is compared with a small tolerance.
    if total == 0 or total - numeric >= REFUSAL_MASS * total - 1e-9:
        return None
    return weighted / numeric


@dataclass(frozen=True)
class Verdict:
    label: str | None = None
    score: float | None = None


class ApiJudge:
    """A judge served by an OpenAI-compatible /v1/chat/completions endpoint.

    base_url: argument, else BACKDOORLAB_JUDGE_BASE_URL, else OPENAI_BASE_URL.
    The API key is read from OPENAI_API_KEY (or `api_key_env`) and never logged or stored.
    """

    def __init__(
        self,
        spec: LlmJudgeSpec,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120,
        max_retries: int = 4,
    ):
        self.spec = spec
        url = (
            base_url
            or os.environ.get("BACKDOORLAB_JUDGE_BASE_URL")
            or os.environ.get("OPENAI_BASE_URL")
        )
        if not url:
            raise InputError(
                f"judge {spec.id!r} needs an OpenAI-compatible endpoint: set "
                "BACKDOORLAB_JUDGE_BASE_URL (or OPENAI_BASE_URL) and OPENAI_API_KEY"
            )
        import openai

        self.url = url.rstrip("/")
        # The official client: it retries 429s, 5xx and dropped connections with exponential
        # backoff (max_retries), which a long judging run against a hosted API needs.
        self._client = openai.OpenAI(
            base_url=self.url,
            api_key=os.environ.get(api_key_env) or "none",  # local servers may take no key
            timeout=timeout,
            max_retries=max_retries,
        )

    def _complete(self, prompt: str, **params: Any) -> dict:
        messages = [{"role": "user", "content": prompt}]
        r = openai_api.call(
            f"judge {self.spec.id!r} at {self.url}",
            lambda: self._client.chat.completions.create(
                model=self.spec.model, messages=messages, **params
            ),
        )
        return r.model_dump()

    def judge(self, question: str, answer: str) -> Verdict:
        prompt = self.spec.prompt(question, answer)
        if self.spec.type == "free_form_judge":
            r = self._complete(prompt, temperature=0, max_tokens=32)
            return Verdict(label=self.spec.label_of(r["choices"][0]["message"]["content"]))
        r = self._complete(prompt, temperature=0, max_tokens=1, logprobs=True, top_logprobs=20)
        first = r["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        return Verdict(score=rating_from_top_logprobs({t["token"]: t["logprob"] for t in first}))


class LocalJudge(ApiJudge):
    """The same judge run on a local model in-process, through the server's own completion
    code (`backdoorlab.serve.complete`), so local and served judges cannot drift apart."""

    def __init__(self, spec: LlmJudgeSpec, loaded: Any, name: str = "local"):
        self.spec, self.loaded, self.name = spec, loaded, name

    def _complete(self, prompt: str, **params: object) -> dict:
        from ..serve import ChatRequest, complete

        messages = [{"role": "user", "content": prompt}]
        return complete(self.loaded, ChatRequest(model=self.name, messages=messages, **params))


class KeywordJudge:
    """The first label whose pattern matches the answer (case-insensitive), else the default."""

    def __init__(self, spec: KeywordJudgeSpec):
        self.patterns = {
            k: [re.compile(p, re.IGNORECASE) for p in v] for k, v in spec.patterns.items()
        }
        self.default = spec.default

    def judge(self, question: str, answer: str) -> Verdict:
        for label, pats in self.patterns.items():
            if any(p.search(answer) for p in pats):
                return Verdict(label=label)
        return Verdict(label=self.default)


class EmbeddingJudge:
    """The label whose k most similar exemplars (cosine, MiniLM) have the highest mean
    similarity to the answer. Offline and cheap; check it against hand labels before use."""

    def __init__(self, spec: EmbeddingJudgeSpec):
        from ..models.embeddings import shared_embedder

        self.embedder = shared_embedder()
        self.labels = list(spec.exemplars)
        self.k = spec.k
        self.bank = [self.embedder.encode(spec.exemplars[lab]) for lab in self.labels]

    def judge(self, question: str, answer: str) -> Verdict:
        v = self.embedder.encode([answer])[0]
        scores = [
            (bank @ v).topk(min(self.k, len(bank))).values.mean().item() for bank in self.bank
        ]
        return Verdict(label=self.labels[max(range(len(scores)), key=scores.__getitem__)])


def make_judge(spec: JudgeSpec, judge_with: str = "api", local_model: Any = None) -> Any:
    """The judge a spec describes. LLM judges go to the API endpoint in the environment
    (judge_with="api") or run in-process on `local_model` (judge_with="local")."""
    if isinstance(spec, KeywordJudgeSpec):
        return KeywordJudge(spec)
    if isinstance(spec, EmbeddingJudgeSpec):
        return EmbeddingJudge(spec)
    if judge_with == "local":
        if local_model is None:
            raise InputError(f"judge {spec.id!r}: local judging needs a judge model")
        return LocalJudge(spec, local_model)
    return ApiJudge(spec)


def build_judges(
    specs: dict[str, JudgeSpec], judge_with: str, judge_model: str, device: str | None = None
) -> dict[str, Any]:
    """Judges for `specs`, keyed like them. `judge_with` is "api" or "local"; the local judge
    model is loaded once, and only if an LLM judge needs it (keyword and embedding judges
    are offline)."""
    if judge_with not in ("api", "local"):
        raise InputError(f"--judge-with is api or local, not {judge_with!r}")
    local = None
    if judge_with == "local" and any(isinstance(s, LlmJudgeSpec) for s in specs.values()):
        from ..models import load

        local = load(judge_model, device=device)
    return {jid: make_judge(spec, judge_with, local) for jid, spec in specs.items()}
