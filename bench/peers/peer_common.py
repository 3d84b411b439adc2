"""What every peer-side script shares: reading the exported split, ranking, writing results.

This module runs inside the peers' own virtual environments, so it needs only numpy and scipy
(never mgrec). The work folder it reads is written by :mod:`export`:

* ``train.npz``, ``valid.npz``, ``test.npz``: binary ``(n_users, n_items)`` CSR matrices in
  mgrec's user and item codes;
* ``user_features.npz`` / ``item_features.npz`` (when the dataset has them);
* ``recbole/``: RecBole atomic files.

A peer writes ``<out>/topn.npy`` (``(n_test_users, N)`` item codes, ``-1`` padded),
``<out>/users.npy`` (the user codes of those rows) and ``<out>/result.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp

TOP_N = 100
PARTS = ("train", "valid", "test")


def base_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every peer script takes."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", required=True)
    ap.add_argument("--work", type=Path, required=True, help="the exported split (see export.py)")
    ap.add_argument("--out", type=Path, required=True, help="where topn.npy and result.json go")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-epochs", type=int, default=300)
    return ap


def load_parts(work: Path) -> dict[str, sp.csr_matrix]:
    """The train, valid and test matrices of the exported split."""
    return {part: sp.load_npz(work / f"{part}.npz").tocsr() for part in PARTS}


def load_features(work: Path, side: str) -> sp.csr_matrix | None:
    """``user`` or ``item`` feature matrix, or ``None`` when the dataset has none."""
    path = work / f"{side}_features.npz"
    return sp.load_npz(path).tocsr() if path.is_file() else None


def top_items(scores: np.ndarray, exclude: sp.csr_matrix, n: int) -> np.ndarray:
    """Best ``n`` item codes per row of ``scores``, best first, dropping the ``exclude`` items.

    Ties break by the lower item code. Rows run out into ``-1`` when fewer than ``n`` items
    remain.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    rows, cols = exclude.nonzero()
    scores[rows, cols] = -np.inf
    n = min(n, scores.shape[1])
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    top = np.take_along_axis(part, order, axis=1)
    top[~np.isfinite(np.take_along_axis(part_scores, order, axis=1))] = -1
    return top


def ndcg_at_k(top: np.ndarray, truth: sp.csr_matrix, users: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k of ranked lists ``top`` (rows = ``users``) against ``truth`` (as mgrec and
    RecBole define it: the ideal DCG has ``min(#relevant, k)`` hits)."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    values = []
    for row, u in zip(top[:, :k], users):
        relevant = truth.indices[truth.indptr[u]:truth.indptr[u + 1]]
        hits = np.isin(row, relevant)
        ideal = discount[: min(len(relevant), k)].sum()
        values.append(float(discount[: len(row)][hits].sum() / ideal))
    return float(np.mean(values))


def rank_users(score: Callable[[np.ndarray], np.ndarray], users: np.ndarray, exclude: sp.csr_matrix,
               n: int, chunk: int = 256) -> np.ndarray:
    """``top_items`` for ``users`` in chunks; ``score(users)`` gives ``(B, n_items)`` scores."""
    out = [top_items(score(users[s:s + chunk]), exclude[users[s:s + chunk]], n)
           for s in range(0, len(users), chunk)]
    return np.concatenate(out) if out else np.zeros((0, n), dtype=np.int64)


def valid_ndcg(score: Callable[[np.ndarray], np.ndarray], parts: dict[str, sp.csr_matrix]) -> float:
    """NDCG@10 on the validation part, training items excluded (mgrec's validation)."""
    users = np.flatnonzero(np.diff(parts["valid"].indptr))
    return ndcg_at_k(rank_users(score, users, parts["train"], 10), parts["valid"], users)


def test_exclusion(parts: dict[str, sp.csr_matrix]) -> sp.csr_matrix:
    """Items dropped from the test rankings: each user's train and valid items."""
    both = (parts["train"] + parts["valid"]).tocsr()
    both.data[:] = 1.0
    return both


def write_topn(out: Path, score: Callable[[np.ndarray], np.ndarray], parts: dict[str, sp.csr_matrix]) -> None:
    """Rank every user with test items, train and valid items excluded; save the lists."""
    users = np.flatnonzero(np.diff(parts["test"].indptr))
    top = rank_users(score, users, test_exclusion(parts), TOP_N)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "users.npy", users.astype(np.int64))
    np.save(out / "topn.npy", top.astype(np.int64))


def write_result(out: Path, info: dict) -> None:
    """Write ``result.json``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(info, indent=2, default=float) + "\n", encoding="utf-8")


def set_threads(n: int) -> None:
    """Pin BLAS/OpenMP thread pools (before the numeric libraries start them)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)


class Clock:
    """Seconds since creation, for the ``total_seconds`` of a result."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 3)
