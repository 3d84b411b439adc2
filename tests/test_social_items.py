"""The social granularity's friends' items part (:mod:`mgrec.social_items`): counts by hand,
and in ``mgr``: chosen on validation, added to scores and explanations, saved and loaded."""

from __future__ import annotations

import numpy as np
import pytest
from worlds import small_world

from mgrec.data.split import make_split
from mgrec.data.synthetic import make_synthetic
from mgrec.errors import ConfigError
from mgrec.mgr import MGR
from mgrec.retrieval import build_index
from mgrec.social_items import RELATIVE_SCALES, SocialItemsPart, friend_item_counts

SMALL = {"dim": 16, "max_len": 10, "max_friends": 5, "friend_len": 3, "batch_size": 256, "lr": 3e-3, "epochs": 1}


def test_counts_by_hand():
    # 2 users, 2 friends x 3 recent items; 5 = the padding code (the context knows items 0..4)
    friend_items = np.array([[[1, 2, 5], [2, 2, 0]], [[5, 5, 5], [4, 5, 5]]])
    expected = np.array([[1, 1, 3, 0, 0, 0], [0, 0, 0, 0, 1, 0]], np.float32)
    np.testing.assert_array_equal(friend_item_counts(friend_items, 5, 6), expected)  # item 5: added later
    np.testing.assert_array_equal(SocialItemsPart(0.5).scores(friend_items, 5, 6), 0.5 * expected)
    assert friend_item_counts(friend_items, 5, 3).shape == (2, 3)  # a smaller catalogue drops codes >= 3


@pytest.fixture(scope="module")
def fitted():
    ds = make_synthetic(small_world(n_users=300, n_items=200, mean_events=15), seed=0)
    split = make_split(ds, "loo", seed=0)
    return ds, split, MGR(SMALL, seed=0).fit(ds, split.train, split.valid)


def test_weight_is_chosen_on_validation(fitted):
    _, _, model = fitted
    info = model.fit_info()
    assert list(info["social_items_valid"]) == [f"{r:g}" for r in RELATIVE_SCALES]
    best = max(info["social_items_valid"].values())
    assert info["best_valid"] == pytest.approx(best, abs=1e-6)
    kept = info["social_items_scale"]
    if info["social_items_valid"]["0"] == best:
        assert kept is None
    else:
        assert kept > 0


def test_part_adds_to_scores_explanations_and_survives_save_load(fitted, tmp_path):
    ds, split, model = fitted
    users = np.arange(30)
    before = model.social_items_
    try:
        model.social_items_ = None
        plain = model.score(users)
        model.social_items_ = SocialItemsPart(0.75)
        counts = friend_item_counts(model.context_.batch(users).friend_items.numpy(), model.context_.n_items,
                                    model.n_items_)
        assert counts.sum() > 0
        with_part = model.score(users)
        np.testing.assert_allclose(with_part - plain, 0.75 * counts, atol=1e-5)
        # recommend() ranks exactly even with an index attached (the part is not in the vectors)
        direct = model.recommend(users, k=10)
        model.use_index(build_index(model.item_vectors(), "exact"))
        try:
            np.testing.assert_array_equal(model.recommend(users, k=10)[0], direct[0])
        finally:
            model.use_index(None)
        # explanations: the part is the social granularity's, exactly
        items = direct[0][:, :3]
        model.social_items_ = None
        parts_plain = model.explain(users, items)
        model.social_items_ = SocialItemsPart(0.75)
        parts = model.explain(users, items)
        np.testing.assert_allclose(parts["social"] - parts_plain["social"],
                                   0.75 * np.take_along_axis(counts, items, axis=1), atol=1e-5)
        for g in parts:
            if g != "social":
                np.testing.assert_allclose(parts[g], parts_plain[g], atol=1e-6)
        # a new user with friends: the friends' recent items count for them too
        items_ctx, scores_ctx = model.recommend_context([], friends=[0, 1], k=10)
        model.social_items_ = None
        assert not np.array_equal(model.recommend_context([], friends=[0, 1], k=10)[1], scores_ctx)
        model.social_items_ = SocialItemsPart(0.75)
        model.save(tmp_path / "m")
        loaded = MGR.load(tmp_path / "m")
        assert loaded.social_items_ == SocialItemsPart(0.75)
        np.testing.assert_array_equal(loaded.score(users), with_part)
    finally:
        model.social_items_ = before


def test_off_without_social_or_when_asked(fitted):
    ds, split, _ = fitted
    off = MGR({**SMALL, "social_items": "none"}, seed=0).fit(ds, split.train, split.valid)
    assert off.social_items_ is None and off.fit_info()["social_items_valid"] == {}
    no_social = MGR({**SMALL, "granularities": ["user", "item", "behavior", "time"]}, seed=0)
    no_social.fit(ds, split.train, split.valid)
    assert no_social.social_items_ is None and no_social.fit_info()["social_items_valid"] == {}
    with pytest.raises(ConfigError, match="social_items"):
        MGR({"social_items": "always"})
