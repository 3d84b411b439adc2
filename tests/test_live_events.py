"""Events taken in after training: ``ContextBuilder.with_events``, ``Recommender.observe``, the
index path of ``recommend()``, and stored events merged into a dataset for retraining."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from worlds import small_world

from mgrec.baselines.ease import EASE
from mgrec.batching import ContextBuilder
from mgrec.data.dataset import Dataset, FeatureTable
from mgrec.data.events import events_dataset, with_events
from mgrec.data.split import make_split
from mgrec.data.synthetic import make_synthetic
from mgrec.data.vocab import Vocabulary
from mgrec.errors import ConfigError, DataError
from mgrec.mgr import MGR


def _dataset(with_time: bool = True) -> Dataset:
    inter = pd.DataFrame({"user": [0, 0, 0, 1, 1], "item": [0, 1, 2, 2, 3],
                          "weight": np.float32([1, 1, 1, 1, 1])})
    if with_time:
        inter["timestamp"] = np.array([10, 20, 30, 15, 25], np.int64)
    return Dataset("t", Vocabulary(["a", "b"]), Vocabulary(["w", "x", "y", "z", "v"]), inter)


def test_with_events_inserts_in_time_order_and_keeps_the_original():
    ds = _dataset()
    ctx = ContextBuilder(ds, ds.interactions, max_len=4, max_friends=1, friend_len=2)
    new = ctx.with_events(np.array([0, 1, 0]), np.array([4, 0, 3]), np.array([25.0, 99.0, 30.0]))
    assert new.history(0)[0].tolist() == [0, 1, 4, 2, 3]  # 25 goes between 20 and 30; 30 after the 30
    assert new.history(0)[1].tolist() == [10, 20, 25, 30, 30]
    assert new.history(1)[0].tolist() == [2, 3, 0]
    assert new.indptr.tolist() == [0, 5, 8]
    assert ctx.history(0)[0].tolist() == [0, 1, 2] and ctx.indptr.tolist() == [0, 3, 5]  # unchanged
    b = new.batch(np.array([0, 1]))
    assert b.hist_items[0].tolist() == [1, 4, 2, 3] and b.hist_items[1].tolist() == [5, 2, 3, 0]
    assert b.time.tolist() == [31.0, 100.0]  # the request time follows the new last event
    assert new.t_max == 99.0


def test_with_events_without_time_appends_and_checks_input():
    ds = _dataset(with_time=False)
    ctx = ContextBuilder(ds, ds.interactions, max_len=3, max_friends=1, friend_len=2)
    new = ctx.with_events(np.array([1, 0]), np.array([4, 4]))
    assert new.history(0)[0].tolist() == [0, 1, 2, 4] and new.history(1)[0].tolist() == [2, 3, 4]
    with pytest.raises(DataError, match="user codes"):
        ctx.with_events(np.array([2]), np.array([0]))
    with pytest.raises(DataError, match="item codes"):
        ctx.with_events(np.array([0]), np.array([5]))
    timed = ContextBuilder(_dataset(), _dataset().interactions, max_len=3, max_friends=1, friend_len=2)
    with pytest.raises(DataError, match="finite times") as err:
        timed.with_events(np.array([0]), np.array([1]), np.array([np.nan]))
    assert err.value.field == "timestamp"


def test_observe_marks_items_seen_and_ease_reads_them():
    ds = _dataset(with_time=False)
    m = EASE({"reg": 1.0}).fit(ds, ds.interactions)
    before = m.score(np.array([1]))[0].copy()
    m.observe(np.array([1]), np.array([0]))
    assert m.seen_[1].indices.tolist() == [0, 2, 3]
    assert not np.allclose(m.score(np.array([1]))[0], before)  # scored from the grown row
    assert 0 not in m.recommend(1, k=5)[0].tolist()
    m.observe(np.array([1]), np.array([0]))  # repeated events keep the matrix binary
    assert m.seen_.data.max() == 1.0
    with pytest.raises(DataError, match="item codes"):
        m.observe(np.array([0]), np.array([9]))
    with pytest.raises(ConfigError, match="dot product"):
        m.query_vectors(np.array([0]))


@pytest.fixture(scope="module")
def mgr():
    ds = make_synthetic(small_world(n_users=120, n_items=80, mean_events=12), seed=0)
    split = make_split(ds, "loo", seed=0)
    model = MGR({"dim": 8, "max_len": 6, "max_friends": 3, "friend_len": 2, "batch_size": 128, "epochs": 1},
                seed=0).fit(ds, split.train, split.valid)
    return model


def test_mgr_observe_moves_the_user_vector_and_friends_see_it(mgr):
    mgr = copy.deepcopy(mgr)  # the module's model stays as trained
    users = np.arange(mgr.n_users_)
    friend_of = {int(u): int(f) for u, f in enumerate(mgr.context_.friends[:, 0]) if f < mgr.n_users_}
    user, friend = next(iter(friend_of.items()))
    p_user, p_friend = mgr.query_vectors(np.array([user, friend]))
    last = mgr.context_.history(user)[1][-1]  # the friend's event comes before the user's request time
    item = int(np.setdiff1d(np.arange(mgr.n_items_), mgr.seen_[friend].indices)[0])
    mgr.observe(np.array([friend]), np.array([item]), np.array([float(last) - 1]))
    q_user, q_friend = mgr.query_vectors(np.array([user, friend]))
    assert not np.allclose(p_friend, q_friend)  # the friend's own history moved
    # cached vectors were dropped for the friend and for the user who lists them
    fresh = mgr.net_.user_vectors(mgr.context_.batch(np.array([user, friend])))[0].detach().numpy()
    np.testing.assert_allclose(np.stack([q_user, q_friend]), fresh, rtol=1e-5, atol=1e-6)
    assert not np.allclose(p_user, q_user)
    assert item in mgr.context_.batch(np.array([user])).friend_items[0].numpy()  # the user's friends read it
    assert item not in mgr.recommend(friend, k=mgr.n_items_)[0].tolist()
    assert mgr.query_vectors(users).shape == (mgr.n_users_, 8)


def test_recommend_through_an_index_matches_full_scores(mgr):
    from mgrec.retrieval import build_index

    users = np.arange(20)
    full_items, full_scores = mgr.recommend(users, k=10)
    mgr.use_index(build_index(mgr.item_vectors(), "exact"))
    try:
        idx_items, idx_scores = mgr.recommend(users, k=10)
        np.testing.assert_array_equal(idx_items, full_items)
        np.testing.assert_allclose(idx_scores, full_scores, rtol=1e-4, atol=1e-4)
        one, _ = mgr.recommend(3, k=5)
        assert one.shape == (5,) and one.tolist() == full_items[3, :5].tolist()
        cold, _ = mgr.recommend_context([0, 1], k=5)
        assert 0 not in cold and 1 not in cold
    finally:
        mgr.use_index(None)
    with pytest.raises(ConfigError, match="index holds"):
        mgr.use_index(build_index(mgr.item_vectors()[:5], "exact"))


def test_stored_events_join_the_dataset():
    ds = _dataset()
    ds = Dataset(ds.name, ds.users, ds.items, ds.interactions,
                 user_features=FeatureTable(pd.DataFrame({"age": [20.0, 30.0]}), {"age": "numeric"}))
    frame = pd.DataFrame({"seq": [1, 2], "user_id": ["a", "c"], "item_id": ["new", "x"],
                          "timestamp": [40.0, 50.0], "weight": np.float32([2, 1])})
    out = with_events(ds, frame)
    assert out.users.ids.tolist() == ["a", "b", "c"] and out.items.ids.tolist()[-1] == "new"
    assert len(out.interactions) == 7 and out.interactions["timestamp"].tolist()[-2:] == [40, 50]
    assert out.user_features is not None and np.isnan(out.user_features.frame["age"].iloc[2])
    assert with_events(ds, frame.iloc[:0]) is ds
    with pytest.raises(DataError, match="no timestamp") as err:
        with_events(ds, frame.assign(timestamp=[np.nan, 1.0]))
    assert err.value.field == "timestamp"
    alone = events_dataset(frame.assign(timestamp=[np.nan, 1.0]))
    assert not alone.has_time and alone.n_users == 2
    with pytest.raises(DataError, match="empty"):
        events_dataset(frame.iloc[:0])
    with pytest.raises(DataError, match="lacks a column"):
        events_dataset(frame.drop(columns="weight"))


def test_observed_is_a_copy_with_the_events_and_leaves_the_model_as_it_was(mgr):
    users = np.arange(mgr.n_users_)
    before = mgr.score(users).copy()
    user = 3
    item = int(np.setdiff1d(np.arange(mgr.n_items_), mgr.seen_[user].indices)[0])
    last = float(mgr.context_.history(user)[1][-1])
    twin = mgr.observed(np.array([user]), np.array([item]), np.array([last + 60.0]))
    assert twin is not mgr and twin.net_ is mgr.net_  # the weights are shared, not copied
    assert item in twin.seen_[user].indices and item not in mgr.seen_[user].indices
    assert twin.context_.history(user)[0][-1] == item and mgr.context_.history(user)[0][-1] != item
    assert not np.allclose(twin.score(np.array([user])), before[user])
    np.testing.assert_array_equal(mgr.score(users), before)  # the original model is unchanged
    twin.query_vectors(np.array([user]))  # the copy's vector cache is its own
    assert twin._vector_cache is not mgr._vector_cache


def test_sasrec_observe_appends_events_in_time_order_and_keeps_the_window():
    from mgrec.baselines.sasrec import SASRec

    ds = _dataset()
    m = SASRec({"max_len": 3, "dim": 8, "n_heads": 1, "n_blocks": 1, "epochs": 1}, seed=0).fit(ds, ds.interactions)
    pad = m.n_items_
    assert m.hist_[0].tolist() == [0, 1, 2] and m.hist_[1].tolist() == [pad, 2, 3]
    before = m.score(np.array([1])).copy()
    twin = m.observed(np.array([1, 1, 0]), np.array([0, 4, 4]), np.array([50.0, 40.0, 60.0]))
    assert twin.hist_[1].tolist() == [3, 4, 0]  # 4 (t=40) before 0 (t=50); the oldest drops out
    assert twin.hist_[0].tolist() == [1, 2, 4]
    assert m.hist_[1].tolist() == [pad, 2, 3]  # the original keeps its sequences
    assert not np.allclose(twin.score(np.array([1])), before)
    np.testing.assert_array_equal(m.score(np.array([1])), before)
    untimed = m.observed(np.array([1]), np.array([1]))
    assert untimed.hist_[1].tolist() == [2, 3, 1]
