"""Vocabulary, Dataset, config and reader behaviour."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import pandas as pd
import pytest

from mgrec.config import from_dict, to_dict
from mgrec.data.dataset import Dataset, FeatureTable, SocialGraph, to_csr
from mgrec.data.readers import parse_floats, parse_ints, read_table
from mgrec.data.vocab import Vocabulary
from mgrec.errors import ConfigError, DataError


def test_vocabulary_round_trip_and_numeric_sort():
    v = Vocabulary.from_values([10, 2, 2, 33, 1])
    assert v.to_list() == ["1", "2", "10", "33"]
    assert v.index(["10", 1]).tolist() == [2, 0]
    assert v.id(3) == "33"
    assert v.lookup([0, 3]).tolist() == ["1", "33"]
    assert "2" in v and 2 in v and "7" not in v
    assert v.index(["7", "1"], missing="negative").tolist() == [-1, 0]
    with pytest.raises(KeyError, match="'7'"):
        v.index(["7"])


def test_vocabulary_string_sort_and_duplicates():
    assert Vocabulary.from_values(["b", "a", "10"]).to_list() == ["10", "a", "b"]
    with pytest.raises(ValueError, match="duplicate id"):
        Vocabulary(["a", "a"])


def _tiny() -> Dataset:
    inter = pd.DataFrame({"user": [0, 0, 1, 2], "item": [0, 1, 1, 2], "weight": np.float32([5, 3, 4, 1]),
                          "timestamp": np.int64([10, 20, 30, 40])})
    uf = FeatureTable(pd.DataFrame({"age": [20.0, np.nan, 40.0]}), {"age": "numeric"})
    itf = FeatureTable(pd.DataFrame({"genres": [("a", "b"), (), ("c",)]}), {"genres": "multi"})
    social = SocialGraph(np.array([0, 1, 1, 2]), np.array([1, 0, 2, 2]), np.ones(4, np.float32))
    return Dataset("tiny", Vocabulary(["u0", "u1", "u2"]), Vocabulary(["i0", "i1", "i2"]), inter, uf, itf, social)


def test_dataset_info_counts_undirected_pairs():
    info = _tiny().info()
    assert info["users"] == 3 and info["items"] == 3 and info["interactions"] == 4
    # (0,1) twice in both directions, (1,2) once, self-link (2,2) dropped -> 2 pairs
    assert info["social_links"] == 2
    assert info["user_features"] == ["age"] and info["item_features"] == ["genres"]
    assert info["first_timestamp"] == 10 and info["last_timestamp"] == 40
    assert info["granularities"] == ["user", "item", "behavior", "social", "time"]


def test_dataset_compacts_vocabularies_features_and_links():
    ds = _tiny()
    sub = ds.with_interactions(ds.interactions[ds.interactions["user"] != 1])
    assert sub.users.to_list() == ["u0", "u2"] and sub.items.to_list() == ["i0", "i1", "i2"]
    assert sub.user_features.frame["age"].tolist() == [20.0, 40.0]
    assert sub.social.src.tolist() == [1] and sub.social.dst.tolist() == [1]  # only u2->u2 survives


def test_dataset_rejects_codes_outside_vocabulary():
    inter = pd.DataFrame({"user": [0, 5], "item": [0, 0], "weight": np.float32([1, 1])})
    with pytest.raises(ValueError, match="user codes"):
        Dataset("bad", Vocabulary(["a"]), Vocabulary(["x"]), inter)


def test_to_csr_binary_and_weighted():
    frame = pd.DataFrame({"user": [0, 0, 1], "item": [1, 1, 0], "weight": np.float32([2, 3, 4])})
    assert to_csr(frame, 2, 2).toarray().tolist() == [[0, 1], [1, 0]]
    assert to_csr(frame, 2, 2, binary=False).toarray().tolist() == [[0, 5], [4, 0]]


@dataclasses.dataclass
class _Cfg:
    dim: int = 8
    lr: float = 0.1
    loss: Literal["bpr", "softmax"] = "bpr"
    ks: tuple[int, ...] = (10,)
    reg: float | None = None


def test_config_types_and_unknown_keys():
    cfg = from_dict(_Cfg, {"dim": 16, "lr": 1, "ks": [5, 10], "reg": None})
    assert cfg == _Cfg(dim=16, lr=1.0, ks=(5, 10), reg=None)
    assert to_dict(cfg)["ks"] == [5, 10]
    with pytest.raises(ConfigError, match="unknown key 'dimm'"):
        from_dict(_Cfg, {"dimm": 3})
    with pytest.raises(ConfigError, match="expected an integer"):
        from_dict(_Cfg, {"dim": "8"})
    with pytest.raises(ConfigError, match="not one of"):
        from_dict(_Cfg, {"loss": "mse"})
    with pytest.raises(ConfigError, match="expected true or false|expected a number"):
        from_dict(_Cfg, {"lr": True})


def test_read_table_names_file_line_and_field(tmp_path):
    f = tmp_path / "r.tsv"
    f.write_text("1\t2\t3\n4\t5\n")
    with pytest.raises(DataError, match=r"r.tsv, line 2: expected 3 fields, found 2"):
        read_table(f, sep="\t", names=["a", "b", "c"])
    f.write_text("1\t2\t3\n\n4\tx\t6\n")
    frame = read_table(f, sep="\t", names=["a", "b", "c"])
    assert frame["_line"].tolist() == [1, 3]
    with pytest.raises(DataError, match=r"r.tsv, line 3, field 'item_id': not an integer: 'x'"):
        parse_ints(frame, "b", f, field="item_id")
    f.write_text("1\t2\t\n")
    frame = read_table(f, sep="\t", names=["a", "b", "c"])
    with pytest.raises(DataError, match=r"line 1, field 'timestamp': missing value"):
        parse_floats(frame, "c", f, field="timestamp")
    assert np.isnan(parse_floats(frame, "c", f, allow_missing=True)[0])
    with pytest.raises(DataError, match="file not found"):
        read_table(tmp_path / "nope.tsv", sep="\t", names=["a"])
