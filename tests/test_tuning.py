"""Hyperparameter search: validation only, best config picked, budgets, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mgrec.data.dataset import Dataset, to_csr
from mgrec.data.vocab import Vocabulary
from mgrec.errors import ConfigError, DataError
from mgrec.evaluation import evaluate
from mgrec.models import make_model
from mgrec.tuning import DEFAULT_GRIDS, SearchSpace, TuneResult, tune


class ValidOnlySplit:
    """A split whose test part must never be read: touching it fails the test."""

    def __init__(self, train: pd.DataFrame, valid: pd.DataFrame) -> None:
        self.train = train
        self.valid = valid

    @property
    def test(self) -> pd.DataFrame:
        raise AssertionError("tuning read split.test")


def _planted(seed: int = 0, n_users: int = 120, n_items: int = 60, n_groups: int = 3):
    """Users of group g take 10 items of group g; one random item of any group as noise."""
    rng = np.random.default_rng(seed)
    rows_u, rows_i, part = [], [], []
    for u in range(n_users):
        own = np.flatnonzero(np.arange(n_items) % n_groups == u % n_groups)
        items = np.unique(np.concatenate([rng.choice(own, 10, replace=False), rng.choice(n_items, 1)]))
        order = rng.permutation(len(items))
        rows_u += [u] * len(items)
        rows_i += items[order].tolist()
        part += [1] + [0] * (len(items) - 1)  # first shuffled item -> valid
    frame = pd.DataFrame({"user": np.array(rows_u, np.int64), "item": np.array(rows_i, np.int64),
                          "weight": np.ones(len(rows_u), np.float32)})
    ds = Dataset("planted", Vocabulary(range(n_users)), Vocabulary(range(n_items)), frame)
    part = np.array(part)
    return ds, ValidOnlySplit(frame[part == 0].reset_index(drop=True), frame[part == 1].reset_index(drop=True))


def test_search_space_grid_and_base():
    space = SearchSpace({"k": [10, 20], "shrink": [0.0, 5.0]}, base={"shrink": 1.0})
    assert len(space) == 2
    assert space.configs() == [{"shrink": 1.0, "k": 10}, {"shrink": 1.0, "k": 20}]
    assert SearchSpace({}).configs() == [{}]
    with pytest.raises(ConfigError, match="non-empty list"):
        SearchSpace({"k": []})
    assert set(DEFAULT_GRIDS) == {"pop", "itemknn", "ease", "bprmf", "multivae", "lightgcn", "sasrec", "mgr"}


def test_mgr_default_grid_searches_the_fusion_on_time_ordered_splits():
    from mgrec.tuning import search_space

    for protocol in ("random", None):
        space = search_space("mgr", protocol=protocol)
        assert space.grid == DEFAULT_GRIDS["mgr"] and "hist_dropout" in space.grid
    for protocol in ("loo", "temporal"):
        space = search_space("mgr", protocol=protocol)
        assert space.grid == {"weight_decay": [0.5, 1.0, 2.0], "fusion": ["gated", "deep"]}
        assert len(space) == len(search_space("mgr")) == 6  # the same budget on every split
        # a fusion fixed by the caller is not searched
        assert {c["fusion"] for c in search_space("mgr", base={"fusion": "weighted"}, protocol=protocol).configs()} \
            == {"weighted"}
    # models without an ordered grid keep their default one
    assert search_space("sasrec", protocol="loo").grid == DEFAULT_GRIDS["sasrec"]
    assert search_space("mgr", {"lr": [1e-3]}, protocol="loo").grid == {"lr": [1e-3]}


def test_tune_picks_best_valid_config_without_touching_test():
    ds, split = _planted()
    grid = {"k": [1, 30]}  # one neighbour per item cannot cover a 20-item taste group: clearly worse
    result = tune("itemknn", ds, split, grid=grid, seed=0)
    assert isinstance(result, TuneResult)
    assert result.best_config == {"k": 30}
    assert [t["config"] for t in result.trials] == [{"k": 1}, {"k": 30}]
    # each recorded score is the validation NDCG@10 of that config, recomputed independently.
    truth = to_csr(split.valid, ds.n_users, ds.n_items)
    for trial in result.trials:
        model = make_model("itemknn", trial["config"]).fit(ds, split.train, split.valid)
        assert trial["score"] == pytest.approx(evaluate(model, truth, ks=(10,), metrics=("ndcg",))["ndcg@10"])
    assert result.trials[1]["score"] > result.trials[0]["score"] + 0.05
    assert result.best_score == result.trials[1]["score"]
    # the returned model is the best trial's, fitted on train.
    assert result.model is not None and result.model.config.k == 30
    assert result.to_dict()["n_trials"] == 2 and result.grid_size == 2


def test_tune_default_grid_for_itemknn_records_every_trial():
    ds, split = _planted()
    result = tune("itemknn", ds, split, seed=0, metric="recall@5")
    assert result.grid_size == 12 and len(result.trials) == 12 and result.budget is None
    scores = [t["score"] for t in result.trials]
    assert result.best_score == max(scores)
    assert result.trials[scores.index(max(scores))]["config"] == result.best_config
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_budget_draws_a_reproducible_subset():
    ds, split = _planted()
    grid = {"reg": [1.0, 10.0, 100.0, 1000.0, 10000.0]}
    a = tune("ease", ds, split, grid=grid, budget=2, seed=1)
    b = tune("ease", ds, split, grid=grid, budget=2, seed=1)
    assert len(a.trials) == 2 and a.budget == 2 and a.grid_size == 5
    assert [t["config"] for t in a.trials] == [t["config"] for t in b.trials]
    assert all(t["config"]["reg"] in grid["reg"] for t in a.trials)
    seen = {tuple(t["config"]["reg"] for t in tune("ease", ds, split, grid=grid, budget=2, seed=s).trials)
            for s in range(6)}
    assert len(seen) > 1  # different seeds draw different subsets


def test_base_fixes_keys_for_every_trial():
    ds, split = _planted()
    result = tune("itemknn", ds, split, grid={"k": [5, 10], "shrink": [0.0, 50.0]}, base={"shrink": 3.0})
    assert [t["config"] for t in result.trials] == [{"shrink": 3.0, "k": 5}, {"shrink": 3.0, "k": 10}]
    assert result.best_config["shrink"] == 3.0


def test_tune_bprmf_with_early_stopping():
    ds, split = _planted()
    base = {"epochs": 15, "dim": 16, "batch_size": 256, "patience": 3}
    result = tune("bprmf", ds, split, grid={"lr": [1e-4, 0.02]}, base=base, seed=0)
    # lr 1e-4 barely moves from the random start in 15 short epochs; 0.02 learns the groups.
    assert result.best_config == {**base, "lr": 0.02}
    assert result.trials[1]["score"] > result.trials[0]["score"] + 0.1


def test_pop_has_a_single_trial():
    ds, split = _planted()
    result = tune("pop", ds, split)
    assert result.best_config == {} and len(result.trials) == 1


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"grid": {"nope": [1]}}, ConfigError, "unknown key 'nope'"),
        ({"grid": {"reg": [10.0, -1.0]}}, ConfigError, "reg must be > 0"),
        ({"metric": "ndcg"}, ConfigError, "ndcg@10"),
        ({"metric": "coverage@10"}, ConfigError, "recall"),
        ({"budget": 0, "grid": {"reg": [1.0, 2.0]}}, ConfigError, "at least 1"),
        ({"budget": -1, "grid": {"reg": [1.0]}}, ConfigError, "at least 1"),
    ],
)
def test_bad_requests_fail_before_training(kwargs, error, match):
    ds, split = _planted()
    with pytest.raises(error, match=match):
        tune("ease", ds, split, **kwargs)


def test_empty_validation_is_a_data_error():
    ds, split = _planted()
    empty = ValidOnlySplit(split.train, split.valid.iloc[:0])
    with pytest.raises(DataError, match="no validation interactions"):
        tune("pop", ds, empty)
    with pytest.raises(ConfigError, match="unknown model"):
        tune("nope", ds, split)
