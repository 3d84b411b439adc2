"""Train / validation / test splits of a dataset's interactions, and their files.

Protocols (:data:`PROTOCOLS`): ``random`` is RecBole's ``RS`` + ``RO`` + ``group_by: user``
(:func:`ratio_counts`); ``loo`` holds out each user's last and second last interaction in
time order; ``temporal`` cuts the time line once, globally. A saved :class:`Split` is a folder
of TSV files with *raw* ids (readable by other libraries) and a ``split.json`` with their sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mgrec.data.dataset import Dataset
from mgrec.data.readers import parse_floats, parse_ints, read_table, require_file
from mgrec.errors import ConfigError, DataError
from mgrec.io import atomic_dir, atomic_write_json, sha256_file

__all__ = ["PROTOCOLS", "PARTS", "SPLIT_FORMAT_VERSION", "Split", "make_split", "ratio_counts"]

logger = logging.getLogger(__name__)

#: The split protocols :func:`make_split` knows.
PROTOCOLS = ("random", "loo", "temporal")
#: The parts of a split, in order.
PARTS = ("train", "valid", "test")
#: Version of the on-disk layout written by :meth:`Split.save`.
SPLIT_FORMAT_VERSION = 1

_MANIFEST = "split.json"
_MANIFEST_KEYS = ("dataset", "protocol", "seed", "ratios", "columns", "counts", "sha256")


@dataclass(frozen=True, eq=False)
class Split:
    """A dataset's interactions cut into train, validation and test parts.

    Args:
        train: training interactions (same columns and codes as ``Dataset.interactions``).
        valid: validation interactions.
        test: test interactions.
        protocol: one of :data:`PROTOCOLS`.
        seed: the seed the split was made with (only ``random`` uses it).
        ratios: the normalised train / validation / test ratios.
    """

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    protocol: str
    seed: int
    ratios: tuple[float, float, float]

    def parts(self) -> dict[str, pd.DataFrame]:
        """The three frames keyed by :data:`PARTS`."""
        return {"train": self.train, "valid": self.valid, "test": self.test}

    def summary(self) -> dict[str, Any]:
        """Sizes and coverage of the three parts.

        Returns:
            A JSON-ready dict: ``counts`` and ``fractions`` of rows per part, distinct
            ``users`` and ``items`` per part, ``cold_test_users`` / ``cold_test_items`` (in
            test but never in train), and per-part ``time`` ranges when there are timestamps.
        """
        parts = self.parts()
        total = sum(len(f) for f in parts.values())
        test_users = np.unique(self.test["user"].to_numpy())
        test_items = np.unique(self.test["item"].to_numpy())
        out: dict[str, Any] = {
            "protocol": self.protocol,
            "seed": self.seed,
            "ratios": list(self.ratios),
            "counts": {k: int(len(f)) for k, f in parts.items()},
            "fractions": {k: (len(f) / total if total else 0.0) for k, f in parts.items()},
            "users": {k: int(f["user"].nunique()) for k, f in parts.items()},
            "items": {k: int(f["item"].nunique()) for k, f in parts.items()},
            "cold_test_users": int((~np.isin(test_users, self.train["user"].to_numpy())).sum()),
            "cold_test_items": int((~np.isin(test_items, self.train["item"].to_numpy())).sum()),
        }
        if "timestamp" in self.train.columns:
            out["time"] = {
                k: ([int(f["timestamp"].min()), int(f["timestamp"].max())] if len(f) else None)
                for k, f in parts.items()
            }
        return out

    def save(self, path: Path, dataset: Dataset) -> None:
        """Write the split as ``train.tsv``, ``valid.tsv``, ``test.tsv`` and ``split.json``.

        The TSV files have a header ``user_id, item_id, weight[, timestamp]`` and hold raw
        ids from ``dataset``'s vocabularies. The folder is written atomically: readers see
        the old folder or the complete new one, never a half split.

        Args:
            path: the folder to create (replaced whole if it exists).
            dataset: the dataset the split was made from (its vocabularies give raw ids).

        Raises:
            DataError: a raw id holds a tab or a line break.
        """
        _check_tsv_ids(dataset)
        blobs = {f"{part}.tsv": _to_tsv(frame, dataset) for part, frame in self.parts().items()}
        manifest = {
            "format_version": SPLIT_FORMAT_VERSION,
            "dataset": dataset.name,
            "protocol": self.protocol,
            "seed": int(self.seed),
            "ratios": list(self.ratios),
            "columns": _raw_columns(dataset),
            "counts": {part: int(len(frame)) for part, frame in self.parts().items()},
            "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()},
        }
        with atomic_dir(Path(path)) as tmp:
            for name, data in blobs.items():
                (tmp / name).write_bytes(data)
            atomic_write_json(tmp / _MANIFEST, manifest)
        logger.info("saved %s split of %s to %s", self.protocol, dataset.name, path)

    @classmethod
    def load(cls, path: Path, dataset: Dataset) -> Split:
        """Read a split written by :meth:`save` and map its raw ids to ``dataset``'s codes.

        Args:
            path: the split folder.
            dataset: the dataset the split belongs to (its name must match the manifest).

        Returns:
            The split, with frames equal to the ones that were saved.

        Raises:
            DataError: a missing or malformed file, a file whose sha256 no longer matches the
                manifest ("was modified"), another dataset's split, or an id the dataset does
                not know (with file, line and field).
        """
        manifest = _read_manifest(require_file(Path(path) / _MANIFEST), dataset)
        frames = {}
        for part in PARTS:
            file = require_file(Path(path) / f"{part}.tsv")
            expected, actual = manifest["sha256"].get(f"{part}.tsv"), sha256_file(file)
            if actual != expected:
                message = f"was modified after the split was saved (sha256 {actual} != {expected})"
                raise DataError(message, file=file)
            frame = _from_tsv(file, dataset, manifest["columns"])
            frames[part] = frame[list(dataset.interactions.columns)]
        return cls(
            frames["train"], frames["valid"], frames["test"],
            manifest["protocol"], manifest["seed"], manifest["ratios"],
        )


def make_split(
    dataset: Dataset,
    protocol: str,
    *,
    seed: int,
    ratios: tuple[float, float, float] | list[float] = (0.8, 0.1, 0.1),
) -> Split:
    """Split ``dataset.interactions`` into train, validation and test.

    Each part keeps its rows in source order, with a fresh ``RangeIndex``. The same
    arguments always give the same split.

    ``temporal`` takes ``t1`` and ``t2``, the timestamps at positions ``floor(n * r_train)``
    and ``floor(n * (r_train + r_valid))`` of the sorted events, and sets train = ``ts < t1``,
    valid = ``t1 <= ts < t2``, test = ``ts >= t2``. Events that share a timestamp never
    straddle a cut: a tie at a cut moves the whole tied group *later* (train into valid,
    valid into test), so train holds at most ``r_train`` of the rows and test at least
    ``r_test``. Many ties at one instant can push the parts far from the ratios, or empty one.

    Args:
        dataset: the dataset to split.
        protocol: one of :data:`PROTOCOLS`.
        seed: seed of the shuffle (``random``); recorded but unused by the others.
        ratios: train / validation / test shares, normalised to sum to 1 (as RecBole does);
            ``loo`` ignores them.

    Returns:
        The split.

    Raises:
        ConfigError: an unknown protocol, bad ratios, a negative seed, or ``loo`` /
            ``temporal`` on a dataset without timestamps.
        DataError: the dataset has no interactions, or a temporal cut leaves train empty.
    """
    if protocol not in PROTOCOLS:
        choices = ", ".join(PROTOCOLS)
        raise ConfigError(f"unknown split protocol {protocol!r}; choose one of {choices}")
    norm = _check_ratios(ratios)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    inter = dataset.interactions
    if len(inter) == 0:
        raise DataError(f"dataset {dataset.name} has no interactions to split")
    if protocol in ("loo", "temporal") and not dataset.has_time:
        raise ConfigError(f"dataset {dataset.name} has no timestamps; use the random split")
    users = inter["user"].to_numpy(dtype=np.int64)
    if protocol == "random":
        part = _random_parts(users, dataset.n_users, norm, np.random.default_rng(seed))
    elif protocol == "loo":
        part = _loo_parts(users, inter["timestamp"].to_numpy(dtype=np.int64), dataset.n_users)
    else:
        part = _temporal_parts(inter["timestamp"].to_numpy(dtype=np.int64), norm)
        if not (part == 0).any():
            message = "the temporal cut leaves train empty (too many events share its timestamp)"
            raise DataError(f"dataset {dataset.name}: {message}")
    frames = [inter.iloc[np.flatnonzero(part == k)].reset_index(drop=True) for k in range(3)]
    logger.info("%s split of %s: %s", protocol, dataset.name, [len(f) for f in frames])
    return Split(frames[0], frames[1], frames[2], protocol, int(seed), norm)


def ratio_counts(n: np.ndarray | int, ratios: tuple[float, float, float]) -> np.ndarray:
    """RecBole's per-group split sizes for groups of ``n`` interactions.

    ``cnt = [int(r * n) for r in ratios]; cnt[0] = n - sum(cnt[1:])``; then, from the last
    part backwards and while ``cnt[0] > 1``, a part whose share ``r * n`` lies strictly
    between 0 and 1 takes one interaction from train. With ``(0.8, 0.1, 0.1)``: n = 1 ->
    (1, 0, 0), 2 -> (1, 0, 1), 3 -> (1, 1, 1), 5 -> (3, 1, 1), 10 -> (8, 1, 1), 11 -> (9, 1, 1).

    Args:
        n: group sizes (any integer shape).
        ratios: normalised train / validation / test ratios.

    Returns:
        ``int64`` array of shape ``(*n.shape, 3)``.
    """
    n = np.asarray(n, dtype=np.int64)
    share = [np.asarray(r * n, dtype=np.float64) for r in ratios]
    cnt = [s.astype(np.int64) for s in share]  # truncation, as int() does for n >= 0
    cnt[0] = n - cnt[1] - cnt[2]
    for i in (2, 1):  # ratios[-1], then ratios[-2]; cnt[0] <= 1 stops ("break") both
        take = (cnt[0] > 1) & (share[i] > 0) & (share[i] < 1)
        cnt[i] = cnt[i] + take
        cnt[0] = cnt[0] - take
    return np.stack(cnt, axis=-1)


def _check_ratios(ratios: tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    try:
        values = [float(r) for r in ratios]
    except (TypeError, ValueError):
        values = []
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) < 0 or values[0] <= 0:
        raise ConfigError(
            "split ratios must be three non-negative numbers (train, valid, test) "
            f"with train > 0, got {ratios!r}"
        )
    total = sum(values)
    return (values[0] / total, values[1] / total, values[2] / total)


_Rule = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _per_user_parts(users: np.ndarray, key: np.ndarray, n_users: int, rule: _Rule) -> np.ndarray:
    """Sort rows by (user, key), let ``rule`` pick each sorted row's part, scatter back.

    ``rule(rank, sorted_users, counts)`` gets each sorted row's 0-based rank within its
    user, the user of each sorted row and every user's row count.
    """
    order = np.lexsort((key, users))  # stable: rows with equal keys keep source order
    counts = np.bincount(users, minlength=n_users)
    sorted_users = users[order]
    rank = np.arange(len(users), dtype=np.int64) - (np.cumsum(counts) - counts)[sorted_users]
    part = np.empty(len(users), dtype=np.int8)
    part[order] = rule(rank, sorted_users, counts)
    return part


def _random_parts(
    users: np.ndarray, n_users: int, ratios: tuple[float, float, float], rng: np.random.Generator
) -> np.ndarray:
    def rule(rank: np.ndarray, su: np.ndarray, counts: np.ndarray) -> np.ndarray:
        cnt = ratio_counts(counts, ratios)
        n_train, n_valid = cnt[su, 0], cnt[su, 1]
        return np.where(rank < n_train, 0, np.where(rank < n_train + n_valid, 1, 2))

    return _per_user_parts(users, rng.permutation(len(users)), n_users, rule)


def _loo_parts(users: np.ndarray, ts: np.ndarray, n_users: int) -> np.ndarray:
    def rule(rank: np.ndarray, su: np.ndarray, counts: np.ndarray) -> np.ndarray:
        size = counts[su]
        from_end = size - 1 - rank
        out = np.zeros(len(rank), dtype=np.int8)
        out[(from_end == 0) & (size >= 2)] = 2
        out[(from_end == 1) & (size >= 3)] = 1
        return out

    return _per_user_parts(users, ts, n_users, rule)


def _temporal_parts(ts: np.ndarray, ratios: tuple[float, float, float]) -> np.ndarray:
    ordered = np.sort(ts)
    ks = [int(np.floor(len(ts) * share + 1e-9)) for share in (ratios[0], ratios[0] + ratios[1])]
    t1, t2 = (float(ordered[k]) if k < len(ts) else np.inf for k in ks)
    part = np.full(len(ts), 1, dtype=np.int8)
    part[ts < t1] = 0
    part[ts >= t2] = 2
    return part


# ----------------------------------------------------------------------- files
def _raw_columns(dataset: Dataset) -> list[str]:
    """Header of the split files: raw ids, weight and, when the data has time, timestamp."""
    return ["user_id", "item_id", "weight"] + (["timestamp"] if dataset.has_time else [])


def _check_tsv_ids(dataset: Dataset) -> None:
    for field, vocab in (("user_id", dataset.users), ("item_id", dataset.items)):
        bad = pd.Series(vocab.ids, dtype=object).str.contains(r"[\t\r\n]", regex=True)
        if bad.any():
            raw = vocab.ids[np.flatnonzero(bad.to_numpy())[0]]
            raise DataError(f"raw id {raw!r} holds a tab or line break", field=field)


def _to_tsv(frame: pd.DataFrame, dataset: Dataset) -> bytes:
    raw = pd.DataFrame({
        "user_id": dataset.users.lookup(frame["user"].to_numpy()),
        "item_id": dataset.items.lookup(frame["item"].to_numpy()),
        "weight": frame["weight"].to_numpy(dtype=np.float32),  # shortest repr: exact round trip
    })
    if dataset.has_time:
        raw["timestamp"] = frame["timestamp"].to_numpy(dtype=np.int64)
    buf = io.StringIO()
    raw.to_csv(buf, sep="\t", index=False, lineterminator="\n")
    return buf.getvalue().encode("utf-8")


def _from_tsv(file: Path, dataset: Dataset, columns: list[str]) -> pd.DataFrame:
    table = read_table(file, sep="\t", header=True)
    header = [str(c) for c in table.columns if c != "_line"]
    if header != columns:
        raise DataError(f"header {header} should be {columns}", file=file, line=1)
    cols: dict[str, np.ndarray] = {}
    for code_col, vocab in (("user", dataset.users), ("item", dataset.items)):
        raw_col = f"{code_col}_id"
        codes = vocab.index(table[raw_col].to_numpy(dtype=object), missing="negative")
        if (codes < 0).any():
            row = int(np.flatnonzero(codes < 0)[0])
            raise DataError(
                f"unknown {code_col} id {table[raw_col].iloc[row]!r} (not in {dataset.name})",
                file=file, line=int(table["_line"].iloc[row]), field=raw_col,
            )
        cols[code_col] = codes
    cols["weight"] = parse_floats(table, "weight", file).astype(np.float32)
    if "timestamp" in columns:
        cols["timestamp"] = parse_ints(table, "timestamp", file)
    return pd.DataFrame(cols)


def _read_manifest(file: Path, dataset: Dataset) -> dict[str, Any]:
    """Parse and check ``split.json``; ``seed`` and ``ratios`` come back as int and tuple."""
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError("expected a JSON object")
        if manifest.get("format_version") != SPLIT_FORMAT_VERSION:
            raise ValueError(f"unsupported format_version {manifest.get('format_version')!r}")
        missing = [key for key in _MANIFEST_KEYS if key not in manifest]
        if missing:
            raise ValueError(f"missing keys {missing}")
        manifest["seed"] = int(manifest["seed"])
        ratios = tuple(float(r) for r in manifest["ratios"])
        if len(ratios) != 3:
            raise ValueError("ratios must be 3 numbers")
        manifest["ratios"] = ratios
        if not (isinstance(manifest["counts"], dict) and isinstance(manifest["sha256"], dict)):
            raise ValueError("counts and sha256 must be objects")
    except (ValueError, TypeError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise DataError(f"not a valid split manifest ({err})", file=file) from None
    if manifest["dataset"] != dataset.name:
        message = f"split was made for dataset {manifest['dataset']!r}, not {dataset.name!r}"
        raise DataError(message, file=file, field="dataset")
    if manifest["protocol"] not in PROTOCOLS:
        raise DataError(f"unknown protocol {manifest['protocol']!r}", file=file, field="protocol")
    if manifest["columns"] != _raw_columns(dataset):
        message = f"columns {manifest['columns']} do not match the dataset: {_raw_columns(dataset)}"
        raise DataError(message, file=file, field="columns")
    return manifest
