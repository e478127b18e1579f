"""One training process or several, through accelerate: the SFT loop asks this object for
its share of each batch, its device, and when to talk to the others.

Launched plainly, it is one process and nothing is wrapped. Under `accelerate launch` or
`torchrun` (WORLD_SIZE > 1) it is an accelerate Accelerator: DDP over NCCL on GPUs, gloo on
CPUs, or FSDP / DeepSpeed from an accelerate config file (configs/). Each process takes every
world-th row of the global batch the user set; losses are scaled by the global batch's token
count, so the averaged gradient is the one-process gradient of the same batch.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:  # the command line imports this module; torch loads when training starts
    import torch


def launched_processes() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def main_process() -> bool:
    """Whether this is the process that writes and prints (rank 0, or the only one)."""
    return int(os.environ.get("RANK", "0")) == 0


class Processes:
    def __init__(self, device: torch.device):
        self.accelerator: Any = None
        self.device = device
        if launched_processes() > 1:
            import torch
            from accelerate import Accelerator

            self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
            self.device = self.accelerator.device

    @property
    def world(self) -> int:
        return self.accelerator.num_processes if self.accelerator else 1

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator else 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check(self, batch_size: int, dp: bool) -> None:
        if batch_size < self.world:
            raise InputError(
                f"--batch-size {batch_size} is the global batch: at least one row for each of "
                f"the {self.world} processes"
            )
        if dp and self.world > 1:
            raise InputError(
                "DP-SGD (train.dp) runs in one process: launch it without accelerate "
                "(--micro-batch-size splits its batch into passes)"
            )

    def plan(self, batch_size: int, micro: int | None) -> str:
        """The global batch as this run splits it, for the log."""
        share = -(-batch_size // self.world)
        passes = -(-share // micro) if micro else 1
        parts = [str(batch_size)]
        if self.world > 1:
            parts.append(f"{self.world} processes x up to {share} rows")
        if passes > 1:
            parts.append(f"{passes} passes of up to {micro} rows, gradients accumulated")
        return ": ".join(parts[:2]) + "".join(f", {p}" for p in parts[2:])

    def no_sync(self, model: Any, last: bool) -> Any:
        """Gradients stay local until the last pass of a step (no all-reduce per pass)."""
        if self.accelerator is None or last:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model)

    def shard(self, batch: list[int]) -> list[int]:
        return batch[self.rank :: self.world]

    def prepare(self, model: Any, optimizer: Any) -> tuple[Any, Any]:
        if self.accelerator is None:
            return model, optimizer
        return self.accelerator.prepare(model, optimizer)

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def total(self, values: list[float]) -> list[float]:
        """Each value summed over the processes (one collective for the step's numbers)."""
        if self.accelerator is None:
            return values
        import torch

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.accelerator.reduce(t, reduction="sum").tolist()

    def wait(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def unwrap(self, model: Any) -> Any:
        return self.accelerator.unwrap_model(model) if self.accelerator else model

    def state_dict(self, model: Any) -> dict[str, torch.Tensor] | None:
        """The full weights, gathered from shards where FSDP or ZeRO-3 split them (None: the
        unwrapped model's own). Every process must call it; only the main one saves."""
        return self.accelerator.get_state_dict(model) if self.accelerator else None
