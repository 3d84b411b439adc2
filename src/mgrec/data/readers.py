"""Reading delimited text with errors that name the file, the line and the field.

Loaders read every cell as text first, then parse columns with :func:`parse_ints`,
:func:`parse_floats` and friends. A bad cell becomes one :class:`~mgrec.errors.DataError`
such as ``u.data, line 7, field 'item_id': not an integer: 'x12'``. Line numbers are
1-based file lines, the header included.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd

from mgrec.errors import DataError

__all__ = ["read_table", "parse_ints", "parse_floats", "require_file", "file_line"]

_PANDAS_LINE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def require_file(path: Path) -> Path:
    """Return ``path`` if it is a readable file; otherwise raise a :class:`DataError`."""
    if not path.is_file():
        raise DataError("file not found", file=path)
    return path


def read_table(
    path: Path,
    *,
    sep: str,
    names: list[str] | None = None,
    header: bool = False,
    encoding: str = "utf-8",
    min_fields: int | None = None,
) -> pd.DataFrame:
    """Read a delimited file as strings, checking the field count of every line.

    Args:
        path: the file.
        sep: the field separator (``"\\t"``, ``","``, ``"|"``, ``"::"`` ...).
        names: column names for a file without a header (their count is the expected
            number of fields).
        header: the first line holds the column names.
        encoding: the text encoding (``latin-1`` for ml-100k's ``u.item``).
        min_fields: accept lines with at least this many fields (the rest read as missing).

    Returns:
        A frame of ``str`` cells (missing cells are ``None``) with an ``int64`` column
        ``_line`` holding each row's line number in the file.

    Raises:
        DataError: missing file, undecodable text, or a line with the wrong number of fields.
    """
    require_file(path)
    quoting = csv.QUOTE_MINIMAL if sep == "," else csv.QUOTE_NONE
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            header=0 if header else None,
            names=None if header else names,
            dtype=str,
            keep_default_na=False,
            na_values=[],
            encoding=encoding,
            engine="python" if len(sep) > 1 else "c",
            quoting=quoting,
            skip_blank_lines=True,
            index_col=False,
        )
    except pd.errors.ParserError as err:
        m = _PANDAS_LINE.search(str(err))
        if m:
            raise DataError(
                f"expected {m.group(1)} fields, found {m.group(3)}", file=path, line=int(m.group(2))
            ) from None
        raise DataError(f"cannot parse file ({_first_line(err)})", file=path) from None
    except UnicodeDecodeError as err:
        raise DataError(f"not valid {encoding} text ({err.reason} at byte {err.start})", file=path) from None
    except pd.errors.EmptyDataError:
        raise DataError("file is empty", file=path) from None
    expected = len(frame.columns)
    lines, counts = _scan_lines(path, sep=sep, encoding=encoding, quoted=quoting != csv.QUOTE_NONE)
    if header:
        lines, counts = lines[1:], counts[1:]
    if len(lines) != len(frame):  # a quoted newline or similar: fall back to row order
        start = 2 if header else 1
        lines = np.arange(start, start + len(frame), dtype=np.int64)
        counts = np.full(len(frame), expected, dtype=np.int64)
    frame["_line"] = lines
    low = min_fields if min_fields is not None else expected
    bad = np.flatnonzero((counts < low) | (counts > expected))
    if len(bad):
        first = int(bad[0])
        raise DataError(
            f"expected {expected} fields, found {int(counts[first])}", file=path, line=int(lines[first])
        )
    return frame


def _scan_lines(path: Path, *, sep: str, encoding: str, quoted: bool) -> tuple[np.ndarray, np.ndarray]:
    """Line number and field count of every non-blank line of the file."""
    with open(path, encoding=encoding, newline="") as fh:
        text = fh.read()
    raw_lines = text.split("\n")
    if raw_lines and raw_lines[-1] == "":
        raw_lines.pop()
    numbers = [n + 1 for n, ln in enumerate(raw_lines) if ln.strip("\r\t ") != ""]
    kept = [raw_lines[n - 1].rstrip("\r") for n in numbers]
    if quoted and any('"' in ln for ln in kept):
        counts = [len(row) for row in csv.reader(kept, delimiter=sep)]
    else:
        counts = [ln.count(sep) + 1 for ln in kept]
    return np.asarray(numbers, dtype=np.int64), np.asarray(counts, dtype=np.int64)


def file_line(frame: pd.DataFrame, row: int) -> int | None:
    """The file line of positional row ``row`` of a frame from :func:`read_table`."""
    if "_line" in frame.columns:
        return int(frame["_line"].iloc[row])
    return None


def parse_ints(frame: pd.DataFrame, column: str, path: Path, *, field: str | None = None) -> np.ndarray:
    """Parse a text column as ``int64``; the first bad or missing cell raises a DataError."""
    cells = frame[column]
    values = pd.to_numeric(cells.str.strip(), errors="coerce")
    bad = values.isna() | (values != values.round())
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"not an integer: {cells.iloc[row]!r}", file=path, line=file_line(frame, row), field=field or column
        )
    return values.to_numpy(dtype=np.float64).astype(np.int64)


def parse_floats(
    frame: pd.DataFrame, column: str, path: Path, *, field: str | None = None, allow_missing: bool = False
) -> np.ndarray:
    """Parse a text column as ``float64``. Empty cells are NaN when ``allow_missing``;
    otherwise they, like any unparsable or NaN value, raise a DataError."""
    cells = frame[column].fillna("").str.strip()
    values = pd.to_numeric(cells, errors="coerce")
    missing = cells.isin(["", "nan", "NaN", "NA", "null", "None"])
    bad = values.isna() & ~(missing & allow_missing)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        what = "missing value" if missing.iloc[row] else f"not a number: {frame[column].iloc[row]!r}"
        raise DataError(what, file=path, line=file_line(frame, row), field=field or column)
    return values.to_numpy(dtype=np.float64)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
