"""The recommend() contract and safe model files, on a model with fixed scores."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from mgrec.data.dataset import Dataset
from mgrec.data.vocab import Vocabulary
from mgrec.errors import DataError
from mgrec.recommender import Recommender


class Fixed(Recommender):
    """Scores item j as w[j] + user code (so every user has the same ranking)."""

    name = "fixed"

    def _fit(self, dataset, train, valid):
        self.w = np.linspace(1.0, 0.0, dataset.n_items, dtype=np.float32)

    def score(self, users):
        return self.w[None, :] + np.asarray(users, dtype=np.float32)[:, None]

    def _get_state(self):
        return {"kind": "fixed"}, {"w": self.w}

    def _set_state(self, config, arrays):
        self.w = arrays["w"]


def _fitted() -> Fixed:
    inter = pd.DataFrame({"user": [0, 0, 1], "item": [0, 2, 1], "weight": np.float32([1, 1, 1])})
    ds = Dataset("t", Vocabulary(["a", "b"]), Vocabulary(list("vwxyz")), inter)
    return Fixed().fit(ds, inter)


def test_recommend_filters_seen_and_exclude_and_candidates():
    m = _fitted()
    items, scores = m.recommend(np.array([0, 1]), k=3)
    assert items.tolist() == [[1, 3, 4], [0, 2, 3]]
    assert scores.shape == (2, 3) and scores.dtype == np.float32
    single, _ = m.recommend(0, k=2)
    assert single.tolist() == [1, 3]
    exclude = sp.csr_matrix(([1.0], ([0], [1])), shape=(2, 5))
    assert m.recommend(0, k=2, exclude=exclude)[0].tolist() == [3, 4]
    assert m.recommend(0, k=3, candidates=np.array([4, 0, 1]))[0].tolist() == [1, 4, -1]
    assert m.recommend(0, k=3, filter_seen=False)[0].tolist() == [0, 1, 2]


def test_save_load_round_trip(tmp_path):
    m = _fitted()
    m.save(tmp_path / "m")
    back = Fixed.load(tmp_path / "m")
    a, b = m.recommend(np.array([0, 1]), k=5), back.recommend(np.array([0, 1]), k=5)
    assert np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1])
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["model"] == "fixed" and meta["format_version"] == 1


def test_truncated_or_tampered_weights_are_refused(tmp_path):
    _fitted().save(tmp_path / "m")
    w = tmp_path / "m" / "weights.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="weights.safetensors.*modified or truncated"):
        Fixed.load(tmp_path / "m")
    # a tampered file that still parses: one byte of the last array changed
    w.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(DataError, match="checksum"):
        Fixed.load(tmp_path / "m")
    w.write_bytes(data)
    assert Fixed.load(tmp_path / "m").n_items_ == 5
    # without a checksum (older folders) the file must still parse
    mj = tmp_path / "m" / "model.json"
    meta = json.loads(mj.read_text())
    meta.pop("weights_sha256")
    mj.write_text(json.dumps(meta))
    w.write_bytes(b"\x00" * 3)
    with pytest.raises(DataError, match="cannot be read"):
        Fixed.load(tmp_path / "m")


def test_bad_model_json_is_refused(tmp_path):
    _fitted().save(tmp_path / "m")
    mj = tmp_path / "m" / "model.json"
    mj.write_text("{not json")
    with pytest.raises(DataError, match="model.json is not valid JSON"):
        Fixed.load(tmp_path / "m")
    mj.write_text(json.dumps({"format_version": 99, "model": "fixed", "n_users": 2, "n_items": 5, "config": {}}))
    with pytest.raises(DataError, match="model format 99 is not supported"):
        Fixed.load(tmp_path / "m")
    with pytest.raises(DataError, match="model.json is missing"):
        Fixed.load(tmp_path / "nothing")


def test_users_without_training_history_get_popularity():
    inter = pd.DataFrame({"user": [0, 0, 1, 1], "item": [3, 4, 3, 2], "weight": np.float32([1, 1, 1, 1])})
    ds = Dataset("t", Vocabulary(["a", "b", "cold"]), Vocabulary(list("vwxyz")), inter)
    m = Fixed().fit(ds, inter)
    # user 2 has no training row: item 3 (2 events), then 2 and 4 (1 each, lower code first), then 0, 1
    assert m.recommend(2, k=5)[0].tolist() == [3, 2, 4, 0, 1]
    assert m.recommend(0, k=2)[0].tolist() == [0, 1]  # known users keep the model's own scores
    Fixed.cold_users_get_popularity = False
    try:
        assert m.recommend(2, k=2)[0].tolist() == [0, 1]
    finally:
        Fixed.cold_users_get_popularity = True
