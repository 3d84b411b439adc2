"""The behaviour granularity's linear item-item part (mgrec.item_item) inside the fused model."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from worlds import small_world

from mgrec.baselines.ease import ease_weights
from mgrec.data.split import make_split
from mgrec.data.synthetic import make_synthetic
from mgrec.errors import ConfigError
from mgrec.item_item import RELATIVE_SCALES, ItemItemPart, fit_item_item, scale_grid
from mgrec.mgr import MGR, MGRConfig

# the friends' items part off: these tests check the item-item part's dot-product contract and
# its validation choice alone (the friends' part has its own tests, tests/test_social_items.py)
SMALL = {"dim": 16, "max_len": 10, "max_friends": 5, "friend_len": 3, "batch_size": 256, "lr": 3e-3,
         "epochs": 2, "social_items": "none"}


def _x(seed: int = 0, n_users: int = 40, n_items: int = 30) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    return sp.csr_matrix((rng.random((n_users, n_items)) < 0.2).astype(np.float32) * 3.0)  # weights read as 1


def test_exact_for_a_small_catalogue_and_truncated_above():
    x = _x()
    part = fit_item_item(x, reg=5.0, max_rank=64)
    b = ease_weights((x > 0).astype(np.float32), 5.0)
    np.testing.assert_allclose(part.left @ part.right.T, b, atol=1e-6)
    np.testing.assert_allclose(part.scores(x[:3], 30), (x[:3] > 0).astype(np.float32) @ b, atol=1e-5)
    low = fit_item_item(x, reg=5.0, max_rank=8)
    assert low.left.shape == (30, 8) and low.right.shape == (30, 8)
    u, s, vt = np.linalg.svd(b)
    np.testing.assert_allclose(low.left @ low.right.T, (u[:, :8] * s[:8]) @ vt[:8], atol=1e-5)
    # items added after fitting have no item-item weights
    assert low.item_vectors(33).shape == (33, 8) and not low.item_vectors(33)[30:].any()
    assert low.scores(sp.hstack([x[:2], sp.csr_matrix((2, 3))]).tocsr(), 33).shape == (2, 33)


def test_scale_grid_is_relative_to_the_spreads():
    neural, linear = np.array([[0.0, 4.0]]), np.array([[0.0, 1.0]])
    assert scale_grid(neural, linear) == [4.0 * a for a in RELATIVE_SCALES]
    assert scale_grid(neural, np.zeros((1, 2))) == [0.0] * len(RELATIVE_SCALES)


@pytest.fixture(scope="module")
def fitted():
    ds = make_synthetic(small_world(n_users=200, n_items=120, mean_events=15), seed=0)
    split = make_split(ds, "random", seed=0)
    model = MGR({**SMALL, "fusion": "weighted", "item_item": "ease", "item_item_reg": 20.0,
                 "item_item_rank": 40}, seed=0).fit(ds, split.train, split.valid)
    return ds, split, model


def test_scale_is_chosen_on_validation_and_scores_add_up(fitted):
    ds, split, model = fitted
    assert model.behavior_mode_ == "set"
    assert set(model.item_item_valid_) == {"0"} | {f"20/{a:g}" for a in RELATIVE_SCALES if a > 0}
    best = max(model.item_item_valid_.values())
    assert model.best_valid_ == pytest.approx(best)
    info = model.fit_info()
    assert info["best_valid"] == pytest.approx(best, abs=1e-6) and set(info["item_item_valid"]) == set(
        model.item_item_valid_)
    if model.item_item_ is None:  # scale 0 won: the part is off
        assert model.item_item_valid_["0"] == pytest.approx(best)
        return
    users = np.arange(20)
    neural = model.score(users) - model.item_item_.scores(model.seen_[users], model.n_items_)
    part = model.item_item_
    model.item_item_ = None
    np.testing.assert_allclose(model.score(users), neural, atol=1e-4)
    model.item_item_ = part


def _with_part(model):
    """The fitted model with a non-zero part, whatever validation chose."""
    if model.item_item_ is None:
        model.item_item_ = fit_item_item(model.seen_, 20.0, 40)
        model.item_item_.scale = 0.5
    return model


def test_dot_product_contract_and_explanations(fitted):
    ds, split, model = fitted
    model = _with_part(model)
    users = np.array([0, 3, 7])
    q, p = model.item_vectors(), model.query_vectors(users)
    assert q.shape[1] == p.shape[1] == 16 + model.item_item_.rank
    np.testing.assert_allclose(p @ q.T, model.score(users), atol=1e-4)
    items = np.array([[0, 1, 2], [3, 4, 5], [10, 20, 30]])
    parts = model.explain(users, items)
    np.testing.assert_allclose(sum(parts.values()), np.take_along_axis(model.score(users), items, axis=1),
                               atol=1e-4)  # weighted fusion: exact, the part counted in behaviour


def test_context_requests_and_live_events_read_the_part(fitted):
    ds, split, model = fitted
    model = _with_part(model)
    hist = [1, 2, 5]
    items, scores = model.recommend_context(hist, k=10)
    row = sp.csr_matrix((np.ones(3), ([0, 0, 0], hist)), shape=(1, model.n_items_))
    linear = model.item_item_.scores(row, model.n_items_)[0]
    assert np.isfinite(scores).all() and not set(hist) & set(items.tolist())
    parts = model.explain_context(hist, items)
    np.testing.assert_allclose(sum(parts.values())[0], scores, atol=1e-4)
    assert linear.any() and linear.shape == (model.n_items_,)
    before = model._item_item_scores(np.array([4]))
    unseen = int(np.flatnonzero(model.seen_[4].toarray()[0] == 0)[0])
    model.observe(np.array([4]), np.array([unseen]), times=np.array([1.6e9]))
    assert not np.allclose(model._item_item_scores(np.array([4])), before)


def test_save_load_keeps_the_part(fitted, tmp_path):
    from mgrec.onnx_export import export_onnx

    ds, split, model = fitted
    model = _with_part(model)
    model.save(tmp_path / "m")
    loaded = MGR.load(tmp_path / "m")
    assert loaded.item_item_.scale == model.item_item_.scale
    np.testing.assert_allclose(loaded.score(np.arange(10)), model.score(np.arange(10)), atol=1e-5)
    with pytest.raises(ConfigError, match="item-item"):
        export_onnx(loaded, tmp_path / "m.onnx")


def test_auto_is_off_for_sequences_and_config_errors():
    ds = make_synthetic(small_world(n_users=100, n_items=60, mean_events=10), seed=0)
    split = make_split(ds, "loo", seed=0)
    model = MGR({**SMALL, "epochs": 1}, seed=0).fit(ds, split.train, split.valid)
    assert model.behavior_mode_ == "sequence" and model.item_item_ is None and not model.item_item_valid_
    with pytest.raises(ValueError, match="item_item"):
        MGRConfig(item_item="slim")
    for bad in (0.0, [], [10.0, -1.0]):
        with pytest.raises(ValueError, match="item_item_reg"):
            MGRConfig(item_item_reg=bad)
    with pytest.raises(ConfigError, match="item_item_reg"):
        MGR({"item_item_reg": ["a"]})
    assert isinstance(ItemItemPart(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32)).scale, float)


def test_several_penalties_are_chosen_on_validation_with_the_scale(tmp_path):
    ds = make_synthetic(small_world(n_users=200, n_items=120, mean_events=15), seed=1)
    split = make_split(ds, "random", seed=1)
    model = MGR({**SMALL, "item_item": "ease", "item_item_reg": [2.0, 500.0], "item_item_rank": 40},
                seed=1).fit(ds, split.train, split.valid)
    valid = model.item_item_valid_
    assert set(valid) == {"0"} | {f"{r:g}/{a:g}" for r in (2.0, 500.0) for a in RELATIVE_SCALES if a > 0}
    best_key = max(valid, key=valid.get)
    assert model.best_valid_ == pytest.approx(valid[best_key])
    info = model.fit_info()
    if best_key == "0":
        assert model.item_item_ is None and info["item_item_reg"] is None
        return
    reg = float(best_key.split("/")[0])
    assert model.item_item_reg_ == reg and info["item_item_reg"] == reg
    refit = fit_item_item(model.seen_, reg, 40)  # the kept part is that penalty's EASE
    np.testing.assert_allclose(model.item_item_.left @ model.item_item_.right.T, refit.left @ refit.right.T,
                               atol=1e-5)
    model.save(tmp_path / "m")
    loaded = MGR.load(tmp_path / "m")
    assert loaded.item_item_reg_ == reg and loaded.item_item_valid_ == pytest.approx(valid)
