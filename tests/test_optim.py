"""Sparse id tables and their optimiser (mgrec.optim, MGRConfig.sparse_ids)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from worlds import small_world

import mgrec.mgr_build as mgr_build
from mgrec.data.split import make_split
from mgrec.data.synthetic import make_synthetic
from mgrec.mgr import MGR, MGRConfig
from mgrec.optim import LazyAdamW, SplitAdamW, make_optimizer, sparse_parameters

SMALL = {"dim": 16, "max_len": 10, "max_friends": 5, "friend_len": 3, "batch_size": 128, "lr": 3e-3,
         "epochs": 2, "loss": "sampled_softmax", "n_negatives": 64, "item_item": "none"}


@pytest.fixture(scope="module")
def data():
    ds = make_synthetic(small_world(n_users=200, n_items=120, mean_events=12), seed=0)
    return ds, make_split(ds, "random", seed=0)


def test_split_adamw_touches_only_looked_up_rows():
    torch.manual_seed(0)
    table = nn.Embedding(10, 4, sparse=True)
    dense = nn.Linear(4, 1)
    opt = SplitAdamW(dense.parameters(), [table.weight], lr=0.1, weight_decay=0.5)
    before = table.weight.detach().clone()
    dense(table(torch.tensor([1, 3, 3]))).sum().backward()
    assert table.weight.grad.is_sparse
    opt.step()
    changed = (table.weight.detach() != before).any(dim=1)
    assert changed.tolist() == [i in (1, 3) for i in range(10)]
    state = opt.state_dict()
    assert sorted(state["state"]) == [0, 1, 2]  # dense weight and bias, then the table
    fresh = SplitAdamW(dense.parameters(), [table.weight], lr=0.1, weight_decay=0.5)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.sparse.state_dict()["state"][0]["exp_avg"],
                               opt.sparse.state_dict()["state"][0]["exp_avg"])


def test_lazy_adamw_is_sparse_adam_after_decoupled_decay_of_the_looked_up_rows():
    torch.manual_seed(0)
    ours = nn.Embedding(12, 3, sparse=True)
    ref = nn.Embedding(12, 3, sparse=True)
    ref.load_state_dict(ours.state_dict())
    lr, wd = 0.05, 0.4
    opt, ref_opt = LazyAdamW([ours.weight], lr=lr, weight_decay=wd), torch.optim.SparseAdam([ref.weight], lr=lr)
    for ids in ([1, 3, 3, 7], [3, 5], [0, 1, 11, 11, 11]):  # duplicates within a step are summed
        ids = torch.tensor(ids)
        target = torch.arange(len(ids) * 3, dtype=torch.float32).reshape(-1, 3)
        for table in (ours, ref):
            table.weight.grad = None
            ((table(ids) - target) ** 2).sum().backward()
        opt.step()
        with torch.no_grad():  # the reference: decay the looked-up rows, then SparseAdam
            rows = ids.unique()
            ref.weight[rows] *= 1 - lr * wd
        ref_opt.step()
        torch.testing.assert_close(ours.weight, ref.weight)
    untouched = [i for i in range(12) if i not in (0, 1, 3, 5, 7, 11)]
    assert (opt.state[ours.weight]["exp_avg"][untouched] == 0).all()
    with pytest.raises(ValueError, match="sparse gradients"):
        dense = nn.Embedding(4, 2)
        dense(torch.tensor([1])).sum().backward()
        LazyAdamW([dense.weight], lr=0.1).step()


def test_sparse_ids_train_the_same_model_kind(data, monkeypatch, tmp_path):
    ds, split = data
    monkeypatch.setattr(mgr_build, "SPARSE_IDS_MIN_ROWS", 0)
    grads: list[bool] = []
    original = SplitAdamW.step

    def spy(self):
        grads.extend(p.grad.is_sparse for p in self.sparse.param_groups[0]["params"] if p.grad is not None)
        return original(self)

    monkeypatch.setattr(SplitAdamW, "step", spy)
    model = MGR(SMALL, seed=0).fit(ds, split.train, split.valid)
    assert model.spec_["sparse_ids"] and grads and all(grads)
    tables = sparse_parameters(model.net_)
    assert {t.shape[0] for t in tables} == {ds.n_users + 1, ds.n_items + 1}  # user table shared with social
    losses = [e["loss"] for e in model.history_]
    assert losses[-1] < losses[0] and np.isfinite(model.score(np.arange(5))).all()
    again = MGR(SMALL, seed=0).fit(ds, split.train, split.valid)  # deterministic under a seed
    np.testing.assert_array_equal(model.score(np.arange(20)), again.score(np.arange(20)))
    model.save(tmp_path / "m")
    np.testing.assert_allclose(MGR.load(tmp_path / "m").score(np.arange(20)), model.score(np.arange(20)), atol=1e-6)
    sgd = MGR({**SMALL, "optimizer": "sgd", "epochs": 1}, seed=0).fit(ds, split.train, None)
    assert np.isfinite(sgd.score(np.arange(5))).all()


def test_sparse_ids_are_auto_only_where_they_pay(data):
    ds, split = data
    model = MGR(SMALL, seed=0).fit(ds, split.train, None)
    assert not model.spec_["sparse_ids"] and not sparse_parameters(model.net_)  # 320 rows: dense
    assert not mgr_build.use_sparse_ids(MGRConfig(loss="softmax"), "set", 10**6)
    assert not mgr_build.use_sparse_ids(MGRConfig(loss="sampled_softmax"), "sequence", 10**6)
    assert not mgr_build.use_sparse_ids(MGRConfig(loss="bpr", sparse_ids="off"), "set", 10**6)
    assert mgr_build.use_sparse_ids(MGRConfig(loss="bpr"), "set", 10**6)
    with pytest.raises(ValueError, match="sparse_ids"):
        MGRConfig(sparse_ids="on")
    dense = make_optimizer(nn.Linear(2, 2), "adamw", lr=0.1, weight_decay=0.1)
    assert isinstance(dense, torch.optim.AdamW)
