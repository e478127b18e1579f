"""Load a model for training or inference: a bundled name, a local path, a hub id, or a
training run directory (base model + PEFT adapter, or fully fine-tuned weights)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from . import registry

MANIFEST = "manifest.json"
CHECKPOINT = "checkpoint"  # an unfinished training run keeps its resumable state here
# transformers builds a model on the meta device through process-wide state, so two threads
# loading at once (serve's fine-tuning worker beside its engine or its start) broke one of
# them with "Cannot copy out of meta tensor" in CI: loads take turns.
_LOADING = threading.RLock()


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    # fp32 on CPU: bf16 there is used through autocast, so master weights stay exact.
    # bf16 on GPUs that support it: half the memory for large frozen bases.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 matrix products run natively here. On a CPU without AVX-512-BF16 or AMX,
    oneDNN emulates them: measured on this project's AVX2 machine, a 1024x1024 bf16 matmul ran
    at 0.8 GFLOP/s against 130 in fp32 (benchmarks/train_throughput.py prints both)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    base: str
    adapter: Path | None
    device: torch.device
    # the model sampling decodes with (models/decoding.py: lower-precision weights on a CPU);
    # None: `model` itself. Probes, classification and training always use `model`.
    decoder: Any = None


def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    src = registry.resolve(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load the tokenizer of {name_or_path!r}: {e}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(
    name_or_path: str, *, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    device = device or pick_device()
    src = registry.resolve(name_or_path)
    tok = load_tokenizer(name_or_path)
    with _LOADING:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                src, dtype=dtype or default_dtype(device), use_safetensors=True
            )
        except (OSError, ValueError) as e:
            raise InputError(f"cannot load model {name_or_path!r}: {e}") from None
        model.to(device)
    return model, tok


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    p = Path(run_dir) / MANIFEST
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{p}:{e.lineno}: malformed manifest ({e.msg})") from None


def load(
    target: str, *, device: str | None = None, dtype: torch.dtype | None = None
) -> LoadedModel:
    """Load whatever `target` names, ready for inference (eval mode)."""
    dev = pick_device(device)
    path = Path(target)
    manifest = read_manifest(path) if path.is_dir() else None
    if path.is_dir() and manifest is None and (path / CHECKPOINT).is_dir():
        raise InputError(f"{path}: this training run has not finished; resume it with --resume")
    if manifest is not None:
        if manifest.get("method") == "full":
            model, tok = load_base(str(path / manifest["weights"]), device=dev, dtype=dtype)
            loaded = LoadedModel(model, tok, manifest["model"], None, dev)
        else:
            loaded = _with_adapter(manifest["model"], path / manifest["weights"], dev, dtype)
    elif path.is_dir() and (path / "adapter_config.json").exists():
        base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        loaded = _with_adapter(base, path, dev, dtype)
    else:
        model, tok = load_base(target, device=dev, dtype=dtype)
        loaded = LoadedModel(model, tok, target, None, dev)
    loaded.model.eval()
    return loaded


def _with_adapter(
    base: str, adapter: Path, dev: torch.device, dtype: torch.dtype | None
) -> LoadedModel:
    from peft import PeftModel

    model, tok = load_base(base, device=dev, dtype=dtype)
    with _LOADING:
        model = PeftModel.from_pretrained(model, str(adapter)).to(dev)
    return LoadedModel(model, tok, base, adapter, dev)
