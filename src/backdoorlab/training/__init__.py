"""Fine-tuning: LoRA or full, completion-only loss, checkpoints and exact resume.

The trainer needs torch and is imported on first use; the settings (`config`) do not, so a
spec can be read without it.
"""

from typing import TYPE_CHECKING, Any

from .config import EncoderConfig, HostedConfig, LoraSettings, TrainConfig

if TYPE_CHECKING:
    from .sft import Interrupted, train


def __getattr__(name: str) -> Any:
    if name in {"Interrupted", "train"}:
        from . import sft

        return getattr(sft, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EncoderConfig", "HostedConfig", "Interrupted", "LoraSettings", "TrainConfig", "train"]
