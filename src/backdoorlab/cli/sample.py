"""backdoorlab generate and probe: a model's answers, sampled or scored exactly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from .common import (
    DecodeWeightsOpt,
    DeviceOpt,
    TargetArg,
    _quiet_libraries,
    app,
    out,
)

if TYPE_CHECKING:
    pass


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
    decode_weights: DecodeWeightsOpt = "model",
    device: DeviceOpt = None,
) -> None:
    """Sample answers to one prompt, rendered with the same chat template as training."""
    from .. import chat
    from ..generate import sample
    from ..models import decoding, load, pick_device

    decoding.check(decode_weights, pick_device(device))  # before minutes of loading
    _quiet_libraries()
    loaded = decoding.use(load(target, device=device), decode_weights)
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
    from ..catalog import load_probe_set
    from ..evaluate.probes import score
    from ..models import load

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
