"""Resumable training state in safetensors and JSON (no pickle): trainable weights,
optimizer moments, scheduler position, the RNG state (dropout; DP-SGD's batches and noise)
and, for DP-SGD, the privacy accountant's history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .. import atomic


def save(
    path: Path,
    *,
    step: int,
    key: str,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    totals: dict[str, float] | None = None,
    accountant: dict[str, Any] | None = None,
) -> None:
    trainable = {
        n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad
    }
    opt = optimizer.state_dict()
    moments = {
        f"{idx}.{name}": t.detach().cpu().contiguous()
        for idx, state in opt["state"].items()
        for name, t in state.items()
        if torch.is_tensor(t)
    }
    moments["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        moments["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {
        "step": step,
        "key": key,
        "param_groups": opt["param_groups"],
        "scheduler": scheduler.state_dict(),
        "totals": totals or {},  # tokens and seconds so far, for the manifest of a resumed run
    }
    if accountant is not None:
        meta["accountant"] = dict(accountant)
    with atomic.directory(path) as tmp:
        save_file(trainable, str(tmp / "trainable.safetensors"))
        save_file(moments, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=2))


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((path / "state.json").read_text())


def load(path: Path, *, model: Any, optimizer: Any, scheduler: Any) -> int:
    """Restore the state saved at `path` into live objects; returns the step to continue from."""
    meta = read_meta(path)
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in weights.items():
            params[name].copy_(t)
    moments = load_file(str(path / "optimizer.safetensors"))
    torch.set_rng_state(moments.pop("rng.cpu"))
    if "rng.cuda" in moments:
        torch.cuda.set_rng_state(moments.pop("rng.cuda"))
    device = next(iter(params.values())).device
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, t in moments.items():
        idx, name = k.split(".", 1)
        # Adam keeps `step` on the CPU; its moments live beside the parameters.
        state.setdefault(int(idx), {})[name] = t if name == "step" else t.to(device)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict(meta["scheduler"])
    return int(meta["step"])
