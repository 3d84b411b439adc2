"""``mgrec coldstart``: how the fused model ``mgr`` serves users and items it never saw.

Two protocols per (dataset, seed), on the ``random`` split that :func:`~mgrec.experiment.prepare`
makes with the dataset's default preprocessing:

* **cold users**: ``frac`` of the users with training interactions lose every interaction in
  train and valid (validation of the others stays, for early stopping). ``mgr`` and ``pop``
  are fitted on what is left; a held-out user is ranked over the whole catalogue from profile
  features and friends alone (:meth:`~mgrec.mgr.MGR.recommend_context`) against all of the
  user's interactions (``cold_users``). The ``cold_users_3_items`` variant also reveals the
  user's first :data:`N_REVEALED` interactions (time order, else source order) and scores the
  rest; the revealed items are filtered from both models' lists and left out of the truth.
  The request time (the time granularity's context) is the user's arrival, the time of their
  first event, which a server knows as its clock; with revealed items, 1 s after the last.
* **new items**: ``frac`` of the items with interactions are removed from the catalogue (their
  interactions leave train and valid, and they are not even softmax negatives), ``mgr`` is
  fitted, and the held-out items get content-only vectors
  (:meth:`~mgrec.mgr.MGR.score_new_items`). Every user with an interaction with a held-out
  item ranks only the held-out items by ``p_u . q_v``, ``p_u`` from the user's normal training
  context, against a random ranking (mean over :data:`RANDOM_REPEATS` seeded permutations).

Rows (``dataset``, ``seed``, ``protocol``, ``model``, ``metrics``, ``n_users`` evaluated,
``n_users_held_out``, ``n_items_held_out``, ``train_seconds``, ``best_epoch`` of ``mgr``,
``peak_rss_mb``: the process's peak so far, as runs share one process) go to a JSON file and a
markdown table of mean ± sd over seeds, both rewritten atomically after every seed.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from mgrec.baselines.pop import Pop
from mgrec.benchmark import command_line, mean_std, peak_rss_mb
from mgrec.data.dataset import Dataset
from mgrec.data.registry import load_dataset
from mgrec.data.split import Split
from mgrec.errors import ConfigError
from mgrec.experiment import ExperimentConfig, prepare
from mgrec.io import atomic_write_json, atomic_write_text
from mgrec.metrics import canonical_truth, compute, hit_matrix
from mgrec.mgr import MGR, SCORE_CHUNK
from mgrec.recommender import Recommender, topk

__all__ = [
    "PROTOCOLS",
    "TABLE_METRICS",
    "ProtocolRun",
    "check_frac",
    "cold_users",
    "draw_held_out",
    "markdown_table",
    "new_items",
    "ranking_metrics",
    "run_coldstart",
]

log = logging.getLogger(__name__)

#: The protocols, in the order of the rows.
PROTOCOLS = ("cold_users", "cold_users_3_items", "new_items")
#: Cut-off of every reported metric.
K = 10
#: Metrics reported (names from :data:`mgrec.metrics.METRICS`).
METRIC_NAMES = ("ndcg", "recall", "hit")
#: Their result keys, the columns of the markdown table.
TABLE_METRICS = tuple(f"{m}@{K}" for m in METRIC_NAMES)
#: Interactions revealed per cold user in ``cold_users_3_items``.
N_REVEALED = 3
#: Random permutations averaged for the ``random`` new-item ranking.
RANDOM_REPEATS = 20
# independent random streams per seed: np.random.default_rng([stream, seed])
_COLD_USER_STREAM, _NEW_ITEM_STREAM, _RANDOM_STREAM = 1, 2, 3
#: Revealed interactions per cold user: ``{user: (item codes, their times or None)}``.
_Shown = dict[int, tuple[list[int], list[float] | None]]


@dataclasses.dataclass
class ProtocolRun:
    """What one protocol produced.

    Attributes:
        rows: one row per (protocol, model).
        model: the fitted ``mgr``.
        held_out: the held-out user or item codes (codes of the original dataset).
        train: the training interactions the model was fitted on (codes of the dataset it
            was fitted on: the original one for cold users, the reduced catalogue for new items).
    """

    rows: list[dict[str, Any]]
    model: MGR
    held_out: np.ndarray
    train: pd.DataFrame


# --------------------------------------------------------------------------- helpers
def check_frac(frac: float) -> float:
    """``frac`` as a float in ``(0, 0.5]``.

    Raises:
        ConfigError: for anything else.
    """
    try:
        value = float(frac)
    except (TypeError, ValueError):
        raise ConfigError(f"frac must be a number in (0, 0.5], got {frac!r}") from None
    if not 0.0 < value <= 0.5:
        raise ConfigError(f"frac must lie in (0, 0.5], got {frac!r}")
    return value


def draw_held_out(codes: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    """A sorted random ``frac`` of ``codes`` (at least one, never all of them).

    Args:
        codes: distinct candidate codes.
        frac: the share to draw, in ``(0, 0.5]``.
        rng: the random generator.

    Raises:
        ConfigError: when there are fewer than two candidates.
    """
    codes = np.unique(np.asarray(codes, dtype=np.int64))
    if len(codes) < 2:
        raise ConfigError(f"cannot hold out a share of {len(codes)} candidate(s)")
    n = min(max(1, round(check_frac(frac) * len(codes))), len(codes) - 1)
    return np.sort(rng.choice(codes, size=n, replace=False))


def ranking_metrics(ranked: np.ndarray, truth: sp.spmatrix) -> dict[str, float]:
    """Mean NDCG, recall and hit at :data:`K` over the rows of ``ranked``.

    Args:
        ranked: ``(B, k)`` item codes, best first (``-1`` pads); ``B >= 1``.
        truth: ``(B, n)`` relevant items per row (every row non-empty).

    Returns:
        ``{"ndcg@10": ..., "recall@10": ..., "hit@10": ...}``.
    """
    truth = canonical_truth(truth)
    values = compute(hit_matrix(ranked, truth), np.diff(truth.indptr), [K], METRIC_NAMES)
    return {key: round(float(v.mean()), 6) for key, v in values.items()}


def _truth(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)


def _drop(frame: pd.DataFrame, column: str, codes: np.ndarray) -> pd.DataFrame:
    """``frame`` without the rows whose ``column`` is in ``codes``."""
    return frame[~np.isin(frame[column].to_numpy(), codes)].reset_index(drop=True)


def _fit(model: Recommender, data: Dataset, train: pd.DataFrame, valid: pd.DataFrame) -> float:
    """Fit ``model``; return the seconds it took."""
    t0 = time.perf_counter()
    model.fit(data, train, valid)
    return round(time.perf_counter() - t0, 3)


def _row(data: Dataset, seed: int, protocol: str, model: str, metrics: dict[str, float | None], *,
         n_users: int, held_users: int = 0, held_items: int = 0, seconds: float = 0.0,
         best_epoch: int | None = None) -> dict[str, Any]:
    return {"dataset": data.name, "seed": seed, "protocol": protocol, "model": model, "metrics": metrics,
            "n_users": n_users, "n_users_held_out": held_users, "n_items_held_out": held_items,
            "train_seconds": seconds, "best_epoch": best_epoch, "peak_rss_mb": round(peak_rss_mb(), 1)}


def _require_item_features(data: Dataset) -> None:
    if data.item_features is None or not data.item_features.names:
        raise ConfigError(f"coldstart: dataset {data.name!r} has no item features, so the new-item "
                          "protocol cannot represent held-out items by content")


# ------------------------------------------------------------------------ cold users
def cold_users(data: Dataset, split: Split, *, seed: int, frac: float = 0.1,
               model_config: dict[str, Any] | None = None) -> ProtocolRun:
    """The ``cold_users`` and ``cold_users_3_items`` protocols (module docstring).

    Args:
        data: the dataset.
        split: a split of ``data`` (its parts partition ``data.interactions``).
        seed: seeds the draw of cold users and the models.
        frac: the share of users with training interactions to hold out, in ``(0, 0.5]``.
        model_config: the ``mgr`` config (a dict for :class:`~mgrec.mgr.MGRConfig`).

    Returns:
        Rows for ``mgr`` and ``pop`` under both protocols, the fitted ``mgr``, the cold users.
    """
    rng = np.random.default_rng([_COLD_USER_STREAM, seed])
    held = draw_held_out(np.unique(split.train["user"].to_numpy()), frac, rng)
    train, valid = _drop(split.train, "user", held), _drop(split.valid, "user", held)
    mgr = MGR(model_config, seed=seed)
    mgr_seconds = _fit(mgr, data, train, valid)
    pop = Pop(seed=seed)
    pop_seconds = _fit(pop, data, train, valid)
    users, items, times = _events(data, held)
    request = _Requests(data, mgr)
    # a new user's first request comes when they arrive: the time of their first event
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, np.int64)
    arrival = {} if times is None else {int(users[i]): float(times[i]) for i in starts}
    rows = []
    for protocol, n_shown in (("cold_users", 0), ("cold_users_3_items", N_REVEALED)):
        shown, truth, evaluated = _reveal(users, items, times, n_shown, data.n_items)
        metrics = {name: dict.fromkeys(TABLE_METRICS) for name in ("mgr", "pop")}
        if evaluated:  # none when no cold user has more than n_shown distinct items
            exclude = _truth(*_flat_shown(shown), (data.n_users, data.n_items))
            ranked_mgr = np.stack([request.rank(u, shown.get(u, ([], None)), arrival=arrival.get(u))
                                   for u in evaluated])
            ranked_pop = pop.recommend(np.asarray(evaluated, np.int64), K, exclude=exclude)[0]
            metrics = {"mgr": ranking_metrics(ranked_mgr, truth), "pop": ranking_metrics(ranked_pop, truth)}
        for name, seconds, best in (("mgr", mgr_seconds, mgr.best_epoch_), ("pop", pop_seconds, None)):
            rows.append(_row(data, seed, protocol, name, metrics[name], n_users=len(evaluated),
                             held_users=len(held), seconds=seconds, best_epoch=best))
    return ProtocolRun(rows, mgr, held, train)


def _events(data: Dataset, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Every interaction of ``users``: user, item and time (``None`` without time), sorted by
    user, then time, then source order."""
    inter = data.interactions
    keep = np.isin(inter["user"].to_numpy(), users)
    u = inter["user"].to_numpy(np.int64)[keep]
    i = inter["item"].to_numpy(np.int64)[keep]
    t = inter["timestamp"].to_numpy(np.int64)[keep] if data.has_time else None
    order = np.lexsort((np.zeros(len(u)) if t is None else t, u))  # stable: ties keep source order
    return u[order], i[order], None if t is None else t[order]


def _reveal(users: np.ndarray, items: np.ndarray, times: np.ndarray | None, n_shown: int, n_items: int
            ) -> tuple[_Shown, sp.csr_matrix, list[int]]:
    """Split each user's sorted events into the first ``n_shown`` and the rest.

    Returns:
        ``({user: (shown items, their times or None)}, truth, users)``: ``truth`` row ``r``
        holds the items of ``users[r]`` after the shown ones, minus the shown items; users
        left with no such item are dropped.
    """
    shown: _Shown = {}
    rows, cols, kept = [], [], []
    for u in np.unique(users):
        lo, hi = np.searchsorted(users, [u, u + 1])
        first, rest = items[lo:lo + n_shown], items[lo + n_shown:hi]
        rest = rest[~np.isin(rest, first)]
        if len(rest) == 0:
            continue
        if n_shown:
            shown[int(u)] = (first.tolist(), None if times is None else times[lo:lo + n_shown].astype(float).tolist())
        rows += [len(kept)] * len(rest)
        cols += rest.tolist()
        kept.append(int(u))
    return shown, _truth(np.asarray(rows, np.int64), np.asarray(cols, np.int64), (len(kept), n_items)), kept


def _flat_shown(shown: _Shown) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) pairs of the shown items."""
    pairs = [(u, i) for u, (items, _) in shown.items() for i in items]
    arr = np.asarray(pairs, np.int64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


class _Requests:
    """Builds :meth:`MGR.recommend_context` calls for users the model holds no history of."""

    def __init__(self, data: Dataset, model: MGR) -> None:
        use_features = "user" in model.granularities_
        self.frame = data.user_features.frame if use_features and data.user_features is not None else None
        social = data.social if "social" in model.granularities_ else None
        self.adjacency = social.adjacency(data.n_users) if social is not None else None
        self.model = model

    def rank(self, user: int, shown: tuple[list[int], list[float] | None], *,
             arrival: float | None = None) -> np.ndarray:
        """The model's top :data:`K` for ``user`` from its profile, friends and ``shown`` items
        (with times: the request comes 1 s after the last of them, as in training; without
        shown items, at ``arrival``, the time of the user's first event, or unknown)."""
        items, times = shown
        features = self.frame.iloc[user].to_dict() if self.frame is not None else None
        adj = self.adjacency
        friends = adj.indices[adj.indptr[user]:adj.indptr[user + 1]].tolist() if adj is not None else None
        at = times[-1] + 1.0 if times else arrival
        return self.model.recommend_context(items, history_times=times, features=features, friends=friends,
                                            time=at, k=K)[0]


# ------------------------------------------------------------------------- new items
def new_items(data: Dataset, split: Split, *, seed: int, frac: float = 0.1,
              model_config: dict[str, Any] | None = None) -> ProtocolRun:
    """The ``new_items`` protocol (module docstring).

    Args:
        data: the dataset; it must have item features.
        split: a split of ``data``.
        seed: seeds the draw of new items, the model and the random ranking.
        frac: the share of items with interactions to hold out, in ``(0, 0.5]``.
        model_config: the ``mgr`` config.

    Returns:
        Rows for ``mgr`` and ``random``, the ``mgr`` fitted on the catalogue without the held-out
        items, and those items.

    Raises:
        ConfigError: when ``data`` has no item features.
    """
    _require_item_features(data)
    rng = np.random.default_rng([_NEW_ITEM_STREAM, seed])
    held = draw_held_out(np.unique(data.interactions["item"].to_numpy()), frac, rng)
    reduced, code = _without_items(data, held)
    train = _recode(_drop(split.train, "item", held), code)
    valid = _recode(_drop(split.valid, "item", held), code)
    mgr = MGR(model_config, seed=seed)
    seconds = _fit(mgr, reduced, train, valid)
    q = mgr.score_new_items(data.item_features.take(held))
    inter = data.interactions
    hit = np.isin(inter["item"].to_numpy(), held)
    users, row = np.unique(inter["user"].to_numpy(np.int64)[hit], return_inverse=True)
    col = np.searchsorted(held, inter["item"].to_numpy(np.int64)[hit])
    truth = _truth(row, col, (len(users), len(held)))
    ranked = topk(_user_vectors(mgr, users) @ q.T, K)[0]
    random_rng = np.random.default_rng([_RANDOM_STREAM, seed])
    random = [ranking_metrics(np.argsort(random_rng.random((len(users), len(held))), axis=1)[:, :K], truth)
              for _ in range(RANDOM_REPEATS)]
    common = {"n_users": len(users), "held_items": len(held)}
    return ProtocolRun([
        _row(data, seed, "new_items", "mgr", ranking_metrics(ranked, truth), seconds=seconds,
             best_epoch=mgr.best_epoch_, **common),
        _row(data, seed, "new_items", "random", {m: round(statistics.mean(r[m] for r in random), 6)
                                                 for m in TABLE_METRICS}, **common),
    ], mgr, held, train)


def _without_items(data: Dataset, held: np.ndarray) -> tuple[Dataset, np.ndarray]:
    """``data`` without the ``held`` items (users unchanged) and the old -> new item codes
    (``-1`` for held items)."""
    keep = np.setdiff1d(np.arange(data.n_items), held)
    code = np.full(data.n_items, -1, np.int64)
    code[keep] = np.arange(len(keep))
    assert data.item_features is not None
    reduced = dataclasses.replace(
        data, items=data.items.subset(keep), item_features=data.item_features.take(keep),
        interactions=_recode(_drop(data.interactions, "item", held), code), meta=dict(data.meta),
    )
    return reduced, code


def _recode(frame: pd.DataFrame, code: np.ndarray) -> pd.DataFrame:
    out = frame.copy()
    out["item"] = code[out["item"].to_numpy()]
    return out


def _user_vectors(model: MGR, users: np.ndarray) -> np.ndarray:
    """``(B, D)`` user vectors ``p_u`` in each user's training context."""
    assert model.net_ is not None and model.context_ is not None
    out = []
    with torch.no_grad():
        model.net_.eval()
        for s in range(0, len(users), SCORE_CHUNK):
            out.append(model.net_.user_vectors(model.context_.batch(users[s:s + SCORE_CHUNK]))[0].numpy())
    return np.concatenate(out)


# ----------------------------------------------------------------------------- runs
def run_coldstart(
    datasets: list[str],
    *,
    seeds: int,
    out: str | Path,
    frac: float = 0.1,
    model_config: dict[str, Any] | None = None,
    data_root: str | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run both protocols for every dataset and seed; write ``out`` (JSON) and ``out``.md.

    Args:
        datasets: dataset names; each must have item features.
        seeds: seeds ``0 .. seeds-1``; each seeds the split, the draws and the models.
        out: the JSON file; the markdown table goes to the same name with ``.md``.
        frac: the share of users (items) held out, in ``(0, 0.5]``.
        model_config: the ``mgr`` config for every run.
        data_root: where the datasets are.
        on_row: called with each finished row (progress reporting).

    Returns:
        The rows, also written to ``out`` after every seed.

    Raises:
        ConfigError: for a bad ``frac``, ``seeds``, model config, or a dataset without item
            features (checked before anything is trained).
    """
    frac = check_frac(frac)
    if isinstance(seeds, bool) or int(seeds) != seeds or seeds < 1:
        raise ConfigError(f"seeds must be a positive integer, got {seeds!r}")
    if not datasets:
        raise ConfigError("coldstart: no datasets given")
    MGR(model_config)  # reject a bad config before any data is loaded
    for name in datasets:
        _require_item_features(load_dataset(name, root=data_root))
    out = Path(out)
    rows: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    for name in datasets:
        for seed in range(int(seeds)):
            data, split = prepare(ExperimentConfig(dataset=name, model="mgr", split="random", seed=seed,
                                                   data_root=data_root))
            for protocol in (cold_users, new_items):
                for row in protocol(data, split, seed=seed, frac=frac, model_config=model_config).rows:
                    row["dataset"] = name  # as given (a folder dataset's own name is its resolved path)
                    rows.append(row)
                    if on_row is not None:
                        on_row(row)
            _write(out, rows, title=f"cold start, frac {frac}, random split, started {started}")
    return rows


def _write(out: Path, rows: list[dict[str, Any]], *, title: str) -> None:
    atomic_write_json(out, rows)
    atomic_write_text(out.with_suffix(".md"), markdown_table(rows, title=title, command=command_line()))


def markdown_table(rows: list[dict[str, Any]], *, title: str = "", command: str = "") -> str:
    """Mean ± standard deviation over seeds, one line per (dataset, protocol, model)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["protocol"], row["model"]), []).append(row)
    head = ["dataset", "protocol", "model", "seeds", *TABLE_METRICS, "users", "held-out users",
            "held-out items", "train s"]
    lines = [f"<!-- {text} -->" for text in (title, f"command: {command}" if command else "") if text]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (dataset, protocol, model), grp in groups.items():
        cells = [dataset, protocol, model, str(len(grp))]
        for m in TABLE_METRICS:
            values = [r["metrics"][m] for r in grp if r["metrics"][m] is not None]
            cells.append(mean_std(values) if values else "-")
        cells += [f"{statistics.mean(r[key] for r in grp):.0f}"
                  for key in ("n_users", "n_users_held_out", "n_items_held_out")]
        cells.append(f"{statistics.mean(r['train_seconds'] for r in grp):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
