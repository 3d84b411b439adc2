"""Splits: RecBole's count rule, leave-one-out, the temporal cut, files, and errors."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from mgrec.data.dataset import Dataset
from mgrec.data.split import PROTOCOLS, Split, make_split, ratio_counts
from mgrec.data.vocab import Vocabulary
from mgrec.errors import ConfigError, DataError


def _dataset(users, items, ts=None, *, name="toy", weights=None) -> Dataset:
    """A dataset whose row r has weight r (unless given), so every row can be traced."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    weights = np.arange(len(users)) if weights is None else weights
    frame = pd.DataFrame({"user": users, "item": items, "weight": np.asarray(weights, np.float32)})
    if ts is not None:
        frame["timestamp"] = np.asarray(ts, dtype=np.int64)
    n_users = int(users.max()) + 1 if len(users) else 1
    n_items = int(items.max()) + 1 if len(items) else 1
    return Dataset(
        name,
        Vocabulary([f"u{k}" for k in range(n_users)]),
        Vocabulary([f"i{k}" for k in range(n_items)]),
        frame,
    )


def _sizes_dataset() -> Dataset:
    """Users 0..5 with 1, 2, 3, 5, 10 and 11 interactions, rows interleaved."""
    sizes = [1, 2, 3, 5, 10, 11]
    users = np.repeat(np.arange(len(sizes)), sizes)
    users = users[np.random.default_rng(7).permutation(len(users))]
    items = np.arange(len(users)) % 13
    return _dataset(users, items, ts=np.arange(len(users)) * 10)


def _recbole_reference(n: int, ratios: tuple[float, float, float]) -> list[int]:
    """RecBole's loop, written out plainly."""
    cnt = [int(r * n) for r in ratios]
    cnt[0] = n - sum(cnt[1:])
    for i in range(1, len(ratios)):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * n < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    return cnt


# ------------------------------------------------------------------ RecBole rule
def test_ratio_counts_hand_checked() -> None:
    got = ratio_counts(np.array([1, 2, 3, 5, 10, 11]), (0.8, 0.1, 0.1))
    assert got.tolist() == [[1, 0, 0], [1, 0, 1], [1, 1, 1], [3, 1, 1], [8, 1, 1], [9, 1, 1]]
    # 4 with (0.7, 0.2, 0.1): shares 2.8, 0.8, 0.4 -> (4, 0, 0) -> test +1 -> valid +1
    assert ratio_counts(4, (0.7, 0.2, 0.1)).tolist() == [2, 1, 1]
    assert ratio_counts(10, (0.7, 0.2, 0.1)).tolist() == [7, 2, 1]


@pytest.mark.parametrize(
    "ratios", [(0.8, 0.1, 0.1), (0.7, 0.2, 0.1), (0.6, 0.2, 0.2), (0.9, 0.0, 0.1)]
)
def test_ratio_counts_matches_the_plain_loop(ratios) -> None:
    ns = np.arange(0, 300)
    got = ratio_counts(ns, ratios)
    assert got.tolist() == [_recbole_reference(int(n), ratios) for n in ns]
    assert (got.sum(axis=1) == ns).all()


def test_random_split_per_user_counts() -> None:
    ds = _sizes_dataset()
    split = make_split(ds, "random", seed=3)
    expected = {0: (1, 0, 0), 1: (1, 0, 1), 2: (1, 1, 1), 3: (3, 1, 1), 4: (8, 1, 1), 5: (9, 1, 1)}
    for user, want in expected.items():
        got = tuple(int((f["user"] == user).sum()) for f in (split.train, split.valid, split.test))
        assert got == want, user
    assert split.protocol == "random" and split.seed == 3
    assert split.ratios == pytest.approx((0.8, 0.1, 0.1))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_parts_are_disjoint_cover_everything_and_keep_source_order(protocol) -> None:
    ds = _sizes_dataset()
    split = make_split(ds, protocol, seed=0)
    rows = [f["weight"].to_numpy().astype(int) for f in split.parts().values()]
    union = np.concatenate(rows)
    assert len(union) == len(ds.interactions) == 32
    assert sorted(union.tolist()) == list(range(32))
    for part, r in zip(split.parts().values(), rows):
        assert (np.diff(r) > 0).all()  # source order kept
        assert list(part.columns) == list(ds.interactions.columns)
        assert isinstance(part.index, pd.RangeIndex) and part.index.start == 0
        assert part["user"].dtype == np.int64 and part["weight"].dtype == np.float32


def test_random_split_is_deterministic_and_seed_dependent() -> None:
    rng = np.random.default_rng(0)
    ds = _dataset(rng.integers(0, 30, 2000), rng.integers(0, 200, 2000))
    a, b = make_split(ds, "random", seed=11), make_split(ds, "random", seed=11)
    c = make_split(ds, "random", seed=12)
    for x, y in zip(a.parts().values(), b.parts().values()):
        pd.testing.assert_frame_equal(x, y)
    assert not a.test["weight"].equals(c.test["weight"])
    assert len(a.test) == len(c.test)  # the counts depend on sizes only


def test_random_ratios_are_normalised() -> None:
    ds = _sizes_dataset()
    split = make_split(ds, "random", seed=1, ratios=(8, 1, 1))
    assert split.ratios == pytest.approx((0.8, 0.1, 0.1))
    assert [len(f) for f in split.parts().values()] == [23, 4, 5]


# ---------------------------------------------------------------------------- loo
def test_loo_takes_the_last_events_in_time_order() -> None:
    # user 0: ts 30, 10, 20, 40 -> test row 3 (40), valid row 0 (30)
    # user 1: one event -> train; user 2: two events -> later one is test
    # user 3: ts 5, 7, 7 -> tie at 7: the later row (6) is test, row 5 valid
    # user 4: ts 7, 7, 5 -> sorted 5(row 9), 7(row 7), 7(row 8): test row 8, valid row 7
    users = [0, 0, 0, 0, 1, 3, 3, 4, 4, 4, 2, 2, 3]
    ts = [30, 10, 20, 40, 99, 7, 7, 7, 7, 5, 50, 40, 5]
    split = make_split(_dataset(users, np.arange(13), ts), "loo", seed=0)
    assert sorted(split.test["weight"].astype(int)) == [3, 6, 8, 10]
    assert sorted(split.valid["weight"].astype(int)) == [0, 5, 7]
    assert sorted(split.train["weight"].astype(int)) == [1, 2, 4, 9, 11, 12]


# ----------------------------------------------------------------------- temporal
def _assert_no_leak(split: Split) -> None:
    tr, va, te = (f["timestamp"] for f in split.parts().values())
    if len(va):
        assert tr.max() < va.min()
        assert len(te) == 0 or va.max() < te.min()
    if len(te):
        assert tr.max() < te.min()


def test_temporal_distinct_times() -> None:
    ts = np.random.default_rng(2).permutation(np.arange(1, 11)) * 100
    split = make_split(_dataset(np.arange(10) % 3, np.arange(10), ts), "temporal", seed=0)
    assert sorted(split.train["timestamp"]) == [100 * k for k in range(1, 9)]
    assert split.valid["timestamp"].tolist() == [900]
    assert split.test["timestamp"].tolist() == [1000]
    _assert_no_leak(split)


def test_temporal_ties_move_whole_groups_later() -> None:
    # positions 8 and 9 of the sorted times give t1 = 8, t2 = 9: both 8s go to valid.
    ts = [1, 2, 3, 4, 5, 6, 7, 8, 8, 9]
    split = make_split(_dataset(np.zeros(10), np.arange(10), ts), "temporal", seed=0)
    assert [len(f) for f in split.parts().values()] == [7, 2, 1]
    _assert_no_leak(split)
    # a tie across the second cut: t1 = t2 = 10, so valid is empty and test takes both.
    ts = [1, 2, 3, 4, 5, 6, 7, 8, 10, 10]
    split = make_split(_dataset(np.zeros(10), np.arange(10), ts), "temporal", seed=0)
    assert [len(f) for f in split.parts().values()] == [8, 0, 2]
    _assert_no_leak(split)


def test_temporal_all_times_equal_is_an_error() -> None:
    with pytest.raises(DataError, match="leaves train empty"):
        make_split(_dataset([0, 1, 2], [0, 1, 2], [5, 5, 5]), "temporal", seed=0)


# ------------------------------------------------------------------------- errors
@pytest.mark.parametrize("protocol", ["loo", "temporal"])
def test_time_protocols_need_timestamps(protocol) -> None:
    ds = _dataset([0, 1], [0, 1], name="epinions")
    message = "dataset epinions has no timestamps; use the random split"
    with pytest.raises(ConfigError, match=message):
        make_split(ds, protocol, seed=0)


def test_bad_protocol_ratios_and_empty_dataset() -> None:
    ds = _sizes_dataset()
    with pytest.raises(ConfigError, match="choose one of random, loo, temporal"):
        make_split(ds, "kfold", seed=0)
    nan = float("nan")
    for bad in [(0.8, 0.2), (0.0, 0.5, 0.5), (0.8, -0.1, 0.3), (0.8, nan, 0.1), ("a", 1, 1)]:
        with pytest.raises(ConfigError, match="split ratios"):
            make_split(ds, "random", seed=0, ratios=bad)
    with pytest.raises(ConfigError, match="seed must be a non-negative integer"):
        make_split(ds, "random", seed=-1)
    with pytest.raises(DataError, match="no interactions"):
        make_split(_dataset([], []), "random", seed=0)


# -------------------------------------------------------------------------- summary
def test_summary_values() -> None:
    # user 0: 3 events (train, valid, test by time); user 1: 1 event (train only);
    # user 2: 2 events (train, test); item 9 appears only in user 2's test row.
    users = [0, 0, 0, 1, 2, 2]
    items = [0, 1, 2, 0, 1, 9]
    ts = [1, 2, 3, 4, 5, 6]
    split = make_split(_dataset(users, items, ts), "loo", seed=5)
    s = split.summary()
    assert s["counts"] == {"train": 3, "valid": 1, "test": 2}
    assert s["fractions"]["train"] == pytest.approx(0.5)
    assert s["users"] == {"train": 3, "valid": 1, "test": 2}
    assert s["items"] == {"train": 2, "valid": 1, "test": 2}
    assert s["cold_test_users"] == 0 and s["cold_test_items"] == 2  # items 2 and 9
    assert s["time"] == {"train": [1, 5], "valid": [2, 2], "test": [3, 6]}
    json.dumps(s)


# ---------------------------------------------------------------------------- files
@pytest.mark.parametrize("with_time", [True, False])
def test_save_load_round_trip(tmp_path, with_time) -> None:
    base = _sizes_dataset()
    frame = base.interactions.copy()
    frame["weight"] = (frame["weight"] * 0.1 + 0.5).astype(np.float32)  # 0.5, 0.6, 0.7, ...
    if not with_time:
        frame = frame.drop(columns="timestamp")
    ds = Dataset(base.name, base.users, base.items, frame)
    split = make_split(ds, "random", seed=4)
    split.save(tmp_path / "s", ds)
    manifest = json.loads((tmp_path / "s" / "split.json").read_text())
    assert manifest["format_version"] == 1 and manifest["dataset"] == "toy"
    assert manifest["protocol"] == "random" and manifest["seed"] == 4
    assert manifest["counts"] == {"train": 23, "valid": 4, "test": 5}
    header = (tmp_path / "s" / "test.tsv").read_text().splitlines()[0]
    assert header == "user_id\titem_id\tweight" + ("\ttimestamp" if with_time else "")
    first = (tmp_path / "s" / "train.tsv").read_text().splitlines()[1].split("\t")
    user, item = int(split.train["user"].iloc[0]), int(split.train["item"].iloc[0])
    assert first[:2] == [f"u{user}", f"i{item}"]  # raw ids, not codes
    back = Split.load(tmp_path / "s", ds)
    for a, b in zip(split.parts().values(), back.parts().values()):
        pd.testing.assert_frame_equal(a, b)
    assert (back.protocol, back.seed, back.ratios) == (split.protocol, split.seed, split.ratios)
    assert sorted(p.name for p in (tmp_path).iterdir()) == ["s"]  # no temp folders left


def test_load_rejects_a_modified_file(tmp_path) -> None:
    ds = _sizes_dataset()
    make_split(ds, "loo", seed=0).save(tmp_path / "s", ds)
    path = tmp_path / "s" / "test.tsv"
    path.write_text(path.read_text() + "u0\ti0\t1.0\t0\n")
    with pytest.raises(DataError, match="test.tsv: was modified"):
        Split.load(tmp_path / "s", ds)


def test_load_rejects_unknown_ids_and_other_datasets(tmp_path) -> None:
    ds = _sizes_dataset()
    make_split(ds, "loo", seed=0).save(tmp_path / "s", ds)
    small = _dataset([0, 1, 2, 3], [0, 1, 2, 3], ts=[1, 2, 3, 4])
    with pytest.raises(DataError) as err:
        Split.load(tmp_path / "s", small)
    assert err.value.field == "user_id" and err.value.line is not None
    assert "unknown user id" in str(err.value) and "train.tsv" in str(err.value)
    other = Dataset("other", ds.users, ds.items, ds.interactions)
    with pytest.raises(DataError, match="made for dataset 'toy'"):
        Split.load(tmp_path / "s", other)
    (tmp_path / "s" / "split.json").write_text("{not json")
    with pytest.raises(DataError, match="not a valid split manifest"):
        Split.load(tmp_path / "s", ds)
    with pytest.raises(DataError, match="file not found"):
        Split.load(tmp_path / "missing", ds)


def test_save_rejects_ids_with_tabs(tmp_path) -> None:
    ds = _dataset([0, 1], [0, 1])
    bad = Dataset("t", Vocabulary(["a\tb", "c"]), ds.items, ds.interactions)
    with pytest.raises(DataError, match="tab or line break"):
        make_split(bad, "random", seed=0).save(tmp_path / "s", bad)
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------ real data
def _ml100k(root) -> Dataset:
    raw = pd.read_csv(root / "u.data", sep="\t", names=["u", "i", "r", "t"])
    users, items = Vocabulary.from_values(raw["u"]), Vocabulary.from_values(raw["i"])
    frame = pd.DataFrame(
        {
            "user": users.index(raw["u"].to_numpy()),
            "item": items.index(raw["i"].to_numpy()),
            "weight": raw["r"].to_numpy(np.float32),
            "timestamp": raw["t"].to_numpy(np.int64),
        }
    )
    return Dataset("ml-100k", users, items, frame)


def test_real_ml100k_protocols(real_data, tmp_path) -> None:
    ds = _ml100k(real_data("ml-100k"))
    loo = make_split(ds, "loo", seed=0)
    assert [len(f) for f in loo.parts().values()] == [100_000 - 2 * 943, 943, 943]
    temporal = make_split(ds, "temporal", seed=0)
    _assert_no_leak(temporal)
    counts = [len(f) for f in temporal.parts().values()]
    assert sum(counts) == 100_000 and counts[0] <= 80_000 and counts[2] >= 10_000
    rnd = make_split(ds, "random", seed=0)
    sizes = np.bincount(ds.interactions["user"], minlength=ds.n_users)
    assert len(rnd.test) == int(ratio_counts(sizes, (0.8, 0.1, 0.1))[:, 2].sum())
    rnd.save(tmp_path / "s", ds)
    back = Split.load(tmp_path / "s", ds)
    pd.testing.assert_frame_equal(back.test, rnd.test)


def test_real_epinions_random_split_is_fast(real_data) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    rating = scipy_io.loadmat(real_data("epinions") / "rating.mat")["rating"]
    users, items = Vocabulary.from_values(rating[:, 0]), Vocabulary.from_values(rating[:, 1])
    frame = pd.DataFrame(
        {
            "user": users.index(rating[:, 0]),
            "item": items.index(rating[:, 1]),
            "weight": rating[:, 3].astype(np.float32),
        }
    )
    ds = Dataset("epinions", users, items, frame)
    start = time.perf_counter()
    split = make_split(ds, "random", seed=0)
    elapsed = time.perf_counter() - start
    assert sum(len(f) for f in split.parts().values()) == 922_267
    sizes = np.bincount(frame["user"], minlength=len(users))
    want = ratio_counts(sizes, (0.8, 0.1, 0.1)).sum(axis=0).tolist()
    assert [len(f) for f in split.parts().values()] == want
    assert elapsed < 5.0, elapsed  # about 0.3 s on a laptop core
