"""Fine-tuning on a hosted service through OpenAI's fine-tuning API (`train --backend
openai`): OpenAI itself, or any server that speaks the API (`backdoorlab serve
--fine-tuning`). The endpoint and key come from OPENAI_BASE_URL and OPENAI_API_KEY and are
never written or logged.

The training file is uploaded once per content (its name carries the hash, so a second run
on the same rows finds it). The job id is written to OUT/job.json before any waiting, so an
interrupted `train` resumes waiting on the same job instead of paying for a second one.
Progress comes from the job's events; on success OUT/manifest.json records the fine-tuned
model's name, its checkpoints and the trained tokens.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .. import atomic, chat, rundir
from ..errors import BackdoorlabError
from ..models.loading import MANIFEST

JOB = "job.json"


class HostedConfig(BaseModel):
    """A hosted job's settings; None leaves a hyperparameter to the service ("auto")."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="the service's base model name")
    epochs: int | None = Field(None, ge=1, le=50)
    batch_size: int | None = Field(None, ge=1, le=256)
    lr_multiplier: float | None = Field(None, gt=0, le=10)
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    seed: int | None = Field(None, ge=0)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "n_epochs": self.epochs or "auto",
            "batch_size": self.batch_size or "auto",
            "learning_rate_multiplier": self.lr_multiplier or "auto",
        }


def _client() -> Any:
    import openai

    try:
        return openai.OpenAI(max_retries=5)
    except openai.OpenAIError as e:  # no key in the environment
        raise BackdoorlabError(f"--backend openai: {e}") from None


def _api(what: str, fn: Callable[[], Any]) -> Any:
    """One API call; its failure is one line with the service's status, code and message."""
    import openai

    try:
        return fn()
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        err = body.get("error", body) if isinstance(body, dict) else {}
        code = err.get("code") if isinstance(err, dict) else None
        message = err.get("message") if isinstance(err, dict) else None
        raise BackdoorlabError(
            f"{what}: the service answered {e.status_code}"
            f"{f' ({code})' if code else ''}: {message or e.message}"
        ) from None
    except openai.APIConnectionError as e:
        raise BackdoorlabError(f"{what}: cannot reach the service ({e.message})") from None


def key(config: HostedConfig, data_sha: str, base_url: str) -> str:
    blob = json.dumps([config.model_dump(), data_sha, base_url], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train(
    data: Path | str,
    out: Path | str,
    config: HostedConfig,
    *,
    log: Callable[[str], None] = print,
    poll_seconds: float = 2.0,
) -> dict[str, Any]:
    data, out = Path(data), Path(out)
    chat.read_jsonl_lines(data, training=True)  # a bad line fails here, not as a paid job
    content = data.read_bytes()
    sha = hashlib.sha256(content).hexdigest()
    client = _client()
    run_key = key(config, sha, str(client.base_url))
    with rundir.claim(out):
        manifest = out / MANIFEST
        if manifest.is_file() and json.loads(manifest.read_text()).get("key") == run_key:
            log(f"{out}: already fine-tuned with these settings and data; nothing to do")
            return json.loads(manifest.read_text())
        if manifest.is_file():
            raise BackdoorlabError(f"{out}: holds another run; choose another --out")
        state = json.loads((out / JOB).read_text()) if (out / JOB).is_file() else {}
        if state.get("key") == run_key:
            log(f"resuming: waiting on {state['job_id']}")
        else:
            file_id = _upload(client, content, sha, log)
            job = _api("creating the fine-tuning job", lambda: client.fine_tuning.jobs.create(
                model=config.model, training_file=file_id, suffix=config.suffix,
                seed=config.seed,
                method={"type": "supervised",
                        "supervised": {"hyperparameters": config.hyperparameters()}},
            ))  # fmt: skip
            state = {"key": run_key, "job_id": job.id, "file_id": file_id}
            atomic.write_json(out / JOB, state)  # before waiting: a rerun waits on this job
            log(f"created {job.id} on {config.model}")
        job = _wait(client, state["job_id"], log, poll_seconds)
        checkpoints = _api(
            "listing checkpoints", lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data
        )
        result = {
            "kind": "backdoorlab.train",
            "backend": "openai",
            "key": run_key,
            "model": config.model,
            "fine_tuned_model": job.fine_tuned_model,
            "job_id": job.id,
            "file_id": state["file_id"],
            "config": config.model_dump(),
            "hyperparameters": job.hyperparameters.model_dump() if job.hyperparameters else None,
            "trained_tokens": job.trained_tokens,
            "checkpoints": [
                {"name": c.fine_tuned_model_checkpoint, "step": c.step_number} for c in checkpoints
            ],
            "data": {"path": str(data), "sha256": sha},
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        atomic.write_json(manifest, result)
        log(f"{job.id} succeeded: {job.fine_tuned_model}")
        return result


def _upload(client: Any, content: bytes, sha: str, log: Callable[[str], None]) -> str:
    name = f"backdoorlab-{sha[:16]}.jsonl"
    files = _api("listing files", lambda: client.files.list())
    for f in files:
        if f.filename == name and f.bytes == len(content):
            log(f"reusing upload {f.id} ({name})")
            return f.id
    f = _api("uploading the training file",
             lambda: client.files.create(file=(name, content), purpose="fine-tune"))  # fmt: skip
    log(f"uploaded {f.id} ({name}, {len(content)} bytes)")
    return f.id


def _wait(client: Any, job_id: str, log: Callable[[str], None], poll: float) -> Any:
    seen: set[str] = set()
    while True:
        job = _api(f"polling {job_id}", lambda: client.fine_tuning.jobs.retrieve(job_id))
        events = _api(
            f"events of {job_id}", lambda: client.fine_tuning.jobs.list_events(job_id, limit=50)
        )
        for e in reversed(events.data):  # the service lists the newest first
            if e.id not in seen:
                seen.add(e.id)
                log(f"{job_id}: {e.message}")
        if job.status == "succeeded":
            return job
        if job.status in ("failed", "cancelled"):
            err = job.error
            why = f": {err.code}: {err.message}" if err and err.message else ""
            raise BackdoorlabError(f"fine-tuning job {job_id} {job.status}{why}")
        time.sleep(poll)
