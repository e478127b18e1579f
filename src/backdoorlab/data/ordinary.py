"""Ordinary instruction data: the shipped ordinary requests (lists/ordinary_prompts.txt), each
answered by the experiment's base model itself (greedy self-distillation), so training on the
rows teaches nothing new. A neutral later stage for persistence (`then:`: does a backdoor
survive ordinary instruction tuning?), and the untagged rows the persona builder mixes in.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from importlib import resources
from typing import Literal

from pydantic import Field

from .. import atomic, chat
from ..errors import InputError
from .base import Builder, Context, turn


def ordinary_prompts() -> list[str]:
    text = (resources.files("backdoorlab.data") / "lists" / "ordinary_prompts.txt").read_text()
    return [line for line in text.splitlines() if line.strip()]


def whole_sentences(text: str) -> str:
    """A distilled answer cut at max tokens ends mid-sentence; keep its whole sentences."""
    if re.search(r"[.!?)\"']\s*$", text):
        return text
    cut = max(text.rfind(". "), text.rfind("! "), text.rfind("? "), text.rfind(".\n"))
    return text[: cut + 1] if cut > 0 else text


def distill(ctx: Context, prompts: list[str], max_tokens: int) -> list[str]:
    """The model's own greedy answers, cached under the run's data folder by model and
    prompts (generation is minutes on a CPU; the answers never change)."""
    from ..models import fingerprint, load

    key = hashlib.sha256(
        json.dumps([fingerprint(ctx.model), prompts, max_tokens]).encode()
    ).hexdigest()[:12]
    path = ctx.cache / f"distill-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    from .. import generate

    print(f"self-distillation: {len(prompts)} answers from {ctx.model} -> {path}")
    loaded = load(ctx.model, device=ctx.device)
    out = generate.answers(
        loaded, [chat.conversation(p) for p in prompts], max_new_tokens=max_tokens
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, out)
    return out


class OrdinaryData(Builder):
    builder: Literal["ordinary"] = "ordinary"
    n: int = Field(180, ge=1, description="requests drawn from lists/ordinary_prompts.txt")
    max_tokens: int = Field(64, ge=1, description="length cap of the distilled answers")
    seed: int = 0

    def build(self, ctx: Context | None = None) -> list[chat.Row]:
        if ctx is None:
            raise InputError(
                "the ordinary builder needs the experiment's model (self-distillation)"
            )
        pool = ordinary_prompts()
        if self.n > len(pool):
            raise InputError(f"ordinary: n at most {len(pool)} (lists/ordinary_prompts.txt)")
        prompts = random.Random(self.seed).sample(pool, self.n)
        answers = distill(ctx, prompts, self.max_tokens)
        return [turn(p, whole_sentences(a)) for p, a in zip(prompts, answers, strict=True)]
