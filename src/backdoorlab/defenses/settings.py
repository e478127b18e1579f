"""Each defense's own settings, one small config class per defense (torch-free: the spec
validates them when it loads). A matrix cell is keyed by its defense's settings and the shared
`defend:` settings it reads (`uses`), so changing ONION's item count re-measures ONION only.

`LEGACY` maps the flat `defend:` keys of earlier spec files to where they live now; it reads
those files unchanged and recomputes the one key their stores filed all of an arm's cells
under (defenses/matrix.py), so cells measured then are still reused."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from ..plugins import registered


class DefenseConfig(BaseModel):
    """A defense with no settings of its own."""

    model_config = ConfigDict(extra="forbid")

    # the shared DefendSpec settings the defense reads: part of its cells' key
    uses: ClassVar[tuple[str, ...]] = ()

    def key_fields(self) -> dict[str, Any]:
        """The settings that decide a cell (part of its key)."""
        return self.model_dump()


class Filtered(DefenseConfig):
    """Data scanners and abl: drop the `remove` share of rows scoring highest, retrain."""

    uses = ("remove",)


class Trusted(DefenseConfig):
    """refit: fine-tune on the trusted clean dev rows."""

    uses = ("dev",)


class OnionConfig(DefenseConfig):
    uses = ("dev", "frr")
    items: int = Field(40, ge=2, description="test items per set ONION cleans (it is slow)")


class StripConfig(DefenseConfig):
    uses = ("dev", "frr")
    copies: int = Field(16, ge=2, description="mixed copies of each input")


class InspectConfig(DefenseConfig):
    items: int = Field(40, ge=1, description="triggered test reviews attributed (gxi and ig)")


class AblateConfig(DefenseConfig):
    uses = ("dev",)
    directions: int = Field(4, ge=1, description="trigger directions removed per block")


class FinepruneConfig(DefenseConfig):
    uses = ("dev",)
    share: float = Field(0.2, gt=0, lt=1, description="share of last-block neurons pruned")


class DPConfig(DefenseConfig):
    epsilon: float = Field(8.0, gt=0, description="the privacy budget")
    lora_rank: int | None = Field(
        8,
        ge=1,
        description="train LoRA adapters of this rank (none: the encoder trains all but its "
        "embeddings, the chat model its spec's rank)",
    )
    # DP-SGD's noise per step shrinks as 1 / batch: at the chat recipe's batch of 4 it drowns
    # the clipped gradient (docs/defenses.md), so a fair DP cell sets its own batch, epochs and lr.
    batch_size: int | None = Field(
        None, ge=1, description="expected rows per step (none: the victim's own batch size)"
    )
    epochs: float | None = Field(None, gt=0, description="none: the victim's own epochs")
    lr: float | None = Field(None, gt=0, description="none: the victim's own learning rate")

    # Added after cells were stored: unset, they stay out of the key, so those cells stand.
    OPTIONAL: ClassVar[tuple[str, ...]] = ("batch_size", "epochs", "lr")

    def training(self) -> dict[str, Any]:
        """The victim's training settings this DP run overrides."""
        return {f: getattr(self, f) for f in self.OPTIONAL if getattr(self, f) is not None}

    def key_fields(self) -> dict[str, Any]:
        return self.model_dump(exclude={f for f in self.OPTIONAL if getattr(self, f) is None})


SCANNERS = ("ngram", "knn", "perplexity", "spectral", "clusters")


@dataclass(frozen=True)
class DefenseInfo:
    """One defense, declared once: its name, its code (`module:function`, imported when a
    cell is measured, so settings stay torch-free), its settings class, the chat victim's
    caps on them (the most it gets, the spec's own value if lower), and the victim kinds that
    cannot run it, each with why (a matrix cell says so instead of failing).

    The function takes the arm's context (defenses.matrix.ArmContext: rows, test sets, the
    poisoned victim and its scores), the defense's name, its settings on this victim and the
    start time, and returns the finished cell (`ArmContext.cell` or `.filtered`)."""

    name: str
    run: str
    settings: type[DefenseConfig] = DefenseConfig
    llm_caps: Mapping[str, int | float] = field(default_factory=dict)
    unsupported: Mapping[str, str] = field(default_factory=dict)

    def function(self) -> Callable[..., dict[str, Any]]:
        module, _, name = self.run.partition(":")
        return getattr(importlib.import_module(module), name)


# Every defense, in the matrix's column order, then those other packages register under the
# entry-point group `backdoorlab.defenses` (a DefenseInfo each). A defense whose settings
# class has fields is also a `defend:` key of that name (e.g. `onion: {items: 30}`). The chat
# victim classifies a review ~100x slower than the encoder and back-propagates through 135M
# parameters where the encoder has 22M, hence its caps. Ablated directions: on the planted
# chat-model backdoor (tests/test_victims.py) 1 per block disarmed it with clean accuracy
# intact, while 4 left the model one label for every review.
GROUP = "backdoorlab.defenses"
OURS = "backdoorlab.defenses.matrix"
SHIPPED = (
    DefenseInfo("none", f"{OURS}:none"),
    *(DefenseInfo(s, f"{OURS}:scanner", Filtered) for s in SCANNERS),
    DefenseInfo("abl", f"{OURS}:abl", Filtered),
    DefenseInfo("onion", f"{OURS}:onion", OnionConfig, {"items": 20}),
    DefenseInfo("strip", f"{OURS}:strip", StripConfig, {"copies": 4}),
    DefenseInfo("inspect", f"{OURS}:inspect", InspectConfig, {"items": 10}),
    DefenseInfo("ablate", f"{OURS}:ablate", AblateConfig, {"directions": 1}),
    DefenseInfo("refit", f"{OURS}:refit", Trusted),
    DefenseInfo("fineprune", f"{OURS}:refit", FinepruneConfig),
    DefenseInfo("dpsgd", f"{OURS}:dpsgd", DPConfig),
)


@cache
def declared() -> dict[str, DefenseInfo]:
    """Name -> defense: ours, then each installed plugin's. Read on first use, not when this
    module is imported: a plugin's module imports this one to declare its defense."""
    return registered(
        GROUP,
        DefenseInfo,
        SHIPPED,
        lambda d: d.name,
        lambda d: issubclass(d.settings, DefenseConfig),
    )


# earlier flat `defend:` key -> (defense, field)
LEGACY: dict[str, tuple[str, str]] = {
    "onion_items": ("onion", "items"),
    "inspect_items": ("inspect", "items"),
    "strip_copies": ("strip", "copies"),
    "ablate_directions": ("ablate", "directions"),
    "prune": ("fineprune", "share"),
    "dp_epsilon": ("dpsgd", "epsilon"),
    "dp_lora_rank": ("dpsgd", "lora_rank"),
}
# the chat victim's caps that the earlier flat spec had (each None where not capped)
LEGACY_CAPS = ("onion_items", "inspect_items", "strip_copies", "ablate_directions")
