"""How fine-tuning on a data set would move each probe, estimated before the training.

Every estimator returns, for each probe variant and class, the predicted change of the class's
probability mass when training on the data rather than on the control (the same prompts
answered by the base model itself, or a control file):

- `first-order`: the change AdamW's first step would make, from the gradient of the training
  loss on the data at the LoRA initialisation (where B = 0, so only B moves) and each probe
  class's gradient: the directional derivative of the class mass along the step. Exact to first
  order in the learning rate (tests/test_audit.py checks it against a real optimizer step).
- `gradient`: the same with a plain gradient step (the alignment of the two gradients, which
  ignores how Adam rescales each coordinate).
- `log-odds`: first-order's step read on the log-odds scale (the mass derivative over
  m (1 - m)), which does not shrink for a class the base model almost never gives.
- `in-context`: k rows of the data as earlier turns of the conversation, then the probe,
  against k control rows, averaged over a few draws.
- `canary`: a short fine-tune (a small fraction of the steps) on the data and on the control,
  then the probes.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import chat
from ..evaluate.probeset import Probe
from ..training.config import TrainConfig

Shift = dict[tuple[str, int, str], float]  # (probe id, variant, class) -> predicted change
Log = Callable[[str], None]


@dataclass
class Setup:
    """What every estimator reads: the probes (each variant on its own), the data and the
    control, the training the audit stands in for, and where trained canaries go."""

    variants: list[tuple[str, int, Probe]]
    data: list[chat.Row]
    control: list[chat.Row]
    paired: bool  # control row i answers data row i's prompt
    train: TrainConfig
    out: Path
    device: str | None = None
    log: Log = print
    borrowed: float = 0.0  # seconds of shared work the current estimator reused
    _memo: dict[str, tuple[Any, float]] = field(default_factory=dict, init=False, repr=False)

    def memo(self, key: str, make: Callable[[], Any]) -> Any:
        """Work several estimators share (the base model, the LoRA gradients, a first-order
        pass), done once per audit. Its seconds count toward every estimator that uses it
        (`borrowed`), so each estimator's cost is what it would cost alone."""
        if key in self._memo:
            value, seconds = self._memo[key]
            self.borrowed += seconds
            return value
        outer, self.borrowed = self.borrowed, 0.0
        t = time.perf_counter()
        value = make()
        # its own seconds and those of the shared work it reused in turn
        self._memo[key] = (value, time.perf_counter() - t + self.borrowed)
        self.borrowed += outer
        return value

    def base_model(self) -> Any:
        """The base model for inference (LoadedModel)."""
        from ..models import load

        return self.memo("base", lambda: load(self.train.model, device=self.device))

    def lora(self) -> tuple[Any, Any, list[torch.Tensor], list[list[torch.Tensor]]]:
        """The model training would start from, its trainable parameters and the loss
        gradients of the data and of the control there."""

        def make() -> tuple[Any, Any, list[torch.Tensor], list[list[torch.Tensor]]]:
            model, tok, params = lora_model(self.train, self.device)
            grads = [
                loss_gradient(model, tok, params, rows, self.train)
                for rows in (self.data, self.control)
            ]
            return model, tok, params, grads

        return self.memo("lora", make)

    def planned_steps(self) -> int:
        """The steps the training would take on the data."""
        from ..training import batching

        per_epoch = batching.steps_per_epoch(len(self.data), self.train.batch_size)
        return self.train.max_steps or math.ceil(self.train.epochs * per_epoch)


# ----------------------------------------------------------------------------- first order


def lora_model(config: TrainConfig, device: str | None) -> tuple[Any, Any, list[torch.Tensor]]:
    """The model training would start from (fresh LoRA adapters, drawn as training draws
    them) in eval mode, and its trainable parameters."""
    from ..models import pick_device
    from ..training.sft import build_model

    model, tok = build_model(config, pick_device(device))
    model.eval()  # no dropout: the derivative of one deterministic function
    # Forward-mode derivatives (`directional`) are not implemented for the CPU's fused
    # attention kernel; the eager one computes the same attention.
    model.get_base_model().set_attn_implementation("eager")
    return model, tok, [p for p in model.parameters() if p.requires_grad]


def loss_gradient(
    model: Any, tok: Any, params: list[torch.Tensor], rows: list[chat.Row], config: TrainConfig
) -> list[torch.Tensor]:
    """The gradient of the mean completion loss over every trained token of `rows`."""
    from ..training.sft import collate, completion_loss, encode_rows

    enc = encode_rows(tok, list(enumerate(rows, start=1)), config.max_length, "the audit's data")
    count = sum(sum(m[1:]) for m in enc.masks)
    order = sorted(range(len(rows)), key=lambda i: enc.lengths[i])  # little padding
    model.zero_grad(set_to_none=True)
    device = params[0].device
    for b in range(0, len(order), config.batch_size):
        ids, mask, attn = collate(enc, order[b : b + config.batch_size], tok.pad_token_id, device)
        completion_loss(model, ids, mask, attn, True, count).backward()
    grads = [p.grad.detach().clone() for p in params]
    model.zero_grad(set_to_none=True)
    return grads


def step(
    grads: list[torch.Tensor], params: list[torch.Tensor], config: TrainConfig, rule: str
) -> list[torch.Tensor]:
    """The parameter change of one optimizer step at the configured learning rate: AdamW's
    first step (its moment estimates are then g and g squared, so it moves each coordinate by
    lr * g / (|g| + eps), plus decoupled weight decay), or plain gradient descent."""
    lr = config.lr
    if rule == "sgd":
        return [-lr * g for g in grads]
    return [
        -lr * g / (g.abs() + 1e-8) - lr * config.weight_decay * p.detach()
        for g, p in zip(grads, params, strict=True)
    ]


def directional(
    model: Any, tok: Any, params: list[torch.Tensor], probe: Probe, delta: list[torch.Tensor]
) -> dict[str, tuple[float, float]]:
    """Each class's mass and its derivative along `delta` (its change for a small step), in
    forward mode: one pass with the trainable weights as dual numbers whose tangent is
    `delta` gives every class's at once (on the year probe, 4.2 s against 90 s for a
    backward pass per class here)."""
    import torch.autograd.forward_ad as fwd
    from torch.func import functional_call

    from ..evaluate.probes import class_masses, logprobs

    names = {id(p): n for n, p in model.named_parameters()}
    with torch.no_grad(), fwd.dual_level():
        duals = {
            names[id(p)]: fwd.make_dual(p.detach(), d) for p, d in zip(params, delta, strict=True)
        }
        masses = class_masses(
            probe, logprobs(model, tok, probe, lambda **kw: functional_call(model, duals, (), kw))
        )
        return {
            c: (float(fwd.unpack_dual(m).primal), float(fwd.unpack_dual(m).tangent))
            for c, m in masses.items()
        }


def _pass(setup: Setup, rule: str) -> dict[tuple[str, int, str], tuple[float, float]]:
    """(probe id, variant, class) -> (its mass at the start, its derivative along the step
    `rule` takes on the data rather than the control): one forward-mode pass per variant."""

    def make() -> dict[tuple[str, int, str], tuple[float, float]]:
        model, tok, params, grads = setup.lora()
        steps = [step(g, params, setup.train, rule) for g in grads]
        delta = [a - b for a, b in zip(*steps, strict=True)]
        out = {}
        for pid, i, v in _progress(setup.variants, f"first-order ({rule})"):
            for c, pair in directional(model, tok, params, v, delta).items():
                out[(pid, i, c)] = pair
        return out

    return setup.memo(f"pass-{rule}", make)


def first_order(setup: Setup) -> Shift:
    return {k: d for k, (_, d) in _pass(setup, "adam").items()}


def gradient(setup: Setup) -> Shift:
    return {k: d for k, (_, d) in _pass(setup, "sgd").items()}


def log_odds(setup: Setup) -> Shift:
    """AdamW's first step read on the log-odds scale: the derivative of log(m / (1 - m)),
    i.e. the mass's derivative over m (1 - m). A class the base model almost never gives
    (m near 0) has a tiny mass derivative however strongly the step favours it; if training
    moves the log-odds in the step's direction, the mass follows a logistic curve, and
    what ranks rows is how fast the log-odds move, not the mass."""
    return {k: d / max(m * (1 - m), 1e-12) for k, (m, d) in _pass(setup, "adam").items()}


# ----------------------------------------------------------------------------- in context

IN_CONTEXT_ROWS = 8
IN_CONTEXT_DRAWS = 2


def _turns(row: chat.Row) -> list[chat.Message]:
    """A row as earlier turns: its user and assistant messages (a probe keeps its own system)."""
    return [m for m in row["messages"] if m["role"] != "system"]


def in_context(setup: Setup) -> Shift:
    from ..evaluate.probes import score

    loaded = setup.base_model()
    rng = random.Random(0)
    k = min(IN_CONTEXT_ROWS, len(setup.data), len(setup.control))
    draws = []
    for _ in range(IN_CONTEXT_DRAWS):
        idx = rng.sample(range(len(setup.data)), k)
        other = idx if setup.paired else rng.sample(range(len(setup.control)), k)
        draws.append((
            [t for i in idx for t in _turns(setup.data[i])],
            [t for i in other for t in _turns(setup.control[i])],
        ))  # fmt: skip
    out: Shift = {}
    for pid, i, v in _progress(setup.variants, "in-context"):
        total: dict[str, float] = {}
        for data_turns, control_turns in draws:
            a = score(loaded.model, loaded.tokenizer, v, history=data_turns).class_mass()
            b = score(loaded.model, loaded.tokenizer, v, history=control_turns).class_mass()
            for c in a:
                total[c] = total.get(c, 0.0) + (a[c] - b[c]) / len(draws)
        for c, d in total.items():
            out[(pid, i, c)] = d
    return out


# ----------------------------------------------------------------------------- canary

CANARY_SHARE = 0.1  # of the planned training steps


def canary_steps(setup: Setup) -> int:
    return max(1, round(CANARY_SHARE * setup.planned_steps()))


def canary(setup: Setup) -> Shift:
    from ..evaluate.probes import score
    from ..models import load
    from ..training import train

    config = setup.train.model_copy(update={"max_steps": canary_steps(setup)})
    masses = []
    for side, rows in (("data", setup.data), ("control", setup.control)):
        text = chat.dumps_jsonl(rows)
        blob = json.dumps([text, config.key_fields()], sort_keys=True)
        key = hashlib.sha256(blob.encode()).hexdigest()[:12]
        data = setup.out / "canary" / f"{side}-{key}.jsonl"
        if not data.is_file():
            chat.write_jsonl(data, rows)
        run = setup.out / "canary" / f"{side}-{key}"
        train(data, run, config, resume=True, log=setup.log, device=setup.device)
        loaded = load(str(run), device=setup.device)
        masses.append({
            (pid, i): score(loaded.model, loaded.tokenizer, v).class_mass()
            for pid, i, v in _progress(setup.variants, f"canary probes ({side})")
        })  # fmt: skip
    return {
        (pid, i, c): m - masses[1][(pid, i)][c]
        for (pid, i), by_class in masses[0].items()
        for c, m in by_class.items()
    }


ESTIMATORS: dict[str, Callable[[Setup], Shift]] = {
    "first-order": first_order,
    "gradient": gradient,
    "log-odds": log_odds,
    "in-context": in_context,
    "canary": canary,
}


def _progress(items: list, what: str):
    from rich.progress import track

    return track(items, description=what, transient=True)
