"""MovieLens loaders: ml-100k, ml-1m and ml-latest-small (GroupLens formats, read as is)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from mgrec.data.dataset import Dataset, FeatureTable
from mgrec.data.loaders._common import bags, feature_frame, int_vocab, scatter
from mgrec.data.readers import file_line, parse_floats, parse_ints, read_table
from mgrec.errors import DataError

__all__ = ["load_ml100k", "load_ml1m", "load_ml_latest_small"]

logger = logging.getLogger(__name__)

#: ml-1m ``users.dat`` age bucket code -> label (from the ml-1m README).
ML1M_AGES: dict[int, str] = {
    1: "Under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+",
}

#: ml-1m ``users.dat`` occupation code -> name (from the ml-1m README).
ML1M_OCCUPATIONS: tuple[str, ...] = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)

_YEAR_IN_TITLE = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*\d{4})?\)\s*$")


def _check_unique(frame: pd.DataFrame, ids: np.ndarray, path: Path, field: str) -> None:
    """Raise a DataError at the first repeated id of a one-row-per-entity file."""
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise DataError(f"duplicate id {int(ids[row])}", file=path, line=file_line(frame, row), field=field)


def _texts(cells: pd.Series) -> np.ndarray:
    """Stripped text cells as an object array; empty cells become ``None``."""
    stripped = cells.fillna("").str.strip()
    return stripped.where(stripped != "", None).to_numpy(dtype=object)


def _years_from_titles(titles: pd.Series) -> np.ndarray:
    """Release year from a trailing ``(YYYY)`` (or ``(YYYY-YYYY)``) in a title; NaN when absent."""
    years = titles.fillna("").str.extract(_YEAR_IN_TITLE, expand=False)
    return pd.to_numeric(years, errors="coerce").to_numpy(dtype=np.float64)


def _split_genres(
    codes: np.ndarray, cells: pd.Series, n: int, *, missing: str | None = None
) -> np.ndarray:
    """``|``-separated genre cells -> bags; the label ``missing`` (and empty cells) count as none."""
    exploded = cells.fillna("").str.split("|").explode()
    labels = exploded.str.strip()
    keep = (labels != "").to_numpy()
    if missing is not None:
        keep = keep & (labels != missing).to_numpy()
    pos = exploded.index.to_numpy()[keep]
    return bags(np.asarray(codes)[pos], labels.to_numpy(dtype=object)[keep], n)


def _csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """A CSV file with a header that must name ``columns``."""
    frame = read_table(path, sep=",", header=True)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"missing column {missing[0]!r}", file=path, line=1, field=missing[0])
    return frame


def _ratings(
    frame: pd.DataFrame, path: Path, cols: tuple[str, str, str, str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse user, item, rating and timestamp columns of a ratings table (at least one row)."""
    if len(frame) == 0:
        raise DataError("no ratings", file=path)
    user, item, rating, ts = cols
    return (parse_ints(frame, user, path), parse_ints(frame, item, path),
            parse_floats(frame, rating, path), parse_ints(frame, ts, path))


def _interactions(
    users: np.ndarray, user_ids: np.ndarray, items: np.ndarray, item_ids: np.ndarray,
    weights: np.ndarray, stamps: np.ndarray | None,
) -> pd.DataFrame:
    """Interaction frame in source order from raw ids and the sorted id arrays of the vocabularies."""
    out = {
        "user": np.searchsorted(user_ids, users).astype(np.int64),
        "item": np.searchsorted(item_ids, items).astype(np.int64),
        "weight": np.asarray(weights, dtype=np.float32),
    }
    if stamps is not None:
        out["timestamp"] = np.asarray(stamps, dtype=np.int64)
    return pd.DataFrame(out)


# ------------------------------------------------------------------------- ml-100k
def load_ml100k(folder: Path) -> Dataset:
    """MovieLens 100K: ``u.data`` ratings with ``u.user`` demographics and ``u.item`` content.

    User features: ``age`` (numeric), ``gender``, ``occupation``, ``zip`` (categorical; the raw
    zip string, which is alphanumeric for Canadian users). Item features: ``genres`` (multi;
    names from ``u.genre`` whose flag is 1), ``release_year`` (numeric, NaN when the release
    date is empty) and ``title`` (text). Weight is the 1-5 rating; timestamps are unix seconds.

    Args:
        folder: the ``ml-100k`` folder.

    Returns:
        The dataset; vocabularies are the union of the feature files and ``u.data``.

    Raises:
        DataError: a file is missing or malformed.
    """
    data_path, user_path = folder / "u.data", folder / "u.user"
    item_path, genre_path = folder / "u.item", folder / "u.genre"
    ratings = read_table(data_path, sep="\t", names=["user_id", "item_id", "rating", "timestamp"])
    users, items, weights, stamps = _ratings(ratings, data_path, ("user_id", "item_id", "rating", "timestamp"))

    genre_tab = read_table(genre_path, sep="|", names=["name", "genre_id"])
    genre_ids = parse_ints(genre_tab, "genre_id", genre_path)
    if sorted(genre_ids.tolist()) != list(range(len(genre_ids))):
        raise DataError("genre ids must be 0..n-1, each once", file=genre_path, field="genre_id")
    genre_names = genre_tab["name"].str.strip().to_numpy(dtype=object)[np.argsort(genre_ids)]

    ucols = ["user_id", "age", "gender", "occupation", "zip"]
    utab = read_table(user_path, sep="|", names=ucols)
    u_ids = parse_ints(utab, "user_id", user_path)
    _check_unique(utab, u_ids, user_path, "user_id")
    ages = parse_floats(utab, "age", user_path)

    flag_cols = [f"genre_{i}" for i in range(len(genre_names))]
    icols = ["item_id", "title", "release_date", "video_release_date", "url", *flag_cols]
    itab = read_table(item_path, sep="|", names=icols, encoding="latin-1")
    i_ids = parse_ints(itab, "item_id", item_path)
    _check_unique(itab, i_ids, item_path, "item_id")
    flags = np.stack([parse_ints(itab, c, item_path, field=genre_names[k]) for k, c in enumerate(flag_cols)], 1)
    if len(flags) and not np.isin(flags, (0, 1)).all():
        row, col = (int(x[0]) for x in np.nonzero(~np.isin(flags, (0, 1))))
        raise DataError(f"genre flag must be 0 or 1, got {flags[row, col]}", file=item_path,
                        line=file_line(itab, row), field=str(genre_names[col]))
    dates = itab["release_date"].fillna("").str.strip()
    years = pd.to_numeric(dates.str.extract(r"(\d{4})$", expand=False), errors="coerce")
    bad = (dates != "") & years.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"no year in release date {dates.iloc[row]!r}", file=item_path,
                        line=file_line(itab, row), field="release_date")

    user_vocab, user_ids = int_vocab(u_ids, users)
    item_vocab, item_ids = int_vocab(i_ids, items)
    nu, ni = len(user_vocab), len(item_vocab)
    uc, ic = np.searchsorted(user_ids, u_ids), np.searchsorted(item_ids, i_ids)
    rows, genre_pos = np.nonzero(flags == 1)
    user_features = FeatureTable(
        feature_frame({
            "age": scatter(uc, ages, nu, numeric=True),
            "gender": scatter(uc, _texts(utab["gender"]), nu),
            "occupation": scatter(uc, _texts(utab["occupation"]), nu),
            "zip": scatter(uc, _texts(utab["zip"]), nu),
        }),
        {"age": "numeric", "gender": "categorical", "occupation": "categorical", "zip": "categorical"},
    )
    item_features = FeatureTable(
        feature_frame({
            "title": scatter(ic, _texts(itab["title"]), ni),
            "genres": bags(ic[rows], genre_names[genre_pos], ni),
            "release_year": scatter(ic, years.to_numpy(dtype=np.float64), ni, numeric=True),
        }),
        {"title": "text", "genres": "multi", "release_year": "numeric"},
    )
    meta = {"weight_kind": "rating", "rating_scale": [1.0, 5.0],
            "source_files": ["u.data", "u.user", "u.item", "u.genre"], "genres": [str(g) for g in genre_names]}
    return Dataset(
        "ml-100k", user_vocab, item_vocab,
        _interactions(users, user_ids, items, item_ids, weights, stamps),
        user_features, item_features, None, meta,
    )


# -------------------------------------------------------------------------- ml-1m
def _coded(frame: pd.DataFrame, column: str, path: Path, table: dict[int, str]) -> np.ndarray:
    """Map an integer code column through ``table``; unknown codes raise a DataError."""
    codes = parse_ints(frame, column, path)
    labels = pd.Series(codes).map(table)
    if labels.isna().any():
        row = int(np.flatnonzero(labels.isna().to_numpy())[0])
        raise DataError(f"unknown {column} code {int(codes[row])}", file=path,
                        line=file_line(frame, row), field=column)
    return labels.to_numpy(dtype=object)


def load_ml1m(folder: Path) -> Dataset:
    """MovieLens 1M: ``ratings.dat``, ``users.dat`` and ``movies.dat`` (``::``-separated).

    User features: ``gender``, ``age`` (the bucket label, e.g. ``"25-34"``), ``occupation``
    (name from the README's code list) and ``zip`` (all categorical). Item features:
    ``genres`` (multi), ``year`` (numeric, from the title) and ``title`` (text).

    Args:
        folder: the ``ml-1m`` folder.

    Returns:
        The dataset; vocabularies are the union of users/movies files and the ratings.

    Raises:
        DataError: a file is missing (the shared copy lacks ``ratings.dat``) or malformed.
    """
    rating_path, user_path, movie_path = folder / "ratings.dat", folder / "users.dat", folder / "movies.dat"
    if not rating_path.is_file():
        raise DataError(
            "file not found; ml-1m ratings.dat is not in the shared data (24.6 MB) - "
            "extract it from GroupLens' ml-1m.zip into this folder",
            file=rating_path,
        )
    ratings = read_table(rating_path, sep="::", names=["user_id", "movie_id", "rating", "timestamp"])
    users, items, weights, stamps = _ratings(ratings, rating_path, ("user_id", "movie_id", "rating", "timestamp"))

    utab = read_table(user_path, sep="::", names=["user_id", "gender", "age", "occupation", "zip"])
    u_ids = parse_ints(utab, "user_id", user_path)
    _check_unique(utab, u_ids, user_path, "user_id")
    ages = _coded(utab, "age", user_path, ML1M_AGES)
    jobs = _coded(utab, "occupation", user_path, dict(enumerate(ML1M_OCCUPATIONS)))

    mtab = read_table(movie_path, sep="::", names=["movie_id", "title", "genres"], encoding="latin-1")
    m_ids = parse_ints(mtab, "movie_id", movie_path)
    _check_unique(mtab, m_ids, movie_path, "movie_id")

    user_vocab, user_ids = int_vocab(u_ids, users)
    item_vocab, item_ids = int_vocab(m_ids, items)
    nu, ni = len(user_vocab), len(item_vocab)
    uc, ic = np.searchsorted(user_ids, u_ids), np.searchsorted(item_ids, m_ids)
    user_features = FeatureTable(
        feature_frame({
            "gender": scatter(uc, _texts(utab["gender"]), nu),
            "age": scatter(uc, ages, nu),
            "occupation": scatter(uc, jobs, nu),
            "zip": scatter(uc, _texts(utab["zip"]), nu),
        }),
        {"gender": "categorical", "age": "categorical", "occupation": "categorical", "zip": "categorical"},
    )
    item_features = FeatureTable(
        feature_frame({
            "title": scatter(ic, _texts(mtab["title"]), ni),
            "genres": _split_genres(ic, mtab["genres"], ni),
            "year": scatter(ic, _years_from_titles(mtab["title"]), ni, numeric=True),
        }),
        {"title": "text", "genres": "multi", "year": "numeric"},
    )
    meta = {"weight_kind": "rating", "rating_scale": [1.0, 5.0],
            "source_files": ["ratings.dat", "users.dat", "movies.dat"]}
    return Dataset(
        "ml-1m", user_vocab, item_vocab,
        _interactions(users, user_ids, items, item_ids, weights, stamps),
        user_features, item_features, None, meta,
    )


# ----------------------------------------------------------------- ml-latest-small
def load_ml_latest_small(folder: Path) -> Dataset:
    """MovieLens latest-small: ``ratings.csv`` with ``movies.csv`` and ``tags.csv``.

    Item features: ``genres`` (multi; ``(no genres listed)`` is missing), ``year`` (numeric,
    from the title; NaN for the few titles without one), ``title`` (text) and ``tags`` (multi:
    every tag application, lowercased and stripped, so a tag given by three users counts three
    times). There are no user features. Weight is the half-star rating 0.5-5.

    Args:
        folder: the ``ml-latest-small`` folder.

    Returns:
        The dataset; the item vocabulary is ``movies.csv`` plus any movie only rated.

    Raises:
        DataError: a file is missing or malformed.
    """
    rating_path, movie_path, tag_path = folder / "ratings.csv", folder / "movies.csv", folder / "tags.csv"
    ratings = _csv(rating_path, ("userId", "movieId", "rating", "timestamp"))
    users, items, weights, stamps = _ratings(ratings, rating_path, ("userId", "movieId", "rating", "timestamp"))
    movies = _csv(movie_path, ("movieId", "title", "genres"))
    m_ids = parse_ints(movies, "movieId", movie_path)
    _check_unique(movies, m_ids, movie_path, "movieId")
    tags = _csv(tag_path, ("movieId", "tag"))
    t_items = parse_ints(tags, "movieId", tag_path)
    t_labels = tags["tag"].fillna("").str.strip().str.lower()

    user_vocab, user_ids = int_vocab(users)
    item_vocab, item_ids = int_vocab(m_ids, items)
    ni = len(item_vocab)
    ic = np.searchsorted(item_ids, m_ids)
    pos = np.searchsorted(item_ids, t_items).clip(max=ni - 1)
    known = (item_ids[pos] == t_items) & (t_labels != "").to_numpy()
    dropped = int((~known).sum())
    if dropped:
        logger.warning("%s: dropped %d tag rows for unknown movies or empty tags", tag_path, dropped)
    item_features = FeatureTable(
        feature_frame({
            "title": scatter(ic, _texts(movies["title"]), ni),
            "genres": _split_genres(ic, movies["genres"], ni, missing="(no genres listed)"),
            "year": scatter(ic, _years_from_titles(movies["title"]), ni, numeric=True),
            "tags": bags(pos[known], t_labels.to_numpy(dtype=object)[known], ni),
        }),
        {"title": "text", "genres": "multi", "year": "numeric", "tags": "multi"},
    )
    meta = {"weight_kind": "rating", "rating_scale": [0.5, 5.0],
            "source_files": ["ratings.csv", "movies.csv", "tags.csv"], "tag_rows_dropped": dropped}
    return Dataset(
        "ml-latest-small", user_vocab, item_vocab,
        _interactions(users, user_ids, items, item_ids, weights, stamps),
        None, item_features, None, meta,
    )
