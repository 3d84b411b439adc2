"""Events from the serving store as training data (``mgrec train --from-store``).

:func:`with_events` appends stored events (raw ids, as ``EventStore.frame()`` returns them) to
a dataset's interactions. Users and items the dataset does not know join its vocabularies
with missing side features; social links are kept. :func:`events_dataset` builds a dataset
from the events alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mgrec.data.dataset import Dataset, FeatureTable
from mgrec.data.vocab import Vocabulary
from mgrec.errors import DataError

__all__ = ["with_events", "events_dataset"]

_EMPTY = {"categorical": None, "text": None, "multi": None, "numeric": np.nan}


def _grow(table: FeatureTable | None, n: int) -> FeatureTable | None:
    """``table`` with ``n`` more rows of missing values."""
    if table is None or n == 0:
        return table
    extra = pd.DataFrame({c: pd.Series([_EMPTY[table.kinds[c]]] * n, dtype=table.frame[c].dtype
                                       if table.kinds[c] == "numeric" else object)
                          for c in table.frame.columns})
    return FeatureTable(pd.concat([table.frame, extra], ignore_index=True), dict(table.kinds))


def _check(frame: pd.DataFrame) -> None:
    for col in ("user_id", "item_id", "weight", "timestamp"):
        if col not in frame.columns:
            raise DataError("the event frame lacks a column", field=col)


def with_events(dataset: Dataset, frame: pd.DataFrame) -> Dataset:
    """``dataset`` plus the stored events in ``frame`` (columns ``user_id``, ``item_id``,
    ``timestamp``, ``weight``).

    Raises:
        DataError: when the dataset has time and an event has none.
    """
    _check(frame)
    if not len(frame):
        return dataset
    users = dataset.users.ids.tolist()
    items = dataset.items.ids.tolist()
    new_users = pd.unique(frame["user_id"].astype(str).to_numpy())
    new_users = [u for u in new_users if u not in dataset.users]
    new_items = [i for i in pd.unique(frame["item_id"].astype(str).to_numpy()) if i not in dataset.items]
    uv, iv = Vocabulary(users + new_users), Vocabulary(items + new_items)
    ev = pd.DataFrame({
        "user": uv.index(frame["user_id"].astype(str).to_numpy()),
        "item": iv.index(frame["item_id"].astype(str).to_numpy()),
        "weight": frame["weight"].to_numpy(np.float32),
    })
    if dataset.has_time:
        ts = frame["timestamp"].to_numpy(np.float64)
        if not np.isfinite(ts).all():
            row = int(np.flatnonzero(~np.isfinite(ts))[0])
            raise DataError(f"event {row} has no timestamp, but dataset {dataset.name!r} has time",
                            field="timestamp")
        ev["timestamp"] = ts.astype(np.int64)
    inter = pd.concat([dataset.interactions, ev[list(dataset.interactions.columns)]], ignore_index=True)
    meta = {**dataset.meta, "store_events": len(frame)}
    return Dataset(dataset.name, uv, iv, inter, _grow(dataset.user_features, len(new_users)),
                   _grow(dataset.item_features, len(new_items)), dataset.social, meta)


def events_dataset(frame: pd.DataFrame, name: str = "store") -> Dataset:
    """A dataset of the stored events alone (time kept when every event has one)."""
    _check(frame)
    if not len(frame):
        raise DataError("the event store is empty: nothing to train on", field="events")
    users = Vocabulary.from_values(frame["user_id"].astype(str).to_numpy())
    items = Vocabulary.from_values(frame["item_id"].astype(str).to_numpy())
    inter = pd.DataFrame({
        "user": users.index(frame["user_id"].astype(str).to_numpy()),
        "item": items.index(frame["item_id"].astype(str).to_numpy()),
        "weight": frame["weight"].to_numpy(np.float32),
    })
    ts = frame["timestamp"].to_numpy(np.float64)
    if np.isfinite(ts).all():
        inter["timestamp"] = ts.astype(np.int64)
    return Dataset(name, users, items, inter, meta={"weight_kind": "event", "source": "event store"})
