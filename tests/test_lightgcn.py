"""LightGCN: hand-checked adjacency and propagation, learning, determinism, persistence."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from mgrec.baselines.lightgcn import LightGCN, normalized_adjacency, propagate, to_torch_csr
from mgrec.baselines.pop import Pop
from mgrec.data.dataset import Dataset, to_csr
from mgrec.data.vocab import Vocabulary
from mgrec.errors import ConfigError, DataError
from mgrec.evaluation import evaluate

FAST = {"dim": 16, "n_layers": 2, "lr": 0.02, "reg_weight": 1e-4, "batch_size": 256,
        "epochs": 25, "patience": 5}


def _frame(users, items) -> pd.DataFrame:
    return pd.DataFrame({"user": np.asarray(users, np.int64), "item": np.asarray(items, np.int64),
                         "weight": np.ones(len(users), np.float32)})


def _dataset(frame: pd.DataFrame, n_users: int, n_items: int) -> Dataset:
    return Dataset("toy", Vocabulary([f"u{i}" for i in range(n_users)]),
                   Vocabulary([f"i{i}" for i in range(n_items)]), frame)


def _planted(seed: int = 0, n_users: int = 160, n_items: int = 80, n_groups: int = 4):
    """Users of group g take 10 items of group g (fewer in small catalogues) plus 3 random
    ones; per user, one interaction goes to valid and one to test."""
    rng = np.random.default_rng(seed)
    group_i = np.arange(n_items) % n_groups
    n_own = min(10, n_items // n_groups)
    users, items, part = [], [], []
    for u in range(n_users):
        own = rng.choice(np.flatnonzero(group_i == u % n_groups), size=n_own, replace=False)
        mine = rng.permutation(np.unique(np.concatenate([own, rng.choice(n_items, 3, replace=False)])))
        users += [u] * len(mine)
        items += mine.tolist()
        part += [1, 2] + [0] * (len(mine) - 2)
    frame = _frame(users, items)
    part = np.asarray(part)
    parts = [frame[part == k].reset_index(drop=True) for k in range(3)]
    return _dataset(frame, n_users, n_items), parts[0], parts[1], parts[2]


def _ndcg(model, ds: Dataset, truth: pd.DataFrame) -> float:
    return evaluate(model, to_csr(truth, ds.n_users, ds.n_items), ks=(10,), metrics=("ndcg",))["ndcg@10"]


# --------------------------------------------------------------------------- the graph
def test_normalized_adjacency_by_hand():
    # u0 - i0, i1 ; u1 - i0, i2.  Degrees: users 2, 2; items 2, 1, 1. The repeated (u1, i2)
    # entry and its rating 5 still make one edge.
    r = sp.csr_matrix((np.array([1, 1, 1, 5, 1], np.float32),
                       (np.array([0, 0, 1, 1, 1]), np.array([0, 1, 0, 2, 2]))), shape=(2, 3))
    a = normalized_adjacency(r)
    half, inv2 = 0.5, 1 / math.sqrt(2)  # 1/sqrt(2*2), 1/sqrt(2*1)
    expect = np.array([
        #  u0    u1    i0    i1    i2
        [0.0,  0.0,  half, inv2, 0.0],   # u0
        [0.0,  0.0,  half, 0.0,  inv2],  # u1
        [half, half, 0.0,  0.0,  0.0],   # i0
        [inv2, 0.0,  0.0,  0.0,  0.0],   # i1
        [0.0,  inv2, 0.0,  0.0,  0.0],   # i2
    ])
    assert a.shape == (5, 5) and a.dtype == np.float32 and a.nnz == 8
    np.testing.assert_allclose(a.toarray(), expect, rtol=1e-6)


def test_normalized_adjacency_isolated_nodes_have_empty_rows():
    a = normalized_adjacency(sp.csr_matrix(np.array([[1, 0], [0, 0]], np.float32))).toarray()
    # u0 - i0 only: degrees 1 and 1 -> weight 1; u1 and i1 are isolated.
    np.testing.assert_array_equal(a, [[0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert np.isfinite(a).all()


def test_propagate_zero_layers_is_ego_and_one_layer_by_hand():
    adj = normalized_adjacency(sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 1]], np.float32)))
    ego = torch.arange(10, dtype=torch.float32).reshape(5, 2)
    t_adj = to_torch_csr(adj)
    assert torch.equal(propagate(t_adj, ego, 0), ego)
    dense = adj.toarray().astype(np.float64)
    e = ego.numpy().astype(np.float64)
    np.testing.assert_allclose(propagate(t_adj, ego, 1).numpy(), (e + dense @ e) / 2, rtol=1e-6)
    expect3 = (e + dense @ e + dense @ dense @ e + dense @ dense @ dense @ e) / 4
    np.testing.assert_allclose(propagate(t_adj, ego, 3).numpy(), expect3, rtol=1e-5)


def test_propagate_gradient_matches_dense_autograd():
    rng = np.random.default_rng(0)
    r = sp.random(6, 9, density=0.4, random_state=1, format="csr", dtype=np.float32)
    adj = normalized_adjacency(r)
    ego = torch.from_numpy(rng.normal(size=(15, 4)).astype(np.float32))
    weights = torch.from_numpy(rng.normal(size=(15, 4)).astype(np.float32))
    x1 = ego.clone().requires_grad_()
    (propagate(to_torch_csr(adj), x1, 3) * weights).sum().backward()
    x2 = ego.clone().requires_grad_()
    dense = torch.from_numpy(adj.toarray())
    layers, layer = [x2], x2
    for _ in range(3):
        layer = dense @ layer
        layers.append(layer)
    (torch.stack(layers).mean(0) * weights).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the model
def test_lightgcn_learns_planted_structure_and_beats_pop():
    ds, train, valid, test = _planted()
    model = LightGCN(FAST, seed=0).fit(ds, train, valid)
    pop = Pop({}).fit(ds, train, valid)
    got, base = _ndcg(model, ds, test), _ndcg(pop, ds, test)
    assert got > base + 0.15, (got, base)
    # the restored weights are those of the best evaluated epoch.
    best = max(h["valid"] for h in model.history_ if "valid" in h)
    assert model.best_valid_ == pytest.approx(best)
    assert _ndcg(model, ds, valid) == pytest.approx(best, abs=1e-6)
    assert model.history_[model.best_epoch_ - 1]["valid"] == pytest.approx(best)


def test_cached_embeddings_are_the_propagated_ego_embeddings():
    ds, train, valid, _ = _planted(n_users=40, n_items=20)
    model = LightGCN({**FAST, "epochs": 3}, seed=1).fit(ds, train, valid)
    ego = torch.cat([model.user_ego_, model.item_ego_])
    final = propagate(to_torch_csr(normalized_adjacency(model.seen_)), ego, FAST["n_layers"])
    torch.testing.assert_close(torch.cat([model.user_emb_, model.item_emb_]), final)
    users = np.array([0, 5, 39])
    expect = (final[users] @ final[ds.n_users:].T).numpy()
    np.testing.assert_allclose(model.score(users), expect, rtol=1e-5, atol=1e-6)
    assert not model.user_ego_.requires_grad and not model.user_emb_.requires_grad


def test_zero_layers_scores_with_the_ego_embeddings():
    ds, train, valid, _ = _planted(n_users=40, n_items=20)
    model = LightGCN({**FAST, "n_layers": 0, "epochs": 2}, seed=0).fit(ds, train, valid)
    assert torch.equal(model.user_emb_, model.user_ego_)
    expect = (model.user_ego_[:3] @ model.item_ego_.T).numpy()
    np.testing.assert_allclose(model.score(np.arange(3)), expect, rtol=1e-6)


def test_lightgcn_is_deterministic_per_seed():
    ds, train, valid, _ = _planted(n_users=60, n_items=30)
    cfg = {**FAST, "epochs": 4}
    users = np.arange(ds.n_users)
    a = LightGCN(cfg, seed=7).fit(ds, train, valid).score(users)
    b = LightGCN(cfg, seed=7).fit(ds, train, valid).score(users)
    c = LightGCN(cfg, seed=8).fit(ds, train, valid).score(users)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.dtype == np.float32 and a.shape == (ds.n_users, ds.n_items)


def test_without_valid_trains_all_epochs():
    ds, train, _, _ = _planted(n_users=40, n_items=20)
    model = LightGCN({**FAST, "epochs": 3}, seed=0).fit(ds, train, None)
    assert [h["epoch"] for h in model.history_] == [1, 2, 3]
    assert all("valid" not in h for h in model.history_)
    assert model.best_epoch_ == 3 and math.isnan(model.best_valid_)
    losses = [h["loss"] for h in model.history_]
    assert losses[-1] < losses[0]


def test_no_training_interactions_keeps_initial_weights():
    ds, _, _, _ = _planted(n_users=10, n_items=8)
    model = LightGCN({**FAST, "epochs": 2}, seed=0).fit(ds, _frame([], []), None)
    assert model.history_ == [] and model.score(np.array([0])).shape == (1, 8)


def test_save_load_round_trip(tmp_path):
    ds, train, valid, _ = _planted(n_users=60, n_items=30)
    model = LightGCN({**FAST, "epochs": 3}, seed=3).fit(ds, train, valid)
    model.save(tmp_path / "m")
    loaded = LightGCN.load(tmp_path / "m")
    assert isinstance(loaded, LightGCN)
    assert loaded.config == model.config and loaded.seed == 3
    assert loaded.best_epoch_ == model.best_epoch_
    assert loaded.best_valid_ == pytest.approx(model.best_valid_)
    users = np.arange(ds.n_users)
    for got, want in zip(loaded.recommend(users, k=10), model.recommend(users, k=10)):
        np.testing.assert_array_equal(got, want)
    torch.testing.assert_close(loaded.user_ego_, model.user_ego_, rtol=0, atol=0)
    # The saved config is a valid constructor config.
    LightGCN(loaded.config_dict(), seed=0)


def test_load_rejects_mismatched_weights(tmp_path):
    from safetensors.numpy import load_file, save_file

    ds, train, valid, _ = _planted(n_users=20, n_items=12)
    LightGCN({**FAST, "epochs": 1}, seed=0).fit(ds, train, valid).save(tmp_path)
    arrays = load_file(str(tmp_path / "weights.safetensors"))
    arrays["item_emb"] = arrays["item_emb"][:5]
    save_file(arrays, str(tmp_path / "weights.safetensors"))
    with pytest.raises(DataError, match="checksum"):  # the checksum catches it first
        LightGCN.load(tmp_path)
    _drop_checksum(tmp_path)  # a folder without one: the shape check still refuses it
    with pytest.raises(DataError, match="item_emb has shape"):
        LightGCN.load(tmp_path)


def _drop_checksum(folder):
    import json

    meta = json.loads((folder / "model.json").read_text())
    meta.pop("weights_sha256")
    (folder / "model.json").write_text(json.dumps(meta))


def test_unknown_config_key_is_an_error():
    with pytest.raises(ConfigError, match="unknown key 'layers'"):
        LightGCN({"layers": 2})


@pytest.mark.parametrize("bad", [{"n_layers": -1}, {"reg_weight": -1e-4}, {"lr": 0.0},
                                 {"dim": 0}, {"valid_metric": "ndcg"}, {"init_std": 0.0},
                                 {"n_layers": "3"}])
def test_bad_config_values_are_errors(bad):
    with pytest.raises(ConfigError):
        LightGCN(bad)


def test_unfitted_and_bad_users_are_clear_errors():
    with pytest.raises(ConfigError, match="not fitted"):
        LightGCN({}).score(np.array([0]))
    ds, train, _, _ = _planted(n_users=20, n_items=12)
    model = LightGCN({**FAST, "epochs": 1}, seed=0).fit(ds, train, None)
    with pytest.raises(ConfigError, match="out of range"):
        model.score(np.array([20]))


def test_real_ml100k_short_run_beats_pop(real_data):
    """A few epochs on the real data already beat popularity by a wide margin."""
    from mgrec.data import load_dataset
    from mgrec.data.split import make_split
    from mgrec.evaluation import evaluate_split

    root = real_data("ml-100k")
    ds = load_dataset("ml-100k", root=root.parent)
    split = make_split(ds, "random", seed=0)
    model = LightGCN({"lr": 5e-3, "epochs": 6, "batch_size": 4096}, seed=0).fit(ds, split.train, None)
    got = evaluate_split(model, split, ds, part="test", ks=(10,), metrics=("ndcg",))["ndcg@10"]
    assert got > 0.1435 + 0.04, got  # Pop: 0.1435 (tests/test_baselines.py)
    assert model.history_[-1]["seconds"] < 5.0
