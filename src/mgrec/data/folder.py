"""Load a user's own data from a folder (``mgrec ... --dataset folder:PATH``).

The folder holds one file per part; each part may be ``.csv``, ``.tsv`` or ``.parquet``::

    interactions.*   user_id, item_id[, timestamp][, weight]     (required)
    users.*          user_id, <feature columns>                  (optional)
    items.*          item_id, <feature columns>                  (optional; a|b|c = multi-valued)
    social.*         user_id, friend_id[, weight]                (optional; directed links)
    schema.json      {"users": {"col": kind}, "items": {"col": kind}}   (optional)

Feature kinds are inferred (see :func:`infer_kind`) unless ``schema.json`` or the
``overrides`` argument names them. Every bad cell raises a :class:`~mgrec.errors.DataError`
naming the file, the line (``data row N`` for parquet, counting from 1 without the header)
and the field. The full format is described in ``docs/data-format.md``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mgrec.data.dataset import FEATURE_KINDS, Dataset, FeatureTable, SocialGraph
from mgrec.data.parquet_stream import StreamedTable, stream_parquet
from mgrec.data.readers import parse_floats, read_table
from mgrec.data.vocab import Vocabulary
from mgrec.errors import ConfigError, DataError, MgrecError

__all__ = ["load_folder", "infer_kind", "MISSING", "SUFFIXES"]

log = logging.getLogger(__name__)

#: File name endings accepted for every part, in the order they are looked for.
SUFFIXES = (".csv", ".tsv", ".parquet")
#: Cell values read as missing (after stripping blanks); the same set ``parse_floats`` uses.
MISSING = ("", "nan", "NaN", "NA", "null", "None")
#: A column is ``multi`` when at least this share of its non-missing cells contain ``|``.
MULTI_SHARE = 0.1
#: A column is ``text`` when its mean cell length exceeds this and most cells hold a space.
TEXT_MIN_MEAN_LEN = 30.0
#: Timestamps above this look like milliseconds (year 5138 in seconds); a warning is logged.
_MS_HINT = 1e11
_EPOCH, _SECOND = pd.Timestamp(0, tz="UTC"), pd.Timedelta(seconds=1)

@dataclass(frozen=True)
class _Table:
    """One file read as text cells, with a ``_line`` column (file line or data row)."""

    path: Path
    frame: pd.DataFrame
    is_text: bool

    def error(self, message: str, row: int | None = None, field: str | None = None) -> DataError:
        """A DataError located at positional ``row`` (file line for text, data row for parquet)."""
        if row is None:
            return DataError(message, file=self.path, field=field)
        line = int(self.frame["_line"].iloc[row])
        if self.is_text:
            return DataError(message, file=self.path, line=line, field=field)
        return DataError(f"data row {line}: {message}", file=self.path, field=field)

    @property
    def columns(self) -> list[str]:
        return [c for c in self.frame.columns if c != "_line"]

    def cells(self, column: str) -> pd.Series:
        """Stripped text of a column; missing cells become ``""``."""
        return self.frame[column].fillna("").astype(str).str.strip()


def load_folder(path: Path, *, overrides: dict[str, dict[str, str]] | None = None) -> Dataset:
    """Read a dataset folder into a :class:`Dataset`.

    Args:
        path: the folder.
        overrides: feature kinds by part and column, e.g. ``{"items": {"year": "numeric"}}``;
            they win over ``schema.json`` and over inference.

    Returns:
        The dataset named ``folder:<path>``; ``meta`` records the source files, the weight kind and
        the feature kinds used.

    Raises:
        DataError: missing or malformed files, schema.json errors.
        ConfigError: an unknown part or kind in ``overrides``.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError("dataset folder not found", file=path)
    schema_path = path / "schema.json"
    schema = _load_schema(schema_path)
    given = _check_schema(overrides or {}, _config_error)

    inter_path = _find(path, "interactions")
    if inter_path is None:
        names = ", ".join(f"interactions{s}" for s in SUFFIXES)
        raise DataError(f"no interactions file; expected one of {names}", file=path)
    # Parquet is streamed batch by batch (ids as codes, numbers typed); text is read whole
    inter: _Table | StreamedTable
    if _is_parquet(inter_path):
        inter = stream_parquet(inter_path, ids=("user_id", "item_id"), numbers=("timestamp", "weight"),
                               required=("user_id", "item_id"))
        if inter.n_rows == 0:
            raise DataError("no interactions: the file has a header but no rows", file=inter_path)
        inter_users, inter_items = inter.uniques["user_id"], inter.uniques["item_id"]
    else:
        inter = _open(path, "interactions", ("user_id", "item_id"), ("timestamp", "weight"))
        assert inter is not None
        if len(inter.frame) == 0:
            raise inter.error("no interactions: the file has a header but no rows")
        inter_users, inter_items = _ids(inter, "user_id"), _ids(inter, "item_id")
    user_tab = _open(path, "users", ("user_id",), None)
    item_tab = _open(path, "items", ("item_id",), None)
    kinds: dict[str, dict[str, str]] = {}
    for part, tab, id_col in (("users", user_tab, "user_id"), ("items", item_tab, "item_id")):
        _check_names(schema.get(part, {}), part, tab, id_col,
                     lambda msg, key: DataError(msg, file=schema_path, field=key))
        _check_names(given.get(part, {}), part, tab, id_col, _config_error)
        kinds[part] = {**schema.get(part, {}), **given.get(part, {})}

    users = _vocab(inter_users, user_tab, "user_id")
    items = _vocab(inter_items, item_tab, "item_id")
    if isinstance(inter, StreamedTable):
        frame = pd.DataFrame({"user": users.index(inter_users)[inter.codes["user_id"]],
                              "item": items.index(inter_items)[inter.codes["item_id"]]})
        has_weight = "weight" in inter.numbers
        weight = inter.numbers["weight"] if has_weight else np.ones(len(frame))
        frame["weight"] = weight.astype(np.float32)
        if "timestamp" in inter.numbers:
            frame["timestamp"] = inter.numbers["timestamp"]
            _warn_ms(inter.path, frame["timestamp"].to_numpy())
    else:
        frame = pd.DataFrame({"user": users.index(inter_users), "item": items.index(inter_items)})
        has_weight = "weight" in inter.columns
        weight = _floats(inter, "weight") if has_weight else np.ones(len(frame))
        frame["weight"] = weight.astype(np.float32)
        if "timestamp" in inter.columns:
            frame["timestamp"] = _timestamps(inter)

    user_features = _features(user_tab, "user_id", users, kinds["users"])
    item_features = _features(item_tab, "item_id", items, kinds["items"])
    social_path = _find(path, "social")
    social_tab: _Table | StreamedTable | None
    if _is_parquet(social_path):
        assert social_path is not None
        social_tab = stream_parquet(social_path, ids=("user_id", "friend_id"), numbers=("weight",),
                                    required=("user_id", "friend_id"))
        social = _social_streamed(social_tab, users)
    else:
        social_tab = _open(path, "social", ("user_id", "friend_id"), ("weight",))
        social = _social(social_tab, users) if social_tab is not None else None
    files = [tab.path.name for tab in (inter, user_tab, item_tab, social_tab) if tab is not None]
    feature_kinds = {part: dict(ft.kinds) if ft is not None else {}
                     for part, ft in (("users", user_features), ("items", item_features))}
    meta = {"source": str(path), "source_files": files, "feature_kinds": feature_kinds,
            "weight_kind": "weight" if has_weight else "implicit"}
    ds = Dataset(f"folder:{path}", users, items, frame, user_features, item_features, social, meta)
    log.info("loaded %r", ds)
    return ds


def infer_kind(cells: pd.Series) -> str:
    """Guess the kind of a feature column from its text cells.

    Rules, on the non-missing cells: all finite numbers -> ``numeric``; at least
    :data:`MULTI_SHARE` of cells contain ``|`` -> ``multi``; mean length above
    :data:`TEXT_MIN_MEAN_LEN` with a space in at least half the cells -> ``text``; otherwise
    ``categorical`` (also for a column with no values at all).

    Args:
        cells: the column as text (missing cells are ``None``/NaN or one of :data:`MISSING`).

    Returns:
        One of :data:`~mgrec.data.dataset.FEATURE_KINDS`.
    """
    s = cells.fillna("").astype(str).str.strip()
    present = s[~s.isin(MISSING)]
    if len(present) == 0:
        return "categorical"
    nums = pd.to_numeric(present, errors="coerce").to_numpy(dtype=np.float64)
    if np.isfinite(nums).all():
        return "numeric"
    if present.str.contains("|", regex=False).mean() >= MULTI_SHARE:
        return "multi"
    spaced = present.str.contains(" ", regex=False).mean()
    if present.str.len().mean() > TEXT_MIN_MEAN_LEN and spaced >= 0.5:
        return "text"
    return "categorical"


# ------------------------------------------------------------------ files
def _find(folder: Path, stem: str) -> Path | None:
    """The one ``<stem>.csv|.tsv|.parquet`` file, or ``None``."""
    found = [folder / f"{stem}{s}" for s in SUFFIXES if (folder / f"{stem}{s}").is_file()]
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise DataError(f"more than one {stem} file ({names}); keep one", file=folder)
    return found[0] if found else None


def _is_parquet(path: Path | None) -> bool:
    return path is not None and path.suffix.lower() == ".parquet"


def _open(
    folder: Path, stem: str, required: tuple[str, ...], optional: tuple[str, ...] | None
) -> _Table | None:
    """Read ``<stem>.csv|.tsv|.parquet`` if present; ``optional=None`` allows any column."""
    found = _find(folder, stem)
    if found is None:
        return None
    tab = _read(found)
    _check_columns(tab, required, tuple(tab.columns) if optional is None else optional)
    return tab


def _read(path: Path) -> _Table:
    if path.suffix.lower() == ".parquet":
        return _Table(path, _read_parquet(path), is_text=False)
    frame = read_table(path, sep="," if path.suffix.lower() == ".csv" else "\t", header=True)
    frame.columns = [c if c == "_line" else str(c).lstrip("\ufeff").strip()
                     for c in frame.columns]
    return _Table(path, frame, is_text=True)


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow as pa

    try:
        raw = pd.read_parquet(path)
    except (OSError, ValueError, TypeError, pa.ArrowException) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot read parquet file ({first})", file=path) from None
    cols = {str(name).strip(): _as_text(raw[name]) for name in raw.columns}
    frame = pd.DataFrame(cols, index=pd.RangeIndex(len(raw)), dtype=object)
    frame["_line"] = np.arange(1, len(raw) + 1, dtype=np.int64)
    return frame


def _as_text(col: pd.Series) -> np.ndarray:
    """Typed parquet cells as the text a CSV would hold (lists joined with ``|``)."""
    if pd.api.types.is_datetime64_any_dtype(col):
        secs = (pd.to_datetime(col, utc=True) - _EPOCH) // _SECOND
        col = pd.Series(secs.to_numpy(dtype=np.float64, na_value=np.nan))
    if pd.api.types.is_float_dtype(col):
        vals = col.to_numpy(dtype=np.float64, na_value=np.nan)
        ok = np.isfinite(vals)
        if np.all(vals[ok] == np.round(vals[ok])):  # integers stored as float: "7", not "7.0"
            text = np.where(ok, vals, 0).astype(np.int64).astype(str).astype(object)
            text[~ok] = None
            return text
    if col.dtype == object and col.map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
        return np.array(["|".join(str(x) for x in v) if isinstance(v, (list, tuple, np.ndarray))
                         else None if pd.isna(v) else str(v) for v in col.tolist()], dtype=object)
    text = col.astype(str).to_numpy(dtype=object)
    text[col.isna().to_numpy()] = None
    return text


def _check_columns(tab: _Table, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    cols = tab.columns
    line = 1 if tab.is_text else None
    for name in required:
        if name not in cols:
            raise DataError(f"missing column '{name}' (found: {', '.join(cols)})",
                            file=tab.path, line=line, field=name)
    for name in cols:
        if name not in required + optional:
            allowed = ", ".join(required + optional)
            raise DataError(f"unknown column '{name}'; this file takes {allowed} "
                            "(rename a rating or count column to 'weight')",
                            file=tab.path, line=line, field=name)


# ------------------------------------------------------------------ cells
def _ids(tab: _Table, column: str) -> np.ndarray:
    cells = tab.cells(column)
    empty = (cells == "").to_numpy()
    if empty.any():
        raise tab.error("missing value", int(np.flatnonzero(empty)[0]), column)
    return cells.to_numpy(dtype=object)


def _floats(tab: _Table, column: str, *, allow_missing: bool = False) -> np.ndarray:
    try:
        values = parse_floats(tab.frame, column, tab.path, allow_missing=allow_missing)
    except DataError as err:
        if tab.is_text or err.line is None:
            raise
        raise DataError(f"data row {err.line}: {err.message}", file=err.file,
                        field=err.field) from None
    bad = np.isinf(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise tab.error(f"not a finite number: {tab.frame[column].iloc[row]!r}", row, column)
    return values


def _timestamps(tab: _Table) -> np.ndarray:
    """Integer unix seconds, or ISO-8601 date/times (naive ones read as UTC), as ``int64``."""
    cells = tab.cells("timestamp")
    missing = cells.isin(MISSING).to_numpy()
    if missing.any():
        raise tab.error("missing value", int(np.flatnonzero(missing)[0]), "timestamp")
    nums = pd.to_numeric(cells, errors="coerce").to_numpy(dtype=np.float64)
    is_num = np.isfinite(nums)
    out = np.zeros(len(cells), dtype=np.int64)
    out[is_num] = np.floor(nums[is_num]).astype(np.int64)
    if not is_num.all():
        dt = pd.to_datetime(cells[~is_num], format="ISO8601", utc=True, errors="coerce")
        bad = dt.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(~is_num)[np.flatnonzero(bad)[0]])
            raise tab.error(f"not unix seconds or an ISO-8601 date/time: {cells.iloc[row]!r}",
                            row, "timestamp")
        out[~is_num] = ((dt - _EPOCH) // _SECOND).to_numpy(dtype=np.int64)
    _warn_ms(tab.path, out)
    return out


def _warn_ms(path: Path, seconds: np.ndarray) -> None:
    if len(seconds) and np.abs(seconds).max() > _MS_HINT:
        log.warning("%s: timestamps reach %d; they look like milliseconds, not seconds",
                    path, int(np.abs(seconds).max()))


# --------------------------------------------------------------- features
def _vocab(inter_ids: np.ndarray, tab: _Table | None, column: str) -> Vocabulary:
    file_ids = _ids(tab, column) if tab is not None else np.empty(0, dtype=object)
    return Vocabulary.from_values(np.concatenate([inter_ids, file_ids]))


def _features(
    tab: _Table | None, id_col: str, vocab: Vocabulary, kinds: Mapping[str, str]
) -> FeatureTable | None:
    """Feature columns of a users/items file, one row per vocabulary code (missing elsewhere)."""
    if tab is None:
        return None
    ids = _ids(tab, id_col)
    dup = pd.Series(ids).duplicated(keep="first").to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(ids == ids[row])[0])
        line = int(tab.frame["_line"].iloc[first])
        where = f"line {line}" if tab.is_text else f"data row {line}"
        raise tab.error(f"duplicate {id_col} {ids[row]!r} (first at {where})", row, id_col)
    codes, n = vocab.index(ids), len(vocab)
    data: dict[str, object] = {}
    used: dict[str, str] = {}
    for name in (c for c in tab.columns if c != id_col):
        kind = used[name] = kinds.get(name) or infer_kind(tab.frame[name])
        if kind == "numeric":
            data[name] = full = np.full(n, np.nan, dtype=np.float64)
            full[codes] = _floats(tab, name, allow_missing=True)
            continue
        cells = tab.cells(name)
        missing = cells.isin(MISSING).to_numpy()
        empty: object = () if kind == "multi" else None
        out: list[object] = [empty] * n
        for code, cell, miss in zip(codes.tolist(), cells.tolist(), missing.tolist(), strict=True):
            if not miss:
                out[code] = (tuple(t.strip() for t in cell.split("|") if t.strip())
                             if kind == "multi" else cell)
        data[name] = pd.Series(out, dtype=object)
    if not used:
        return None
    log.info("%s features: %s", tab.path.name, ", ".join(f"{k}:{v}" for k, v in used.items()))
    return FeatureTable(pd.DataFrame(data, index=pd.RangeIndex(n)), used)


def _social(tab: _Table, users: Vocabulary) -> SocialGraph:
    ids = {col: _ids(tab, col) for col in ("user_id", "friend_id")}
    codes = {col: users.index(v, missing="negative") for col, v in ids.items()}
    bad = [(int(np.flatnonzero(c < 0)[0]), col) for col, c in codes.items() if (c < 0).any()]
    if bad:
        row, col = min(bad)
        raise tab.error(f"unknown user {ids[col][row]!r} "
                        "(in neither the interactions nor the users file)", row, col)
    weight = _floats(tab, "weight") if "weight" in tab.columns else np.ones(len(tab.frame))
    return SocialGraph(codes["user_id"], codes["friend_id"], weight.astype(np.float32))


def _social_streamed(tab: StreamedTable, users: Vocabulary) -> SocialGraph:
    codes: dict[str, np.ndarray] = {}
    bad = []
    for col in ("user_id", "friend_id"):
        mapped = users.index(tab.uniques[col], missing="negative")
        codes[col] = mapped[tab.codes[col]]
        if (codes[col] < 0).any():
            bad.append((int(np.flatnonzero(codes[col] < 0)[0]), col))
    if bad:
        row, col = min(bad)
        name = tab.uniques[col][tab.codes[col][row]]
        raise tab.error(f"unknown user {name!r} (in neither the interactions nor the users file)", row, col)
    weight = tab.numbers.get("weight", np.ones(tab.n_rows))
    return SocialGraph(codes["user_id"], codes["friend_id"], weight.astype(np.float32))


# ----------------------------------------------------------------- schema
def _load_schema(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"not valid JSON ({err.msg})", file=path, line=err.lineno) from None
    except UnicodeDecodeError:
        raise DataError("not valid utf-8 text", file=path) from None

    return _check_schema(obj, lambda message, key: DataError(message, file=path, field=key))


def _config_error(message: str, key: str | None) -> MgrecError:
    where = "" if key is None else f", key {key!r}"
    return ConfigError(f"feature kind overrides{where}: {message}")


_Fail = Callable[[str, str | None], MgrecError]


def _check_schema(obj: object, fail: _Fail) -> dict[str, dict[str, str]]:
    """Validate ``{"users"|"items": {column: kind}}``; ``fail(message, key)`` builds the error."""
    if not isinstance(obj, dict):
        raise fail("expected an object such as {\"items\": {\"genres\": \"multi\"}}", None)
    out: dict[str, dict[str, str]] = {}
    for part, cols in obj.items():
        if part not in ("users", "items"):
            raise fail(f"unknown key {part!r}; use 'users' or 'items'", str(part))
        if not isinstance(cols, dict):
            raise fail("expected an object mapping column names to kinds", part)
        for name, kind in cols.items():
            if kind not in FEATURE_KINDS:
                raise fail(f"unknown kind {kind!r}; use one of {', '.join(FEATURE_KINDS)}",
                           f"{part}.{name}")
        out[part] = {str(k): str(v) for k, v in cols.items()}
    return out


def _check_names(
    names: Mapping[str, str], part: str, tab: _Table | None, id_col: str, fail: _Fail
) -> None:
    """Every column a schema names must be a feature column of that part's file."""
    if not names:
        return
    if tab is None:
        raise fail(f"names columns of '{part}', but the folder has no {part} file", part)
    features = [c for c in tab.columns if c != id_col]
    for name in names:
        if name not in features:
            raise fail(f"{tab.path.name} has no feature column {name!r} "
                       f"(features: {', '.join(features)})", f"{part}.{name}")
