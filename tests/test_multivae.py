"""Mult-VAE: hand-checked loss terms, annealing, input pipeline, learning, determinism, persistence."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mgrec.baselines.multivae import (
    MultiVAE,
    _input_rows,
    anneal_beta,
    gaussian_kl,
    multinomial_nll,
)
from mgrec.baselines.pop import Pop
from mgrec.data.dataset import Dataset, to_csr
from mgrec.data.vocab import Vocabulary
from mgrec.errors import ConfigError
from mgrec.evaluation import evaluate
from mgrec.recommender import Recommender

FAST = {"hidden": [64], "latent": 16, "batch_size": 50, "lr": 3e-3, "epochs": 40, "patience": 8,
        "total_anneal_steps": 200}


def _frame(users, items) -> pd.DataFrame:
    return pd.DataFrame({"user": np.asarray(users, np.int64), "item": np.asarray(items, np.int64),
                         "weight": np.ones(len(users), np.float32)})


def _planted(seed: int = 0, n_users: int = 200, n_items: int = 100, n_groups: int = 4):
    """Users of group g take 12 items of group g plus 3 random items; 8:1:1-like split.

    Returns (dataset, train, valid, test); valid and test hold one item per user.
    """
    rng = np.random.default_rng(seed)
    group_i = np.arange(n_items) % n_groups
    rows_u, rows_i = [], []
    for u in range(n_users):
        own = np.flatnonzero(group_i == u % n_groups)
        items = np.unique(np.concatenate([rng.choice(own, 12, replace=False),
                                          rng.choice(n_items, 3, replace=False)]))
        rows_u.extend([u] * len(items))
        rows_i.extend(items.tolist())
    frame = _frame(rows_u, rows_i)
    part = np.zeros(len(frame), np.int64)
    user_col = frame["user"].to_numpy()
    for u in range(n_users):
        idx = rng.permutation(np.flatnonzero(user_col == u))
        part[idx[0]], part[idx[1]] = 1, 2
    ds = Dataset("planted", Vocabulary([f"u{i}" for i in range(n_users)]),
                 Vocabulary([f"i{i}" for i in range(n_items)]), frame)
    train, valid, test = (frame[part == k].reset_index(drop=True) for k in range(3))
    return ds, train, valid, test


def _ndcg(model: Recommender, ds: Dataset, truth: pd.DataFrame) -> float:
    return evaluate(model, to_csr(truth, ds.n_users, ds.n_items), ks=(10,), metrics=("ndcg",))["ndcg@10"]


@pytest.fixture(scope="module")
def planted():
    return _planted()


@pytest.fixture(scope="module")
def fitted(planted):
    ds, train, valid, _ = planted
    return MultiVAE(FAST, seed=0).fit(ds, train, valid)


# ------------------------------------------------------------------------ loss terms
def test_gaussian_kl_by_hand():
    # row 0: d0: 0.5*(e^0 + 1 - 1 - 0) = 0.5; d1: 0.5*(2 + 0 - 1 - ln 2) = 0.5 - 0.5 ln 2
    # row 1 is the prior itself: 0. Batch mean: (1 - 0.5 ln 2) / 2.
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    assert float(gaussian_kl(mu, logvar)) == pytest.approx((1.0 - 0.5 * math.log(2.0)) / 2, abs=1e-6)
    assert float(gaussian_kl(mu[1:], logvar[1:])) == 0.0


def test_multinomial_nll_by_hand_1x3():
    # softmax(0, ln 2, ln 3) = (1/6, 2/6, 3/6); the user has items 0 and 2:
    # -(log 1/6 + log 1/2) = log 12.
    logits = torch.tensor([[0.0, math.log(2.0), math.log(3.0)]])
    x = torch.tensor([[1.0, 0.0, 1.0]])
    assert float(multinomial_nll(logits, x)) == pytest.approx(math.log(12.0), abs=1e-6)
    # shifting every logit changes nothing; an empty row costs nothing.
    assert float(multinomial_nll(logits + 5.0, x)) == pytest.approx(math.log(12.0), abs=1e-5)
    assert float(multinomial_nll(logits, torch.zeros(1, 3))) == 0.0


def test_anneal_schedule():
    assert [anneal_beta(s, 100, 0.2) for s in (0, 1, 10, 20, 21, 10_000)] == [
        0.0, 0.01, 0.1, 0.2, 0.2, 0.2]
    assert anneal_beta(30, 100, 1.0) == pytest.approx(0.3)
    assert anneal_beta(0, 0, 0.2) == 0.2  # no annealing: the cap from the first step


def test_input_rows_normalise_and_drop():
    m = to_csr(_frame([0, 0, 0, 0, 1], [1, 3, 5, 7, 2]), 3, 8)
    users = np.array([0, 1, 2])
    x, x_in = _input_rows(m, users, 0.0, None)
    assert x.sum(1).tolist() == [4.0, 1.0, 0.0]
    assert x_in[0, [1, 3, 5, 7]].tolist() == [0.5] * 4  # 1 / sqrt(4)
    assert x_in[1, 2] == 1.0 and float(x_in[2].abs().sum()) == 0.0  # empty row stays zero
    gen = torch.Generator().manual_seed(0)
    x2, dropped = _input_rows(m, users, 0.5, gen)
    assert torch.equal(x2, x)  # the likelihood target is never dropped
    kept = dropped[x > 0]
    assert set(kept.tolist()) <= {0.0, 1.0, 2.0}  # kept entries scaled by 1 / (1 - 0.5)
    assert torch.all((kept == 0) | (kept == 2 * x_in[x > 0]))
    assert float(dropped[x == 0].abs().sum()) == 0.0


# -------------------------------------------------------------------------- learning
def test_learns_planted_structure_and_beats_pop(planted, fitted):
    ds, train, valid, test = planted
    pop = Pop({}).fit(ds, train, valid)
    vae_ndcg, pop_ndcg = _ndcg(fitted, ds, valid), _ndcg(pop, ds, valid)
    assert vae_ndcg > pop_ndcg + 0.1, (vae_ndcg, pop_ndcg)
    assert _ndcg(fitted, ds, test) > _ndcg(pop, ds, test) + 0.1
    # the restored weights are those of the best evaluated epoch.
    best = max(h["valid"] for h in fitted.history_ if "valid" in h)
    assert fitted.best_valid_ == pytest.approx(best)
    assert vae_ndcg == pytest.approx(best, abs=1e-6)
    assert fitted.history_[fitted.best_epoch_ - 1]["valid"] == pytest.approx(best)
    # 200 users with training items, 50 per batch: 4 steps per epoch drive the annealing.
    assert fitted.steps_ == 4 * len(fitted.history_)


def test_without_valid_trains_all_epochs_and_loss_falls(planted):
    ds, train, _, _ = planted
    m = MultiVAE({**FAST, "epochs": 5}, seed=0).fit(ds, train, None)
    assert len(m.history_) == 5 and m.best_epoch_ == 5
    assert all("valid" not in h for h in m.history_)
    assert m.history_[-1]["loss"] < m.history_[0]["loss"]


def test_scoring_uses_mu_and_covers_users_without_training_items(planted, fitted):
    ds, _, _, _ = planted
    users = np.arange(ds.n_users)
    a = fitted.score(users)
    assert a.shape == (ds.n_users, ds.n_items) and a.dtype == np.float32
    assert np.array_equal(a, fitted.score(users))  # no dropout or sampling at scoring time
    cold = MultiVAE({**FAST, "epochs": 1}, seed=0)
    _, train, _, _ = planted
    cold.fit(ds, train[train["user"] != 5], None)
    row = cold.score(np.array([5]))
    assert np.isfinite(row).all() and cold.recommend(5, k=3)[0].min() >= 0
    with pytest.raises(ConfigError, match="out of range"):
        fitted.score(np.array([ds.n_users]))


# ---------------------------------------------------------------------- determinism
def test_deterministic_per_seed_and_independent_of_global_rng(planted):
    ds, train, valid, _ = planted
    cfg = {**FAST, "epochs": 3}
    users = np.arange(ds.n_users)
    threads = torch.get_num_threads()
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = MultiVAE(cfg, seed=7).fit(ds, train, valid).score(users)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never drawn from
    assert torch.get_num_threads() == threads  # the training thread count is restored
    torch.manual_seed(12345)
    b = MultiVAE(cfg, seed=7).fit(ds, train, valid).score(users)
    c = MultiVAE(cfg, seed=8).fit(ds, train, valid).score(users)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


# ---------------------------------------------------------------------- persistence
def test_save_load_round_trip(planted, fitted, tmp_path):
    ds, _, _, _ = planted
    fitted.save(tmp_path / "vae")
    back = MultiVAE.load(tmp_path / "vae")
    assert type(back) is MultiVAE
    users = np.arange(ds.n_users)
    a_items, a_scores = fitted.recommend(users, k=10)
    b_items, b_scores = back.recommend(users, k=10)
    assert np.array_equal(a_items, b_items) and np.array_equal(a_scores, b_scores)
    assert back.config_dict() == fitted.config_dict()
    assert (back.best_epoch_, back.steps_, back.seed) == (fitted.best_epoch_, fitted.steps_, 0)
    assert back.best_valid_ == pytest.approx(fitted.best_valid_)
    MultiVAE(back.config_dict())  # the saved config is a valid constructor argument


def test_load_rejects_weights_of_another_shape(planted, fitted, tmp_path):
    from safetensors.numpy import load_file, save_file

    from mgrec.errors import DataError

    fitted.save(tmp_path / "vae")
    arrays = load_file(str(tmp_path / "vae" / "weights.safetensors"))
    arrays["net.dec_b.0"] = np.zeros(7, np.float32)
    save_file(arrays, str(tmp_path / "vae" / "weights.safetensors"))
    with pytest.raises(DataError, match="checksum"):  # the checksum catches it first
        MultiVAE.load(tmp_path / "vae")
    meta = json.loads((tmp_path / "vae" / "model.json").read_text())
    meta.pop("weights_sha256")  # a folder without one: the shape check still refuses it
    (tmp_path / "vae" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="shape"):
        MultiVAE.load(tmp_path / "vae")


# --------------------------------------------------------------------------- config
def test_unknown_config_key_is_an_error():
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        MultiVAE({"nope": 1})


@pytest.mark.parametrize("bad", [{"dropout": 1.0}, {"latent": 0}, {"hidden": [600, 0]},
                                 {"valid_metric": "ndcg"}, {"anneal_cap": -0.1}])
def test_bad_config_values_are_errors(bad):
    with pytest.raises(ConfigError):
        MultiVAE(bad)


def test_unfitted_model_refuses_to_score():
    with pytest.raises(ConfigError, match="not fitted"):
        MultiVAE({}).score(np.array([0]))
