"""backdoorlab train: fine-tune on chat JSONL, here or on a hosted service."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from ..errors import InputError
from ..models.registry import DEFAULT_MODEL
from ..overrides import override
from ..training.config import HostedConfig, LoraSettings, TrainConfig
from ..training.processes import main_process
from .common import (
    DeviceOpt,
    MaxLengthOpt,
    ModelOpt,
    _default,
    _log,
    _names,
    _quiet_libraries,
    app,
    out,
)

if TYPE_CHECKING:
    pass


@app.command()
def train(
    data: Annotated[
        Path, typer.Argument(help="Training data: chat JSONL, each row ending with the assistant.")
    ],
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Run directory for adapter, checkpoints, manifest.")
    ],
    model: ModelOpt = DEFAULT_MODEL,
    epochs: Annotated[
        float | None, typer.Option(help="Passes over the data." + _default(TrainConfig, "epochs"))
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Stop after this many optimizer steps (overrides --epochs).")
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help="Peak learning rate (AdamW, linear decay)." + _default(TrainConfig, "lr")
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Rows per optimizer step." + _default(TrainConfig, "batch_size")),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed for LoRA init, batch order, dropout." + _default(TrainConfig, "seed")
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run from its checkpoint.")
    ] = False,
    full: Annotated[bool, typer.Option("--full", help="Full fine-tuning instead of LoRA.")] = False,
    lora_rank: Annotated[
        int | None, typer.Option(help="LoRA rank r." + _default(LoraSettings, "rank"))
    ] = None,
    lora_alpha: Annotated[
        float | None,
        typer.Option(help="LoRA alpha (scale is alpha / r)." + _default(LoraSettings, "alpha")),
    ] = None,
    lora_dropout: Annotated[
        float | None,
        typer.Option(help="Dropout on the LoRA path." + _default(LoraSettings, "dropout")),
    ] = None,
    lora_targets: Annotated[
        str,
        typer.Option(
            help="Comma-separated module names, or all-linear (every linear layer but the head)."
        ),
    ] = "all-linear",
    bf16: Annotated[
        bool | None,
        typer.Option(
            "--bf16/--no-bf16",
            help="bf16 autocast. Default: on where the hardware runs bf16 natively.",
        ),
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(
            help="Save a resumable checkpoint every N steps."
            + _default(TrainConfig, "checkpoint_every")
        ),
    ] = None,
    micro_batch_size: Annotated[
        int | None,
        typer.Option(
            help="Rows per forward pass on one device; the batch runs in several passes with "
            "gradients accumulated (less memory, same result). Default: the whole batch."
        ),
    ] = None,
    max_length: MaxLengthOpt = None,
    backend: Annotated[
        str,
        typer.Option(
            help="local: our trainer on this machine; openai: a job on the fine-tuning API at "
            "OPENAI_BASE_URL with OPENAI_API_KEY (OpenAI, or `backdoorlab serve "
            "--fine-tuning`), where --model is the service's base model."
        ),
    ] = "local",
    lr_multiplier: Annotated[
        float | None, typer.Option(help="openai backend: learning_rate_multiplier (default auto).")
    ] = None,
    suffix: Annotated[
        str | None, typer.Option(help="openai backend: a suffix for the fine-tuned model's name.")
    ] = None,
    device: DeviceOpt = None,
) -> None:
    """Fine-tune a model on chat JSONL (loss on assistant tokens only).

    Writes OUT/adapter (a standard PEFT adapter; OUT/model with --full) and OUT/manifest.json.
    Rerunning with the same data and settings reuses the finished run; a killed run continues
    with --resume and ends with the same weights as an uninterrupted one. With --backend
    openai the job runs on the service: OUT/job.json names it before any waiting (a rerun
    waits on the same job), and the manifest records the fine-tuned model's name.

    Several processes (GPUs, or CPU processes over gloo) train one run under accelerate:
    `accelerate launch --num_processes 2 -m backdoorlab train ...` (or torchrun). --batch-size
    stays the global batch; each process takes its share, printed at the start.

    Example: backdoorlab train examples/demo_birds.jsonl --out runs/demo --epochs 3 --lr 1e-3
    """
    from .. import api

    if backend not in ("local", "openai"):
        raise InputError(f"--backend {backend!r}: local or openai")
    if backend == "openai":
        hosted = override(
            HostedConfig, model=model, epochs=epochs, batch_size=batch_size,
            lr_multiplier=lr_multiplier, suffix=suffix, seed=seed,
        )  # fmt: skip
        done = api.train(data, out_dir, hosted, log=_log)
        out.print(Text.assemble(("done", "green")), f" {out_dir}: {done.model}")
        return
    if lr_multiplier is not None or suffix is not None:
        raise InputError("--lr-multiplier and --suffix are for --backend openai")
    _quiet_libraries()
    targets = (
        "all-linear" if lora_targets == "all-linear" else _names(lora_targets, "--lora-targets")
    )
    config = override(
        TrainConfig,
        model=model,
        method="full" if full else "lora",
        lora={"rank": lora_rank, "alpha": lora_alpha, "dropout": lora_dropout, "targets": targets},
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
        bf16=bf16,
        checkpoint_every=checkpoint_every,
        micro_batch_size=micro_batch_size,
    )
    done = api.train(data, out_dir, config, resume=resume, log=_log, device=device)
    if not main_process():
        return
    out.print(
        Text.assemble(("done", "green")),
        f"{out_dir}: {done.steps} steps, final loss {done.final_loss:.4f}, "
        f"{done.tokens_per_second} tokens/s",
    )
