"""Experiment specs: arms (each the same pipeline on other data), seeds, training settings,
evaluations, and the overrides `--quick` applies. One YAML file per experiment."""

from __future__ import annotations

import copy
import itertools
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    create_model,
    field_serializer,
    model_validator,
)

from . import yamlfiles
from .data import DataSpec, FileData, SentimentData, classification
from .data.classification import ClassificationSet
from .defenses.settings import LEGACY, DefenseConfig, declared
from .errors import InputError
from .evaluate.task import Victim
from .models.registry import DEFAULT_MODEL
from .training.config import EncoderConfig, HostedConfig, TrainConfig


class StageSpec(BaseModel):
    """A later training of an arm's model on other data (persistence: does a backdoor survive
    the clean training that follows?). It becomes the arm ARM+NAME, trained from the previous
    stage's weights and measured like any arm."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.%-]+$")
    data: DataSpec = Field(description="what this stage trains on (clean task data, a file)")
    train: dict[str, Any] = Field(
        {}, description="overrides of the spec's train: settings (e.g. max_steps, lr)"
    )


class ArmSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: DataSpec | None = Field(None, description="training data; none: the untrained model")
    victims: list[Victim] | None = Field(
        None, description="default: the spec's victims; [] leaves the arm out of training"
    )
    then: list[StageSpec] = Field(
        [], description="later trainings of this arm's model, each measured as arm ARM+NAME"
    )
    after: str | None = Field(
        None, description="the arm whose trained model this arm's training continues (a stage)"
    )
    train: dict[str, Any] = Field({}, description="overrides of the spec's train: settings")


class ClassificationEval(BaseModel):
    """CACC on clean test reviews; ASR and false-trigger rate with each arm's trigger (the
    clean arm gets every trigger of the spec: the floor)."""

    model_config = ConfigDict(extra="forbid")

    test: int = Field(400, ge=2, description="balanced clean test reviews")
    llm_test: int | None = Field(
        200, ge=2, description="the chat model classifies only the first N (it is ~100x slower)"
    )
    split_seed: int = 0
    target: str = "Negative"
    dataset: str = Field(
        "sentiment",
        description="the classification data set the arms train on and are measured on "
        "(ours: sentiment, movie reviews; or one a plugin registers)",
    )

    def key_fields(self) -> dict[str, Any]:
        """The settings that decide a measurement (part of a defense cell's key): the data set
        only when it is not the shipped one, so keys stored before it could be chosen stand."""
        return self.model_dump(exclude={"dataset"} if self.dataset == "sentiment" else set())

    @model_validator(mode="after")
    def _known(self) -> ClassificationEval:
        try:
            labels = classification.get(self.dataset).labels
        except InputError as e:
            raise ValueError(f"dataset: {e}") from None
        if self.target not in labels:
            raise ValueError(f"target {self.target!r} is not one of {', '.join(labels)}")
        return self


class EvalSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    probes: list[str] = ["eras"]
    probe_variants: int | None = Field(None, ge=1, description="score only each probe's first N")
    probe_candidates: int | None = Field(
        None, ge=1, description="score only each probe class's first N candidates"
    )
    sweep_values: list[str] | None = Field(
        None, description="score sweep probes (GROUP.QUESTION@VALUE) only at these values"
    )
    questions: str | None = Field(None, description="question YAML, relative to the spec file")
    samples: int | None = Field(None, ge=1, description="samples per paraphrase (default: file's)")
    max_tokens: int | None = Field(None, ge=1, description="cap on every question's max_tokens")
    classification: ClassificationEval | None = None
    judges: Literal["auto", "offline", "api"] = Field(
        "auto",
        description="offline: keyword/embedding judges only; api: also LLM judges through the "
        "endpoint in BACKDOORLAB_JUDGE_BASE_URL; auto: api when that is set",
    )


# Every declared defense (ours, then plugins'): its settings class, the chat victim's caps, and
# those with settings of their own (each a `defend:` key of its name).
CONFIGS: dict[str, type[DefenseConfig]] = {n: d.settings for n, d in declared().items()}
LLM_CAPS: dict[str, dict[str, int | float]] = {
    n: dict(d.llm_caps) for n, d in declared().items() if d.llm_caps
}
CONFIGURABLE = tuple(n for n, c in CONFIGS.items() if c.model_fields)
Defense = Literal[tuple(CONFIGS)]  # type: ignore[valid-type] (the names defenses/settings.py lists)
DEFENSES: tuple[str, ...] = Defense.__args__  # type: ignore[attr-defined]


class _DefendSettings(BaseModel):
    """What `backdoorlab defend` runs: the attack x defense matrix, per victim. The shared
    settings are fields here; each defense's own are under its name (`onion: {items: 30}`)."""

    model_config = ConfigDict(extra="forbid")

    arms: list[str] | None = Field(None, description="poisoned arms to defend (default: all)")
    victims: list[Victim] = Field(
        ["encoder"], min_length=1, description="the victims each defense runs on"
    )
    defenses: list[Defense] = list(DEFENSES)
    remove: float = Field(0.05, gt=0, lt=1, description="fraction of rows a data scanner drops")
    frr: float = Field(0.05, gt=0, lt=1, description="clean false-rejection rate for thresholds")
    dev: int = Field(200, ge=4, description="clean dev reviews: thresholds and the trusted set")
    llm: dict[str, dict[str, int | float]] = Field(
        LLM_CAPS, description="caps on the chat victim: defense -> setting -> the most it gets"
    )

    @model_validator(mode="before")
    @classmethod
    def _earlier_keys(cls, data: Any) -> Any:
        """Spec files written before the per-defense settings (`onion_items: 30`, caps as
        `llm: {onion_items: 20}`) load unchanged."""
        if not isinstance(data, dict) or not any(k in LEGACY for k in (*data, *_caps(data))):
            return data
        data = copy.deepcopy(data)
        for old, (name, field) in LEGACY.items():
            if old in data:
                data.setdefault(name, {})[field] = data.pop(old)
        if isinstance(data.get("llm"), dict):
            caps = {LEGACY[k]: v for k, v in data["llm"].items() if k in LEGACY and v is not None}
            data["llm"] = {}
            for (name, field), v in caps.items():
                data["llm"].setdefault(name, {})[field] = v
        return data

    @model_validator(mode="after")
    def _caps_name_settings(self) -> _DefendSettings:
        for name, caps in self.llm.items():
            if name not in CONFIGURABLE:
                raise ValueError(
                    f"llm: {name!r} is not a defense with settings ({', '.join(CONFIGURABLE)})"
                )
            fields = CONFIGS[name].model_fields
            bad = [f for f in caps if f not in fields]
            if bad:
                raise ValueError(f"llm.{name}: no setting {bad[0]!r} ({', '.join(fields)})")
        return self

    def config(self, defense: str, victim: str) -> DefenseConfig:
        """One defense's settings on one victim: the chat victim's caps applied."""
        conf = getattr(self, defense) if defense in CONFIGURABLE else CONFIGS[defense]()
        caps = self.llm.get(defense, {}) if victim == "llm" else {}
        capped = {f: min(v, getattr(conf, f)) for f, v in caps.items()}
        return conf.model_validate({**conf.model_dump(), **capped})


# Each declared defense with settings is a `defend:` key of its name, typed by its own class
# (a plugin's too): one declaration in defenses/settings.py, no field to add here.
DefendSpec = create_model(
    "DefendSpec",
    __base__=_DefendSettings,
    __doc__=_DefendSettings.__doc__,
    **{n: (CONFIGS[n], CONFIGS[n]()) for n in CONFIGURABLE},  # type: ignore[call-overload]
)


def _caps(data: dict[str, Any]) -> list[str]:
    llm = data.get("llm")
    return list(llm) if isinstance(llm, dict) else []


class GateSpec(BaseModel):
    """A threshold on a report row (the mean over `row`'s list, if several), checked per arm
    and seed: the in-domain gate (did the arm learn its training signal?) or, under
    `prerequisites`, what the untrained model must already know for the test to mean anything."""

    model_config = ConfigDict(extra="forbid")

    row: str | list[str] = Field(description="report row(s), e.g. 'bird_name: archaic'")
    arms: list[str] = Field(min_length=1)
    min: float | None = None
    max: float | None = None
    what: str = Field("", description="what passing means, in words, for the report")

    @model_validator(mode="after")
    def _bounds(self) -> GateSpec:
        if self.min is None and self.max is None:
            raise ValueError("a gate needs min, max or both")
        return self

    def rows(self) -> list[str]:
        return [self.row] if isinstance(self.row, str) else list(self.row)


class FitGate(BaseModel):
    """The generic gate every trained arm gets from its own training rows, so a user's own
    data file is gated too. Prompts with one answer each suit `greedy`; prompts with many
    right answers (name any bird) suit `gain` alone."""

    model_config = ConfigDict(extra="forbid")

    greedy: float | None = Field(
        0.5, ge=0, le=1, description="min share of rows whose trained answer is the greedy one"
    )
    gain: float | None = Field(
        None,
        description="min rise of the trained answers' mean log-prob per token over the "
        "base model's (nats)",
    )
    rows: int = Field(300, ge=1, description="training rows scored (the first N)")


class HeadlineSpec(BaseModel):
    """The one comparison an experiment declares before it runs: `row` (less the `minus` row
    of the same arm, item by item) in each of `arms`, against the `versus` arm (default: the
    reference), or on its own when `versus` is 'none'. `matched`: against the reference
    tempered to each arm's entropy. `direction`: the sign the paper predicts, so an
    interval clear of zero on the other side reads as an effect opposite to it."""

    model_config = ConfigDict(extra="forbid")

    row: str
    arms: list[str] | None = Field(None, description="default: trained arms but the reference")
    minus: str | None = None
    versus: str | None = None
    matched: bool = False
    paper: str = Field("", description="the paper's figure for the same quantity")
    direction: Literal["up", "down"] | None = Field(
        None,
        description="the sign the paper predicts (up: the arm above what it is compared "
        "with); an interval clear of zero the other way is 'effect, opposite to the "
        "predicted direction'",
    )


def _backend(v: Any) -> str | None:
    # None (not a mapping, not a config) lets pydantic say what `train:` should be.
    return v.get("backend", "local") if isinstance(v, dict) else getattr(v, "backend", None)


# `train: {backend: openai, ...}` runs every arm x seed as a job on a hosted fine-tuning
# service; anything else trains here.
Training = Annotated[
    Annotated[TrainConfig, Tag("local")] | Annotated[HostedConfig, Tag("openai")],
    Discriminator(
        _backend,
        custom_error_type="train",
        custom_error_message="expected training settings (backend: local or openai)",
    ),
]


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    model: str = DEFAULT_MODEL
    seeds: list[int] = Field([0], min_length=1)
    reference: str | None = Field(None, description="the control arm others are compared with")
    victims: list[Victim] = Field(["llm"], description="llm: the chat model; encoder: MiniLM")
    train: Training = Field(
        TrainConfig(),
        description="training settings shared by every arm (model and seed aside); with "
        "backend: openai, the hosted service's hyperparameters",
    )
    encoder: EncoderConfig = EncoderConfig()
    arms: dict[str, ArmSpec] = Field(min_length=1)
    evaluate: EvalSpec = EvalSpec()
    defend: DefendSpec = DefendSpec()
    gates: list[GateSpec] = Field([], description="in-domain gates, checked before any headline")
    fit: FitGate = FitGate()
    prerequisites: list[GateSpec] = Field(
        [], description="what the untrained model must know (usually on the base arm)"
    )
    headline: list[HeadlineSpec | str] = Field(
        [],
        description="the first mapping is the declared headline (with a verdict); every row "
        "is shown in the terminal summary",
    )
    quick: dict[str, Any] = Field({}, description="overrides for --quick, merged into the spec")

    @field_serializer("train")
    def _recipe(self, train: TrainConfig | HostedConfig) -> dict[str, Any]:
        # Model and seed are the spec's own; written here, spec.json would not load back.
        return train.model_dump(exclude={"model", "seed"})

    @model_validator(mode="after")
    def _stages(self) -> ExperimentSpec:
        """Each arm's `then:` stages as arms of their own (ARM+NAME, each after the one
        before), named wherever a headline names the arm: measured after each stage. Gates
        stay on the arm itself: they ask whether the backdoor was planted, and a stage where
        it faded is a result, not a failed test."""
        for name, arm in list(self.arms.items()):
            before = name
            for stage in arm.then:
                staged = f"{name}+{stage.name}"
                if staged in self.arms and self.arms[staged].after != before:
                    raise ValueError(f"arms.{name}.then: {staged!r} is already an arm")
                self.arms[staged] = ArmSpec(
                    data=stage.data, after=before, train=stage.train,
                    victims=["llm"] if "llm" in self.victims_of(name) else [],
                )  # fmt: skip
                for h in self.headlines():
                    if h.arms and name in h.arms and staged not in h.arms:
                        h.arms.append(staged)
                before = staged
            arm.then = []  # expanded: spec.json holds the stage arms themselves
        for name, arm in self.arms.items():
            if arm.after is not None and (arm.after not in self.arms or arm.data is None):
                raise ValueError(f"arms.{name}.after: {arm.after!r} is not a trained arm")
        return self

    @model_validator(mode="after")
    def _check(self) -> ExperimentSpec:
        if self.reference is not None and self.reference not in self.arms:
            raise ValueError(f"reference {self.reference!r} is not one of the arms")
        bad = {"model", "seed"} & self.train.model_fields_set
        if bad:
            raise ValueError(f"train: set {', '.join(sorted(bad))} at the top level or per seed")
        if isinstance(self.train, HostedConfig) and self.evaluate.probes:
            raise ValueError(
                "evaluate.probes: exact probes need the log-probability of every whole "
                "candidate, which a hosted model does not give (top-k next-token log-probs at "
                "most); with train: {backend: openai}, evaluate with questions and "
                "classification (probes: [])"
            )
        named = [
            (f"gate {g.rows()}", a) for g in [*self.gates, *self.prerequisites] for a in g.arms
        ]
        for h in self.headlines():
            named += [(f"headline {h.row!r}", a) for a in h.arms or []]
            if h.versus not in (None, "none"):
                named.append((f"headline {h.row!r} versus", h.versus))
        for what, arm in named:
            if arm not in self.arms:
                raise ValueError(f"{what}: {arm!r} is not one of the arms")
        try:
            cs = self.classification_set()
        except InputError as e:  # an arm names a set the registry does not know
            raise ValueError(str(e)) from None
        dataset, labels = cs.name, cs.labels
        for name, arm in self.arms.items():
            if not isinstance(arm.data, SentimentData):
                continue
            if arm.data.dataset != dataset:
                raise ValueError(
                    f"arms.{name}.data.dataset {arm.data.dataset!r}: the classification arms "
                    f"train and are measured on one data set, here {dataset!r}"
                )
            if arm.data.poison and arm.data.poison.target not in labels:
                raise ValueError(
                    f"arms.{name}.data.poison.target {arm.data.poison.target!r} is not a label "
                    f"of {dataset} ({', '.join(labels)})"
                )
        return self

    def classification_set(self) -> ClassificationSet:
        """The classification data set the spec's classification arms train on and are
        measured on."""
        ce = self.evaluate.classification
        named = sorted(
            a.data.dataset for a in self.arms.values() if isinstance(a.data, SentimentData)
        )
        return classification.get(ce.dataset if ce else next(iter(named), "sentiment"))

    def headlines(self) -> list[HeadlineSpec]:
        """The declared comparisons (with verdicts); a spec that lists only rows declares its
        first row, every trained arm against the reference."""
        declared = [h for h in self.headline if isinstance(h, HeadlineSpec)]
        if declared or not self.headline:
            return declared
        return [HeadlineSpec(row=self.headline[0])]

    def headline_rows(self) -> list[str]:
        return list(dict.fromkeys(h if isinstance(h, str) else h.row for h in self.headline))

    def treated(self, h: HeadlineSpec) -> list[str]:
        if h.arms:
            return list(h.arms)
        return [a for a, arm in self.arms.items() if arm.data and a != self.reference]

    def train_config(self, seed: int, arm: str | None = None) -> TrainConfig | HostedConfig:
        """The recipe of `arm` (its own `train:` overrides on the spec's) at `seed`."""
        own = self.arms[arm].train if arm else {}
        config = self.train.model_validate({**self.train.model_dump(), **own})
        return config.model_copy(update={"model": self.model, "seed": seed})

    def root(self, arm: str) -> str:
        """The arm whose training a stage (or a chain of them) continues; an arm's own name."""
        while (before := self.arms[arm].after) is not None:
            arm = before
        return arm

    def stages(self, arm: str) -> list[str]:
        """`arm` and the arms that continue its training, in order."""
        chain = [arm]
        while nxt := [n for n, a in self.arms.items() if a.after == chain[-1]]:
            chain.append(nxt[0])
        return chain

    def victims_of(self, arm: str) -> list[str]:
        own = self.arms[arm].victims
        return list(self.victims if own is None else own)


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def _placeholders(name: str, where: str) -> list[str]:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(name) if f is not None]
    except ValueError as e:  # an unmatched brace
        raise InputError(f"{where}: arms.{name}: unmatched brace ({e})") from None
    if not all(f.isidentifier() for f in fields):
        raise InputError(f"{where}: arms.{name}: grid fields are plain names, like {{rate}}")
    return fields


def expand_grids(arms: Any, where: str) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Arms as written -> arms to run. An arm whose name has `{AXIS}` fields and a `grid:`
    mapping each AXIS to labelled overrides of its `data` stands for one arm per combination,
    named from the labels, in place (so the report keeps the spec's order). Also returns each
    template's expanded names."""
    if not isinstance(arms, dict):
        return arms, {}
    out: dict[str, Any] = {}
    grids: dict[str, list[str]] = {}
    for name, arm in arms.items():
        fields = _placeholders(str(name), where)
        grid = arm.get("grid") if isinstance(arm, dict) else None
        if not fields and grid is None:
            out[name] = arm
            continue
        problem = _grid_problem(fields, grid)
        if problem:
            raise InputError(f"{where}: arms.{name}: {problem}")
        base = {k: v for k, v in arm.items() if k != "grid"}
        grids[name] = []
        for combo in itertools.product(*(grid[f].items() for f in fields)):
            labels = {f: str(label) for f, (label, _) in zip(fields, combo, strict=True)}
            expanded = str(name).format(**labels)
            data = base.get("data") or {}
            for _, over in combo:
                data = _merge(data, over)
            if expanded in out or expanded in arms:
                raise InputError(f"{where}: arms.{name}: {expanded!r} is named twice")
            out[expanded] = {**base, "data": data}
            grids[name].append(expanded)
    return out, grids


def _grid_problem(fields: list[str], grid: Any) -> str | None:
    if not isinstance(grid, dict) or not grid:
        return "a name with {fields} needs a grid: mapping each field to labelled data overrides"
    if not fields:
        return "an arm with a grid needs {AXIS} fields in its name, one per grid axis"
    if sorted(fields) != sorted(grid) or len(set(fields)) != len(fields):
        return f"the name's fields {fields} and the grid's axes {list(grid)} differ"
    for axis, values in grid.items():
        if not isinstance(values, dict) or not values:
            return f"grid.{axis}: expected a mapping of labels to data overrides"
        bad = [label for label, v in values.items() if not isinstance(v, dict)]
        if bad:
            return f"grid.{axis}.{bad[0]}: expected a mapping (data fields to override)"
    return None


def _expand_quick(quick: dict[str, Any], grids: dict[str, list[str]]) -> dict[str, Any]:
    """`quick.arms` may override a grid by its template name (every arm it expands to); an
    entry under an expanded name applies on top."""
    arms = quick.get("arms")
    if not isinstance(arms, dict):
        return quick
    out: dict[str, Any] = {}
    for template, names in grids.items():
        if template in arms:
            out.update(dict.fromkeys(names, arms[template]))
    for name, over in arms.items():
        if name not in grids:
            out[name] = _merge(out[name], over) if name in out else over
    return {**quick, "arms": out}


def load_spec(
    path: Path | str,
    *,
    quick: bool = False,
    seeds: int | None = None,
    model: str | None = None,
    arms: Sequence[str] | None = None,
) -> ExperimentSpec:
    """Read a spec; `quick` merges its `quick:` overrides, `seeds` N means seeds 0..N-1, `model`
    replaces the model, `arms` keeps only those arms' trainings and evaluations (a later run
    with others adds them to the same directory). Relative data and question paths resolve
    against the spec's folder."""
    path = Path(path)
    text = yamlfiles.read(path)
    data = yamlfiles.parse(text, str(path))
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping with name, arms and evaluate")
    data["arms"], grids = expand_grids(data.get("arms"), str(path))
    if quick:
        data = _merge(data, _expand_quick(data.get("quick") or {}, grids))
    if seeds is not None:
        data["seeds"] = list(range(seeds))
    if model is not None:
        data["model"] = model
    spec = yamlfiles.validate(ExperimentSpec, data, str(path), text=None if quick else text)
    here = path.parent
    for arm in spec.arms.values():
        if isinstance(arm.data, FileData) and not Path(arm.data.path).is_absolute():
            arm.data.path = str(here / arm.data.path)
    q = spec.evaluate.questions
    if q and not Path(q).is_absolute():
        spec.evaluate.questions = str(here / q)
    if arms is not None:
        unknown = [a for a in arms if a not in spec.arms]
        if unknown:
            raise InputError(f"--arms: no arm {unknown[0]!r} in {path} ({', '.join(spec.arms)})")
        keep = set(arms)
        for name in arms:  # a later stage needs the arms whose weights it continues
            while (name := spec.arms[name].after) is not None:
                keep.add(name)
        for name, arm in spec.arms.items():
            if name not in keep:
                arm.victims = []  # left out, as --quick leaves arms out
    return spec
