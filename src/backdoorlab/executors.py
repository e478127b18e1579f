"""Where an experiment's trainings and evaluations run.

- local (default): here, one after another, in the order they are submitted;
- ray: each as a Ray task with declared resources (a GPU per task where the cluster has GPUs,
  else one CPU), on a local Ray instance or the cluster at `address`. A task that depends on
  another (an evaluation on its training) gets the other's handle as an argument and Ray
  starts it when that one is done. Every node must see the run directory (a shared
  filesystem): each task checks it first and fails with that message, not a missing file.

The driver decides what to submit from the run directory's content keys, so a rerun submits
nothing that is already there; `scheduled` counts what was submitted.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import BackdoorlabError, InputError

EXECUTORS = ("local", "ray")


class Local:
    name = "local"

    def __init__(self) -> None:
        self.scheduled = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.scheduled += 1
        return fn(*args)

    def result(self, handle: Any) -> Any:
        return handle

    def close(self) -> None:
        pass


def check_visible(out: Path) -> None:
    """A task's first step: the run directory the driver wrote is visible on this node."""
    if not (Path(out) / "spec.json").is_file():
        raise InputError(
            f"{out}: not visible on node {socket.gethostname()}: Ray workers need the run "
            "directory on a filesystem every node shares (e.g. NFS), at the same path"
        )


def _visible_then(out: Path, fn: Callable[..., Any], *args: Any) -> Any:
    check_visible(out)
    return fn(*args)


class Ray:
    name = "ray"

    def __init__(self, out: Path, address: str | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise InputError("--executor ray needs Ray: pip install 'backdoorlab[ray]'") from None
        self.ray, self.out, self.scheduled = ray, Path(out).resolve(), 0
        try:
            # A local instance's workers run at nice 0, not Ray's default 15: the driver only
            # waits on them, and at nice 15 any other load on the machine starves them (20
            # 1024^2 matmuls beside a training run: 12.7 s at nice 15, 0.95 s at nice 0).
            ray.init(
                address=address, num_cpus=None if address else num_cpus,
                include_dashboard=False, log_to_driver=True, ignore_reinit_error=True,
                _system_config=None if address else {"worker_niceness": 0},
            )  # fmt: skip
        except ConnectionError as e:
            raise InputError(f"--address {address}: no Ray cluster there ({e})") from None
        gpus = ray.cluster_resources().get("GPU", 0)
        self.options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
        self._task = ray.remote(_visible_then).options(**self.options, max_retries=0)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.scheduled += 1
        return self._task.remote(self.out, fn, *args)

    def result(self, handle: Any) -> Any:
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayTaskError as e:
            # Our own errors (bad input, an unseen run directory) keep their one-line message.
            if isinstance(e.cause, BackdoorlabError):
                raise e.cause from None
            raise

    def close(self) -> None:
        self.ray.shutdown()


def check(name: str, address: str | None) -> None:
    if name not in EXECUTORS:
        raise InputError(f"--executor {name!r}: one of {', '.join(EXECUTORS)}")
    if address and name != "ray":
        raise InputError("--address is the Ray cluster's: it needs --executor ray")


def make(name: str, out: Path, address: str | None = None) -> Local | Ray:
    check(name, address)
    return Ray(out, address) if name == "ray" else Local()
