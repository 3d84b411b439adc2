"""Model names to classes: the explicit table behind ``--model NAME``."""

from __future__ import annotations

import importlib
from typing import Any

from mgrec.errors import ConfigError

__all__ = ["MODELS", "get_model_class", "make_model", "model_names"]

#: CLI name -> "module:Class". Each class takes ``config`` (a dict checked against its typed
#: config dataclass, unknown keys being errors) and ``seed``.
MODELS: dict[str, str] = {
    "pop": "mgrec.baselines.pop:Pop",
    "itemknn": "mgrec.baselines.itemknn:ItemKNN",
    "ease": "mgrec.baselines.ease:EASE",
    "bprmf": "mgrec.baselines.bprmf:BPRMF",
    "multivae": "mgrec.baselines.multivae:MultiVAE",
    "lightgcn": "mgrec.baselines.lightgcn:LightGCN",
    "sasrec": "mgrec.baselines.sasrec:SASRec",
    "mgr": "mgrec.mgr:MGR",
}


def model_names() -> list[str]:
    return list(MODELS)


def get_model_class(name: str) -> type:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    module, cls = MODELS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_model(name: str, config: dict[str, Any] | None = None, *, seed: int = 0) -> Any:
    """Build an unfitted model by CLI name with a config dict (unknown keys are errors)."""
    return get_model_class(name)(config or {}, seed=seed)
