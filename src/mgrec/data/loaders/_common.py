"""Helpers shared by the built-in loaders: integer vocabularies and feature columns."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mgrec.data.vocab import Vocabulary

__all__ = ["int_vocab", "scatter", "bags", "feature_frame"]


def int_vocab(*arrays: np.ndarray) -> tuple[Vocabulary, np.ndarray]:
    """Vocabulary of the distinct integer ids in ``arrays`` (numeric order).

    Args:
        *arrays: ``int64`` id arrays (e.g. ids from a feature file and from the ratings).

    Returns:
        ``(vocabulary, sorted_ids)``: code ``c`` names ``sorted_ids[c]``, so the codes of any
        id array ``a`` are ``np.searchsorted(sorted_ids, a)``.
    """
    ids = np.unique(np.concatenate([np.asarray(a, dtype=np.int64) for a in arrays]))
    return Vocabulary.from_values(ids), ids


def scatter(codes: np.ndarray, values: np.ndarray, n: int, *, numeric: bool = False) -> np.ndarray:
    """Lay ``values`` out along a vocabulary of size ``n``; rows without a value are missing.

    Args:
        codes: the entity code of each value (distinct).
        values: one value per code.
        n: vocabulary size.
        numeric: build a ``float64`` column (missing ``NaN``) instead of an object one (``None``).

    Returns:
        An array of length ``n``.
    """
    out = np.full(n, np.nan) if numeric else np.full(n, None, dtype=object)
    out[np.asarray(codes, dtype=np.int64)] = values
    return out


def bags(codes: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Group labels by entity code into sorted tuples (repeats kept); ``()`` where none.

    Args:
        codes: entity code of each (entity, label) occurrence.
        labels: the label of each occurrence (``str``).
        n: vocabulary size.

    Returns:
        Object array of length ``n`` holding ``tuple[str, ...]``.
    """
    out = np.empty(n, dtype=object)
    out[:] = [()] * n
    if len(codes) == 0:
        return out
    frame = pd.DataFrame({"code": np.asarray(codes, dtype=np.int64), "label": np.asarray(labels, dtype=object)})
    frame = frame.sort_values(["code", "label"], kind="stable")
    grouped = frame.groupby("code", sort=True)["label"].agg(tuple)
    for code, bag in zip(grouped.index.tolist(), grouped.tolist(), strict=True):  # one step per entity
        out[code] = bag
    return out


def feature_frame(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """A feature frame whose non-float columns stay ``object`` (pandas 3 would infer ``str``,
    turning missing ``None`` labels into NaN).

    Args:
        columns: column name -> array (``float64`` for numeric features, ``object`` otherwise).

    Returns:
        A frame with a ``RangeIndex`` starting at 0.
    """
    return pd.DataFrame({
        name: pd.Series(col, dtype=None if np.asarray(col).dtype.kind == "f" else object)
        for name, col in columns.items()
    })
