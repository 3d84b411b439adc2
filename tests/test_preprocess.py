"""Tests of preprocessing: dedupe variants, rating threshold, k-core fixed point, compaction."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mgrec.config import from_dict
from mgrec.data.dataset import Dataset, FeatureTable, SocialGraph
from mgrec.data.preprocess import PreprocessConfig, kcore_mask, preprocess
from mgrec.data.vocab import Vocabulary
from mgrec.errors import ConfigError, DataError


def make(
    rows: list[tuple], *, time_: bool = True, n_users: int = 2, n_items: int = 2, **kw
) -> Dataset:
    cols = ["user", "item", "weight", "timestamp"][: 4 if time_ else 3]
    frame = pd.DataFrame([r[: len(cols)] for r in rows], columns=cols)
    frame = frame.astype({"user": np.int64, "item": np.int64, "weight": np.float32})
    if time_:
        frame["timestamp"] = frame["timestamp"].astype(np.int64)
    users = Vocabulary([f"u{n}" for n in range(n_users)])
    items = Vocabulary([f"i{n}" for n in range(n_items)])
    return Dataset("toy", users, items, frame, **kw)


#        user item weight time
DUPS = [(0, 0, 1.0, 30),   # row 0: latest event of pair (0, 0)
        (0, 1, 2.0, 10),   # row 1
        (0, 0, 3.0, 20),   # row 2: earliest of (0, 0), tied with row 4, first in the file
        (1, 0, 4.0, 5),    # row 3
        (0, 0, 5.0, 20),   # row 4
        (1, 1, 2.0, 50)]   # row 5


@pytest.mark.parametrize(
    ("how", "weights", "stamps"),
    [
        ("last", [1.0, 2.0, 4.0, 2.0], [30, 10, 5, 50]),
        ("first", [2.0, 3.0, 4.0, 2.0], [10, 20, 5, 50]),
        ("sum", [9.0, 2.0, 4.0, 2.0], [30, 10, 5, 50]),
        ("none", [1.0, 2.0, 3.0, 4.0, 5.0, 2.0], [30, 10, 20, 5, 20, 50]),
    ],
)
def test_dedupe_with_time(how: str, weights: list[float], stamps: list[int]) -> None:
    out = preprocess(make(DUPS), PreprocessConfig(dedupe=how))
    assert out.interactions["weight"].tolist() == weights
    assert out.interactions["timestamp"].tolist() == stamps
    assert out.interactions["weight"].dtype == np.float32
    assert out.meta["preprocess"]["counts"]["duplicates_removed"] == 6 - len(weights)


def test_dedupe_without_time_uses_file_order() -> None:
    ds = make(DUPS, time_=False)
    last = preprocess(ds, PreprocessConfig(dedupe="last")).interactions
    first = preprocess(ds, PreprocessConfig(dedupe="first")).interactions
    assert last["weight"].tolist() == [2.0, 4.0, 5.0, 2.0]  # rows 1, 3, 4, 5
    assert first["weight"].tolist() == [1.0, 2.0, 4.0, 2.0]  # rows 0, 1, 3, 5


def test_min_rating_and_binarize() -> None:
    out = preprocess(make(DUPS), PreprocessConfig(min_rating=2.0, binarize=True))
    # after "last": weights [1, 2, 4, 2]; weight 1 (row 0) falls below 2
    assert out.interactions["weight"].tolist() == [1.0, 1.0, 1.0]
    assert out.interactions["timestamp"].tolist() == [10, 5, 50]
    counts = out.meta["preprocess"]["counts"]
    assert counts["below_min_rating"] == 1 and counts["rows_out"] == 3
    assert out.meta["weight_kind"] == "implicit"
    assert out.meta["preprocess"]["config"]["min_rating"] == 2.0


# users A..D = 0..3, items 1..3 = 0..2: A{1,2} B{1,2} C{2,3} D{3}
CHAIN = [(0, 0, 1.0), (0, 1, 1.0), (1, 0, 1.0), (1, 1, 1.0), (2, 1, 1.0), (2, 2, 1.0), (3, 2, 1.0)]


def test_kcore_needs_several_passes() -> None:
    users = np.array([r[0] for r in CHAIN])
    items = np.array([r[1] for r in CHAIN])
    keep, passes = kcore_mask(users, items, 2, 2)
    # pass 1 drops D (1 item); pass 2 drops item 3 (left with C only); pass 3 drops C
    assert keep.tolist() == [True, True, True, True, False, False, False]
    assert passes == 3
    one_pass_users = np.bincount(users, minlength=4) >= 2
    assert one_pass_users[2]  # a single pass would have kept C


def test_kcore_counts_distinct_partners_and_compacts() -> None:
    rows = [*CHAIN, (3, 2, 1.0)]  # D lists item 3 twice: still one distinct item
    social = SocialGraph(np.array([0, 2, 1, 1]), np.array([1, 0, 1, 3]), np.ones(4, np.float32))
    feats = FeatureTable(pd.DataFrame({"age": [10.0, 20.0, 30.0, 40.0]}), {"age": "numeric"})
    mask = np.array([False, True, False, True, False, False, True, True])
    ds = make(rows, time_=False, n_users=4, n_items=3, social=social, user_features=feats,
              meta={"test_mask": mask, "note": "x"})
    out = preprocess(ds, PreprocessConfig(dedupe="none", kcore_user=2, kcore_item=2))
    assert out.users.to_list() == ["u0", "u1"] and out.items.to_list() == ["i0", "i1"]
    pairs = out.interactions[["user", "item"]].to_numpy().tolist()
    assert pairs == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert out.user_features.frame["age"].tolist() == [10.0, 20.0]
    # links 0->1 kept; 2->0 and 1->3 lose a user; 1->1 is a self-link
    assert out.social.src.tolist() == [0] and out.social.dst.tolist() == [1]
    assert out.meta["test_mask"].tolist() == [False, True, False, True]
    assert out.meta["note"] == "x"
    assert out.meta["preprocess"]["counts"] == {
        "rows_in": 8, "users_in": 4, "items_in": 3, "duplicates_removed": 0,
        "kcore_removed": 4, "kcore_iterations": 3, "self_links_removed": 1,
        "rows_out": 4, "users_out": 2, "items_out": 2, "social_links_out": 1,
    }
    assert len(ds.meta["test_mask"]) == 8  # the input is untouched


def test_self_links_kept_when_asked() -> None:
    social = SocialGraph(np.array([0, 1]), np.array([0, 0]), np.ones(2, np.float32))
    out = preprocess(make(DUPS, social=social), PreprocessConfig(drop_self_links=False))
    assert out.social.src.tolist() == [0, 1]


def test_empty_after_filtering() -> None:
    with pytest.raises(DataError) as err:
        preprocess(make(CHAIN, time_=False, n_users=4, n_items=3), PreprocessConfig(kcore_user=5))
    assert str(err.value) == ("dataset toy is empty after filtering "
                              "(min_rating=None, kcore_user=5, kcore_item=0)")
    with pytest.raises(DataError, match=r"min_rating=9\.0, kcore_user=0"):
        preprocess(make(DUPS), PreprocessConfig(min_rating=9.0))


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="dedupe"):
        PreprocessConfig(dedupe="max")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="kcore_item: must be >= 0"):
        PreprocessConfig(kcore_item=-1)
    with pytest.raises(ConfigError, match="min_rating"):
        PreprocessConfig(min_rating=float("nan"))
    with pytest.raises(ConfigError, match="unknown key 'kcore'"):
        from_dict(PreprocessConfig, {"kcore": 5})
    assert from_dict(PreprocessConfig, {"dedupe": "sum", "min_rating": 4}).min_rating == 4.0


def test_ciao_speed_and_core_property(real_data) -> None:
    sio = pytest.importorskip("scipy.io")
    root: Path = real_data("ciao")
    m = sio.loadmat(root / "ciao_with_rating_timestamp" / "rating_with_timestamp.mat")["rating"]
    users, items = Vocabulary.from_values(m[:, 0]), Vocabulary.from_values(m[:, 1])
    frame = pd.DataFrame({"user": users.index(m[:, 0]), "item": items.index(m[:, 1]),
                          "weight": m[:, 3].astype(np.float32),
                          "timestamp": m[:, 5].astype(np.int64)})
    ds = Dataset("ciao", users, items, frame)
    start = time.perf_counter()
    out = preprocess(ds, PreprocessConfig(kcore_user=5, kcore_item=5))
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    counts = out.meta["preprocess"]["counts"]
    assert counts["duplicates_removed"] == 1436  # the README's 1,436 duplicated pairs
    assert np.bincount(out.interactions["user"]).min() >= 5
    assert np.bincount(out.interactions["item"]).min() >= 5
    expected = counts["rows_in"] - 1436 - counts["kcore_removed"]
    assert counts["rows_out"] == len(out.interactions) == expected
