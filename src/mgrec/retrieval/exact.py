"""Item vector compression (fp16, int8 per row), the index interface, and exact search."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch

from mgrec.errors import ConfigError

#: Accepted ``kind`` values of :func:`build_index` (``faiss-hnsw`` = ``faiss``).
INDEX_KINDS = ("auto", "exact", "faiss", "faiss-hnsw", "faiss-ivf")
#: Accepted ``quantize`` values.
QUANTIZE_MODES = ("none", "fp16", "int8")
#: ``float32`` score bytes one block of queries may hold in :meth:`ExactIndex.search`.
SCORE_BUDGET_BYTES = 64 * 2**20
#: Default size of the ``float32`` workspace a compressed :class:`ExactIndex` widens into.
WORKSPACE_BYTES = 2**20


# ------------------------------------------------------------------------------ compression
def _check_mode(quantize: str) -> str:
    if quantize not in QUANTIZE_MODES:
        raise ConfigError(f"unknown quantize mode {quantize!r}; choose from {', '.join(QUANTIZE_MODES)}")
    return quantize


def _check_vectors(x: np.ndarray, what: str = "item vectors") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ConfigError(f"{what} must be a 2-D (n, D) array with D >= 1, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise ConfigError(f"{what} must be real numbers, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ConfigError(f"{what} must be finite (found NaN or inf)")
    return x


def quantize_rows(x: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Compress the rows of a matrix.

    Args:
        x: ``(n, D)`` real matrix.
        mode: ``none`` (``float32`` copy), ``fp16`` or ``int8`` (symmetric per row:
            ``s = max|x_row| / 127``, ``q = round(x / s)`` in ``[-127, 127]``; an all-zero row
            gets ``s = 0`` and ``q = 0``).

    Returns:
        ``(data, scales)``: ``data`` in ``float32``, ``float16`` or ``int8``; ``scales`` the
        ``(n,)`` ``float32`` row scales for ``int8``, else ``None``.

    Raises:
        ConfigError: for an unknown mode or a matrix that is not 2-D, real and finite.

    Example:
        >>> q, s = quantize_rows(np.array([[1.0, -0.5]]), "int8")
        >>> q.tolist(), round(float(s[0]), 5)
        ([[127, -64]], 0.00787)
    """
    _check_mode(mode)
    x = _check_vectors(x, "the matrix")
    if mode == "none":
        return x.copy(), None
    if mode == "fp16":
        return x.astype(np.float16), None
    scales = (np.abs(x).max(axis=1) / np.float32(127.0)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1.0))
    data = np.clip(np.rint(x / safe[:, None]), -127, 127).astype(np.int8)
    return data, scales


def dequantize(data: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
    """The ``float32`` matrix that :func:`quantize_rows` output stands for.

    Args:
        data: ``(n, D)`` ``float32``, ``float16`` or ``int8`` rows.
        scales: ``(n,)`` row scales (required for ``int8``, else ignored).

    Returns:
        ``(n, D)`` ``float32``: ``data * scales[:, None]`` for ``int8``, else ``data``.

    Raises:
        ConfigError: for ``int8`` data without matching scales.
    """
    data = np.asarray(data)
    if data.dtype == np.int8:
        if scales is None or np.shape(scales) != (data.shape[0],):
            raise ConfigError(f"int8 rows need ({data.shape[0]},) scales, got "
                              f"{None if scales is None else np.shape(scales)}")
        return data.astype(np.float32) * np.asarray(scales, np.float32)[:, None]
    return data.astype(np.float32)


# ------------------------------------------------------------------------------ indexes
class ItemIndex(ABC):
    """Top-``k`` maximum-inner-product search over a fixed item matrix.

    Attributes:
        kind: ``exact`` or ``faiss-hnsw``.
        quantize: how the item matrix is stored (:data:`QUANTIZE_MODES`).
        n_items: number of indexed items (codes ``0 .. n_items - 1``).
        dim: vector size ``D``.
    """

    kind: str = ""
    quantize: str = "none"
    n_items: int = 0
    dim: int = 0

    @abstractmethod
    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items of highest inner product with each query.

        Args:
            queries: ``(B, D)`` query vectors (a single ``(D,)`` vector counts as ``B = 1``).
            k: list length (at least 1; may exceed :attr:`n_items`).
            exclude: ``B`` arrays of item codes, one per query row, never returned for it.

        Returns:
            ``(items, scores)``: ``int64`` and ``float32``, both ``(B, k)``, best first; where
            fewer than ``k`` items remain, the tail is ``-1`` with score ``-inf``.

        Raises:
            ConfigError: for a bad ``k``, query shape or exclusion list.
        """

    @abstractmethod
    def memory_bytes(self) -> int:
        """Bytes held by the index's stored data (item matrix, scales, graph), excluding
        per-call scratch space."""

    @property
    def workspace_bytes(self) -> int:
        """Bytes of fixed scratch space a search allocates besides its results (0 if none)."""
        return 0

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(kind={self.kind!r}, n_items={self.n_items}, dim={self.dim}, "
                f"quantize={self.quantize!r}, memory_bytes={self.memory_bytes()})")

    # -------------------------------------------------------------- shared checks
    def _check_query(self, queries: np.ndarray, k: int,
                     exclude: Sequence[np.ndarray] | None) -> tuple[np.ndarray, int, list[np.ndarray] | None]:
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ConfigError(f"queries must have shape (B, {self.dim}), got {np.shape(queries)}")
        q = np.ascontiguousarray(q, dtype=np.float32)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        if exclude is None:
            return q, int(k), None
        if len(exclude) != len(q):
            raise ConfigError(f"exclude must hold one array per query row ({len(q)}), got {len(exclude)}")
        rows = []
        for e in exclude:
            e = np.asarray(e if e is not None else [], dtype=np.int64).reshape(-1)
            if e.size and (e.min() < 0 or e.max() >= self.n_items):
                raise ConfigError(f"excluded item codes must lie in 0..{self.n_items - 1}")
            rows.append(e)
        return q, int(k), rows


def _pad(items: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad ``(B, k')`` results to ``k`` columns with ``-1`` / ``-inf``."""
    extra = k - items.shape[1]
    if extra <= 0:
        return items, scores
    b = items.shape[0]
    return (np.concatenate([items, np.full((b, extra), -1, np.int64)], axis=1),
            np.concatenate([scores, np.full((b, extra), -np.inf, np.float32)], axis=1))


class ExactIndex(ItemIndex):
    """Exact search: scores of every item (batched matrix product), masked, ``torch.topk``.

    Args:
        item_vectors: ``(n_items, D)`` item vectors.
        quantize: storage of the item matrix: ``none``, ``fp16`` or ``int8`` (see the module
            docstring for the ``int8`` scheme and the workspace).
        chunk_rows: rows widened to ``float32`` at a time for a compressed matrix; default
            from a 1 MiB workspace (4096 rows at ``D = 64``), which stays in cache.

    Raises:
        ConfigError: for an unknown ``quantize`` or bad vectors.
    """

    kind = "exact"

    def __init__(self, item_vectors: np.ndarray, *, quantize: str = "none", chunk_rows: int | None = None) -> None:
        self.quantize = _check_mode(quantize)
        data, scales = quantize_rows(item_vectors, quantize)
        self.n_items, self.dim = int(data.shape[0]), int(data.shape[1])
        self._data = torch.from_numpy(data)
        self._scales = None if scales is None else torch.from_numpy(scales)
        if chunk_rows is None:
            chunk_rows = max(256, WORKSPACE_BYTES // (4 * self.dim))
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        self.chunk_rows = int(min(chunk_rows, max(self.n_items, 1)))

    @property
    def item_data(self) -> np.ndarray:
        """The stored ``(n_items, D)`` matrix (``float32``, ``float16`` or ``int8``), read-only view."""
        view = self._data.numpy().view()
        view.flags.writeable = False
        return view

    @property
    def scales(self) -> np.ndarray | None:
        """The ``(n_items,)`` ``int8`` row scales, or ``None``."""
        return None if self._scales is None else self._scales.numpy().copy()

    def memory_bytes(self) -> int:
        """Bytes of the stored item matrix plus the ``int8`` scales."""
        n = self._data.numel() * self._data.element_size()
        if self._scales is not None:
            n += self._scales.numel() * self._scales.element_size()
        return int(n)

    @property
    def workspace_bytes(self) -> int:
        """The per-call ``float32`` block a compressed matrix is widened into (0 for ``none``)."""
        return 0 if self.quantize == "none" else self.chunk_rows * self.dim * 4

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """``(B, n_items)`` ``float32`` inner products (from the stored, possibly compressed, matrix)."""
        q, _, _ = self._check_query(queries, 1, None)
        return self._scores(torch.from_numpy(q)).numpy()

    def _scores(self, q: torch.Tensor) -> torch.Tensor:
        out = torch.empty(q.shape[0], self.n_items, dtype=torch.float32)
        if self.quantize == "none":
            return torch.mm(q, self._data.T, out=out)
        step = self.chunk_rows
        work = torch.empty(step, self.dim, dtype=torch.float32)
        for a in range(0, self.n_items, step):
            b = min(a + step, self.n_items)
            w = work[: b - a]
            w.copy_(self._data[a:b])  # widen one cache-sized block to float32
            block = out[:, a:b]
            torch.mm(q, w.T, out=block)
            if self._scales is not None:
                block.mul_(self._scales[a:b])
        return out

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        q, k, rows = self._check_query(queries, k, exclude)
        b = len(q)
        kk = min(k, self.n_items)
        items = np.empty((b, kk), np.int64)
        vals = np.empty((b, kk), np.float32)
        per = max(1, SCORE_BUDGET_BYTES // (4 * max(self.n_items, 1)))
        qt = torch.from_numpy(q)
        with torch.no_grad():
            for s in range(0, b, per):
                e = min(s + per, b)
                scores = self._scores(qt[s:e])
                if rows is not None:
                    part = rows[s:e]
                    n = np.fromiter((len(r) for r in part), np.int64, len(part))
                    if n.sum():
                        r_idx = torch.from_numpy(np.repeat(np.arange(e - s), n))
                        c_idx = torch.from_numpy(np.concatenate(part))
                        scores[r_idx, c_idx] = -torch.inf
                if kk:
                    v, i = torch.topk(scores, kk, dim=1, largest=True, sorted=True)
                    items[s:e], vals[s:e] = i.numpy(), v.numpy()
        items[~np.isfinite(vals)] = -1
        vals[items < 0] = -np.inf
        return _pad(items, vals, k)
