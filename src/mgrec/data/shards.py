"""A frozen split that each data-parallel rank reads in part: its own users and their friends.

``mgrec data split NAME --format shards --out DIR`` loads, preprocesses and splits a dataset
once, in one process, and writes ``DIR``:

* ``users.parquet`` / ``items.parquet``: the raw id of every code, in code order, and the side
  features (``multi`` cells as lists); ``social.parquet``: the links as user codes;
* ``train.parquet``, ``valid.parquet``, ``test.parquet``: ``user``, ``item``, ``weight`` (and
  ``timestamp``) as codes, sorted by user (stable: a user's events keep their order), in row
  groups of :data:`ROW_GROUP` rows;
* ``train_counts.npy``: training events per user; ``activity.npy``: each user's latest training
  event (:func:`~mgrec.data.dataset.user_activity`, which orders friends); ``manifest.json``:
  sizes, protocol, seed, feature kinds, the dataset's name and meta.

``torchrun ... -m mgrec train --split-dir DIR`` then has every rank call :func:`load_shard`:
rank ``r`` of ``w`` owns a contiguous range of user codes holding about ``1/w`` of the
training events (:func:`user_ranges`). It streams the training file batch by batch and keeps
the events of its users and of the friends the model reads for them (each user's
``max_friends`` strongest: the social encoder reads those friends' latest items), and the
validation and test events of its users alone. The user, item and social
tables are read whole: they are small next to the interactions. The model then trains on the
owned events only; statistics that need every event (popularity, item time features, the time
span) are summed or reduced across ranks (:mod:`mgrec.mgr`), so each replica holds the values
a single process would compute.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mgrec.data.dataset import Dataset, FeatureTable, SocialGraph, user_activity
from mgrec.data.readers import require_file
from mgrec.data.split import Split
from mgrec.data.vocab import Vocabulary
from mgrec.errors import DataError
from mgrec.io import atomic_dir, atomic_write_json

__all__ = ["ROW_GROUP", "UserShard", "load_shard", "read_manifest", "save_shards", "user_ranges"]

logger = logging.getLogger(__name__)

SHARDS_FORMAT_VERSION = 1
#: Rows per Parquet row group of the interaction files (the unit a rank streams).
ROW_GROUP = 65_536
_MANIFEST = "manifest.json"
_PARTS = ("train", "valid", "test")


@dataclass(frozen=True)
class UserShard:
    """The users one rank trains on: codes ``lo <= u < hi`` of ``n_users``.

    The other users in the rank's data are friends of its users, loaded as context only.
    """

    rank: int
    world_size: int
    lo: int
    hi: int
    n_users: int

    def owns(self, users: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``users`` (codes) this rank owns."""
        users = np.asarray(users)
        return (users >= self.lo) & (users < self.hi)


def user_ranges(train_counts: np.ndarray, world_size: int) -> np.ndarray:
    """``world_size + 1`` bounds cutting user codes into contiguous ranges of about equal
    training events (each range non-empty when there are at least ``world_size`` users)."""
    n = len(train_counts)
    cum = np.concatenate([[0], np.cumsum(train_counts, dtype=np.int64)])
    total = int(cum[-1])
    bounds = np.searchsorted(cum, [total * r / world_size for r in range(world_size + 1)], side="left")
    bounds[0], bounds[-1] = 0, n
    if n >= world_size:  # at least one user per rank
        for r in range(1, world_size):
            bounds[r] = min(max(bounds[r], bounds[r - 1] + 1), n - (world_size - r))
    return bounds.astype(np.int64)


# ----------------------------------------------------------------------- writing
def save_shards(path: Path, dataset: Dataset, split: Split) -> Path:
    """Write ``split`` of ``dataset`` as a shardable folder (module docstring), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    with atomic_dir(path) as tmp:
        for part, vocab, table in (("users", dataset.users, dataset.user_features),
                                   ("items", dataset.items, dataset.item_features)):
            cols: dict[str, Any] = {"id": pa.array(list(vocab.ids), pa.string())}
            if table is not None:
                for name, kind in table.kinds.items():
                    values = table.frame[name]
                    if kind == "multi":
                        cols[name] = pa.array([list(v) if isinstance(v, (tuple, list)) else [] for v in values],
                                              pa.list_(pa.string()))
                    elif kind == "numeric":
                        cols[name] = pa.array(values.to_numpy(np.float64))
                    else:
                        cols[name] = pa.array([None if _missing(v) else str(v) for v in values], pa.string())
            pq.write_table(pa.table(cols), tmp / f"{part}.parquet")
        if dataset.social is not None:
            g = dataset.social
            pq.write_table(pa.table({"src": g.src.astype(np.int64), "dst": g.dst.astype(np.int64),
                                     "weight": g.weight.astype(np.float32)}), tmp / "social.parquet")
        counts = {}
        for part, frame in split.parts().items():
            order = np.argsort(frame["user"].to_numpy(np.int64), kind="stable")
            sorted_frame = frame.iloc[order]
            pq.write_table(pa.Table.from_pandas(sorted_frame.reset_index(drop=True), preserve_index=False),
                           tmp / f"{part}.parquet", row_group_size=ROW_GROUP)
            counts[part] = int(len(frame))
        train_counts = np.bincount(split.train["user"].to_numpy(np.int64), minlength=dataset.n_users)
        np.save(tmp / "train_counts.npy", train_counts.astype(np.int64), allow_pickle=False)
        has_time = dataset.has_time and "timestamp" in split.train.columns
        np.save(tmp / "activity.npy", user_activity(split.train, dataset.n_users, has_time=has_time),
                allow_pickle=False)
        # provenance only: a generator's ground truth (large) stays with the generator
        meta = {k: v for k, v in dataset.meta.items() if k != "ground_truth" and _json_safe(v)}
        atomic_write_json(tmp / _MANIFEST, {
            "format_version": SHARDS_FORMAT_VERSION, "dataset": dataset.name, "protocol": split.protocol,
            "seed": int(split.seed), "ratios": list(split.ratios), "n_users": dataset.n_users,
            "n_items": dataset.n_items, "has_time": bool(dataset.has_time), "counts": counts,
            "user_kinds": dict(dataset.user_features.kinds) if dataset.user_features is not None else None,
            "item_kinds": dict(dataset.item_features.kinds) if dataset.item_features is not None else None,
            "social_directed": dataset.social.directed if dataset.social is not None else None,
            "meta": meta,
        })
    logger.info("wrote the %s split of %s as shards to %s", split.protocol, dataset.name, path)
    return path


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


# ----------------------------------------------------------------------- reading
def load_shard(path: Path, rank: int = 0, world_size: int = 1, *,
               max_friends: int | None = None) -> tuple[Dataset, Split]:
    """Rank ``rank``'s view of a folder written by :func:`save_shards`.

    With ``world_size == 1`` this is the whole split and ``dataset.shard`` is ``None``. Else the
    dataset's interactions and the split's train part hold the training events of the rank's
    users and of their friends; validation and test hold the rank's users only; and
    ``dataset.shard`` says which users the rank owns. ``max_friends``: only the friends a
    model that reads each user's ``max_friends`` strongest friends needs (the order of
    :meth:`~mgrec.data.dataset.SocialGraph.top_friends`, with the activity saved in the
    folder); ``None``: every friend.

    Raises:
        DataError: a missing or malformed file (named), or a folder of another format version.
    """
    path = Path(path)
    manifest = read_manifest(path)
    n_users, n_items = int(manifest["n_users"]), int(manifest["n_items"])
    users_frame = _read_table(path / "users.parquet")
    items_frame = _read_table(path / "items.parquet")
    for name, frame, n in (("users.parquet", users_frame, n_users), ("items.parquet", items_frame, n_items)):
        if len(frame) != n or "id" not in frame.columns:
            raise DataError(f"expected an 'id' column and {n} rows (manifest.json), found {len(frame)} rows",
                            file=path / name)
    users, items = Vocabulary(users_frame["id"].tolist()), Vocabulary(items_frame["id"].tolist())
    social = None
    if (path / "social.parquet").exists():
        links = _read_table(path / "social.parquet")
        social = SocialGraph(links["src"].to_numpy(np.int64), links["dst"].to_numpy(np.int64),
                             links["weight"].to_numpy(np.float32), directed=bool(manifest["social_directed"]))
    shard = None
    keep_train = keep_own = None
    if world_size > 1:
        counts = np.load(require_file(path / "train_counts.npy"), allow_pickle=False)
        bounds = user_ranges(counts, world_size)
        shard = UserShard(rank, world_size, int(bounds[rank]), int(bounds[rank + 1]), n_users)
        keep_own = np.zeros(n_users, dtype=bool)
        keep_own[shard.lo:shard.hi] = True
        keep_train = keep_own.copy()
        if social is not None and len(social) and max_friends is not None:  # the friends the model reads
            activity = np.load(require_file(path / "activity.npy"), allow_pickle=False)
            top = social.top_friends(n_users, activity, max_friends)[shard.lo:shard.hi].ravel()
            keep_train[top[top < n_users]] = True
        elif social is not None and len(social):  # every friend, in either direction
            keep_train[social.dst[keep_own[social.src]]] = True
            keep_train[social.src[keep_own[social.dst]]] = True
    has_time = bool(manifest["has_time"])
    parts = {part: _read_events(path / f"{part}.parquet", keep_train if part == "train" else keep_own, has_time)
             for part in _PARTS}
    interactions = pd.concat(list(parts.values()), ignore_index=True)
    meta = dict(manifest.get("meta") or {})
    meta["split_protocol"] = manifest["protocol"]
    meta["shards"] = {"source": str(path), "rank": rank, "world_size": world_size}
    dataset = Dataset(manifest["dataset"], users, items, interactions,
                      _features(users_frame, manifest.get("user_kinds")),
                      _features(items_frame, manifest.get("item_kinds")), social, meta, shard=shard)
    split = Split(parts["train"], parts["valid"], parts["test"], manifest["protocol"], int(manifest["seed"]),
                  manifest["ratios"])
    if shard is None:
        logger.info("whole split: %d train, %d valid, %d test events", *(len(parts[p]) for p in _PARTS))
    else:
        logger.info("shard %d of %d: users %d..%d, %d train events (own and friends'), %d valid, %d test",
                    rank, world_size, shard.lo, shard.hi - 1, *(len(parts[p]) for p in _PARTS))
    return dataset, split


def read_manifest(path: Path) -> dict[str, Any]:
    """The ``manifest.json`` of a folder written by :func:`save_shards` (checked)."""
    file = require_file(Path(path) / _MANIFEST)
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"not a shards manifest ({err})", file=file) from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != SHARDS_FORMAT_VERSION:
        raise DataError(f"not a shards folder of format version {SHARDS_FORMAT_VERSION} "
                        "(write one with 'mgrec data split NAME --format shards')", file=file)
    for key in ("n_users", "n_items", "protocol", "seed", "ratios", "has_time", "dataset"):
        if key not in manifest:
            raise DataError("missing entry", file=file, field=key)
    return manifest


def _read_table(file: Path) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(require_file(file)).to_pandas()
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"cannot read parquet file ({str(err).strip().splitlines()[0]})", file=file) from None


def _read_events(file: Path, keep: np.ndarray | None, has_time: bool) -> pd.DataFrame:
    """The events of ``file`` whose user ``keep`` marks (all when ``None``), streamed by row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = ["user", "item", "weight"] + (["timestamp"] if has_time else [])
    frames = []
    try:
        reader = pq.ParquetFile(require_file(file))
        missing = set(columns) - set(reader.schema_arrow.names)
        if missing:
            raise DataError(f"missing columns {sorted(missing)}", file=file)
        for batch in reader.iter_batches(columns=columns):
            frame = batch.to_pandas()
            if keep is not None:
                frame = frame[keep[frame["user"].to_numpy(np.int64)]]
            frames.append(frame)
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"cannot read parquet file ({str(err).strip().splitlines()[0]})", file=file) from None
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: [] for c in columns})
    dtypes = {"user": np.int64, "item": np.int64, "weight": np.float32, "timestamp": np.int64}
    return out.astype({c: dtypes[c] for c in columns})


def _features(frame: pd.DataFrame, kinds: dict[str, str] | None) -> FeatureTable | None:
    if not kinds:
        return None
    data: dict[str, Any] = {}
    for name, kind in kinds.items():
        col = frame[name]
        if kind == "multi":
            data[name] = pd.Series([() if v is None or _missing(v) else tuple(v) for v in col], dtype=object)
        elif kind == "numeric":
            data[name] = col.to_numpy(np.float64)
        else:
            data[name] = pd.Series([None if _missing(v) else str(v) for v in col], dtype=object)
    return FeatureTable(pd.DataFrame(data, index=pd.RangeIndex(len(frame))), kinds)
