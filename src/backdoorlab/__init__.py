"""backdoorlab: reproduce, measure and defend against fine-tuning attacks on language models.

The library behind the `backdoorlab` command (see `backdoorlab.api`):

    import backdoorlab as bl
    res = bl.run_experiment("experiments/birds.yaml", "runs/birds", seeds=1)
    bl.results.open("runs/birds").to_pandas()

Importing the package is cheap: torch and the models load when a function needs them.
"""

from typing import TYPE_CHECKING, Any

from .errors import InputError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from . import results
    from .api import defend, run_experiment, scan, summary, train
    from .auditing import audit
    from .spec import load_spec
    from .training.config import HostedConfig, TrainConfig

_API = {"defend", "run_experiment", "scan", "summary", "train"}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _API:
        return getattr(importlib.import_module(".api", __name__), name)
    if name == "load_spec":
        return importlib.import_module(".spec", __name__).load_spec
    if name in ("TrainConfig", "HostedConfig"):  # a recipe for `train`
        return getattr(importlib.import_module(".training.config", __name__), name)
    if name == "results":
        return importlib.import_module(".results", __name__)
    if name == "audit":  # predicted effects of a data set before training
        return importlib.import_module(".auditing", __name__).audit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["HostedConfig", "InputError", "TrainConfig", "audit", "defend", "load_spec", "results",
           "run_experiment", "scan", "summary", "train", "__version__"]  # fmt: skip
