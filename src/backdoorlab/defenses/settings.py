"""Each defense's own settings, one small config class per defense (torch-free: the spec
validates them when it loads). A matrix cell is keyed by its defense's settings and the shared
`defend:` settings it reads (`uses`), so changing ONION's item count re-measures ONION only.

`LEGACY` maps the flat `defend:` keys of earlier spec files to where they live now; it reads
those files unchanged and recomputes the one key their stores filed all of an arm's cells
under (defenses/matrix.py), so cells measured then are still reused."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


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
    # the clipped gradient (README), so a fair DP cell sets its own batch, epochs and lr.
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

# defense name -> its config class, in the matrix's column order. A defense whose class has
# fields is also a `defend:` key of that name (e.g. `onion: {items: 30}`).
CONFIGS: dict[str, type[DefenseConfig]] = {
    "none": DefenseConfig,
    **dict.fromkeys(SCANNERS, Filtered),
    "abl": Filtered,
    "onion": OnionConfig,
    "strip": StripConfig,
    "inspect": InspectConfig,
    "ablate": AblateConfig,
    "refit": Trusted,
    "fineprune": FinepruneConfig,
    "dpsgd": DPConfig,
}
CONFIGURABLE = tuple(n for n, c in CONFIGS.items() if c.model_fields)

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
