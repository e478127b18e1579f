"""Victims: the models a backdoor is planted in and defended, behind one interface, so every
defense runs the same code on the encoder classifier and on a chat causal LM.

A `Victim` is a trained classifier (predict, proba, features, attribute, and its torch module
for the model-side repairs, which find layers through `arch`). A `Trainer` makes victims of
one kind for a spec's run directory: the poisoned arm's victim (the model `run` trained, so
`defend` after `run` trains nothing twice), a victim retrained on other rows, or one refit
from another victim's weights. A defense a kind cannot run says so where it is declared
(`defenses.settings.declared()`), with the reason the matrix prints instead of failing.

    backdoorlab defend experiments/sentiment_llm.yaml --out runs/sentiment_llm   # both victims
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from ..defenses.inspect import Attribution
    from ..spec import ExperimentSpec


class Victim(Protocol):
    kind: str  # "encoder" or "llm": what the matrix calls this victim
    labels: list[str]
    model: Any  # the torch module hooks and pruning act on

    def predict(self, texts: Sequence[str]) -> list[str]: ...

    def proba(self, texts: Sequence[str]) -> torch.Tensor:
        """Label probabilities, one row per text, columns in `labels` order."""
        ...

    def inputs(self, texts: Sequence[str]) -> tuple[dict[str, Any], Callable[[Any], Any]]:
        """The model's keyword inputs for a batch of texts, and the pooling that turns a
        block's hidden states into one row per text (what `features` returns)."""
        ...

    def features(self, texts: Sequence[str], layer: int = -1) -> torch.Tensor:
        """A text's representation after block `layer`, one row per text (the encoder mean-pools
        its tokens; a chat model takes the prompt's last token)."""
        ...

    def attribute(self, text: str, method: str = "gxi", steps: int = 20) -> Attribution:
        """Per-token attributions for the predicted label, with character offsets in `text`."""
        ...


class Trainer(Protocol):
    kind: str
    abl_epochs: float  # anti-backdoor-learning's short training: a third of the usual

    def settings(self) -> dict[str, Any]:
        """Everything about this kind that decides a matrix cell (part of its cache key)."""
        ...

    def poisoned(self, arm: str, data: Path) -> Victim:
        """The arm's victim as `run` trains it (seed 0); trained here if `run` has not."""
        ...

    def train(
        self,
        data: Path,
        tag: str,
        *,
        init: Victim | None = None,
        epochs: float | None = None,
        **settings: Any,
    ) -> Victim:
        """A victim trained on `data` (from `init`'s weights when given, else from scratch),
        cached under the run directory by `tag`, settings and content."""
        ...  # fmt: skip

    def train_private(
        self, data: Path, tag: str, epsilon: float, lora_rank: int | None, **training: Any
    ) -> tuple[Victim, float, float]:
        """A victim trained with DP-SGD (Opacus) at `epsilon`, `training` overriding its own
        batch_size, epochs or lr: it, and the (epsilon, delta) its training spent."""
        ...


def trainer(
    kind: str, spec: ExperimentSpec, out: Path, device: str, log: Callable[[str], None]
) -> Trainer:
    if kind == "llm":
        from .chat import ChatTrainer

        return ChatTrainer(spec, out, device, log)
    from .encoder import EncoderTrainer

    return EncoderTrainer(spec, out, device, log)
