"""Full-ranking and sampled evaluation on tiny fake recommenders with fixed scores."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mgrec.evaluation as ev
from mgrec.errors import ConfigError, DataError
from mgrec.evaluation import (
    SampledMetricsWarning,
    default_chunk_size,
    evaluate,
    evaluate_sampled,
    evaluate_split,
)
from mgrec.recommender import Recommender

L3, L4, L5, L6 = (1 / math.log2(n) for n in (3, 4, 5, 6))
IDCG2 = 1 + L3  # two ideal hits


class FixedModel(Recommender):
    """Scores come from a fixed matrix; records the size of every score() batch."""

    name = "fixed"

    def __init__(self, scores: np.ndarray, seen: sp.csr_matrix | None = None) -> None:
        super().__init__()
        self.table = np.asarray(scores, dtype=np.float32)
        self.n_users_, self.n_items_ = self.table.shape
        self.seen_ = seen
        self.batches: list[int] = []

    def _fit(self, dataset: Any, train: pd.DataFrame, valid: pd.DataFrame | None) -> None:
        raise NotImplementedError

    def score(self, users: np.ndarray) -> np.ndarray:
        self.batches.append(len(users))
        return self.table[users]

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {"table": self.table}

    def _set_state(self, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.table = arrays["table"]


def _csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    dense = np.zeros((len(rows), n_items), dtype=np.float32)
    for u, items in enumerate(rows):
        dense[u, items] = 1.0
    return sp.csr_matrix(dense)


def _scores_from_orders(orders: list[list[int]]) -> np.ndarray:
    """Row u scores item orders[u][j] with n - j (first = best)."""
    n = len(orders[0])
    out = np.zeros((len(orders), n), dtype=np.float32)
    for u, order in enumerate(orders):
        out[u, order] = np.arange(n, 0, -1)
    return out


# 4 users x 6 items. After filtering, ranked lists are (see each user):
ORDERS = [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [2, 0, 1, 3, 4, 5], [3, 2, 1, 0, 5, 4]]
SEEN = [[0], [5], [], [3]]
TRUTH = [[1, 3], [0], [], [2, 4]]
EXCLUDE = [[], [], [], [1]]


@pytest.fixture
def model() -> FixedModel:
    return FixedModel(_scores_from_orders(ORDERS), _csr(SEEN, 6))


def _run(model: FixedModel, **kw: Any) -> dict[str, float]:
    kw.setdefault("exclude", _csr(EXCLUDE, 6))
    return evaluate(model, _csr(TRUTH, 6), ks=(2, 5), **kw)


def test_exact_values(model):
    r = _run(model)
    # user 0: ranked 1 2 3 4 5, truth {1,3}: hits 1 0 1 0 0
    # user 1: ranked 4 3 2 1 0, truth {0}:   hits 0 0 0 0 1
    # user 2: no truth -> skipped
    # user 3: ranked 2 0 5 4 -1 (seen 3, excluded 1), truth {2,4}: hits 1 0 0 1 0
    assert r["n_users"] == 3.0
    # @2: u0 P=R=F1=1/2, u1 all 0, u3 P=R=F1=1/2
    assert r["precision@2"] == pytest.approx(1 / 3)
    assert r["recall@2"] == pytest.approx(1 / 3)
    assert r["f1@2"] == pytest.approx(1 / 3)
    assert r["hit@2"] == pytest.approx(2 / 3)
    assert r["mrr@2"] == pytest.approx(2 / 3)
    assert r["ndcg@2"] == pytest.approx((1 / IDCG2 + 0 + 1 / IDCG2) / 3)
    assert r["map@2"] == pytest.approx((1 / 2 + 0 + 1 / 2) / 3)  # precision@1 / min(2, 2)
    # @5: P = 2/5, 1/5, 2/5; recall 1 each; F1 = 2*.4/1.4 = 4/7, 2*.2/1.2 = 1/3, 4/7
    assert r["precision@5"] == pytest.approx(1 / 3)
    assert r["recall@5"] == pytest.approx(1.0)
    assert r["f1@5"] == pytest.approx((4 / 7 + 1 / 3 + 4 / 7) / 3)
    assert r["hit@5"] == 1.0
    assert r["mrr@5"] == pytest.approx((1 + 1 / 5 + 1) / 3)
    # DCG: u0 1 + 1/log2(4); u1 1/log2(6) (IDCG 1); u3 1 + 1/log2(5)
    assert r["ndcg@5"] == pytest.approx(((1 + L4) / IDCG2 + L6 + (1 + L5) / IDCG2) / 3)
    # MAP: u0 (1/1 + 2/3)/2 ; u1 (1/5)/1 ; u3 (1/1 + 2/4)/2
    assert r["map@5"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 5 + (1 + 2 / 4) / 2) / 3)
    # top-2 lists {1,2} {4,3} {2,0} cover 5 of 6 items; top-5 lists cover all 6.
    assert r["coverage@2"] == pytest.approx(5 / 6)
    assert r["coverage@5"] == pytest.approx(1.0)
    assert len(r) == 7 * 2 + 2 + 1


def test_exclude_is_honoured(model):
    with_ex = _run(model, users=np.array([3]))
    without = _run(model, users=np.array([3]), exclude=None)
    # excluded item 1 would sit at rank 2: ranked 2 1 0 5 4 -> hits 1 0 0 0 1
    assert with_ex["ndcg@5"] == pytest.approx((1 + L5) / IDCG2)
    assert without["ndcg@5"] == pytest.approx((1 + L6) / IDCG2)
    assert without["map@5"] == pytest.approx((1 + 2 / 5) / 2)


def test_seen_items_never_count(model):
    # user 0's only truth item is its (top-scored) training item 0: it is filtered, so no hit,
    # yet it still counts as relevant (R = 1), as in RecBole.
    r = evaluate(model, _csr([[0], [], [], []], 6), ks=(5,))
    assert r["n_users"] == 1.0
    assert r["hit@5"] == 0.0 and r["recall@5"] == 0.0
    model.seen_ = None
    assert evaluate(model, _csr([[0], [], [], []], 6), ks=(5,))["mrr@5"] == 1.0


def test_chunked_equals_unchunked(model):
    one = _run(model, chunk_size=1)
    assert model.batches == [1, 1, 1]
    model.batches.clear()
    big = _run(model, chunk_size=1000, progress=True)
    assert model.batches == [3]
    assert one == big


def test_users_argument_and_skipping(model):
    r = _run(model, users=np.array([2, 0, 0]))  # user 2 has no truth; repeats collapse
    assert r["n_users"] == 1.0
    assert r["map@5"] == pytest.approx((1 + 2 / 3) / 2)
    with pytest.raises(DataError, match="nothing to evaluate"):
        _run(model, users=np.array([2]))
    with pytest.raises(ConfigError, match="user codes"):
        _run(model, users=np.array([4]))


def test_argument_errors(model):
    with pytest.raises(DataError, match="item columns"):
        evaluate(model, sp.csr_matrix((4, 5)))
    with pytest.raises(DataError, match="exclude"):
        evaluate(model, _csr(TRUTH, 6), exclude=sp.csr_matrix((3, 6)))
    with pytest.raises(ConfigError, match="chunk_size"):
        _run(model, chunk_size=0)
    with pytest.raises(ConfigError, match="unknown metric"):
        evaluate(model, _csr(TRUTH, 6), metrics=("auc",))
    unfitted = FixedModel(np.zeros((2, 3)))
    unfitted.n_items_ = 0
    with pytest.raises(ConfigError, match="not fitted"):
        evaluate(unfitted, sp.csr_matrix((2, 3)))


def test_large_catalogue_is_chunked(monkeypatch):
    n_users, n_items = 10, 100_000
    big = FixedModel(np.zeros((1, 1)))
    big.n_users_, big.n_items_ = n_users, n_items
    row = -np.arange(n_items, dtype=np.float32)  # item 0 best, then 1, 2, ...
    big.score = lambda users: (big.batches.append(len(users)), np.tile(row, (len(users), 1)))[1]
    truth = sp.csr_matrix((np.ones(n_users), (np.arange(n_users), np.arange(n_users))),
                          shape=(n_users, n_items))  # user u likes item u, ranked u+1
    r = evaluate(big, truth, ks=(10,), metrics=("hit", "mrr"), chunk_size=3)
    assert big.batches == [3, 3, 3, 1]
    assert r["hit@10"] == 1.0
    assert r["mrr@10"] == pytest.approx(np.mean(1 / np.arange(1, 11)))
    assert r["coverage@10"] == pytest.approx(10 / n_items)
    # the default chunk size follows the memory budget
    assert default_chunk_size(n_items) == 256 * 2**20 // (n_items * 12) == 223
    monkeypatch.setattr(ev, "MEMORY_BUDGET_BYTES", 4 * n_items * 12)
    big.batches.clear()
    assert evaluate(big, truth, ks=(10,), metrics=("hit",)) == {
        "hit@10": 1.0, "coverage@10": 1e-4, "n_users": 10.0}
    assert max(big.batches) == 4


def _split(train, valid, test):
    cols = ["user", "item"]
    frame = lambda pairs: pd.DataFrame(pairs, columns=cols, dtype=np.int64)  # noqa: E731
    return SimpleNamespace(train=frame(train), valid=frame(valid), test=frame(test))


def test_evaluate_split_parts(model):
    data = SimpleNamespace(n_users=4, n_items=6)
    split = _split([(0, 0), (1, 5), (3, 3)], valid=[(3, 1), (0, 1)], test=[(3, 2), (3, 4)])
    test = evaluate_split(model, split, data, part="test", ks=(5,))
    # user 3 only; valid item 1 excluded -> ranked 2 0 5 4: hits at 1 and 4
    assert test["n_users"] == 1.0
    assert test["ndcg@5"] == pytest.approx((1 + L5) / IDCG2)
    valid = evaluate_split(model, split, data, part="valid", ks=(5,))
    # user 0: ranked 1 2 3 4 5 -> hit at 1 ; user 3: ranked 2 1 0 5 4 -> hit at 2
    assert valid["n_users"] == 2.0
    assert valid["mrr@5"] == pytest.approx((1 + 1 / 2) / 2)
    empty = _split([(0, 0)], valid=[], test=[(0, 1)])
    assert evaluate_split(model, empty, data, part="valid") == {"n_users": 0.0}
    with pytest.raises(ConfigError, match="part"):
        evaluate_split(model, split, data, part="train")



class NextItem(FixedModel):
    """Ranks first the item after each user's latest seen item (a one-step sequence model)."""

    def __init__(self, seen: sp.csr_matrix, last: np.ndarray) -> None:
        super().__init__(np.zeros(seen.shape, np.float32), seen)
        self.last = np.asarray(last, dtype=np.int64)

    def observe(self, users, items, times=None, weights=None) -> None:
        super().observe(users, items, times, weights)
        last = self.last.copy()  # replaced, not written in place (Recommender.observed)
        last[np.asarray(users)] = np.asarray(items)  # the events come in time order
        self.last = last

    def score(self, users: np.ndarray) -> np.ndarray:
        out = np.zeros((len(users), self.n_items_), np.float32)
        out[np.arange(len(users)), (self.last[users] + 1) % self.n_items_] = 1.0
        return out


def test_evaluate_split_under_loo_ranks_the_test_event_after_observing_the_validation_event():
    # every user walks items 0, 1, 2, 3 in order: train 0-1, validation 2, test 3
    data = SimpleNamespace(n_users=3, n_items=5)
    split = _split([(u, i) for u in range(3) for i in (0, 1)], valid=[(u, 2) for u in range(3)],
                   test=[(u, 3) for u in range(3)])
    split.valid["timestamp"] = np.array([30, 30, 30])
    model = NextItem(_csr([[0, 1]] * 3, 5), last=[1, 1, 1])
    split.protocol = "random"  # no order: the model ranks from its training state (item 2 first)
    assert evaluate_split(model, split, data, part="test", ks=(1,), metrics=("hit",))["hit@1"] == 0.0
    split.protocol = "loo"
    loo = evaluate_split(model, split, data, part="test", ks=(1,), metrics=("hit", "ndcg"))
    assert loo["hit@1"] == 1.0 and loo["ndcg@1"] == 1.0
    # the model itself has not observed the validation events
    assert model.last.tolist() == [1, 1, 1] and model.seen_[0].indices.tolist() == [0, 1]
    assert evaluate_split(model, split, data, part="valid", ks=(1,), metrics=("hit",))["hit@1"] == 1.0

def test_sampled_warns_prefixes_and_ranks():
    # user 0: scores 6..1 for items 0..5, seen {0}, truth {1, 3}: negatives from {2, 4, 5}.
    m = FixedModel(_scores_from_orders([ORDERS[0]]), _csr([[0]], 6))
    truth = _csr([[1, 3]], 6)
    with pytest.warns(SampledMetricsWarning, match="not comparable|NOT comparable"):
        r = evaluate_sampled(m, truth, n_negatives=100, rng=np.random.default_rng(0),
                             ks=(1, 2), metrics=("hit", "ndcg"))
    # positive 1 (score 5) beats 4, 2, 1 -> rank 1; positive 3 (score 3) loses to item 2 -> rank 2
    assert r == pytest.approx({
        "sampled_ndcg@1": 0.5, "sampled_ndcg@2": (1 + L3) / 2,
        "sampled_hit@1": 0.5, "sampled_hit@2": 1.0,
        "sampled_n_users": 1.0, "sampled_n_positives": 2.0,
    })
    # excluding item 2 from the negatives lifts positive 3 to rank 1
    with pytest.warns(SampledMetricsWarning):
        r = evaluate_sampled(m, truth, exclude=_csr([[2]], 6), n_negatives=2,
                             rng=np.random.default_rng(0), ks=(1,), metrics=("hit",))
    assert r["sampled_hit@1"] == 1.0
    with pytest.warns(SampledMetricsWarning), pytest.raises(ConfigError, match="n_negatives"):
        evaluate_sampled(m, truth, n_negatives=0, rng=np.random.default_rng(0))


def test_sampled_ties_count_against_positive():
    m = FixedModel(np.ones((1, 8)))
    with pytest.warns(SampledMetricsWarning):
        r = evaluate_sampled(m, _csr([[3]], 8), n_negatives=4, rng=np.random.default_rng(1),
                             ks=(4, 5), metrics=("hit",))
    assert r["sampled_hit@4"] == 0.0 and r["sampled_hit@5"] == 1.0  # rank 1 + 4 ties


def test_sample_allowed_avoids_banned_items():
    rng = np.random.default_rng(5)
    banned = np.array([1, 3, 4])  # of 8 items -> allowed {0, 2, 5, 6, 7}
    picks = ev._sample_allowed(rng, banned, 5, 200, 3)
    assert picks.shape == (200, 3)
    assert set(np.unique(picks).tolist()) == {0, 2, 5, 6, 7}
    assert all(len(set(row)) == 3 for row in picks.tolist())


def test_sampled_weighs_users_equally_and_chunks():
    # user 0 as above (hit@1 per positive: 1, 0 -> 0.5); user 1's truth item 5 is its best.
    m = FixedModel(_scores_from_orders(ORDERS[:2]), _csr([[0], []], 6))
    truth = _csr([[1, 3], [5]], 6)
    results = []
    for chunk in (1, None):
        with pytest.warns(SampledMetricsWarning):
            results.append(evaluate_sampled(m, truth, n_negatives=100, chunk_size=chunk,
                                            rng=np.random.default_rng(0), ks=(1,),
                                            metrics=("hit",)))
    assert results[0] == results[1]
    assert results[0]["sampled_hit@1"] == pytest.approx((0.5 + 1.0) / 2)  # not 2/3 per pair
    assert results[0]["sampled_n_positives"] == 3.0
