"""Top-``k`` retrieval over item vectors for serving: ``argmax_v q_v . p`` for query vectors ``p``.

The fused model scores item ``v`` for a user as the inner product ``q_v . p_{u,c}``, so
serving a request is a maximum-inner-product search over the item matrix. Three indexes:

* :class:`ExactIndex`: a batched matrix product and ``torch.topk``; always exact. The item
  matrix may be stored compressed (``quantize``):

  =======  ==========================================  ===============================
  mode     stored                                       bytes per item (``D`` dims)
  =======  ==========================================  ===============================
  none     ``float32`` rows                             ``4 D``
  fp16     ``float16`` rows                             ``2 D``
  int8     ``int8`` rows + one ``float32`` scale/row    ``D + 4``
  =======  ==========================================  ===============================

  ``int8`` is symmetric per row: ``s = max|v| / 127``, ``q = round(v / s)``, and the score is
  ``(p . q) * s``; each dequantised element is within ``s / 2`` of the original. CPUs have
  no fast ``float x int8`` product in torch, so a compressed matrix is widened to ``float32``
  a block of ``chunk_rows`` rows at a time into a small per-call workspace
  (:attr:`ExactIndex.workspace_bytes`, 1 MiB by default, which stays in cache) and
  multiplied there: the memory held is the compressed matrix alone, never a full ``float32``
  copy. The price is time: widening costs more than the smaller matrix saves in memory
  traffic. One query against 1M x 64 items on one core took a median 32 ms with ``float32``,
  52 ms with ``int8`` and 57 ms with ``fp16`` (17k x 64: 0.3 to 0.6 ms for all three;
  ``bench/serving_quality.py``). Each search call also holds the ``float32`` scores of a
  block of queries, at most :data:`SCORE_BUDGET_BYTES`.

  Searches may run concurrently from several threads (no shared scratch space).

* :class:`FaissIndex`: an approximate HNSW graph (faiss ``IndexHNSWFlat`` with
  ``METRIC_INNER_PRODUCT``; ``IndexHNSWSQ`` for ``fp16``/``int8`` storage, whose 8-bit codes
  are faiss' per-dimension uniform quantiser, not the per-row scheme above). Excluded items
  are filtered from a longer candidate list, fetched again with twice the length for the rows
  that come up short; a list as long as the catalogue is an exhaustive scan of the stored
  vectors, so a row never misses an allowed item because the graph did not reach it.

* :class:`FaissIVFIndex`: an approximate inverted file (faiss ``IndexIVFFlat`` /
  ``IndexIVFScalarQuantizer``) over items mapped onto a sphere, so that Euclidean k-means
  groups serve inner-product search. It builds a 1M-item index in seconds (the HNSW graph
  takes minutes), which keeps reloads of large catalogues short.

:func:`build_index` picks one (``kind="auto"``: exact below ``threshold`` items, the inverted
file at or above it). Every index answers :meth:`ItemIndex.search` the same way: ``(items, scores)``,
best first, excluded items never returned, short rows padded with ``-1`` / ``-inf``.

Example:
    >>> index = build_index(np.eye(3, dtype=np.float32), kind="exact")
    >>> index.search(np.array([[0.0, 2.0, 1.0]], np.float32), k=2, exclude=[np.array([1])])[0]
    array([[2, 0]])
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from mgrec.errors import ConfigError
from mgrec.retrieval.ann import FaissIndex, FaissIVFIndex
from mgrec.retrieval.exact import (
    INDEX_KINDS,
    QUANTIZE_MODES,
    SCORE_BUDGET_BYTES,
    ExactIndex,
    ItemIndex,
    _check_mode,
    dequantize,
    quantize_rows,
)

__all__ = [
    "INDEX_KINDS",
    "QUANTIZE_MODES",
    "SCORE_BUDGET_BYTES",
    "ExactIndex",
    "FaissIVFIndex",
    "FaissIndex",
    "ItemIndex",
    "build_index",
    "dequantize",
    "quantize_rows",
]


# ------------------------------------------------------------------------------ factory
def _params_of(cls: type) -> set[str]:
    sig = inspect.signature(cls.__init__)
    return {p for p in sig.parameters if p not in ("self", "item_vectors", "quantize")}


def build_index(item_vectors: np.ndarray, kind: str = "auto", *, quantize: str = "none",
                threshold: int = 100_000, **params: Any) -> ItemIndex:
    """An index over ``item_vectors``.

    Args:
        item_vectors: ``(n_items, D)`` item vectors (e.g. ``MGR._item_matrix()``).
        kind: ``exact``; ``faiss`` or ``faiss-hnsw`` (an HNSW graph); ``faiss-ivf`` (an
            inverted file); or ``auto``: exact below ``threshold`` items, the inverted file at
            or above (it builds in seconds, where a graph over a million items takes minutes).
        quantize: item storage, ``none``, ``fp16`` or ``int8``.
        threshold: the ``auto`` switch point.
        **params: passed to the chosen class (:class:`ExactIndex`: ``chunk_rows``;
            :class:`FaissIndex`: ``m``, ``ef_construction``, ``ef_search``;
            :class:`FaissIVFIndex`: ``nlist``, ``nprobe``, ``train_size``). With ``auto``,
            parameters that only a class not chosen takes are ignored.

    Returns:
        An :class:`ExactIndex`, :class:`FaissIndex` or :class:`FaissIVFIndex`.

    Raises:
        ConfigError: for an unknown kind, quantize mode or parameter.
    """
    if kind not in INDEX_KINDS:
        raise ConfigError(f"unknown index kind {kind!r}; choose from {', '.join(INDEX_KINDS)}")
    _check_mode(quantize)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)) or threshold < 0:
        raise ConfigError(f"threshold must be a non-negative integer, got {threshold!r}")
    classes = {"exact": ExactIndex, "faiss": FaissIndex, "faiss-hnsw": FaissIndex, "faiss-ivf": FaissIVFIndex}
    accepted = {name: _params_of(cls) for name, cls in classes.items()}
    allowed = set().union(*accepted.values()) if kind == "auto" else accepted[kind]
    unknown = sorted(set(params) - allowed)
    if unknown:
        takes = "; ".join(f"{name} takes {', '.join(sorted(accepted[name]))}"
                          for name in ("exact", "faiss", "faiss-ivf"))
        raise ConfigError(f"unknown index parameter(s) {', '.join(unknown)} for kind {kind!r}; {takes}")
    if kind == "auto":
        kind = "exact" if len(np.asarray(item_vectors)) < threshold else "faiss-ivf"
    cls = classes[kind]
    return cls(item_vectors, quantize=quantize, **{k: v for k, v in params.items() if k in accepted[kind]})
