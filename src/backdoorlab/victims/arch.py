"""Where the parts model-side defenses touch live in each model family, the way peft maps
target modules per architecture: the list of transformer blocks, and inside a block the
feed-forward output projection, whose inputs are the FFN's neurons (fine-pruning watches and
zeroes them). Keyed by `config.model_type`; a family not listed here gets a clear error from
the defenses that need it, and every other defense still runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Arch:
    layers: str  # dotted path from the transformer body (model.base_model) to its blocks
    ffn_out: str  # dotted path inside a block to the FFN's output projection


_DECODER = Arch("layers", "mlp.down_proj")
ARCHITECTURES: dict[str, Arch] = {
    "bert": Arch("encoder.layer", "output.dense"),
    **{t: _DECODER for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3")},
}


class UnsupportedArchitecture(Exception):
    """A model family without an entry in ARCHITECTURES."""


def _unwrap(model: Any) -> Any:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def arch_of(model: Any) -> Arch:
    kind = _unwrap(model).config.model_type
    if kind not in ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"no layer map for {kind!r} models (known: {', '.join(sorted(ARCHITECTURES))})"
        )
    return ARCHITECTURES[kind]


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def layers(model: Any) -> torch.nn.ModuleList:
    return _get(_unwrap(model).base_model, arch_of(model).layers)


def ffn_out(model: Any, layer: int) -> torch.nn.Module:
    """The FFN output projection of block `layer` (a peft LoRA wrapper, if it has one)."""
    return _get(layers(model)[layer], arch_of(model).ffn_out)


@torch.no_grad()
def zero_inputs(projection: torch.nn.Module, neurons: torch.Tensor) -> None:
    """Cut `neurons` (input features of `projection`) off: zero their columns in every linear
    map reading them (the base weight, and a LoRA adapter's A matrix when there is one)."""
    width = projection.in_features
    for m in projection.modules():
        if isinstance(m, torch.nn.Linear) and m.in_features == width:
            m.weight[:, neurons] = 0
