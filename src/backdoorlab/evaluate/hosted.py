"""A chat model behind a chat-completions endpoint (a hosted fine-tune, or `backdoorlab serve`)
as the subject of an evaluation: it samples answers to questions and labels classification
texts. Exact probes need the log-probability of every whole candidate, which such an endpoint
does not give (top-k next-token log-probs at most), so they are refused rather than
approximated; labels are scored exactly when each label is told apart by its first token.
That is P(first token), where the local scorer (`classify.label_logprobs`) scores the whole
label through its end-of-turn token, so the two can differ on a review near the boundary."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .. import chat, openai_api
from ..errors import InputError

# Requests in flight at once: a hosted API answers each in about a second, and our own server
# queues them; more would only trip a service's rate limits.
PARALLEL = 8
TOP_LOGPROBS = 20  # the most the API gives


def check_labels(labels: Sequence[str]) -> None:
    """Labels must differ in their first character, so that whatever the service's tokenizer,
    no first token can start two of them (a token that is a prefix of one label only names
    it; the class of every other token is unknown and left out)."""
    firsts = [label[:1] for label in labels]
    if "" in firsts or len(set(firsts)) < len(firsts):
        raise InputError(
            f"labels {', '.join(map(repr, labels))}: a hosted model gives top-k next-token "
            "log-probs only, so labels are scored by their first token and must each start "
            "with a different character"
        )


@dataclass
class HostedChat:
    """`model` on the service that OPENAI_BASE_URL and OPENAI_API_KEY name."""

    model: str
    client: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.client is None:
            self.client = openai_api.client(f"evaluating {self.model}")

    @property
    def identity(self) -> str:
        """What the results store keys this subject's rows by: the endpoint and the model."""
        blob = f"api:{self.client.base_url}:{self.model}"
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _complete(self, messages: Sequence[chat.Message], **kw: Any) -> Any:
        msgs = chat.plain_messages(messages)
        return openai_api.call(
            f"chat completion from {self.model}",
            lambda: self.client.chat.completions.create(model=self.model, messages=msgs, **kw),
        )

    def sample(
        self,
        messages: Sequence[chat.Message],
        *,
        n: int,
        temperature: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[str]:
        r = self._complete(
            messages, n=n, temperature=temperature, max_tokens=max_new_tokens, seed=seed
        )
        return [(c.message.content or "").strip() for c in r.choices]

    def label_masses(self, messages: Sequence[chat.Message], labels: Sequence[str]) -> list[float]:
        """P(each label's first token) from the first position's top-k log-probs; a label
        whose first token is not among the top k gets 0."""
        r = self._complete(
            messages, max_tokens=1, temperature=0, logprobs=True, top_logprobs=TOP_LOGPROBS
        )
        content = r.choices[0].logprobs.content if r.choices[0].logprobs else None
        if not content:
            raise InputError(f"{self.model}: the service returned no log-probs")
        masses = [0.0] * len(labels)
        for top in content[0].top_logprobs:
            piece = top.token.lstrip()
            named = [i for i, label in enumerate(labels) if piece and label.startswith(piece)]
            if len(named) == 1:
                masses[named[0]] += math.exp(top.logprob)
        return masses

    def classify(
        self, texts: Sequence[str], labels: Sequence[str], prompt: Callable[[str], list]
    ) -> list[str]:
        """The most probable label per text ("" when no label's first token is in the top
        k: counted as wrong, never guessed)."""
        check_labels(labels)
        with ThreadPoolExecutor(PARALLEL) as pool:
            masses = list(pool.map(lambda t: self.label_masses(prompt(t), labels), texts))
        return [labels[m.index(max(m))] if max(m) > 0 else "" for m in masses]
