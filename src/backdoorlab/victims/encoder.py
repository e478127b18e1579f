"""The encoder victim's trainer: MiniLM fine-tuned end to end (train/encoder.py), under the
spec's `encoder:` settings."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..rundata import trained_dir
from ..training import encoder
from ..training.encoder import EncoderClassifier


class EncoderTrainer:
    kind = "encoder"

    def __init__(self, spec: Any, out: Path, device: str, log: Callable[[str], None]):
        self.config = spec.encoder.model_copy(update={"seed": 0})
        self.labels = spec.classification_set().labels
        self.out, self.device = out, device
        self.abl_epochs = max(1, round(self.config.epochs / 3))

    def settings(self) -> dict[str, Any]:
        return {"encoder": self.config.key_fields()}

    def _fit(self, data: Path, d: Path, config: Any, init: Path | None = None) -> EncoderClassifier:
        encoder.train_encoder(
            data, d, config, self.labels, init=init, log=lambda s: None, device=self.device
        )
        return EncoderClassifier(d, self.labels, self.device)

    def poisoned(self, arm: str, data: Path) -> EncoderClassifier:
        d = trained_dir(self.out, "encoder", arm, 0, self.config.key_fields(), data)
        return self._fit(data, d, self.config)

    def train(
        self, data: Path, tag: str, *, init: EncoderClassifier | None = None,
        epochs: float | None = None, **settings: Any,
    ) -> EncoderClassifier:  # fmt: skip
        if epochs is not None:
            settings["epochs"] = max(1, round(epochs))
        config = self.config.model_copy(update=settings)
        home = self.out / "defend" / "encoder"
        start = None
        if init is not None:  # train_encoder keys a run by the init's weights, not this path
            start = home / f"{tag}-init"
            init.save(start)
        return self._fit(data, home / f"{tag}-{data.stem.rsplit('-', 1)[-1]}", config, start)

    def train_private(
        self, data: Path, tag: str, epsilon: float, lora_rank: int | None, **training: Any
    ) -> tuple[EncoderClassifier, float, float]:
        v = self.train(data, tag, dp_epsilon=epsilon, lora_rank=lora_rank, **training)
        spent = json.loads((v.path / encoder.MANIFEST).read_text())["epsilon"]
        return v, spent, self.config.dp_delta
