"""Dataset names to loaders: an explicit table, no string magic.

``load_dataset("ml-100k")`` reads ``<data root>/ml-100k``; ``load_dataset("folder:/my/data")``
reads a user's own folder; ``load_dataset("synthetic")`` generates the built-in dataset,
``load_dataset("synthetic:n_users=500,w_social=0")`` the same world with some
:class:`~mgrec.data.synthetic.SyntheticConfig` fields replaced, ``load_dataset("synthetic-10m")`` a
scale world of 10M events.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from mgrec.data.dataset import Dataset
from mgrec.errors import ConfigError, DataError
from mgrec.paths import data_root

__all__ = ["DATASETS", "load_dataset", "dataset_names"]

#: name -> (module:function, folder under the data root). The function takes that folder.
DATASETS: dict[str, tuple[str, str]] = {
    "ml-100k": ("mgrec.data.loaders.movielens:load_ml100k", "ml-100k"),
    "ml-1m": ("mgrec.data.loaders.movielens:load_ml1m", "ml-1m"),
    "ml-latest-small": ("mgrec.data.loaders.movielens:load_ml_latest_small", "ml-latest-small"),
    "lastfm-2k": ("mgrec.data.loaders.lastfm:load_lastfm2k", "lastfm-2k"),
    "ciao": ("mgrec.data.loaders.epinions_ciao:load_ciao", "ciao"),
    "epinions": ("mgrec.data.loaders.epinions_ciao:load_epinions", "epinions"),
    "gowalla": ("mgrec.data.loaders.gowalla:load_gowalla", "gowalla-lightgcn"),
}


def dataset_names() -> list[str]:
    """Every name ``load_dataset`` accepts, plus the ``folder:PATH`` form."""
    return [*DATASETS, "synthetic", "synthetic:KEY=VALUE,...", "synthetic-<N>k|m", "folder:PATH"]


def synthetic_config(name: str):
    """The :class:`~mgrec.data.synthetic.SyntheticConfig` of ``synthetic`` or
    ``synthetic:KEY=VALUE,...`` (numbers replacing the defaults of the named fields).

    Raises:
        ConfigError: for a malformed pair, an unknown field, or a value of the wrong type or range.
    """
    from mgrec.config import from_dict
    from mgrec.data.synthetic import SyntheticConfig

    changes: dict[str, int | float] = {}
    text = name[len("synthetic:"):] if name.startswith("synthetic:") else ""
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = (t.strip() for t in pair.partition("="))
        try:
            number = float(value) if eq and key else None
        except ValueError:
            number = None
        if number is None:
            raise ConfigError(f"dataset {name!r}: {pair!r} is not KEY=NUMBER")
        changes[key] = int(value) if number.is_integer() and value.lstrip("+-").isdigit() else number
    if name.startswith("synthetic:") and not changes:
        raise ConfigError(f"dataset {name!r}: give KEY=NUMBER pairs after 'synthetic:'")
    return from_dict(SyntheticConfig, changes, where=f"dataset {name!r}")


def _resolve(target: str) -> Callable[..., Dataset]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def load_dataset(name: str, *, root: str | Path | None = None, seed: int = 0) -> Dataset:
    """Load a dataset by name.

    Args:
        name: a key of :data:`DATASETS`, ``synthetic`` (``synthetic:KEY=VALUE,...`` with some
            fields of its config replaced: :func:`synthetic_config`), a scale world ``synthetic-<N>k`` or
            ``synthetic-<N>m`` (:mod:`mgrec.data.scale`, ``N`` thousand or million events), or
            ``folder:PATH``.
        root: the data root (default: ``$MGREC_DATA``, then the user cache).
        seed: seed of the ``synthetic`` generator (ignored by the others).

    Raises:
        ConfigError: for an unknown name.
        DataError: when the files are missing or malformed.
    """
    if name.startswith("folder:"):
        from mgrec.data.folder import load_folder

        return load_folder(Path(name[len("folder:"):]).expanduser())
    if name == "synthetic" or name.startswith("synthetic:"):
        from mgrec.data.synthetic import make_synthetic

        return make_synthetic(synthetic_config(name), seed=seed, name=name)
    if name.startswith("synthetic-"):
        from mgrec.data.scale import make_scale, scale_config_for

        cfg = scale_config_for(name)
        if cfg is None:
            raise ConfigError(f"unknown dataset {name!r}; a scale world is named like synthetic-1m or synthetic-500k")
        return make_scale(cfg, seed=seed, name=name)
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(dataset_names())}")
    target, folder = DATASETS[name]
    path = data_root(root) / folder
    if not path.is_dir():
        raise DataError(
            f"dataset folder not found; set MGREC_DATA or --data-root, or run 'mgrec data fetch {name}'",
            file=path,
        )
    return _resolve(target)(path)
