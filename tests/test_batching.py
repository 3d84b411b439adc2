"""ContextBuilder and item arrays: hand-computed batches, no leakage, cold rows, round trips."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from worlds import small_world

from mgrec.batching import ContextBuilder
from mgrec.data.dataset import Dataset, FeatureTable, SocialGraph
from mgrec.data.features import encode_features
from mgrec.data.synthetic import make_synthetic
from mgrec.data.vocab import Vocabulary
from mgrec.errors import ConfigError, DataError
from mgrec.feature_arrays import build_item_arrays, feature_arrays, item_time_raw

PAD_I, PAD_U = 5, 3


def _dataset(*, time: bool = True, social_w: tuple[float, float] = (1.0, 2.0)) -> Dataset:
    # u0: i0@100, i1@200, i2@300 ; u1: i3@150, i0@250 ; u2: nothing (source order shuffled)
    inter = pd.DataFrame({
        "user": np.array([0, 1, 0, 1, 0], np.int64),
        "item": np.array([2, 0, 0, 3, 1], np.int64),
        "weight": np.array([5, 4, 3, 2, 1], np.float32),
        "timestamp": np.array([300, 250, 100, 150, 200], np.int64),
    })
    if not time:
        inter = inter.drop(columns="timestamp")
    users = FeatureTable(pd.DataFrame({
        "gender": pd.Series(["F", "M", None], dtype=object),
        "age": [20.0, 40.0, np.nan],
        "tags": pd.Series([("a", "b", "a"), ("b",), ()], dtype=object),
    }), {"gender": "categorical", "age": "numeric", "tags": "multi"})
    social = SocialGraph(np.array([0, 2]), np.array([1, 0]), np.array(social_w, np.float32), directed=False)
    return Dataset("toy", Vocabulary(["u0", "u1", "u2"]), Vocabulary([f"i{k}" for k in range(5)]),
                   inter, user_features=users, social=social)


def _builder(ds: Dataset, **kw) -> ContextBuilder:
    args = {"max_len": 2, "max_friends": 2, "friend_len": 2}
    args.update(kw)
    return ContextBuilder(ds, ds.interactions, user_features=encode_features(ds.user_features), **args)


def test_default_batch_is_latest_history_left_padded():
    cb = _builder(_dataset())
    b = cb.batch(np.array([0, 1, 2]))
    assert b.hist_items.tolist() == [[1, 2], [3, 0], [PAD_I, PAD_I]]
    assert b.hist_times.tolist() == [[200, 300], [150, 250], [0, 0]]
    assert b.hist_weights.tolist() == [[1, 5], [2, 4], [0, 0]]
    # u2 has no events: served at the model's "now", the latest event + 1 s
    assert b.time.tolist() == [301, 251, 301]
    assert b.users.tolist() == [0, 1, 2] and cb.trained.tolist() == [True, True, False]
    assert cb.t_min == 100 and cb.t_max == 300


def test_friends_strongest_first_then_recency():
    cb = _builder(_dataset())  # u0-u2 weighs 2, u0-u1 weighs 1
    assert cb.friends.tolist() == [[2, 1], [0, PAD_U], [0, PAD_U]]
    cb = _builder(_dataset(social_w=(1.0, 1.0)))  # tie: u1 (last event 250) before u2 (none)
    assert cb.friends[0].tolist() == [1, 2]
    cb = _builder(_dataset(), max_friends=1)
    assert cb.friends.tolist() == [[2], [0], [0]]


def test_cutoff_sees_only_earlier_events_and_earlier_friend_items():
    cb = _builder(_dataset())
    b = cb.batch(np.array([0, 0, 0]), cutoff=np.array([0, 1, 2]))
    assert b.hist_items.tolist() == [[PAD_I, PAD_I], [PAD_I, 0], [0, 1]]
    assert b.time.tolist() == [100, 200, 300]  # the target's own time
    # friends of u0: u2 (no events), u1 (i3@150, i0@250): strictly before the row's time
    assert b.friend_items[:, 0].tolist() == [[PAD_I, PAD_I]] * 3
    assert b.friend_items[:, 1].tolist() == [[PAD_I, PAD_I], [PAD_I, 3], [3, 0]]


def test_explicit_times_cut_friend_items_at_that_time():
    cb = _builder(_dataset())
    b = cb.batch(np.array([2, 2]), times=np.array([250.0, np.nan]))
    assert b.friends.tolist() == [[0, PAD_U], [0, PAD_U]]
    assert b.friend_items[0, 0].tolist() == [0, 1]  # u0 before 250: i0@100, i1@200
    assert b.friend_items[1, 0].tolist() == [1, 2]  # unknown time: the latest items
    assert math.isnan(float(b.time[1]))


def test_exclude_leaves_the_target_out():
    cb = _builder(_dataset())
    b = cb.batch(np.array([0, 0, 0, 1]), exclude=np.array([2, 1, 0, -1]))
    assert b.hist_items.tolist() == [[0, 1], [0, 2], [1, 2], [3, 0]]


def test_user_feature_arrays():
    cb = _builder(_dataset())
    ua = cb.user_arrays
    # gender vocab by frequency then label: F (1), M (2); missing -> 0
    # then the age bucket: fit values 20, 40 cut at 40 -> 20 in bucket 1, 40 in 2, missing 0
    assert ua.cat.tolist() == [[1, 1], [2, 2], [0, 0]]
    assert ua.cardinalities == [3, 3]
    # age: mean 30, std 10 -> -1, 1, missing 0 with indicator
    np.testing.assert_allclose(ua.num, [[-1, 0], [1, 0], [0, 1]])
    # tags: a (2 uses) then b: tokens 1, 2; u0 a:2/3 b:1/3
    assert ua.n_bag_tokens == 3
    assert ua.bag_idx.tolist() == [[1, 2], [2, 0], [0, 0]]
    np.testing.assert_allclose(ua.bag_w, [[2 / 3, 1 / 3], [1, 0], [0, 0]], rtol=1e-6)


def test_feature_arrays_keep_heaviest_tokens_and_handle_none():
    table = FeatureTable(pd.DataFrame({"t": pd.Series([("x", "y", "y", "z", "z", "z")], dtype=object)}),
                         {"t": "multi"})
    fa = feature_arrays(encode_features(table), 1, max_tokens=2)
    # vocab by count: z (col 0), y (1), x (2); tokens are col + 1
    assert fa.bag_idx.tolist() == [[1, 2]]
    np.testing.assert_allclose(fa.bag_w, [[0.5, 2 / 6]], rtol=1e-6)
    empty = feature_arrays(None, 4)
    assert empty.cat.shape == (4, 0) and empty.bag_idx.shape == (4, 1) and empty.n_bag_tokens == 1


def test_item_time_features_by_hand():
    ds = _dataset()
    raw = item_time_raw(ds.interactions, 5, with_time=True)
    np.testing.assert_allclose(raw[:, 0], np.log1p([2, 1, 1, 1, 0]))
    np.testing.assert_allclose(raw[:, 1], [0, 0, 1, 0, 0])  # only i2@300 is in [280, 300]
    np.testing.assert_allclose(raw[:, 2], np.log1p(np.array([200, 100, 0, 150, 0]) / 86400))
    ia = build_item_arrays(None, ds.interactions, 5, with_time=True)
    np.testing.assert_allclose(ia.time_feats.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(ia.new_item_time_feats(2)[0], ia.time_feats[4], atol=1e-6)
    assert build_item_arrays(None, ds.interactions, 5, with_time=False).time_feats.shape == (5, 1)


def test_cold_batch():
    cb = _builder(_dataset(), max_len=3)
    b = cb.cold_batch([4, 0, 2], [30.0, 10.0, 20.0], {"gender": "M", "age": 50, "tags": ["b", "zzz"]},
                      friends=[1], time=200.0)
    assert b.users.tolist() == [PAD_U]
    assert b.hist_items.tolist() == [[0, 2, 4]] and b.hist_times.tolist() == [[10, 20, 30]]
    assert b.user_cat.tolist() == [[2, 2]]  # gender M; age 50 in the top bucket (>= 40)
    np.testing.assert_allclose(b.user_num, [[2, 0]])
    assert b.user_bag.tolist() == [[2]] and b.user_bag_w.tolist() == [[1.0]]
    assert b.friends.tolist() == [[1, PAD_U]]
    assert b.friend_items[0, 0].tolist() == [PAD_I, 3]  # u1 before t=200
    # more friends than max_friends (2): the most recently active are kept, as in training
    assert cb.cold_batch([], friends=[2, 1, 0]).friends.tolist() == [[0, 1]]
    nothing = cb.cold_batch([], None, None, None, None)
    assert nothing.hist_items.tolist() == [[PAD_I] * 3] and math.isnan(float(nothing.time[0]))
    assert nothing.user_cat.tolist() == [[0, 0]] and nothing.user_num.tolist() == [[0, 1]]
    untimed = cb.cold_batch([1, 2], time=500.0)  # events without times count as at the request
    assert untimed.hist_times.tolist() == [[0, 500, 500]] and untimed.hist_items.tolist() == [[PAD_I, 1, 2]]
    with pytest.raises(DataError, match="unknown user feature") as err:
        cb.cold_batch([], features={"shoe": 3})
    assert err.value.field == "shoe"
    with pytest.raises(DataError, match="0..4"):
        cb.cold_batch([7])
    with pytest.raises(DataError, match="friend"):
        cb.cold_batch([], friends=[3])
    with pytest.raises(DataError, match="not a number"):
        cb.cold_batch([], features={"age": "old"})


def test_no_time_dataset():
    cb = _builder(_dataset(time=False))
    b = cb.batch(np.array([0, 2]))
    assert b.hist_items.tolist() == [[0, 1], [PAD_I, PAD_I]]  # source order: i2, i0, i1
    assert b.hist_times.tolist() == [[0, 0], [0, 0]]
    assert all(math.isnan(t) for t in b.time.tolist())
    assert b.friend_items[1, 0].tolist() == [0, 1]
    assert math.isnan(cb.t_min)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="max_len"):
        _builder(_dataset(), max_len=0)
    with pytest.raises(ConfigError, match="0..2"):
        _builder(_dataset()).batch(np.array([3]))
    with pytest.raises(ConfigError, match="cutoff must have shape"):
        _builder(_dataset()).batch(np.array([0, 1]), cutoff=np.array([1]))


def test_state_round_trip():
    cb = _builder(_dataset())
    state, arrays = cb.to_state()
    again = ContextBuilder.from_state(state, arrays)
    for a, b in [(cb.batch(np.arange(3)), again.batch(np.arange(3))),
                 (cb.cold_batch([1], features={"gender": "F"}), again.cold_batch([1], features={"gender": "F"}))]:
        for name in a.__dataclass_fields__:
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and np.array_equal(x.numpy(), y.numpy(), equal_nan=True), name


def test_without_social_data_every_friend_slot_is_padding():
    ds = _dataset()
    lonely = Dataset(ds.name, ds.users, ds.items, ds.interactions, user_features=ds.user_features)
    b = _builder(lonely).batch(np.array([0, 1, 2]))
    assert (b.friends == 3).all() and b.friend_items.shape == (3, 2, 2) and (b.friend_items == PAD_I).all()


def test_trained_flags_survive_saving_and_old_states_derive_them():
    cb = _builder(_dataset())
    later = cb.with_events(np.array([2]), np.array([4]), np.array([400.0]))  # u2 gets a history, not a trained id
    assert later.trained.tolist() == [True, True, False] and later.batch(np.array([2])).time.tolist() == [401]
    state, arrays = cb.to_state()
    assert ContextBuilder.from_state(state, arrays).trained.tolist() == [True, True, False]
    old = {k: v for k, v in arrays.items() if k != "trained"}
    assert ContextBuilder.from_state(state, old).trained.tolist() == [True, True, False]
    with pytest.raises(ValueError, match="saved sizes"):
        ContextBuilder.from_state(state, {**arrays, "trained": np.ones(5, np.uint8)})


def test_an_untrained_user_id_reads_as_the_unknown_user():
    """A user without training events (new in a temporal split's test period) is encoded
    from the profile alone, as the unknown user row, not from an id row that never trained."""
    import torch

    from mgrec.encoders.user import UserEncoder

    cb = _builder(_dataset())
    ua = cb.user_arrays
    enc = UserEncoder(3, 4, cat_cardinalities=ua.cardinalities, n_numeric=ua.num.shape[1],
                      n_bag_tokens=ua.n_bag_tokens, missing_columns=range(1, ua.num.shape[1], 2),
                      trained=cb.trained).eval()
    torch.nn.init.normal_(enc.id_embedding.weight)  # every id row non-zero, as if trained
    batch = cb.batch(np.array([0, 2]))
    vec, present = enc(batch)
    unknown = cb.batch(np.array([0, 2]))
    unknown.users[:] = 3
    vec_unknown, _ = enc(unknown)
    torch.testing.assert_close(vec[1], vec_unknown[1])  # u2: profile only
    assert not torch.allclose(vec[0], vec_unknown[0])  # u0's id counts
    assert present.tolist() == [True, False]  # u2 has no profile value either
    with pytest.raises(ValueError, match="one flag per user"):
        UserEncoder(3, 4, cat_cardinalities=[], n_numeric=0, n_bag_tokens=0, trained=[True])


def test_no_leakage_against_a_naive_loop():
    ds = make_synthetic(small_world(n_users=60, n_items=50, mean_events=12), seed=0)
    cb = ContextBuilder(ds, ds.interactions, max_len=4, max_friends=3, friend_len=3)
    users, pos, items, times = cb.examples()
    b = cb.batch(users, cutoff=pos)
    frame = ds.interactions.sort_values(["user", "timestamp"], kind="stable")
    per_user = {u: g for u, g in frame.groupby("user")}
    hist = b.hist_items.numpy()
    fitems = b.friend_items.numpy()
    for r in range(len(users)):
        g = per_user[int(users[r])]
        before = g.iloc[: pos[r]]
        expect = before["item"].to_numpy()[-4:]
        got = hist[r][hist[r] != ds.n_items]
        assert got.tolist() == expect.tolist()
        assert items[r] == g["item"].iloc[pos[r]] and float(b.time[r]) == np.float32(times[r])
        for j, f in enumerate(b.friends[r].tolist()):
            if f == ds.n_users:
                assert (fitems[r, j] == ds.n_items).all()
                continue
            fg = per_user.get(f)
            exp = [] if fg is None else fg[fg["timestamp"] < times[r]]["item"].to_numpy()[-3:].tolist()
            assert fitems[r, j][fitems[r, j] != ds.n_items].tolist() == exp


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_windows_cover_every_target_once_with_enough_context(stride):
    ds = make_synthetic(small_world(n_users=40, n_items=30, mean_events=9), seed=1)
    cb = ContextBuilder(ds, ds.interactions, max_len=4, max_friends=2, friend_len=2)
    users, first, end = cb.windows(stride)
    n = np.diff(cb.indptr)
    covered = {}
    for u, a, c in zip(users.tolist(), first.tolist(), end.tolist(), strict=True):
        assert 1 <= a < c <= n[u] and c - a <= stride
        for t in range(a, c):
            assert (u, t) not in covered
            covered[(u, t)] = True
            # the pass reads the max_len events before c - 1: t sees events [c-1-max_len, t)
            assert t - max(c - 1 - 4, 0) >= min(t, 4 - stride + 1)
    expect = {(u, t) for u in range(cb.n_users) for t in range(1, n[u])}
    assert set(covered) == expect


def test_windows_bad_stride():
    ds = make_synthetic(small_world(n_users=20, n_items=30, mean_events=5), seed=0)
    cb = ContextBuilder(ds, ds.interactions, max_len=4, max_friends=2, friend_len=2)
    for bad in (0, 5):
        with pytest.raises(ConfigError, match="stride"):
            cb.windows(bad)


def test_pack_steps_counts_off_targets_by_hand():
    from mgrec.training import pack_steps

    sizes = np.array([3, 5, 2, 4, 1, 6])
    order = np.array([5, 0, 2, 1, 4, 3])  # targets 6, 3, 2, 5, 1, 4: cumulative 6, 9, 11, 16, 17, 21
    steps = pack_steps(order, sizes, batch_size=5)
    # a block joins the step of its last target: 6 -> step 1, 9 -> 1, 11 -> 2, 16 -> 3, 17 -> 3, 21 -> 4
    assert [s.tolist() for s in steps] == [[5, 0], [2], [1, 4], [3]]
    assert [s.tolist() for s in pack_steps(order, sizes, batch_size=100)] == [order.tolist()]
    assert [s.tolist() for s in pack_steps(order, sizes, batch_size=1)] == [[b] for b in order.tolist()]
    assert pack_steps(np.array([], dtype=np.int64), sizes, batch_size=4) == []
    with pytest.raises(ConfigError, match="batch_size"):
        pack_steps(order, sizes, batch_size=0)


def test_batch_history_keeps_the_latest_columns_only():
    ds = make_synthetic(small_world(n_users=30, n_items=25, mean_events=8), seed=2)
    cb = ContextBuilder(ds, ds.interactions, max_len=5, max_friends=2, friend_len=2)
    users = np.arange(cb.n_users)
    cut = np.minimum(np.diff(cb.indptr), 3)
    full, short = cb.batch(users, cutoff=cut), cb.batch(users, cutoff=cut, history=2)
    for name in ("hist_items", "hist_times", "hist_weights"):
        assert getattr(short, name).shape == (cb.n_users, 2)
        assert torch.equal(getattr(short, name), getattr(full, name)[:, -2:])
    for name in ("users", "time", "friends", "friend_items", "user_cat"):
        assert torch.equal(getattr(short, name), getattr(full, name))
    for bad in (0, 6):
        with pytest.raises(ConfigError, match="history"):
            cb.batch(users, history=bad)
