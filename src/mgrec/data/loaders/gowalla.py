"""Gowalla as split by NGCF / LightGCN (``gowalla-lightgcn``).

Each line of ``train.txt`` and ``test.txt`` is ``user item item ...`` with 0-based ids. The
shared copy lacks the original ``train.txt``; ``train.reconstructed.txt`` holds the same
(user, item) pairs with items sorted within each line and is used when ``train.txt`` is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mgrec.data.dataset import Dataset
from mgrec.data.loaders._common import int_vocab
from mgrec.data.readers import parse_ints, read_table
from mgrec.errors import DataError

__all__ = ["load_gowalla", "read_adjacency_lines"]

_TRAIN_FILES = ("train.txt", "train.reconstructed.txt")


def load_gowalla(folder: Path) -> Dataset:
    """Load the LightGCN Gowalla split as one dataset plus the published test mask.

    Interactions are the train rows followed by the test rows, weight 1 (implicit), no
    timestamps. ``meta["test_mask"]`` is a boolean array marking the test rows, so the
    published split can be reproduced exactly.

    Args:
        folder: the ``gowalla-lightgcn`` folder.

    Returns:
        The dataset (29,858 users, 40,981 items, 1,027,370 interactions of which 217,242
        are test rows).

    Raises:
        DataError: missing files or malformed lines.
    """
    folder = Path(folder)
    train_path = next((folder / f for f in _TRAIN_FILES if (folder / f).is_file()), folder / _TRAIN_FILES[0])
    test_path = folder / "test.txt"
    tr_users, tr_items, tr_all = read_adjacency_lines(train_path)
    te_users, te_items, te_all = read_adjacency_lines(test_path)
    users_raw = np.concatenate([tr_users, te_users])
    items_raw = np.concatenate([tr_items, te_items])
    users, u_uniq = int_vocab(tr_all, te_all)
    items, i_uniq = int_vocab(items_raw)
    frame = pd.DataFrame({
        "user": np.searchsorted(u_uniq, users_raw).astype(np.int64),
        "item": np.searchsorted(i_uniq, items_raw).astype(np.int64),
        "weight": np.ones(len(users_raw), dtype=np.float32),
    })
    test_mask = np.zeros(len(frame), dtype=bool)
    test_mask[len(tr_users):] = True
    notes = []
    if train_path.name != "train.txt":
        notes.append(f"train split read from {train_path.name} (same pairs as the original train.txt)")
    return Dataset(
        name="gowalla", users=users, items=items,
        interactions=frame,
        meta={"weight_kind": "implicit", "source_files": [train_path.name, test_path.name],
              "test_mask": test_mask, "notes": notes},
    )


def read_adjacency_lines(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse a file of ``user item item ...`` lines (space-separated integer ids).

    Args:
        path: the file.

    Returns:
        ``(users, items, line_users)``: one ``int64`` user and item per pair, in file order,
        and the user of every line (a line may list no items).

    Raises:
        DataError: a missing file, a non-integer id (naming line and field ``user`` or
            ``item``), or a user listed on two lines.
    """
    frame = read_table(path, sep="\t", names=["text"])
    tokens = frame["text"].astype(object).map(lambda s: s.split() if isinstance(s, str) else [])
    heads = pd.DataFrame({"user": tokens.map(lambda t: t[0] if t else ""), "_line": frame["_line"]})
    line_users = parse_ints(heads, "user", path)
    dup = pd.Series(line_users).duplicated().to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise DataError(f"user {line_users[row]} already has a line", file=path,
                        line=int(heads["_line"].iloc[row]), field="user")
    counts = tokens.map(len).to_numpy(dtype=np.int64) - 1
    tails = tokens.map(lambda t: t[1:]).explode().dropna()
    items_frame = pd.DataFrame({"item": tails.to_numpy(dtype=object),
                                "_line": frame["_line"].to_numpy()[tails.index.to_numpy()]})
    items = parse_ints(items_frame, "item", path) if len(items_frame) else np.zeros(0, np.int64)
    users = np.repeat(line_users, counts)
    return users, items, line_users
