"""Supervised fine-tuning on chat JSONL: LoRA or full, completion-only loss, resumable.

Our own loop rather than transformers.Trainer / TRL: it computes the output head only at
positions the loss uses (the vocabulary head is a fifth of SmolLM2's FLOPs and prompts are
most of each row), buckets rows by length, and checkpoints everything a bit-identical
resume needs. benchmarks/train_throughput.py measures it against TRL's SFTTrainer.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import math
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import atomic, chat, rundir
from ..errors import BackdoorlabError, InputError
from ..models import fingerprint, load_base, pick_device
from ..models.loading import CHECKPOINT, MANIFEST, bf16_is_fast, read_manifest
from . import batching, checkpoint
from .config import TrainConfig
from .processes import Processes


class Interrupted(BackdoorlabError):
    exit_code = 130


@dataclass
class Encoded:
    ids: list[list[int]]
    masks: list[list[bool]]

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


def encode_rows(
    tokenizer: Any, rows: list[tuple[int, chat.Row]], max_length: int, source: str
) -> Encoded:
    ids, masks = [], []
    for line, row in rows:
        i, m = chat.encode_training(tokenizer, row["messages"])
        if len(i) > max_length:
            raise InputError(
                f"{source}:{line}: the row is {len(i)} tokens, longer than max_length {max_length}"
            )
        ids.append(i)
        masks.append(m)
    return Encoded(ids, masks)


def run_key(config: TrainConfig, data_sha256: str, init: str | None = None) -> str:
    """`init`: the content hash of the model training continues from (None: the base)."""
    fields = {
        "config": config.key_fields(),
        "data": data_sha256,
        "model": fingerprint(config.model),
    }
    blob = json.dumps(fields | ({"init": init} if init else {}), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def collate(enc: Encoded, batch: list[int], pad_id: int, device: torch.device):
    width = max(enc.lengths[i] for i in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.bool)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    for r, i in enumerate(batch):
        n = enc.lengths[i]
        ids[r, :n] = torch.tensor(enc.ids[i])
        mask[r, :n] = torch.tensor(enc.masks[i])
        attn[r, :n] = 1
    # Without padding, no mask lets attention take its plain causal path.
    return ids.to(device), mask.to(device), (None if bool(attn.all()) else attn.to(device))


def _supports_logits_to_keep(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def completion_loss(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, attn, head_subset: bool, count: int
):
    """Cross-entropy summed over the tokens the mask marks, over `count` (the trained tokens
    of the whole batch, all processes' shares together: the mean on one process), computing
    the head only where needed."""
    # Logits at position t predict token t+1.
    needed = mask[:, 1:].any(dim=0).nonzero().squeeze(1)
    if head_subset:
        logits = model(
            input_ids=ids, attention_mask=attn, logits_to_keep=needed, use_cache=False
        ).logits
    else:
        logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, needed]
    targets, keep = ids[:, needed + 1], mask[:, needed + 1]
    return F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum") / count


def lr_lambda(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        if config.lr_schedule == "constant":
            return 1.0
        span = max(1, total_steps - config.warmup_steps)
        return max(0.0, 1 - (step - config.warmup_steps) / span)

    return f


@contextlib.contextmanager
def _graceful_interrupt() -> Iterator[Callable[[], bool]]:
    """First Ctrl-C: finish the current step and checkpoint. A second one stops at once."""
    hits = []

    def handler(signum, frame):
        if hits:
            raise KeyboardInterrupt
        hits.append(signum)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield lambda: False
        return
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, previous)


def _prepare_run_dir(out: Path, key: str, resume: bool) -> dict | None:
    """Check what `out` already holds. Returns the finished manifest when it is this run."""
    manifest = read_manifest(out) if out.is_dir() else None
    if manifest is not None:
        if manifest.get("key") == key:
            return manifest
        raise InputError(
            f"{out}: holds a finished run with other settings or data (key {manifest.get('key')}, "
            f"this run {key}); choose another --out"
        )
    ckpt = out / CHECKPOINT
    if ckpt.is_dir():
        saved = checkpoint.read_meta(ckpt)
        if saved["key"] != key:
            raise InputError(
                f"{out}: holds an unfinished run with other settings or data; choose another --out"
            )
        if not resume:
            raise InputError(
                f"{out}: holds an unfinished run (checkpoint at step {saved['step']}); "
                "continue it with --resume or choose another --out"
            )
    return None


def _check_targets(model: Any, targets: list[str] | str, name: str) -> None:
    """Unknown --lora-targets fail with the names the model has, not a peft traceback."""
    if targets == "all-linear":
        return
    linear = sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    )
    unknown = [t for t in targets if t not in linear]
    if unknown:
        raise InputError(
            f"--lora-targets: {name} has no linear layer named {unknown[0]!r} "
            f"(it has: {', '.join(linear)})"
        )


def build_model(config: TrainConfig, dev: torch.device) -> tuple[Any, Any]:
    """The base model, wrapped with fresh LoRA adapters unless fine-tuning fully."""
    model, tok = load_base(config.model, device=dev)
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        _check_targets(model, config.lora.targets, config.model)

        lcfg = LoraConfig(
            r=config.lora.rank,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=config.lora.targets,
            task_type="CAUSAL_LM",
        )
        torch.manual_seed(config.seed)  # LoRA A matrices are drawn here
        model = get_peft_model(model, lcfg)
    model.train()
    return model, tok


def _private(
    model: Any, optimizer: Any, n: int, total: int, config: TrainConfig
) -> tuple[Any, Any, Any, Callable[[], list[int]]]:
    """Opacus around the model and optimizer, noise set so `total` steps of Poisson-sampled
    batches (expected size batch_size) spend config.dp.epsilon; and the batch source.

    Batches and noise come from the global generator alone, whose state a checkpoint keeps,
    so an interrupted DP-SGD run resumes to the same adapter (a DataLoader iterator would
    draw a seed of its own at every epoch boundary)."""
    import warnings

    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    if config.method != "lora":
        raise InputError("DP-SGD trains LoRA adapters only (method: lora)")
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    engine = PrivacyEngine(accountant="rdp")
    loader = DataLoader(TensorDataset(torch.arange(n)), batch_size=config.batch_size)
    model, optimizer, loader = engine.make_private_with_epsilon(
        module=model, optimizer=optimizer, data_loader=loader,
        epochs=max(1, math.ceil(total / len(loader))), target_epsilon=config.dp.epsilon,
        target_delta=config.dp.delta, max_grad_norm=config.dp.max_grad_norm,
    )  # fmt: skip
    rate = loader.sample_rate

    def next_batch() -> list[int]:
        # Opacus's Poisson sampler: each row joins with probability `rate`.
        while True:  # an empty batch: the next one then
            batch = (torch.rand(n) < rate).nonzero().flatten()
            if len(batch):
                return batch.tolist()

    return model, optimizer, engine, next_batch


def _progress_bar(enabled: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[tps]:.0f} tok/s"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def train(
    data: Path | str,
    out: Path | str,
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    device: str | None = None,
    on_step: Callable[[int, int, float], bool] | None = None,
    init: tuple[Any, Any, str] | None = None,
) -> dict[str, Any]:
    """Fine-tune `config.model` on a chat JSONL file; write the adapter and manifest to `out`.

    `init` = (model, tokenizer, content hash): continue training that already-adapted model
    in place (a defense refitting a victim) instead of fresh adapters on the base; its hash is
    part of the run key.

    `out` is checked and locked before anything is loaded: a path that cannot be a run
    directory, or one another process is writing, fails at once. `on_step(step, total, loss)`
    runs after every step; when it returns True the run checkpoints and stops (Interrupted),
    as on Ctrl-C.
    """
    data, out = Path(data), Path(out)
    rows = chat.read_jsonl_lines(data, training=True)
    procs = Processes(pick_device(device))
    if not procs.is_main:  # under accelerate launch: the main process holds and writes `out`
        return _train(rows, data, out, config, resume=resume, progress=False,
                      log=lambda s: None, procs=procs, on_step=on_step, init=init)  # fmt: skip
    with rundir.claim(out):
        return _train(rows, data, out, config, resume=resume, progress=progress, log=log,
                      procs=procs, on_step=on_step, init=init)  # fmt: skip


def _train(
    rows: list[tuple[int, chat.Row]],
    data: Path,
    out: Path,
    config: TrainConfig,
    *,
    resume: bool,
    progress: bool,
    log: Callable[[str], None],
    procs: Processes,
    on_step: Callable[[int, int, float], bool] | None = None,
    init: tuple[Any, Any, str] | None = None,
) -> dict[str, Any]:
    data_sha = hashlib.sha256(data.read_bytes()).hexdigest()
    dev = procs.device
    procs.check(config.batch_size, config.dp is not None)
    if config.bf16 is None:
        config = config.model_copy(update={"bf16": bf16_is_fast(dev)})
    key = run_key(config, data_sha, init[2] if init else None)
    finished = _prepare_run_dir(out, key, resume)
    if finished is not None:
        log(f"{out}: already trained with these settings and data (key {key}); nothing to do")
        return finished

    if init is None:
        model, tok = build_model(config, dev)
    else:
        model, tok, _ = init
        for name, p in model.named_parameters():
            # an adapter loaded for inference is frozen
            p.requires_grad_(config.method == "full" or "lora_" in name)
        model.train()
    enc = encode_rows(tok, rows, config.max_length, str(data))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    spe = batching.steps_per_epoch(len(rows), config.batch_size)
    total = config.max_steps or math.ceil(config.epochs * spe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, total))

    head_subset = _supports_logits_to_keep(model)  # asked of the model Opacus would wrap
    model, optimizer = procs.prepare(model, optimizer)
    engine = None
    if config.dp is not None:
        model, optimizer, engine, next_batch = _private(model, optimizer, len(rows), total, config)

    start, before = 0, {"tokens": 0, "seconds": 0.0}  # totals of the runs before a resume
    if resume and (out / CHECKPOINT).is_dir():
        start = checkpoint.load(
            out / CHECKPOINT, model=procs.unwrap(model), optimizer=optimizer, scheduler=scheduler
        )
        meta = checkpoint.read_meta(out / CHECKPOINT)
        before |= meta.get("totals", {})
        if engine is not None:  # the privacy spent so far
            spent = meta["accountant"]
            engine.accountant.load_state_dict(
                spent | {"history": list(map(tuple, spent["history"]))}
            )
        log(f"Resuming {out} from step {start} of {total}")
    else:
        torch.manual_seed(config.seed)

    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=config.bf16)

    @functools.cache
    def epoch_order(epoch: int) -> list[list[int]]:
        return batching.epoch_batches(enc.lengths, config.batch_size, config.seed, epoch)

    pad_frac = batching.padding_fraction(enc.lengths, epoch_order(0))
    log(
        f"Training {config.method} on {len(rows)} rows of {data} for {total} steps "
        f"(batch {procs.plan(config.batch_size, config.micro_batch_size)}, {sum(map(sum, enc.masks))} trained tokens/epoch, "
        f"padding {pad_frac:.1%}, {'bf16 autocast' if config.bf16 else 'fp32'}, {dev.type})"
    )
    tokens, loss_value, step = 0, float("nan"), start
    t0 = time.perf_counter()
    bar = _progress_bar(enabled=progress)
    with _graceful_interrupt() as interrupted, bar:
        task = bar.add_task("train", total=total, completed=start, loss=float("nan"), tps=0.0)
        while step < total:
            batch = next_batch() if engine else epoch_order(step // spe)[step % spe]
            count = sum(sum(enc.masks[i][1:]) for i in batch)
            share = procs.shard(batch)
            micro = config.micro_batch_size or len(share)
            parts = [share[j : j + micro] for j in range(0, len(share), micro)]
            loss = torch.zeros(())
            for j, part in enumerate(parts):
                ids, mask, attn = collate(enc, part, tok.pad_token_id, dev)
                last = j == len(parts) - 1
                with procs.no_sync(model, last=last):
                    with autocast:
                        part_loss = completion_loss(model, ids, mask, attn, head_subset, count)
                    # Opacus scales a pass's per-example gradients by its row count ("mean"
                    # reduction); this makes them the whole batch's in one pass.
                    procs.backward(part_loss * (len(share) / len(part) if engine else 1))
                loss += part_loss.detach().cpu()
                if engine is not None and not last:
                    # Opacus's BatchMemoryManager pattern: this pass's per-example gradients
                    # are clipped into the batch's sum; noise and the step follow the last.
                    optimizer.signal_skip_step(do_skip=True)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            if engine is None:  # DP-SGD clips each example's gradient instead
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += sum(enc.lengths[i] for i in batch)
            # One collective per step: the whole batch's loss, and whether any process was
            # interrupted, so every process takes the same decision below.
            loss_value, hit = procs.total([float(loss.detach()), float(interrupted())])
            stop = hit > 0 or bool(on_step and on_step(step, total, loss_value))
            tps = tokens / (time.perf_counter() - t0)
            bar.update(task, completed=step, loss=loss_value, tps=tps)
            if not math.isfinite(loss_value):
                raise BackdoorlabError(
                    f"training diverged at step {step} (loss {loss_value}); lower --lr"
                )
            if step < total and (step % config.checkpoint_every == 0 or stop) and procs.is_main:
                checkpoint.save(
                    out / CHECKPOINT,
                    step=step,
                    key=key,
                    model=procs.unwrap(model),
                    optimizer=optimizer,
                    scheduler=scheduler,
                    totals={
                        "tokens": before["tokens"] + tokens,
                        "seconds": before["seconds"] + time.perf_counter() - t0,
                    },
                    accountant=engine.accountant.state_dict() if engine else None,
                )
            # An interrupt during the last step finds the training done: the final weights
            # are saved below, rather than a message about the step before's checkpoint.
            if stop and step < total:
                procs.wait()  # the checkpoint is written before any process exits
                raise Interrupted(
                    f"interrupted at step {step} of {total}; checkpoint saved, "
                    "continue with --resume"
                )
    # Totals over the whole run, resumed parts included.
    seconds = before["seconds"] + time.perf_counter() - t0
    tokens += before["tokens"]

    epsilon = None
    if engine is not None:
        epsilon = engine.get_epsilon(config.dp.delta)
        model = model._module  # the peft model inside Opacus's per-example-gradient wrapper
        log(f"DP-SGD: epsilon {epsilon:.2f} at delta {config.dp.delta}")
    weights = "adapter" if config.method == "lora" else "model"
    state = procs.state_dict(model)  # every process takes part where weights are sharded
    if not procs.is_main:
        procs.wait()
        return read_manifest(out) or {}
    with atomic.directory(out / weights) as tmp:
        procs.unwrap(model).save_pretrained(tmp, **({"state_dict": state} if state else {}))
        if config.method == "full":
            tok.save_pretrained(tmp)
    manifest = {
        "kind": "backdoorlab.train",
        "key": key,
        "model": config.model,
        "model_fingerprint": fingerprint(config.model),
        "method": config.method,
        "weights": weights,
        "data": {"path": str(data), "sha256": data_sha, "rows": len(rows)},
        "init": init[2] if init else None,
        "config": config.model_dump(),
        "seed": config.seed,
        "processes": procs.world,
        "steps": total,
        "resumed_from": start or None,
        "final_loss": loss_value,
        "epsilon": epsilon,
        "seconds": round(seconds, 2),
        "tokens": tokens,
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
        "device": dev.type,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic.write_json(out / MANIFEST, manifest)
    shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    procs.wait()
    log(f"Saved {weights} to {out / weights} ({total} steps, final loss {loss_value:.4f})")
    return manifest
