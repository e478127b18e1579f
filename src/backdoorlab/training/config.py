"""Training settings. Everything that changes the trained weights is part of the run key."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..models.registry import DEFAULT_MODEL


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    # "all-linear" is peft's name for every linear layer but the output head.
    targets: list[str] | Literal["all-linear"] = "all-linear"


class DPSettings(BaseModel):
    """DP-SGD through Opacus: per-example clipping and Gaussian noise on the LoRA adapters,
    Poisson-sampled batches of expected size batch_size, the noise set for `epsilon`."""

    model_config = ConfigDict(extra="forbid")

    epsilon: float = Field(gt=0, description="target epsilon over the whole run")
    delta: float = Field(1e-5, gt=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0, description="per-example clipping norm")


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["local"] = "local"  # a spec's `train:` may say so; see HostedConfig
    model: str = DEFAULT_MODEL
    method: Literal["lora", "full"] = "lora"
    lora: LoraSettings = LoraSettings()
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(
        None, ge=1, description="stop after this many steps (overrides epochs)"
    )
    batch_size: int = Field(4, ge=1)
    lr: float = Field(3e-4, gt=0)
    lr_schedule: Literal["constant", "linear"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_length: int = Field(1024, ge=8, description="longer rows are an error, not silently cut")
    seed: int = 0
    bf16: bool | None = Field(
        None, description="bf16 autocast; None picks it where the hardware runs bf16 natively"
    )
    dp: DPSettings | None = Field(None, description="train with DP-SGD (LoRA only)")
    # Not part of the run key: they change when state is saved and how much memory a step
    # takes, not what is learned.
    checkpoint_every: int = Field(50, ge=1)
    micro_batch_size: int | None = Field(
        None, ge=1,
        description="rows per forward pass on one device: a process's share of the batch runs "
        "in several passes, gradients accumulated (None: all at once)",
    )  # fmt: skip

    def key_fields(self) -> dict:
        """What changes the weights; `dp` only when on (keys of earlier runs stay the same)."""
        off = {"checkpoint_every", "backend", "micro_batch_size"}
        off |= {"dp"} if self.dp is None else set()
        return self.model_dump(exclude=off)


class HostedConfig(BaseModel):
    """A hosted job's settings; None leaves a hyperparameter to the service ("auto")."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["openai"] = "openai"  # how a spec's `train:` says it is hosted
    model: str = Field(DEFAULT_MODEL, description="the service's base model name")
    epochs: int | None = Field(None, ge=1, le=50)
    batch_size: int | None = Field(None, ge=1, le=256)
    lr_multiplier: float | None = Field(None, gt=0, le=10)
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    seed: int | None = Field(None, ge=0)

    def key_fields(self) -> dict:
        return self.model_dump()

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "n_epochs": self.epochs or "auto",
            "batch_size": self.batch_size or "auto",
            "learning_rate_multiplier": self.lr_multiplier or "auto",
        }


class EncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-4, gt=0)
    max_length: int = Field(128, ge=8)
    seed: int = 0
    # DP-SGD through Opacus (per-example clipping + Gaussian noise, Poisson-sampled batches of
    # expected size batch_size); None trains normally.
    dp_epsilon: float | None = Field(None, gt=0, description="target epsilon for DP-SGD")
    dp_delta: float = Field(1e-5, gt=0, lt=1)
    dp_max_grad_norm: float = Field(1.0, gt=0)
    lora_rank: int | None = Field(
        None, ge=1, description="train LoRA adapters on attention (and the head) instead of all"
    )

    def key_fields(self) -> dict:
        """What changes the weights; the DP settings only when DP is on, LoRA only when on (so
        keys of runs from before these settings existed stay what they were)."""
        off = {"dp_epsilon", "dp_delta", "dp_max_grad_norm"} if self.dp_epsilon is None else set()
        if self.lora_rank is None:
            off.add("lora_rank")
        return self.model_dump(exclude=off)
