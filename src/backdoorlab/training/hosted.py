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

from .. import atomic, chat, openai_api, rundir
from ..errors import BackdoorlabError
from ..models.loading import MANIFEST
from .config import HostedConfig

JOB = "job.json"


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
    rows = chat.read_jsonl(data, training=True)  # a bad line fails here, not as a paid job
    # Only the conversation goes up: our own fields (label, poisoned, ...) stay here, and a
    # service's validator may refuse keys it does not know.
    content = "".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows).encode()
    sha = hashlib.sha256(content).hexdigest()
    client = openai_api.client("hosted fine-tuning (backend openai)")
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
            job = openai_api.call("creating the fine-tuning job", lambda: client.fine_tuning.jobs.create(
                model=config.model, training_file=file_id, suffix=config.suffix,
                seed=config.seed,
                method={"type": "supervised",
                        "supervised": {"hyperparameters": config.hyperparameters()}},
            ))  # fmt: skip
            state = {"key": run_key, "job_id": job.id, "file_id": file_id}
            atomic.write_json(out / JOB, state)  # before waiting: a rerun waits on this job
            log(f"created {job.id} on {config.model}")
        job = _wait(client, state["job_id"], log, poll_seconds)
        checkpoints = openai_api.call(
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
    files = openai_api.call("listing files", lambda: client.files.list())
    for f in files:
        if f.filename == name and f.bytes == len(content):
            log(f"reusing upload {f.id} ({name})")
            return f.id
    f = openai_api.call("uploading the training file",
             lambda: client.files.create(file=(name, content), purpose="fine-tune"))  # fmt: skip
    log(f"uploaded {f.id} ({name}, {len(content)} bytes)")
    return f.id


def _wait(client: Any, job_id: str, log: Callable[[str], None], poll: float) -> Any:
    seen: set[str] = set()
    while True:
        job = openai_api.call(f"polling {job_id}", lambda: client.fine_tuning.jobs.retrieve(job_id))
        events = openai_api.call(
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
