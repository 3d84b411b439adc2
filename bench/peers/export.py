"""Build a split exactly as ``mgrec benchmark`` does and write it out for the peer libraries.

One work folder per (dataset, split, seed)::

    WORK/
    ├── split/                       Split.save: train/valid/test.tsv (raw ids) + split.json
    ├── train.npz valid.npz test.npz binary (n_users, n_items) CSR in mgrec's codes (implicit, LightFM)
    ├── user_features.npz            mgrec's encoding of the side features, one row per code
    ├── item_features.npz            (only for the sides the dataset has; LightFM)
    ├── recbole/inter/inter.{train,valid,test}.inter   RecBole atomic files (general models)
    ├── recbole/seq/seq.{train,valid,test}.inter       RecBole sequences (SASRec)
    ├── recbole/history.npz          each user's train + valid items in time order (SASRec's test input)
    └── export.json                  sizes and row counts

RecBole tokens are mgrec's integer codes written as text, so every id maps back with ``int``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mgrec.data.dataset import Dataset, FeatureTable, to_csr
from mgrec.data.features import encode_features
from mgrec.data.split import PARTS, Split
from mgrec.experiment import ExperimentConfig, prepare
from mgrec.io import atomic_write_json

__all__ = ["SEQ_LEN", "prepare_split", "export_all", "recbole_inter", "recbole_sequences", "user_histories"]

#: History length of the SASRec sequences (RecBole's ``MAX_ITEM_LIST_LENGTH`` default).
SEQ_LEN = 50


def prepare_split(dataset: str, protocol: str, seed: int, data_root: str | None = None) -> tuple[Dataset, Split]:
    """The dataset and split ``mgrec benchmark --datasets DATASET --split PROTOCOL`` uses for ``seed``
    (the same :func:`mgrec.experiment.prepare`: default preprocessing, then ``make_split``)."""
    return prepare(ExperimentConfig(dataset=dataset, model="mgr", split=protocol, seed=seed, data_root=data_root))


def export_all(work: Path, data: Dataset, split: Split) -> dict[str, Any]:
    """Write every format into ``work`` (see the module docstring); return the summary."""
    work.mkdir(parents=True, exist_ok=True)
    split.save(work / "split", data)
    for part, frame in split.parts().items():
        sp.save_npz(work / f"{part}.npz", to_csr(frame, data.n_users, data.n_items))
    features = {}
    for side, table in (("user", data.user_features), ("item", data.item_features)):
        matrix = feature_matrix(table)
        if matrix is not None:
            sp.save_npz(work / f"{side}_features.npz", matrix)
            features[side] = int(matrix.shape[1])
    rows = write_recbole(work / "recbole", data, split)
    summary = {"dataset": data.name, "protocol": split.protocol, "seed": split.seed, "users": data.n_users,
               "items": data.n_items, "has_time": data.has_time,
               "counts": {p: len(f) for p, f in split.parts().items()}, "feature_columns": features,
               "recbole_rows": rows}
    atomic_write_json(work / "export.json", summary)
    return summary


def feature_matrix(table: FeatureTable | None) -> sp.csr_matrix | None:
    """Side features as one CSR row per code (:meth:`EncodedFeatures.to_csr`), or ``None``."""
    if table is None or not table.names:
        return None
    return encode_features(table).to_csr()


def recbole_inter(frame: pd.DataFrame, has_time: bool) -> pd.DataFrame:
    """One split part as a RecBole ``.inter`` table (typed header, codes as tokens)."""
    out = pd.DataFrame({
        "user_id:token": frame["user"].to_numpy(dtype=np.int64),
        "item_id:token": frame["item"].to_numpy(dtype=np.int64),
        "rating:float": frame["weight"].to_numpy(dtype=np.float32),
    })
    if has_time:
        out["timestamp:float"] = frame["timestamp"].to_numpy(dtype=np.int64)
    return out


def time_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by user, then time (stable: ties and data without time keep row order)."""
    keys = ["user", "timestamp"] if "timestamp" in frame.columns else ["user"]
    return frame.sort_values(keys, kind="stable")


def user_histories(frames: list[pd.DataFrame], n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's items over ``frames`` (concatenated) in time order, as ``(indptr, items)``."""
    both = time_order(pd.concat(frames, ignore_index=True))
    counts = np.bincount(both["user"].to_numpy(dtype=np.int64), minlength=n_users)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), both["item"].to_numpy(dtype=np.int64)


def recbole_sequences(split: Split, n_users: int, max_len: int = SEQ_LEN) -> dict[str, pd.DataFrame]:
    """SASRec's pre-split sequence files: ``user_id, item_id_list, item_id`` per part.

    * train: each of a user's training events after the first, predicted from the user's
      earlier training events (time order, at most ``max_len``), as RecBole's own augmentation;
    * valid: each validation event, from the user's training events;
    * test: each test event, from the user's training and validation events.

    Rows without any history (users new in that part) are left out: RecBole cannot read an
    empty sequence.
    """
    train = time_order(split.train)
    out = {"train": _augment(train, max_len)}
    for part, before in (("valid", [split.train]), ("test", [split.train, split.valid])):
        indptr, items = user_histories(before, n_users)
        out[part] = _with_history(time_order(split.parts()[part]), indptr, items, max_len)
    return out


def _augment(ordered: pd.DataFrame, max_len: int) -> pd.DataFrame:
    users, items = ordered["user"].to_numpy(), ordered["item"].to_numpy()
    rows = []
    start = 0
    for i in range(1, len(users) + 1):
        if i == len(users) or users[i] != users[start]:
            seq = items[start:i]
            rows += [(users[start], _tokens(seq[max(0, j - max_len):j]), seq[j]) for j in range(1, len(seq))]
            start = i
    return _seq_frame(rows)


def _with_history(ordered: pd.DataFrame, indptr: np.ndarray, items: np.ndarray, max_len: int) -> pd.DataFrame:
    rows = []
    for u, i in zip(ordered["user"].to_numpy(), ordered["item"].to_numpy()):
        history = items[indptr[u]:indptr[u + 1]][-max_len:]
        if len(history):
            rows.append((u, _tokens(history), i))
    return _seq_frame(rows)


def _tokens(items: np.ndarray) -> str:
    return " ".join(str(int(i)) for i in items)


def _seq_frame(rows: list[tuple[int, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id:token", "item_id_list:token_seq", "item_id:token"])


def write_recbole(folder: Path, data: Dataset, split: Split) -> dict[str, dict[str, int]]:
    """Both RecBole datasets (``inter`` and ``seq``) and SASRec's test histories; row counts back."""
    tables = {"inter": {p: recbole_inter(f, data.has_time) for p, f in split.parts().items()},
              "seq": recbole_sequences(split, data.n_users)}
    counts: dict[str, dict[str, int]] = {}
    for name, parts in tables.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for part in PARTS:
            parts[part].to_csv(folder / name / f"{name}.{part}.inter", sep="\t", index=False, lineterminator="\n")
        counts[name] = {p: int(len(parts[p])) for p in PARTS}
    indptr, items = user_histories([split.train, split.valid], data.n_users)
    np.savez(folder / "history.npz", indptr=indptr, items=items)
    return counts
