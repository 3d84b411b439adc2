"""The ``Recommender`` contract: fit, score, one ``recommend()``, save and load.

Every model (baselines and the fused model) implements :meth:`Recommender.fit`,
:meth:`Recommender.score` and the state hooks. :meth:`Recommender.recommend` is written once,
here, and the command line, the HTTP API and evaluation all call it.

A saved model is a folder with ``model.json`` (format version, model name, config, sizes, the
SHA-256 of the weights) and ``weights.safetensors`` (numpy arrays). Nothing is pickled, and
weights that do not match their checksum (modified or truncated) are refused.
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from mgrec.data.dataset import Dataset, to_csr
from mgrec.errors import ConfigError, DataError
from mgrec.io import atomic_write_json, sha256_file

__all__ = ["Recommender", "topk", "FORMAT_VERSION"]

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS = "weights.safetensors"


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` columns of each row, best first; ``-inf`` entries sort last.

    Args:
        scores: ``(B, N)`` float array.
        k: list length; clipped to ``N``.

    Returns:
        ``(indices, values)``, each ``(B, k)``; the same input always gives the same order.
    """
    k = min(int(k), scores.shape[1])
    t = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
    vals, idx = torch.topk(t, k, dim=1, largest=True, sorted=True)
    return idx.numpy().astype(np.int64), vals.numpy()


class Recommender(ABC):
    """Base class of every mgrec model.

    Subclasses set :attr:`name`, implement :meth:`_fit`, :meth:`score`,
    :meth:`_get_state` and :meth:`_set_state`. After :meth:`fit`, ``seen_`` holds the
    binary user x item training matrix used by ``filter_seen``.
    """

    name: ClassVar[str] = "base"
    #: Users without any training interaction get the popularity ranking instead of the
    #: model's scores (which carry no information for them). Models that can rank such users
    #: from other signals (features, friends) set this to ``False``.
    cold_users_get_popularity: ClassVar[bool] = True

    def __init__(self) -> None:
        self.n_users_: int = 0
        self.n_items_: int = 0
        self.seen_: sp.csr_matrix | None = None
        self._pop_cache: np.ndarray | None = None
        self.index_: Any = None

    # ----------------------------------------------------------------- training
    def fit(
        self, dataset: Dataset, train: pd.DataFrame, valid: pd.DataFrame | None = None
    ) -> Recommender:
        """Train on ``train`` (codes of ``dataset``); ``valid`` may drive early stopping.

        Returns:
            ``self``.
        """
        self.n_users_, self.n_items_ = dataset.n_users, dataset.n_items
        self.seen_ = to_csr(train, dataset.n_users, dataset.n_items)
        self._pop_cache = None
        self._fit(dataset, train, valid)
        return self

    @abstractmethod
    def _fit(self, dataset: Dataset, train: pd.DataFrame, valid: pd.DataFrame | None) -> None: ...

    @abstractmethod
    def score(self, users: np.ndarray) -> np.ndarray:
        """Scores of every item for each user.

        Args:
            users: ``(B,)`` user codes.

        Returns:
            ``(B, n_items)`` ``float32``; higher is better.
        """

    # --------------------------------------------------------------- the contract
    def recommend(
        self,
        users: np.ndarray | int,
        k: int = 10,
        *,
        filter_seen: bool = True,
        exclude: sp.csr_matrix | None = None,
        candidates: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for each user.

        Args:
            users: one user code or ``(B,)`` codes.
            k: list length.
            filter_seen: drop the items each user has in the training data.
            exclude: a ``(n_users, n_items)`` matrix of further items to drop per user
                (rows are indexed by user code).
            candidates: restrict ranking to these item codes.

        Returns:
            ``(items, scores)``: ``int64`` item codes and ``float32`` scores, shaped ``(B, k)``,
            or ``(k,)`` for a single user. Dropped items never appear; if fewer than ``k``
            remain, the tail holds ``-1`` with score ``-inf``.

        Example:
            >>> items, scores = model.recommend(np.array([0, 1]), k=5)  # doctest: +SKIP
        """
        single = np.ndim(users) == 0
        users = np.atleast_1d(np.asarray(users, dtype=np.int64))
        if self.index_ is not None and candidates is None and not self._has_cold(users):
            idx, vals = self._recommend_indexed(users, k, filter_seen, exclude)
            return (idx[0], vals[0]) if single else (idx, vals)
        scores = np.array(self.score(users), dtype=np.float32, copy=True)
        if self.cold_users_get_popularity and self.seen_ is not None:
            cold = np.diff(self.seen_.indptr)[users] == 0
            if cold.any():
                scores[cold] = self._popularity()
        if filter_seen and self.seen_ is not None:
            _mask(scores, self.seen_[users])
        if exclude is not None:
            _mask(scores, exclude[users])
        if candidates is not None:
            keep = np.zeros(scores.shape[1], dtype=bool)
            keep[np.asarray(candidates, dtype=np.int64)] = True
            scores[:, ~keep] = -np.inf
        idx, vals = topk(scores, k)
        idx[~np.isfinite(vals)] = -1
        if single:
            return idx[0], vals[0]
        return idx, vals

    def _has_cold(self, users: np.ndarray) -> bool:
        """Whether some of ``users`` get the popularity fallback (then the index is skipped)."""
        if not self.cold_users_get_popularity or self.seen_ is None:
            return False
        counts = np.diff(self.seen_.indptr)
        ok = (users >= 0) & (users < len(counts))
        return bool((counts[users[ok]] == 0).any())

    def _recommend_indexed(self, users: np.ndarray, k: int, filter_seen: bool,
                           exclude: sp.csr_matrix | None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`recommend` through the attached item index (see :meth:`use_index`)."""
        queries = self.query_vectors(users)
        rows = []
        for u in users:
            drop = [np.zeros(0, np.int64)]
            if filter_seen and self.seen_ is not None:
                drop.append(self.seen_.indices[self.seen_.indptr[u]:self.seen_.indptr[u + 1]])
            if exclude is not None:
                drop.append(exclude[u].indices)
            rows.append(np.unique(np.concatenate(drop)).astype(np.int64))
        idx, vals = self.index_.search(np.ascontiguousarray(queries, dtype=np.float32), k, exclude=rows)
        idx = np.asarray(idx, dtype=np.int64)
        vals = np.asarray(vals, dtype=np.float32)
        idx[~np.isfinite(vals)] = -1
        return idx, vals

    # ------------------------------------------------------------- serving hooks
    def query_vectors(self, users: np.ndarray) -> np.ndarray:
        """``(B, D)`` vectors ``p_u`` with ``score(u) = p_u @ item_vectors().T``.

        Only dot-product models have them; the others raise :class:`ConfigError`.
        """
        raise ConfigError(f"{self.name} does not score by a dot product, so it cannot use an item index")

    def item_vectors(self) -> np.ndarray:
        """``(n_items, D)`` item vectors ``q_v`` (dot-product models only)."""
        raise ConfigError(f"{self.name} does not score by a dot product, so it cannot use an item index")

    def use_index(self, index: Any) -> None:
        """Rank through ``index`` (a :class:`mgrec.retrieval.ItemIndex` over
        :meth:`item_vectors`), or back through full scores with ``None``.

        :meth:`recommend` then searches the index with :meth:`query_vectors` and drops the same
        items (seen, ``exclude``); ``candidates`` still goes through full scores.
        """
        if index is not None and (index.n_items != self.n_items_):
            raise ConfigError(f"the index holds {index.n_items} items, the model {self.n_items_}")
        self.index_ = index

    def observe(self, users: np.ndarray, items: np.ndarray, times: np.ndarray | None = None,
                weights: np.ndarray | None = None) -> None:
        """Take new events of known users and items into account without retraining.

        The base class marks the items as seen (so they are filtered, and models that score
        from the interaction matrix, such as EASE and ItemKNN, read them at once). Models with
        richer context (the fused model's history, friends and time) extend this. The new
        state replaces the old by reference, so concurrent readers see either one.

        Args:
            users: ``(E,)`` user codes.
            items: ``(E,)`` item codes.
            times: ``(E,)`` unix seconds.
            weights: ``(E,)`` strengths.
        """
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        if users.shape != items.shape:
            raise DataError("users and items must have one entry per event", field="events")
        if len(users) and (users.min() < 0 or users.max() >= self.n_users_):
            raise DataError(f"user codes must lie in 0..{self.n_users_ - 1}", field="user_id")
        if len(items) and (items.min() < 0 or items.max() >= self.n_items_):
            raise DataError(f"item codes must lie in 0..{self.n_items_ - 1}", field="item_id")
        if self.seen_ is None or not len(users):
            return
        self._pop_cache = None
        self.seen_ = _with_entries(self.seen_, users, items)

    def observed(self, users: np.ndarray, items: np.ndarray, times: np.ndarray | None = None,
                 weights: np.ndarray | None = None) -> Recommender:
        """A copy of the model that has also :meth:`observe`-d these events; the model itself
        is left as it was. The copy shares the trained weights (read only) and gets its own
        caches. Evaluation uses it under ``loo``: the test ranking reads the validation event
        as history, as a deployed model would, without retraining.
        """
        twin = copy.copy(self)
        twin._own_caches()
        twin.observe(users, items, times, weights)
        return twin

    def _own_caches(self) -> None:
        """Replace, in a shallow copy, every cache that :meth:`observe` would change in place."""
        self._pop_cache = None

    def _popularity(self) -> np.ndarray:
        """Training interaction counts per item (the fallback ranking for cold users)."""
        if self._pop_cache is None:
            assert self.seen_ is not None
            self._pop_cache = np.asarray(self.seen_.sum(axis=0), dtype=np.float32).ravel()
        return self._pop_cache

    # ------------------------------------------------------------------ persistence
    def config_dict(self) -> dict[str, Any]:
        """The model's JSON-ready config (as saved in ``model.json``)."""
        return self._get_state()[0]

    @abstractmethod
    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(config, arrays)``: a JSON-ready config dict and named numpy arrays."""

    @abstractmethod
    def _set_state(self, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None: ...

    def save(self, path: str | Path) -> None:
        """Write ``model.json`` and ``weights.safetensors`` into folder ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config, arrays = self._get_state()
        arrays = dict(arrays)
        if self.seen_ is not None:
            coo = self.seen_.tocoo()
            arrays["_seen_row"] = coo.row.astype(np.int64)
            arrays["_seen_col"] = coo.col.astype(np.int64)
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        tmp = path / f".{WEIGHTS}.tmp"
        save_file(arrays, str(tmp))
        digest = sha256_file(tmp)
        tmp.replace(path / WEIGHTS)
        atomic_write_json(
            path / MODEL_JSON,
            {
                "format_version": FORMAT_VERSION,
                "model": self.name,
                "n_users": self.n_users_,
                "n_items": self.n_items_,
                "weights_sha256": digest,
                "config": config,
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> Recommender:
        """Load a folder written by :meth:`save`; the model class comes from ``model.json``.

        Raises:
            DataError: when a file is missing, truncated or tampered with.
        """
        from mgrec.models import get_model_class

        path = Path(path)
        meta = _read_model_json(path / MODEL_JSON)
        klass = get_model_class(meta["model"]) if cls is Recommender else cls
        expected = meta.get("weights_sha256")
        if expected is not None:
            try:
                found = sha256_file(path / WEIGHTS)
            except FileNotFoundError:
                raise DataError("model weights are missing", file=path / WEIGHTS) from None
            if found != expected:
                raise DataError("the weights do not match the checksum in model.json: the file was "
                                "modified or truncated", file=path / WEIGHTS)
        try:
            arrays = load_file(str(path / WEIGHTS))
        except FileNotFoundError:
            raise DataError("model weights are missing", file=path / WEIGHTS) from None
        except (SafetensorError, OSError, ValueError) as err:
            raise DataError(f"model weights cannot be read ({err})", file=path / WEIGHTS) from None
        model = klass.__new__(klass)
        Recommender.__init__(model)
        model.n_users_, model.n_items_ = int(meta["n_users"]), int(meta["n_items"])
        row, col = arrays.pop("_seen_row", None), arrays.pop("_seen_col", None)
        if row is not None and col is not None:
            model.seen_ = sp.csr_matrix(
                (np.ones(len(row), np.float32), (row, col)), shape=(model.n_users_, model.n_items_)
            )
        try:
            model._set_state(meta["config"], arrays)
        except (KeyError, ValueError, TypeError) as err:
            raise DataError(f"model weights do not match model.json ({err})", file=path / WEIGHTS) from None
        return model


def _with_entries(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> sp.csr_matrix:
    """A copy of the binary CSR ``m`` (sorted indices) with 1 at ``(rows, cols)``.

    New entries are inserted in place of a rebuild, so the cost is one copy of the arrays
    (no sort of all entries): cheap enough for every live event.
    """
    pairs = np.unique(np.stack([rows, cols], axis=1), axis=0)
    pos = np.empty(len(pairs), np.int64)
    fresh = np.ones(len(pairs), bool)
    for k, (r, c) in enumerate(pairs):
        row = m.indices[m.indptr[r]:m.indptr[r + 1]]
        at = int(np.searchsorted(row, c))
        pos[k] = m.indptr[r] + at
        fresh[k] = at == len(row) or row[at] != c
    pairs, pos = pairs[fresh], pos[fresh]
    if not len(pairs):
        return m
    indices = np.insert(m.indices, pos, pairs[:, 1].astype(m.indices.dtype))
    data = np.insert(m.data, pos, np.ones(len(pairs), m.data.dtype))
    added = np.bincount(pairs[:, 0], minlength=m.shape[0])
    indptr = m.indptr + np.concatenate([[0], np.cumsum(added)]).astype(m.indptr.dtype)
    return sp.csr_matrix((data, indices, indptr), shape=m.shape)


def _mask(scores: np.ndarray, rows: sp.csr_matrix) -> None:
    rows = rows.tocoo()
    scores[rows.row, rows.col] = -np.inf


def _read_model_json(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("not a model folder: model.json is missing", file=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"model.json is not valid JSON ({err})", file=path) from None
    for key in ("format_version", "model", "n_users", "n_items", "config"):
        if key not in meta:
            raise DataError(f"model.json lacks the key {key!r}", file=path)
    if meta["format_version"] != FORMAT_VERSION:
        raise DataError(
            f"model format {meta['format_version']} is not supported (this mgrec reads {FORMAT_VERSION})",
            file=path,
        )
    return meta
