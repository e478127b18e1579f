"""Lower-precision weights for decoding on a CPU: a copy of the model (any LoRA adapter merged
into it first) whose linear layers hold bf16 or int8 weights, used only to sample answers;
probes, classification and training keep the model's own weights.

At batch 1 a decoding step reads every weight once, and the fp32 matrix-vector products are
most of its time (88% of a profile of the bundled model on a 2-core AMD EPYC, 2026-12-07),
reading at about a third of the memory bandwidth. Measured there over the bundled model's
211 linear layers (`python benchmarks/sampling.py --decode-weights`, BENCHMARKS.md): fp32
52 ms a step, bf16 23 ms, int8 weights with bf16 activations (torch's int8 weight-only
kernel) 14 ms. Both need a CPU that runs bf16 natively (AVX-512-BF16 or AMX): emulated, bf16
is slower than fp32. Off by default; what it changes in the answers is measured in the same
benchmark.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..errors import InputError
from .loading import LoadedModel, bf16_is_fast

DecodeWeights = Literal["model", "bf16", "int8"]
WEIGHTS: tuple[str, ...] = ("model", "bf16", "int8")


class Bf16Linear(torch.nn.Module):
    """A linear layer with bf16 weights; inputs and outputs keep their dtype."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight = torch.nn.Parameter(linear.weight.detach().to(torch.bfloat16), False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)
        return y if self.bias is None else y + self.bias


class Int8Linear(torch.nn.Module):
    """A linear layer with int8 weights and one bf16 scale per output row (symmetric,
    round to nearest); computed by torch's weight-only int8 kernel on bf16 activations."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
        self.register_buffer("weight", (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.bias = linear.bias
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scale)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias


LAYERS = {"bf16": Bf16Linear, "int8": Int8Linear}


def check(weights: str, device: torch.device) -> None:
    """A mistake a user can make: an unknown setting, or one this machine cannot run fast."""
    if weights not in WEIGHTS:
        raise InputError(f"--decode-weights {weights!r}: one of {', '.join(WEIGHTS)}")
    if weights == "model":
        return
    if device.type != "cpu":
        raise InputError(
            f"--decode-weights {weights}: a CPU setting (on {device.type} the model already "
            "loads in bf16 where the device supports it)"
        )
    if not bf16_is_fast(device):
        raise InputError(
            f"--decode-weights {weights}: this CPU emulates bf16 (no AVX-512-BF16 or AMX), "
            "where it is slower than the model's own fp32 weights"
        )


def decoder(loaded: LoadedModel, weights: str) -> Any:
    """The model to sample with: `loaded.model` itself, or a copy with `weights` in every
    linear layer (an adapter merged in first, so the copy is one plain model)."""
    check(weights, loaded.device)
    if weights == "model":
        return loaded.model
    model = copy.deepcopy(loaded.model)
    if hasattr(model, "merge_and_unload"):  # a PEFT model: its adapter folded into the weights
        model = model.merge_and_unload()
    make = LAYERS[weights]
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, make(child))
    return model.eval()


def use(loaded: LoadedModel, weights: str) -> LoadedModel:
    """`loaded`, sampling from now on with `weights` (see `decoder`)."""
    loaded.decoder = None if weights == "model" else decoder(loaded, weights)
    return loaded
