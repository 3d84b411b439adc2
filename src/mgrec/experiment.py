"""One experiment, end to end: load, preprocess, split, (tune,) fit, evaluate, save.

This is the library entry point behind ``mgrec train`` and ``mgrec benchmark``. A trained
model folder is self-contained::

    OUT/
    ├── run.json            what was run: dataset, preprocessing, split, model config, timings
    ├── model/              model.json + weights.safetensors (no pickle)
    ├── split/              train/valid/test.tsv with raw ids + split.json (sha256 of each)
    ├── users.json          the user vocabulary (raw ids in code order)
    └── items.json          the item vocabulary
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mgrec.config import from_dict, to_dict
from mgrec.data.dataset import Dataset
from mgrec.data.preprocess import PreprocessConfig, preprocess
from mgrec.data.registry import load_dataset
from mgrec.data.split import Split, make_split
from mgrec.data.vocab import Vocabulary
from mgrec.errors import ConfigError, DataError
from mgrec.evaluation import DEFAULT_KS, evaluate_split
from mgrec.io import atomic_dir, atomic_write_json
from mgrec.models import make_model
from mgrec.recommender import Recommender

__all__ = [
    "ExperimentConfig",
    "DATASET_PREPROCESS",
    "prepare",
    "run_experiment",
    "TrainedRun",
    "load_run",
]

log = logging.getLogger(__name__)

#: Preprocessing each built-in dataset gets unless the user says otherwise. ml-100k and
#: lastfm-2k follow RecBole's protocols (every interaction kept, no k-core); ciao and epinions
#: have ~70% single-interaction items, so they get the 5-core filter common in social-rec work
#: (this also keeps EASE's dense item-item matrix within memory).
DATASET_PREPROCESS: dict[str, dict[str, Any]] = {
    "ciao": {"kcore_user": 5, "kcore_item": 5},
    "epinions": {"kcore_user": 5, "kcore_item": 5},
    "gowalla": {},
}


@dataclass
class ExperimentConfig:
    """What to run. Unknown keys are errors when built with :func:`mgrec.config.from_dict`.

    Args:
        dataset: dataset name (``ml-100k``, ``synthetic``, ``folder:PATH`` ...).
        model: model name (see :data:`mgrec.models.MODELS`).
        split: ``random``, ``loo`` or ``temporal``.
        seed: seeds the split, the model's initialisation and sampling.
        model_config: the model's own config; keys are checked by the model.
        preprocess: preprocessing; ``None`` takes the dataset's default.
        tune: search the model's hyperparameters on the validation split first.
        tune_budget: at most this many trials (``None``: the whole grid).
        ks: cut-offs for the reported metrics.
        data_root: where datasets live (``None``: ``$MGREC_DATA``, then the cache).
        progress: show progress bars for tuning and evaluation.
        store: an event store URL (``sqlite:///PATH``, ``postgresql://...``) whose events are
            added to the dataset's (``dataset="store"``: the events alone); see
            :mod:`mgrec.data.events`.
        shards: a folder written by ``mgrec data split NAME --format shards``: the data and the
            split come from it, already preprocessed (``dataset`` and ``split`` should name
            what it holds). Under torchrun each rank reads its own users' part
            (:mod:`mgrec.data.shards`) and rank 0 completes the model with the whole split.
    """

    dataset: str
    model: str
    split: str = "random"
    seed: int = 0
    model_config: dict[str, Any] = field(default_factory=dict)
    preprocess: PreprocessConfig | None = None
    tune: bool = False
    tune_budget: int | None = None
    ks: tuple[int, ...] = DEFAULT_KS
    data_root: str | None = None
    progress: bool = False
    store: str | None = None
    shards: str | None = None


def default_preprocess(dataset: str) -> PreprocessConfig:
    return from_dict(PreprocessConfig, DATASET_PREPROCESS.get(dataset, {}), where=f"{dataset} preprocessing")


def prepare(cfg: ExperimentConfig) -> tuple[Dataset, Split]:
    """Load, preprocess and split the data as ``cfg`` says."""
    if cfg.store is not None:
        raw = _with_store(cfg)
    else:
        raw = load_dataset(cfg.dataset, root=cfg.data_root, seed=cfg.seed)
    pre = cfg.preprocess if cfg.preprocess is not None else default_preprocess(cfg.dataset)
    data = preprocess(raw, pre)
    split = make_split(data, cfg.split, seed=cfg.seed)
    data.meta["split_protocol"] = cfg.split  # sequence-aware models read how the split was cut
    return data, split


def _load_shard(cfg: ExperimentConfig, *, whole: bool) -> tuple[Dataset, Split]:
    """This rank's part of ``cfg.shards`` (``whole``: all of it)."""
    from mgrec.data.shards import load_shard
    from mgrec.distributed import current

    assert cfg.shards is not None
    if cfg.store is not None or cfg.preprocess is not None:
        raise ConfigError("shards: the folder holds preprocessed, split data; no store or preprocessing applies")
    dctx = current()
    max_friends = None
    if cfg.model == "mgr":  # a rank loads the friends the model reads, no more
        from mgrec.mgr_config import MGRConfig

        max_friends = from_dict(MGRConfig, cfg.model_config, where="mgr config").max_friends
    data, split = load_shard(Path(cfg.shards), *((0, 1) if whole else (dctx.rank, dctx.world_size)),
                             max_friends=max_friends)
    if cfg.tune and data.shard is not None:
        raise ConfigError("shards: tuning runs in one process (--tune without torchrun)")
    return data, split


def _with_store(cfg: ExperimentConfig) -> Dataset:
    """The dataset plus every stored event; ``meta["store_seq"]`` is the last event's number,
    so that a server loading the model replays only later events."""
    from mgrec.data.events import events_dataset, with_events
    from mgrec.store import open_store

    assert cfg.store is not None
    with open_store(cfg.store) as store:
        frame = store.frame()
    if cfg.dataset == "store":
        data = events_dataset(frame)
    else:
        data = with_events(load_dataset(cfg.dataset, root=cfg.data_root, seed=cfg.seed), frame)
    data.meta["store_seq"] = int(frame["seq"].max()) if len(frame) else 0
    return data


@dataclass
class TrainedRun:
    """A fitted model with the data it was trained on and what happened."""

    model: Recommender
    dataset: Dataset
    split: Split
    record: dict[str, Any]


def run_experiment(cfg: ExperimentConfig, *, evaluate_test: bool = True) -> TrainedRun:
    """Run ``cfg``: prepare the data, optionally tune on validation, fit, evaluate.

    Returns:
        The fitted model and a JSON-ready record with ``valid`` and ``test`` metrics,
        ``train_seconds`` (fitting the final model; with tuning, the winning trial's fit) and
        ``eval_seconds`` (the test ranking). Tuning time is under ``tuning.seconds``.
    """
    t0 = time.perf_counter()
    data, split = _load_shard(cfg, whole=False) if cfg.shards else prepare(cfg)
    prep_seconds = time.perf_counter() - t0
    record: dict[str, Any] = {
        "dataset": cfg.dataset,
        "split": cfg.split,
        "model": cfg.model,
        "seed": cfg.seed,
        "data": data.info(),
        "split_summary": split.summary(),
        "prepare_seconds": round(prep_seconds, 3),
    }
    if cfg.store is not None:
        record["store_seq"] = int(data.meta.get("store_seq", 0))
    model_config = dict(cfg.model_config)
    if cfg.tune:
        from mgrec.tuning import tune

        t0 = time.perf_counter()
        result = tune(cfg.model, data, split, budget=cfg.tune_budget, seed=cfg.seed, base=model_config,
                      progress=cfg.progress)
        record["tuning"] = {**result.to_dict(), "seconds": round(time.perf_counter() - t0, 3)}
        model = result.model
        best = next(t for t in result.trials if t["config"] == result.best_config)
        record["train_seconds"] = best["fit_seconds"]
    else:
        model = make_model(cfg.model, model_config, seed=cfg.seed)
        t0 = time.perf_counter()
        model.fit(data, split.train, split.valid)
        if data.shard is not None:  # rank 0 completes the model with the whole split
            from mgrec.distributed import current

            if not current().is_main:
                record["train_seconds"] = round(time.perf_counter() - t0, 3)
                return TrainedRun(model=model, dataset=data, split=split, record=record)
            data, split = _load_shard(cfg, whole=True)
            model.finish_shards(data, split.train, split.valid)  # type: ignore[attr-defined]
            record["data"], record["split_summary"] = data.info(), split.summary()
        record["train_seconds"] = round(time.perf_counter() - t0, 3)
    record["model_config"] = model.config_dict()
    if callable(getattr(model, "fit_info", None)):  # what training chose (epochs, scales ...)
        record["fit_info"] = model.fit_info()
    epochs = [e["train_seconds"] for e in getattr(model, "history_", []) if "train_seconds" in e]
    if epochs:  # iterative models: seconds per pass over the training data (no validation)
        record["epochs"] = len(epochs)
        record["epoch_seconds"] = round(sum(epochs) / len(epochs), 3)
    record["valid"] = _rounded(evaluate_split(model, split, data, part="valid", ks=cfg.ks,
                                                   progress=cfg.progress))
    if evaluate_test:
        t0 = time.perf_counter()
        record["test"] = _rounded(evaluate_split(model, split, data, part="test", ks=cfg.ks,
                                                      progress=cfg.progress))
        record["eval_seconds"] = round(time.perf_counter() - t0, 3)
    return TrainedRun(model=model, dataset=data, split=split, record=record)


def save_run(run: TrainedRun, cfg: ExperimentConfig, out: str | Path) -> Path:
    """Write the model folder atomically (an existing ``out`` is replaced only on success)."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        run.model.save(tmp / "model")
        run.split.save(tmp / "split", run.dataset)
        atomic_write_json(tmp / "users.json", run.dataset.users.to_list())
        atomic_write_json(tmp / "items.json", run.dataset.items.to_list())
        cfg_dict = to_dict(cfg)
        if cfg_dict.get("store"):  # never write a password into run.json
            from mgrec.store import mask_url

            cfg_dict["store"] = mask_url(cfg_dict["store"])
        atomic_write_json(tmp / "run.json", {"config": cfg_dict, **run.record})
    return out


@dataclass
class LoadedRun:
    """A model folder read back: the model, vocabularies, split and the run record."""

    model: Recommender
    users: Vocabulary
    items: Vocabulary
    record: dict[str, Any]
    path: Path

    def split(self) -> Split:
        """The saved split, in this run's codes (checked against its sha256 sums)."""
        return Split.load(self.path / "split", self.vocab_dataset())

    def vocab_dataset(self) -> Dataset:
        """A dataset shell with only the vocabularies, enough to map raw ids."""
        empty = pd.DataFrame({"user": np.zeros(0, np.int64), "item": np.zeros(0, np.int64),
                              "weight": np.zeros(0, np.float32)})
        if self.record.get("data", {}).get("first_timestamp") is not None:
            empty["timestamp"] = np.zeros(0, np.int64)
        return Dataset(self.record.get("dataset", "model"), self.users, self.items, empty)


def load_run(path: str | Path) -> LoadedRun:
    """Read a folder written by ``mgrec train``.

    Raises:
        DataError: when the folder or any file in it is missing or corrupt.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError("model folder not found", file=path)
    record = _read_json(path / "run.json")
    users = Vocabulary(_read_json(path / "users.json"))
    items = Vocabulary(_read_json(path / "items.json"))
    model = Recommender.load(path / "model")
    if model.n_users_ != len(users) or model.n_items_ != len(items):
        raise DataError(
            f"model sizes ({model.n_users_} users, {model.n_items_} items) do not match the "
            f"vocabularies ({len(users)}, {len(items)})",
            file=path / "model" / "model.json",
        )
    return LoadedRun(model=model, users=users, items=items, record=record, path=path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"not valid JSON ({err})", file=path) from None


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: (round(float(v), 6) if isinstance(v, float) else v) for k, v in metrics.items()}
