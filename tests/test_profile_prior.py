"""The profile prior (:mod:`mgrec.profile_prior`): its design matrix by hand, what it learns,
determinism, persistence and the cases where it is not fitted."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from mgrec.feature_arrays import FeatureArrays
from mgrec.profile_prior import ProfilePrior, design_matrix, fit_profile_prior


def _world(n_users: int = 400, seed: int = 0) -> tuple[FeatureArrays, sp.csr_matrix, np.ndarray]:
    """Column 0: a group label (codes 1, 2); column 1: a label per user (a zip code).
    Group g likes items 10g..10g+9 (4 of them per user); items 20..29 are everyone's (3 per
    user), so popularity ranks them first and only the group tells the rest."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, n_users)
    cat = np.stack([group + 1, np.arange(n_users) + 1], axis=1).astype(np.int64)
    arrays = FeatureArrays(cat, np.zeros((n_users, 0), np.float32), np.zeros((n_users, 1), np.int64),
                           np.zeros((n_users, 1), np.float32), [3, n_users + 1], 1)
    rows, cols = [], []
    for u in range(n_users):
        items = np.r_[rng.choice(10, 4, replace=False) + 10 * group[u], rng.choice(10, 3, replace=False) + 20]
        rows += [u] * len(items)
        cols += items.tolist()
    seen = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, 30))
    return arrays, seen, group


def test_design_matrix_by_hand():
    cat = np.array([[1, 2], [0, 1]])
    bag = np.array([[1, 0], [2, 1]])
    bag_w = np.array([[0.5, 0.0], [1.0, 2.0]], np.float32)
    offsets, bag_offset = np.array([0, 3]), 5  # column 0: codes 0..2, column 1: 0..1, tokens 0..2
    x = design_matrix(cat, bag, bag_w, offsets, bag_offset, np.ones(8, bool)).toarray()
    expected = np.zeros((2, 8), np.float32)
    expected[0, [1, 5, 6]] = [1.0, 1.0, 0.5]  # label 1, label 2 of column 1, token 1 at 0.5
    expected[1, [4, 7, 6]] = [1.0, 1.0, 2.0]  # column 0 missing; label 1; tokens 2 and 1
    np.testing.assert_array_equal(x, expected)
    keep = np.ones(8, bool)
    keep[[5, 6]] = False  # codes too rare to use
    expected[:, [5, 6]] = 0.0
    np.testing.assert_array_equal(design_matrix(cat, bag, bag_w, offsets, bag_offset, keep).toarray(), expected)


def test_prior_learns_the_group_taste_beyond_popularity_and_ignores_rare_codes():
    arrays, seen, group = _world()
    prior = fit_profile_prior(arrays, seen, np.arange(400), dim=8, min_users=20, seed=0)
    assert prior is not None
    assert prior.info["valid_users"] == 40 and prior.info["codes_kept"] == 2  # the two groups only
    assert prior.keep[1] and prior.keep[2] and not prior.keep[3:].any()  # no zip code is used
    assert prior.info["valid_ndcg"] > prior.info["popularity_ndcg"] + 0.1
    scores = prior.scores(arrays.cat[:50], arrays.bag_idx[:50], arrays.bag_w[:50])
    assert scores.shape == (50, 30) and scores.dtype == np.float32
    own = np.where(group[:50, None] == 0, scores[:, :10], scores[:, 10:20]).mean(axis=1)
    other = np.where(group[:50, None] == 0, scores[:, 10:20], scores[:, :10]).mean(axis=1)
    assert (own > other).all()
    # a user's query is [e_u, 1] and items are [f_v, b_v]: one dot product
    q = prior.user_vectors(arrays.cat[:3], arrays.bag_idx[:3], arrays.bag_w[:3])
    np.testing.assert_allclose(q[:, -1], 1.0)
    np.testing.assert_allclose(q @ prior.item_vectors().T, scores[:3], rtol=1e-6)


def test_prior_is_deterministic_under_its_seed():
    arrays, seen, _ = _world(200)
    a, b = (fit_profile_prior(arrays, seen, np.arange(200), dim=4, min_users=5, seed=3) for _ in range(2))
    c = fit_profile_prior(arrays, seen, np.arange(200), dim=4, min_users=5, seed=4)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.item_factors, b.item_factors)
    assert not np.array_equal(a.item_factors, c.item_factors)


def test_state_round_trip_and_bad_shapes():
    arrays, seen, _ = _world(200)
    prior = fit_profile_prior(arrays, seen, np.arange(200), dim=4, min_users=5, seed=0)
    meta, state = prior.to_state()
    back = ProfilePrior.from_state(meta, state)
    np.testing.assert_array_equal(back.scores(arrays.cat, arrays.bag_idx, arrays.bag_w),
                                  prior.scores(arrays.cat, arrays.bag_idx, arrays.bag_w))
    assert back.info == prior.info and back.bag_offset == prior.bag_offset
    state["item_bias"] = state["item_bias"][:-1]
    with pytest.raises(ValueError, match="inconsistent"):
        ProfilePrior.from_state(meta, state)


def test_items_added_after_fitting_get_no_factor_and_the_mean_bias():
    arrays, seen, _ = _world(200)
    prior = fit_profile_prior(arrays, seen, np.arange(200), dim=4, min_users=5, seed=0)
    q = prior.item_vectors(32)
    assert q.shape == (32, 5)
    np.testing.assert_array_equal(q[30:, :-1], 0.0)
    np.testing.assert_allclose(q[30:, -1], prior.item_bias.mean())
    assert prior.scores(arrays.cat[:2], arrays.bag_idx[:2], arrays.bag_w[:2], 32).shape == (2, 32)


def test_no_prior_without_enough_users_or_shared_codes():
    arrays, seen, _ = _world(200)
    assert fit_profile_prior(arrays, seen, np.arange(10), dim=4, min_users=1, seed=0) is None
    assert fit_profile_prior(arrays, seen, np.arange(200), dim=4, min_users=10_000, seed=0) is None
