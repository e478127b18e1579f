"""OpenAI's files and fine-tuning jobs API on our own trainer (`backdoorlab serve
--fine-tuning DIR`), so code written for a hosted fine-tuning service (upload a file, create
a job, poll it, chat with `ft:...`) runs unchanged against a local model.

State lives in DIR/service.sqlite: a restarted server still knows its files and jobs, and a
job that was running resumes from its training checkpoint. Jobs run one at a time in a
worker thread. Uploads are stored as DIR/files/ID under generated ids (never the client's
file name). A job's settings are checked when it is created (a 400, not a job that fails an
hour later); its training file is checked as `data check` would, and a malformed line fails
the job with an error naming the line.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import atomic, chat
from .errors import ApiError, BackdoorlabError, InputError, first_problem

MAX_FILE_BYTES = 64 * 1024 * 1024
PURPOSES = ("fine-tune", "batch", "assistants", "user_data", "evals", "vision")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, filename TEXT NOT NULL, purpose TEXT NOT NULL, bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, request TEXT NOT NULL,
    status TEXT NOT NULL, fine_tuned_model TEXT, error TEXT, trained_tokens INTEGER,
    finished_at INTEGER, cancel INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, job TEXT NOT NULL,
    created_at INTEGER NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, data TEXT NOT NULL
);
"""


class Hyperparameters(BaseModel):
    """OpenAI's supervised hyperparameters; "auto" takes our trainer's default."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Literal["auto"] = Field("auto", description="1-50")
    batch_size: int | Literal["auto"] = Field("auto", description="1-256")
    learning_rate_multiplier: float | Literal["auto"] = "auto"

    def model_post_init(self, _: Any) -> None:
        for name, lo, hi in (("n_epochs", 1, 50), ("batch_size", 1, 256)):
            v = getattr(self, name)
            if v != "auto" and not lo <= v <= hi:
                raise ValueError(f"{name} must be between {lo} and {hi}, not {v}")
        m = self.learning_rate_multiplier
        if m != "auto" and not 0 < m <= 10:
            raise ValueError(f"learning_rate_multiplier must be in (0, 10], not {m}")


class Supervised(BaseModel):
    hyperparameters: Hyperparameters = Hyperparameters()


class Method(BaseModel):
    type: Literal["supervised"]
    supervised: Supervised = Supervised()


class JobRequest(BaseModel):
    """POST /v1/fine_tuning/jobs: the `method` form, or the older `hyperparameters` form."""

    model_config = ConfigDict(extra="ignore")

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None

    def settings(self) -> Hyperparameters:
        if self.method is not None:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or Hyperparameters()


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class Service:
    """Files and fine-tuning jobs under `root`. `bases` maps the model names a job may
    fine-tune to what the trainer loads (the served model's names, aliases included)."""

    def __init__(
        self,
        root: Path,
        bases: dict[str, str],
        *,
        device: str | None = None,
        log: Callable[[str], None] = lambda s: None,
    ):
        self.root, self.bases, self.device, self.log = Path(root), bases, device, log
        try:
            (self.root / "files").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"--fine-tuning {root}: cannot use it ({e.strerror or e})") from None
        path = self.root / "service.sqlite"
        try:
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
        except sqlite3.Error as e:
            what = "a directory, not a database" if path.is_dir() else str(e)
            raise InputError(f"{path}: not a usable service database ({what})") from None
        self.lock = threading.Lock()  # one connection, many request threads
        self.wake = threading.Event()
        self.worker = threading.Thread(target=self._work, name="fine-tuning", daemon=True)
        self.worker.start()

    def _q(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    # Files

    def create_file(self, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        if purpose not in PURPOSES:
            raise ApiError(400, f"purpose must be one of {', '.join(PURPOSES)}", None, "purpose")
        if len(content) > MAX_FILE_BYTES:
            raise ApiError(413, f"the file is {len(content)} bytes; at most {MAX_FILE_BYTES}")
        fid = _id("file")
        atomic.write_bytes(self.root / "files" / fid, content)
        self._q(
            "INSERT INTO files VALUES (?,?,?,?,?)",
            (fid, Path(filename).name[:255], purpose, len(content), int(time.time())),
        )
        return self.file(fid)

    def file(self, fid: str) -> dict[str, Any]:
        rows = self._q(
            "SELECT id, filename, purpose, bytes, created_at FROM files WHERE id=?", (fid,)
        )
        if not rows:
            raise ApiError(404, f"No such File object: {fid}", None, "id")
        i, name, purpose, n, created = rows[0]
        return {"id": i, "object": "file", "bytes": n, "created_at": created, "filename": name,
                "purpose": purpose, "status": "processed", "status_details": None}  # fmt: skip

    def files(self) -> dict[str, Any]:
        ids = [r[0] for r in self._q("SELECT id FROM files ORDER BY created_at DESC, rowid DESC")]
        return {"object": "list", "data": [self.file(i) for i in ids], "has_more": False}

    def content(self, fid: str) -> bytes:
        self.file(fid)
        return (self.root / "files" / fid).read_bytes()

    def delete_file(self, fid: str) -> dict[str, Any]:
        self.file(fid)
        self._q("DELETE FROM files WHERE id=?", (fid,))
        (self.root / "files" / fid).unlink(missing_ok=True)
        return {"id": fid, "object": "file", "deleted": True}

    # Jobs

    def create_job(self, body: Any) -> dict[str, Any]:
        try:
            req = JobRequest.model_validate(body)
        except ValidationError as e:
            loc, msg = first_problem(e)
            raise ApiError(400, f"{loc}: {msg}" if loc else msg, None, loc or None) from None
        if req.model not in self.bases:
            raise ApiError(
                400, f"model {req.model!r} cannot be fine-tuned here (available: "
                f"{', '.join(self.bases)})", "model_not_available", "model",
            )  # fmt: skip
        for param in ("training_file", "validation_file"):
            fid = getattr(req, param)
            if fid is not None:
                try:
                    purpose = self.file(fid)["purpose"]
                except ApiError:
                    raise ApiError(400, f"{param}: no such file {fid!r}", None, param) from None
                if purpose != "fine-tune":
                    raise ApiError(400, f"{param}: file {fid} was uploaded with purpose "
                                   f"{purpose!r}; fine-tuning takes purpose 'fine-tune'",
                                   "invalid_file_purpose", param)  # fmt: skip
        jid = _id("ftjob")
        self._q(
            "INSERT INTO jobs (id, created_at, request, status) VALUES (?,?,?,?)",
            (jid, int(time.time()), req.model_dump_json(), "validating_files"),
        )
        self._event(jid, "info", f"Created fine-tuning job: {jid}")
        self.wake.set()
        return self.job(jid)

    def job(self, jid: str) -> dict[str, Any]:
        rows = self._q(
            "SELECT created_at, request, status, fine_tuned_model, error, trained_tokens, "
            "finished_at FROM jobs WHERE id=?",
            (jid,),
        )
        if not rows:
            raise ApiError(404, f"No such fine-tuning job: {jid}", None, "fine_tuning_job_id")
        created, request, status, model, error, tokens, finished = rows[0]
        req = JobRequest.model_validate_json(request)
        hp = self._resolved(req).model_dump()
        return {
            "id": jid, "object": "fine_tuning.job", "created_at": created,
            "error": json.loads(error) if error else None, "fine_tuned_model": model,
            "finished_at": finished, "hyperparameters": hp, "model": req.model,
            "organization_id": "local", "result_files": [], "seed": req.seed or 0,
            "status": status, "trained_tokens": tokens, "training_file": req.training_file,
            "validation_file": req.validation_file, "estimated_finish": None,
            "integrations": [], "user_provided_suffix": req.suffix,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
        }  # fmt: skip

    def jobs(self, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        ids = [r[0] for r in self._q("SELECT id FROM jobs ORDER BY created_at DESC, rowid DESC")]
        if after is not None:
            ids = ids[ids.index(after) + 1 :] if after in ids else []
        page = ids[:limit]
        return {"object": "list", "data": [self.job(i) for i in page], "has_more": len(ids) > limit}

    def cancel(self, jid: str) -> dict[str, Any]:
        status = self.job(jid)["status"]
        if status in ("succeeded", "failed", "cancelled"):
            raise ApiError(400, f"the job has already {status}; it cannot be cancelled")
        self._q("UPDATE jobs SET cancel=1 WHERE id=?", (jid,))
        self._finish(jid, "cancelled")  # a running job's training stops at its next step
        return self.job(jid)

    def events(self, jid: str, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        self.job(jid)
        rows = self._q(
            "SELECT id, created_at, level, message, data FROM events WHERE job=? ORDER BY seq DESC",
            (jid,),
        )
        if after is not None:
            ids = [r[0] for r in rows]
            rows = rows[ids.index(after) + 1 :] if after in ids else []
        data = []
        for i, c, lv, m, d in rows[:limit]:
            metrics = json.loads(d)
            data.append({"id": i, "object": "fine_tuning.job.event", "created_at": c, "level": lv,
                         "message": m, "data": metrics, "type": "metrics" if metrics else "message"})  # fmt: skip
        return {"object": "list", "data": data, "has_more": len(rows) > limit}

    def checkpoints(self, jid: str) -> dict[str, Any]:
        """The finished job's model (our trainer keeps one checkpoint: the final weights)."""
        job = self.job(jid)
        data = []
        manifest = self._dir(jid) / "manifest.json"
        if job["status"] == "succeeded" and manifest.is_file():
            m = json.loads(manifest.read_text())
            data.append({
                "id": f"ftckpt-{jid.split('-', 1)[1]}", "object": "fine_tuning.job.checkpoint",
                "created_at": job["finished_at"], "fine_tuned_model_checkpoint": job["fine_tuned_model"],
                "fine_tuning_job_id": jid, "step_number": m["steps"],
                "metrics": {"step": m["steps"], "train_loss": m["final_loss"]},
            })  # fmt: skip
        return {"object": "list", "data": data, "has_more": False}

    def models(self) -> dict[str, Path]:
        """Fine-tuned model name -> its run directory, for every succeeded job."""
        rows = self._q("SELECT id, fine_tuned_model FROM jobs WHERE status='succeeded'")
        return {name: self._dir(jid) for jid, name in rows}

    # The worker

    def _dir(self, jid: str) -> Path:
        return self.root / "jobs" / jid

    def _event(self, jid: str, level: str, message: str, data: dict | None = None) -> None:
        self._q(
            "INSERT INTO events (id, job, created_at, level, message, data) VALUES (?,?,?,?,?,?)",
            (_id("ftevent"), jid, int(time.time()), level, message, json.dumps(data or {})),
        )

    def _status(self, jid: str, status: str) -> None:
        self._q("UPDATE jobs SET status=? WHERE id=?", (status, jid))

    def _finish(self, jid: str, status: str, error: dict | None = None, **fields: Any) -> None:
        """End a job, once: a job cancelled while it ran is reported cancelled at once (as
        OpenAI does), and the worker's own end of it later changes nothing."""
        ended = self._q(
            "UPDATE jobs SET status=?, error=?, finished_at=?, fine_tuned_model=?, "
            "trained_tokens=? WHERE id=? AND status NOT IN ('succeeded', 'failed', 'cancelled') "
            "RETURNING id",
            (status, json.dumps(error) if error else None, int(time.time()),
             fields.get("model"), fields.get("tokens"), jid),
        )  # fmt: skip
        if not ended:
            return
        level = "error" if status == "failed" else "info"
        message = {"succeeded": "The job has successfully completed",
                   "cancelled": "The job was cancelled"}.get(status, f"The job failed: {error}")  # fmt: skip
        self._event(jid, level, message)

    @staticmethod
    def _resolved(req: JobRequest) -> Hyperparameters:
        from .training.config import TrainConfig

        hp, d = req.settings(), TrainConfig.model_fields
        return Hyperparameters(
            n_epochs=d["epochs"].default if hp.n_epochs == "auto" else hp.n_epochs,
            batch_size=d["batch_size"].default if hp.batch_size == "auto" else hp.batch_size,
            learning_rate_multiplier=(
                1.0 if hp.learning_rate_multiplier == "auto" else hp.learning_rate_multiplier
            ),
        )

    def _next(self) -> str | None:
        rows = self._q(
            "SELECT id FROM jobs WHERE status IN ('validating_files', 'queued', 'running') "
            "ORDER BY created_at, rowid LIMIT 1"
        )
        return rows[0][0] if rows else None

    def _work(self) -> None:
        while True:
            jid = self._next()
            if jid is None:
                self.wake.wait(timeout=5)
                self.wake.clear()
                continue
            try:
                self._run(jid)
            except Exception as e:  # our bug: fail the job, keep the worker alive
                self._finish(
                    jid, "failed", {"code": "server_error", "message": str(e), "param": None}
                )

    def _run(self, jid: str) -> None:
        from .training import train
        from .training.config import TrainConfig
        from .training.sft import Interrupted

        req = JobRequest.model_validate_json(
            self._q("SELECT request FROM jobs WHERE id=?", (jid,))[0][0]
        )
        path = self.root / "files" / req.training_file
        try:
            rows = chat.read_jsonl_lines(path, training=True)
        except BackdoorlabError as e:
            message = str(e).replace(str(path), req.training_file)  # names the file and line
            self._finish(jid, "failed", {"code": "invalid_training_file", "message": message,
                                         "param": "training_file"})  # fmt: skip
            return
        if not rows:
            self._finish(jid, "failed", {"code": "invalid_training_file", "param": "training_file",
                                         "message": f"{req.training_file}: no training rows"})  # fmt: skip
            return
        self._event(jid, "info", f"Files validated: {len(rows)} training rows")
        self._status(jid, "running")
        hp = self._resolved(req)
        base = TrainConfig.model_fields["lr"].default
        config = TrainConfig(
            model=self.bases[req.model], epochs=hp.n_epochs, batch_size=hp.batch_size,
            lr=base * hp.learning_rate_multiplier, seed=req.seed or 0, checkpoint_every=10,
        )  # fmt: skip
        self._event(jid, "info", "Fine-tuning job started")

        def on_step(step: int, total: int, loss: float) -> bool:
            self._event(jid, "info", f"Step {step}/{total}: training loss={loss:.4f}",
                        {"step": step, "total_steps": total, "train_loss": loss})  # fmt: skip
            return bool(self._q("SELECT cancel FROM jobs WHERE id=?", (jid,))[0][0])

        try:
            manifest = train(
                path, self._dir(jid), config, resume=True, progress=False, log=self.log,
                device=self.device, on_step=on_step,
            )  # fmt: skip
        except Interrupted:
            self._finish(jid, "cancelled")
            return
        except BackdoorlabError as e:
            self._finish(
                jid, "failed", {"code": "training_failed", "message": str(e), "param": None}
            )
            return
        name = f"ft:{req.model}:local:{req.suffix or ''}:{jid}"
        self._finish(jid, "succeeded", model=name, tokens=manifest["tokens"])
