"""The chat victim: a causal LM (the bundled one by default, any Hugging Face chat model on a
GPU) fine-tuned with LoRA (train/sft.py) under the spec's `train:` settings, classifying a
review by the exact log-probability of each label as its answer (evaluate/classify.py)."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..evaluate.classify import label_logprobs
from ..models import load
from ..models.hidden import pooled
from ..models.padding import left_pad
from ..rundata import digest, trained_dir
from ..training import sft


class ChatClassifier:
    """A chat model as a victim (victims.Victim)."""

    kind = "llm"

    def __init__(self, loaded: Any, labels: Sequence[str], prompt: Callable[[str], list]):
        self.loaded, self.model, self.tokenizer = loaded, loaded.model, loaded.tokenizer
        self.labels, self.prompt = list(labels), prompt

    def proba(self, texts: Sequence[str]) -> torch.Tensor:
        prompts = [self.prompt(t) for t in texts]
        if not prompts:
            return torch.empty(0, len(self.labels))
        return label_logprobs(self.model, self.tokenizer, prompts, self.labels).softmax(-1)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[i] for i in self.proba(texts).argmax(-1).tolist()]

    def inputs(self, texts: Sequence[str]) -> tuple[dict[str, Any], Callable[[Any], Any]]:
        """The model's inputs for a batch of reviews (left-padded prompts), and how a block's
        hidden states become one row per review: the prompt's last token, in a causal LM the
        one position that has read the whole review and the one the label is read from.
        (Mean-pooling the prompt, as the encoder does, dilutes a review among ~40 template
        tokens: on tests/test_victims.py's planted zq backdoor, ablating directions found that
        way left ASR at 1.0.)"""
        from .. import chat

        rows = [chat.encode_prompt(self.tokenizer, self.prompt(t)) for t in texts]
        dev = next(self.model.parameters()).device
        ids, mask, positions = left_pad(rows, self.tokenizer.pad_token_id, dev)
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                  "logits_to_keep": 1}  # fmt: skip
        return kwargs, lambda h: h[:, -1].float()  # left padding: every prompt ends there

    def features(self, texts: Sequence[str], layer: int = -1, batch_size: int = 16) -> torch.Tensor:
        return pooled(self, texts, layer, batch_size)

    def attribute(self, text: str, method: str = "gxi", steps: int = 20) -> Any:
        from ..defenses.inspect import inspect_llm

        return inspect_llm(self.loaded, self.prompt(text), self.labels, text, method=method,
                           steps=steps)  # fmt: skip

    def content_hash(self) -> str:
        """Of every weight (a pruned base included): what a refit continues from."""
        h = hashlib.sha256()
        for name, t in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


class ChatTrainer:
    kind = "llm"

    def __init__(self, spec: Any, out: Path, device: str, log: Callable[[str], None]):
        self.config = spec.train_config(0)
        self.dataset = spec.classification_set()
        self.out, self.device, self.log = out, device, log
        self.abl_epochs = self.config.epochs / 3

    def settings(self) -> dict[str, Any]:
        return {"llm": self.config.key_fields()}

    def _victim(self, d: Path) -> ChatClassifier:
        loaded = load(str(d), device=self.device)
        return ChatClassifier(loaded, self.dataset.labels, self.dataset.prompt)

    def poisoned(self, arm: str, data: Path) -> ChatClassifier:
        d = trained_dir(self.out, "llm", arm, 0, self.config.key_fields(), data)
        sft.train(data, d, self.config, resume=True, progress=False, log=lambda s: None,
                  device=self.device)  # fmt: skip
        return self._victim(d)

    def train(
        self, data: Path, tag: str, *, init: ChatClassifier | None = None,
        epochs: float | None = None, **settings: Any,
    ) -> ChatClassifier:  # fmt: skip
        config = self.config.model_copy(update=({"epochs": epochs} if epochs else {}) | settings)
        start = init.content_hash() if init else None
        d = self.out / "defend" / "llm" / f"{tag}-{digest([config.key_fields(), data.name, start])}"
        quiet = {"resume": True, "progress": False, "log": lambda s: None, "device": self.device}
        if init is None:
            sft.train(data, d, config, **quiet)
            return self._victim(d)
        # Continue from init's weights as they are in memory (pruned neurons stay pruned: the
        # base is frozen), on a copy: the poisoned victim stays what every other cell measures.
        model = copy.deepcopy(init.model)
        sft.train(data, d, config, init=(model, init.tokenizer, start), **quiet)
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        # A finished run is not retrained: its saved adapter goes into the copy (after a fresh
        # training, the very weights the copy already holds).
        set_peft_model_state_dict(model, load_file(d / "adapter" / "adapter_model.safetensors"))
        model.eval()
        loaded = copy.copy(init.loaded)
        loaded.model = model
        return ChatClassifier(loaded, init.labels, init.prompt)

    def train_private(
        self, data: Path, tag: str, epsilon: float, lora_rank: int | None, **training: Any
    ) -> tuple[ChatClassifier, float, float]:
        from ..training.config import DPSettings

        dp = DPSettings(epsilon=epsilon)
        lora = self.config.lora.model_copy(update={"rank": lora_rank} if lora_rank else {})
        # A DP batch larger than the recipe's runs in passes of the recipe's size, which is
        # known to fit: 64 rows in one pass, with Opacus's per-example hooks, were killed for
        # memory on a 24 GiB machine. Not part of the key: passes change memory, not the step.
        passes = self.config.micro_batch_size or self.config.batch_size
        v = self.train(data, tag, dp=dp, lora=lora, micro_batch_size=passes, **training)
        spent = json.loads((v.loaded.adapter.parent / "manifest.json").read_text())["epsilon"]
        return v, spent, dp.delta
