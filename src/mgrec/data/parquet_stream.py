"""Stream the large parts of a ``folder:`` dataset (interactions, social links) from Parquet.

A Parquet file is read one record batch at a time (:meth:`pyarrow.parquet.ParquetFile.iter_batches`),
so the text of every row never exists at once: ids become ``int64`` codes into the distinct
ids seen so far, numbers stay typed. Peak memory is the compact result (about 28 bytes per
interaction) plus one batch. Each bad cell raises the same :class:`~mgrec.errors.DataError` as
the text reader, naming the file, the data row (from 1) and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mgrec.errors import DataError

__all__ = ["StreamedTable", "stream_parquet", "BATCH_ROWS"]

#: Rows per record batch.
BATCH_ROWS = 1_000_000
_EPOCH, _SECOND = pd.Timestamp(0, tz="UTC"), pd.Timedelta(seconds=1)
_MISSING = ("", "nan", "NaN", "NA", "null", "None")


@dataclass
class StreamedTable:
    """A streamed file: id columns as codes into their distinct values, numbers as arrays.

    Attributes:
        path: the file.
        n_rows: rows read.
        codes: id column -> ``int64`` row codes into ``uniques[column]``.
        uniques: id column -> object array of distinct ids (``str``), in order of first use.
        numbers: number column -> ``float64`` values (``timestamp``: ``int64`` unix seconds).
    """

    path: Path
    n_rows: int
    codes: dict[str, np.ndarray]
    uniques: dict[str, np.ndarray]
    numbers: dict[str, np.ndarray]

    def error(self, message: str, row: int, field: str) -> DataError:
        """A DataError at 0-based ``row``."""
        return DataError(f"data row {row + 1}: {message}", file=self.path, field=field)


class _IdCodes:
    """Distinct ids in order of first use, growing batch by batch."""

    def __init__(self) -> None:
        self.index = pd.Index([], dtype=object)
        self.parts: list[np.ndarray] = []

    def add(self, ids: np.ndarray) -> np.ndarray:
        local, uniq = pd.factorize(ids)
        known = self.index.get_indexer(uniq)
        new = known < 0
        if new.any():
            known[new] = len(self.index) + np.arange(int(new.sum()))
            self.index = self.index.append(pd.Index(uniq[new], dtype=object))
        self.parts.append(known[local].astype(np.int64))
        return known

    def codes(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(0, np.int64)


def stream_parquet(path: Path, *, ids: tuple[str, ...], numbers: tuple[str, ...],
                   required: tuple[str, ...], batch_rows: int | None = None) -> StreamedTable:
    """Read ``path`` batch by batch.

    Args:
        path: a Parquet file.
        ids: id columns (values become ``str`` ids; missing values are errors).
        numbers: numeric columns (``timestamp`` also takes dates and ISO-8601 text).
        required: columns that must be present; every other column must be in ``ids`` or
            ``numbers``.
        batch_rows: rows per record batch (default :data:`BATCH_ROWS`).

    Raises:
        DataError: unreadable file, missing or unknown column, missing id, bad number.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        names = [str(n).strip() for n in pf.schema_arrow.names]
    except (OSError, ValueError, TypeError, pa.ArrowException) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot read parquet file ({first})", file=path) from None
    names = [n for n in names if n != "__index_level_0__"]
    for name in required:
        if name not in names:
            raise DataError(f"missing column '{name}' (found: {', '.join(names)})", file=path, field=name)
    allowed = ids + numbers
    for name in names:
        if name not in allowed:
            raise DataError(f"unknown column '{name}'; this file takes {', '.join(allowed)} "
                            "(rename a rating or count column to 'weight')", file=path, field=name)
    id_cols = [c for c in ids if c in names]
    num_cols = [c for c in numbers if c in names]
    coders = {c: _IdCodes() for c in id_cols}
    parts: dict[str, list[np.ndarray]] = {c: [] for c in num_cols}
    offset = 0
    try:
        batches = pf.iter_batches(batch_size=batch_rows or BATCH_ROWS, columns=id_cols + num_cols)
        for batch in batches:
            for c in id_cols:
                coders[c].add(_id_text(batch.column(c), path, c, offset))
            for c in num_cols:
                parts[c].append(_number(batch.column(c), path, c, offset))
            offset += batch.num_rows
    except pa.ArrowException as err:
        raise DataError(f"cannot read parquet file ({str(err).splitlines()[0]})", file=path) from None
    return StreamedTable(
        path=path, n_rows=offset,
        codes={c: coders[c].codes() for c in id_cols},
        uniques={c: coders[c].index.to_numpy(dtype=object) for c in id_cols},
        numbers={c: np.concatenate(parts[c]) if parts[c] else np.zeros(0) for c in num_cols},
    )


def _id_text(col: object, path: Path, name: str, offset: int) -> np.ndarray:
    """Ids as ``str`` (integers stored as floats read ``"7"``, not ``"7.0"``)."""
    s = col.to_pandas()  # type: ignore[attr-defined]
    if pd.api.types.is_float_dtype(s):
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isfinite(v).all() and np.all(v == np.round(v)):
            s = pd.Series(v.astype(np.int64))
    text = s.astype(str).str.strip() if not pd.api.types.is_integer_dtype(s) else s.astype(str)
    missing = s.isna().to_numpy() | (text == "").to_numpy()
    if missing.any():
        row = offset + int(np.flatnonzero(missing)[0])
        raise DataError(f"data row {row + 1}: missing value", file=path, field=name)
    return text.to_numpy(dtype=object)


def _number(col: object, path: Path, name: str, offset: int) -> np.ndarray:
    """A numeric column; ``timestamp`` as ``int64`` unix seconds."""
    s = col.to_pandas()  # type: ignore[attr-defined]
    is_time = name == "timestamp"
    if is_time and pd.api.types.is_datetime64_any_dtype(s):
        if s.isna().any():
            raise DataError(f"data row {offset + int(np.flatnonzero(s.isna())[0]) + 1}: missing value",
                            file=path, field=name)
        return ((pd.to_datetime(s, utc=True) - _EPOCH) // _SECOND).to_numpy(dtype=np.int64)
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
    else:  # text cells: numbers, or (timestamps) ISO-8601 date/times
        text = s.astype(object).where(s.notna(), "").astype(str).str.strip()
        v = pd.to_numeric(text.where(~text.isin(_MISSING), None), errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(v) & ~text.isin(_MISSING).to_numpy()
        if is_time and bad.any():
            dt = pd.to_datetime(text[bad], format="ISO8601", utc=True, errors="coerce")
            if dt.isna().any():
                row = int(np.flatnonzero(bad)[np.flatnonzero(dt.isna().to_numpy())[0]])
                raise DataError(f"data row {offset + row + 1}: not unix seconds or an ISO-8601 date/time: "
                                f"{text.iloc[row]!r}", file=path, field=name)
            v[bad] = ((dt - _EPOCH) // _SECOND).to_numpy(dtype=np.float64)
        elif bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"data row {offset + row + 1}: not a number: {text.iloc[row]!r}",
                            file=path, field=name)
    missing = np.isnan(v)
    if missing.any():
        raise DataError(f"data row {offset + int(np.flatnonzero(missing)[0]) + 1}: missing value",
                        file=path, field=name)
    if np.isinf(v).any():
        row = int(np.flatnonzero(np.isinf(v))[0])
        raise DataError(f"data row {offset + row + 1}: not a finite number: {s.iloc[row]!r}",
                        file=path, field=name)
    return np.floor(v).astype(np.int64) if is_time else v
