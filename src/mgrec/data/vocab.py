"""Vocabulary: raw ids (strings) to contiguous integer codes and back."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = ["Vocabulary"]


class Vocabulary:
    """An ordered, duplicate-free set of raw ids with codes ``0 .. len-1``.

    Raw ids are kept as strings, so ``"42"`` from the command line, an HTTP path and a CSV
    file all name the same user. Codes are used everywhere inside the library.

    Args:
        ids: raw ids in code order; converted to ``str``; duplicates are an error.

    Example:
        >>> v = Vocabulary(["u7", "u3"])
        >>> v.index(["u3", "u7"]).tolist()
        [1, 0]
        >>> v.id(1)
        'u3'
    """

    def __init__(self, ids: Iterable[object]) -> None:
        index = pd.Index(_as_str(ids), dtype=object)
        if not index.is_unique:
            dup = index[index.duplicated()][0]
            raise ValueError(f"duplicate id in vocabulary: {dup!r}")
        self._index = index

    @classmethod
    def from_values(cls, values: Iterable[object], *, sort: bool = True) -> Vocabulary:
        """Build from possibly repeated values: sorted (numerically when all are integers)."""
        if not isinstance(values, (np.ndarray, pd.Series, pd.Index)):
            values = list(values)
        uniq = pd.unique(pd.Series(values))
        if sort:
            uniq = _natural_sort(uniq)
        return cls(uniq)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, raw: object) -> bool:
        return str(raw) in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._index.equals(other._index)

    def __repr__(self) -> str:
        head = ", ".join(self._index[:3])
        more = ", ..." if len(self) > 3 else ""
        return f"Vocabulary({len(self)} ids: {head}{more})"

    @property
    def ids(self) -> np.ndarray:
        """All raw ids in code order, as an object array of ``str``."""
        return self._index.to_numpy()

    def index(self, raw: Sequence[object] | np.ndarray, *, missing: str = "error") -> np.ndarray:
        """Codes of raw ids.

        Args:
            raw: raw ids (any type; compared as strings).
            missing: ``"error"`` raises ``KeyError`` naming the first unknown id;
                ``"negative"`` returns -1 for unknown ids.

        Returns:
            ``int64`` array of codes, shaped like ``raw``.
        """
        keys = pd.Index(_as_str(np.asarray(raw, dtype=object).ravel()), dtype=object)
        codes = self._index.get_indexer(keys).astype(np.int64)
        if missing == "error" and (codes < 0).any():
            bad = keys[np.flatnonzero(codes < 0)[0]]
            raise KeyError(f"unknown id {bad!r}")
        return codes.reshape(np.shape(raw))

    def code(self, raw: object) -> int:
        """Code of one raw id; ``KeyError`` if it is unknown."""
        return int(self.index([raw])[0])

    def id(self, code: int) -> str:
        """Raw id of one code."""
        return str(self._index[int(code)])

    def lookup(self, codes: Sequence[int] | np.ndarray) -> np.ndarray:
        """Raw ids of many codes (object array of ``str``)."""
        return self._index.to_numpy()[np.asarray(codes, dtype=np.int64)]

    def subset(self, codes: np.ndarray) -> Vocabulary:
        """A new vocabulary holding only ``codes``, in the given order."""
        return Vocabulary(self.lookup(codes))

    def to_list(self) -> list[str]:
        return [str(x) for x in self._index]


def _as_str(values: Iterable[object]) -> np.ndarray:
    """Object array of ``str`` (vectorised; integers print without a decimal point)."""
    if not isinstance(values, np.ndarray):
        values = np.asarray(list(values), dtype=object)
    if values.dtype.kind in "iu":
        return values.astype(str).astype(object)
    return values.astype(object).astype(str).astype(object)


def _natural_sort(values: np.ndarray) -> np.ndarray:
    """Sort ids numerically when every one parses as an integer, else as strings."""
    strs = _as_str(values)
    nums = pd.to_numeric(pd.Series(strs), errors="coerce")
    if len(strs) and nums.notna().all() and (nums == nums.round()).all():
        order = np.argsort(nums.to_numpy(dtype=np.float64), kind="stable")
    else:
        order = np.argsort(strs.astype(str), kind="stable")
    return strs[order]
