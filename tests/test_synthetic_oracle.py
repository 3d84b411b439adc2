"""The synthetic world's oracle: ranking by the generator's own score, with terms removed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from mgrec.data.split import make_split
from mgrec.data.synthetic import SyntheticConfig, make_synthetic
from mgrec.data.synthetic_oracle import TERM_GROUPS, expected_gain, oracle_ndcg

SMALL = SyntheticConfig(n_users=300, n_items=200, mean_events=15.0)
QUIET = {f: 0.0 for f in ("w_taste", "w_pop", "w_pop_drift", "w_taste_drift", "w_daypart", "w_weekend",
                          "w_price", "w_seq_cluster", "w_social")}


def _requests(cfg: SyntheticConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    split = make_split(make_synthetic(cfg, seed=0), "loo", seed=0)
    return split.test, pd.concat([split.train, split.valid])


def test_a_world_of_successors_only_is_ranked_by_its_successor_term():
    # every score term off but the successor item: the next event is the previous item's
    # successor whenever that is still unseen and released, so the whole score ranks it first
    cfg = dataclasses.replace(SMALL, **QUIET, w_seq_item=30.0)
    test, history = _requests(cfg)
    got = oracle_ndcg(cfg, 0, test, history)
    assert got["all"] > 0.9
    assert got["no-behavior"] < 0.2  # without it every item scores alike: near random
    for g in ("user", "item", "social", "time"):  # the other terms are all zero in this world
        assert got[f"no-{g}"] == pytest.approx(got["all"])


def test_a_world_of_friends_only_needs_the_social_term():
    cfg = dataclasses.replace(SMALL, **{**QUIET, "w_social": 8.0}, w_seq_item=0.0, social_window_days=365.0)
    test, history = _requests(cfg)
    got = oracle_ndcg(cfg, 0, test, history)
    assert got["all"] > 2 * got["no-social"]
    assert got["no-behavior"] == pytest.approx(got["all"])


def test_default_world_every_group_carries_signal_and_request_time_is_read():
    test, history = _requests(SMALL)
    got = oracle_ndcg(SMALL, 0, test, history)
    assert set(got) == {"all", *(f"no-{g}" for g in TERM_GROUPS)}
    assert all(got[f"no-{g}"] < got["all"] for g in TERM_GROUPS)
    same = oracle_ndcg(SMALL, 0, test.assign(request_time=test["timestamp"]), history, variants={"all": ()})
    assert same["all"] == got["all"]
    # a request made before the first event: friends' items and the seen items are not known
    # yet, and late items are not released
    early = oracle_ndcg(SMALL, 0, test.assign(request_time=SMALL.start), history, variants={"all": ()})
    assert early["all"] != got["all"]


def test_a_world_without_friends_has_no_social_signal():
    cfg = dataclasses.replace(SMALL, social_degree=0.0)
    test, history = _requests(cfg)
    got = oracle_ndcg(cfg, 0, test, history)
    assert got["no-social"] == got["all"] > 0


def test_unknown_terms_are_an_error():
    test, history = _requests(SMALL)
    with pytest.raises(ValueError, match="variant 'x': unknown score terms \\['tast'\\]"):
        oracle_ndcg(SMALL, 0, test, history, variants={"x": ("tast",)})


def test_expected_gain_by_hand():
    # 1 / log2(2) = 1, 1 / log2(3) = 0.630930, 1 / log2(11) = 0.289065
    got = expected_gain(np.array([0, 1, 0, 9, 10, 3]), np.array([0, 0, 1, 1, 0, 199]), 10)
    assert got.tolist() == pytest.approx([1.0, 0.630930, (1 + 0.630930) / 2, 0.289065 / 2, 0.0, got[5]])
    # 200 items tied from rank 3: ranks 3..9 of the 200 count, each with probability 1/200
    assert got[5] == pytest.approx(sum(1 / np.log2(r + 2) for r in range(3, 10)) / 200)
