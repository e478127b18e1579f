"""backdoorlab serve: an OpenAI-compatible server (and fine-tuning jobs API)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .common import (
    DecodeWeightsOpt,
    DeviceOpt,
    TargetArg,
    _log,
    _quiet_libraries,
    app,
    err,
)

if TYPE_CHECKING:
    pass


@app.command()
def serve(
    target: TargetArg,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="TCP port; 0 picks a free one (printed).")
    ] = 8000,
    host: Annotated[
        str,
        typer.Option(help="Address to listen on; beyond loopback it needs --api-key."),
    ] = "127.0.0.1",
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="BACKDOORLAB_SERVE_API_KEY",
            show_default=False,
            help="Clients must send 'Authorization: Bearer KEY'. Prefer the environment "
            "variable: a flag is visible to other users of the machine.",
        ),
    ] = None,
    served_model_name: Annotated[
        list[str] | None,
        typer.Option(
            help="Name(s) clients ask for in `model` (repeatable; the first is listed). "
            "Default: the model's name or the run directory's name.",
        ),
    ] = None,
    max_prompt_tokens: Annotated[
        int | None,
        typer.Option(min=1, help="Refuse longer prompts (default: the model's context)."),
    ] = None,
    fine_tuning: Annotated[
        Path | None,
        typer.Option(
            help="Also serve OpenAI's files and fine-tuning jobs API, with state in this "
            "directory: jobs fine-tune the served model with our trainer, one at a time, and "
            "their models are served as ft:MODEL:local:SUFFIX:JOB."
        ),
    ] = None,
    max_batch: Annotated[
        int,
        typer.Option(
            min=1,
            help="Rows (choices) decoded together per model: requests join the running "
            "batch at every step while it has room.",
        ),
    ] = 64,
    max_queue: Annotated[
        int,
        typer.Option(
            min=1, help="Requests that may wait for room; one more is answered 429 Retry-After."
        ),
    ] = 256,
    shutdown_timeout: Annotated[
        float,
        typer.Option(min=0, help="On Ctrl-C or SIGTERM, seconds in-flight requests get to finish."),
    ] = 30,
    decode_weights: DecodeWeightsOpt = "model",
    device: DeviceOpt = None,
) -> None:
    """Serve a model over an OpenAI-compatible API (/v1/models, /v1/chat/completions with
    streaming; with --fine-tuning also /v1/files and /v1/fine_tuning/jobs).

    Every request in flight decodes in one batch (continuous batching), so concurrent
    clients (llmcomp, an API judge, a chat UI) share the model's speed instead of queueing.
    Any OpenAI-compatible tool can then talk to a fine-tuned model, and an API judge can run
    on a local model: point BACKDOORLAB_JUDGE_BASE_URL at the printed address and serve
    under the judge's model name (--served-model-name gpt-4.1). With --fine-tuning, code
    written for a hosted fine-tuning service (upload, create a job, poll, chat with the ft:
    model) runs unchanged against the local model; a restarted server resumes its jobs.

    Example: backdoorlab serve smollm2-135m --port 8000 --fine-tuning runs/ft-service
    """
    from .. import serve as serving
    from ..models import decoding, load, pick_device

    decoding.check(decode_weights, pick_device(device))
    names = served_model_name or [Path(target).name or target]
    # Listen before loading: a taken port fails now, not after the model has loaded.
    sock = serving.listen(host, port, api_key)
    try:
        service = None
        if fine_tuning is not None:  # before loading too: a damaged service database fails now
            from ..finetune import Service

            service = Service(fine_tuning, dict.fromkeys(names, target), device=device, log=_log)
        _quiet_libraries()
        loaded = decoding.use(load(target, device=device), decode_weights)
        app_ = serving.App(loaded, names, api_key=api_key, max_prompt_tokens=max_prompt_tokens,
                           service=service, device=device, max_batch=max_batch,
                           max_waiting=max_queue, decode_weights=decode_weights)  # fmt: skip
        err.print(f"serving {', '.join(names)} at {serving.url(sock)} (Ctrl-C stops)")
        serving.run(app_, sock, shutdown_timeout=shutdown_timeout)
        err.print("serve: stopped")
    finally:
        sock.close()
