"""Ranking metrics against hand-computed values (binary relevance, RecBole definitions)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from mgrec.errors import ConfigError
from mgrec.metrics import (
    METRICS,
    canonical_truth,
    compute,
    hit_matrix,
    list_metrics,
    map_,
    mrr,
    ndcg,
    precision,
)

ALL = ("precision", "recall", "f1", "hit", "mrr", "ndcg", "map")
L3 = 1 / math.log2(3)  # discount of rank 2 = 0.6309298
L4 = 1 / math.log2(4)  # rank 3 = 0.5
L6 = 1 / math.log2(6)  # rank 5 = 0.3868528


def test_registry_names():
    assert set(METRICS) == set(ALL)


def test_two_hits_three_relevant():
    # ranked 10 20 30 40 50, relevant {20, 50, 70}: hits at ranks 2 and 5, R = 3.
    m = list_metrics([10, 20, 30, 40, 50], {20, 50, 70}, [1, 2, 5], ALL)
    # k=1: nothing in the top 1.
    for name in ALL:
        assert m[f"{name}@1"] == 0.0
    # k=2: H=1. P=1/2, R=1/3, F1=2*(1/2)(1/3)/(1/2+1/3)=(1/3)/(5/6)=0.4; first hit at rank 2.
    assert m["precision@2"] == pytest.approx(0.5)
    assert m["recall@2"] == pytest.approx(1 / 3)
    assert m["f1@2"] == pytest.approx(0.4)
    assert m["hit@2"] == 1.0
    assert m["mrr@2"] == pytest.approx(0.5)
    # DCG = 1/log2(3); IDCG over min(3,2)=2 ideal hits = 1 + 1/log2(3) -> 0.386853
    assert m["ndcg@2"] == pytest.approx(L3 / (1 + L3))
    assert m["ndcg@2"] == pytest.approx(0.386853, abs=1e-6)
    # MAP: precision@2 * h_2 = 1/2, divided by min(3, 2) = 2 -> 0.25
    assert m["map@2"] == pytest.approx(0.25)
    # k=5: H=2. P=2/5, R=2/3, F1=2*(2/5)(2/3)/(2/5+2/3)=(8/15)/(16/15)=0.5
    assert m["precision@5"] == pytest.approx(0.4)
    assert m["recall@5"] == pytest.approx(2 / 3)
    assert m["f1@5"] == pytest.approx(0.5)
    assert m["hit@5"] == 1.0
    assert m["mrr@5"] == pytest.approx(0.5)
    # DCG = 1/log2(3) + 1/log2(6) = 1.0177826; IDCG = 1 + 1/log2(3) + 1/log2(4) = 2.1309298
    assert m["ndcg@5"] == pytest.approx((L3 + L6) / (1 + L3 + L4))
    assert m["ndcg@5"] == pytest.approx(0.477624, abs=1e-6)
    # MAP: (precision@2 + precision@5) / min(3, 5) = (1/2 + 2/5) / 3 = 0.3
    assert m["map@5"] == pytest.approx(0.3)


def test_fewer_relevant_than_k():
    # ranked 1 2 3 4, relevant {3}: one hit at rank 3, R = 1 < k = 4.
    m = list_metrics([1, 2, 3, 4], {3}, [4], ALL)
    assert m["precision@4"] == pytest.approx(0.25)
    assert m["recall@4"] == pytest.approx(1.0)
    assert m["f1@4"] == pytest.approx(0.4)  # 2*0.25*1/1.25
    assert m["hit@4"] == 1.0
    assert m["mrr@4"] == pytest.approx(1 / 3)
    assert m["ndcg@4"] == pytest.approx(0.5)  # (1/log2(4)) / 1
    assert m["map@4"] == pytest.approx(1 / 3)  # precision@3 / min(1, 4)


def test_more_relevant_than_k_all_hits():
    # ranked 1 2, relevant {1, 2, 3, 4}: both hits, R = 4 > k = 2 -> ideal list, ndcg = map = 1.
    m = list_metrics([1, 2], {1, 2, 3, 4}, [2], ALL)
    assert m["precision@2"] == 1.0
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["f1@2"] == pytest.approx(2 / 3)  # 2*1*0.5/1.5
    assert m["ndcg@2"] == pytest.approx(1.0)
    assert m["map@2"] == pytest.approx(1.0)  # (1/1 + 2/2) / min(4, 2)
    assert m["mrr@2"] == 1.0


def test_no_hits_all_zero():
    m = list_metrics([1, 2, 3], {9}, [1, 3], ALL)
    assert all(v == 0.0 for v in m.values())
    assert len(m) == 14


def test_padding_never_hits_and_precision_divides_by_k():
    # ranked 5 -1 -1, relevant {5, 6}: hit at rank 1 only; padding is a miss.
    m = list_metrics([5, -1, -1], {5, 6}, [3], ALL)
    assert m["precision@3"] == pytest.approx(1 / 3)
    assert m["recall@3"] == pytest.approx(0.5)
    assert m["mrr@3"] == 1.0
    assert m["ndcg@3"] == pytest.approx(1 / (1 + L3))  # 0.613147
    assert m["map@3"] == pytest.approx(0.5)  # 1 / min(2, 3)


def test_hit_matrix_narrower_than_k_counts_misses():
    hits = np.array([[True, False]])
    n_rel = np.array([1])
    assert precision(hits, n_rel, 5)[0] == pytest.approx(0.2)
    assert ndcg(hits, n_rel, 5)[0] == pytest.approx(1.0)
    assert map_(hits, n_rel, 5)[0] == pytest.approx(1.0)


def test_zero_relevant_gives_zero_without_warnings():
    hits = np.zeros((2, 3), dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = compute(hits, np.array([0, 0]), [3], ALL)
    for v in values.values():
        np.testing.assert_array_equal(v, [0.0, 0.0])


def test_vectorised_batch_matches_per_row():
    # rows: [0 1 0 0 1] R=3 ; [1 1 0 0 0] R=2 ; [0 0 0 0 0] R=1
    hits = np.array([[0, 1, 0, 0, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=bool)
    n_rel = np.array([3, 2, 1])
    np.testing.assert_allclose(mrr(hits, n_rel, 5), [0.5, 1.0, 0.0])
    np.testing.assert_allclose(ndcg(hits, n_rel, 5), [(L3 + L6) / (1 + L3 + L4), 1.0, 0.0])
    # row 1: (1/1 + 2/2) / min(2, 5) = 1
    np.testing.assert_allclose(map_(hits, n_rel, 5), [0.3, 1.0, 0.0])


def _naive(ranked, rel, k):
    """An independent per-list reference written with plain python."""
    top = [x for x in ranked[:k]]
    h = [1 if (x != -1 and x in rel) else 0 for x in top] + [0] * (k - len(top))
    n_hit, r = sum(h), len(rel)
    p, rc = n_hit / k, (n_hit / r if r else 0.0)
    first = next((j + 1 for j, x in enumerate(h) if x), None)
    dcg = sum(x / math.log2(j + 2) for j, x in enumerate(h))
    idcg = sum(1 / math.log2(j + 2) for j in range(min(r, k)))
    ap, run = 0.0, 0
    for j, x in enumerate(h):
        run += x
        ap += x * run / (j + 1)
    return {
        "precision": p,
        "recall": rc,
        "f1": 2 * p * rc / (p + rc) if p + rc else 0.0,
        "hit": float(n_hit > 0),
        "mrr": 1 / first if first else 0.0,
        "ndcg": dcg / idcg if idcg else 0.0,
        "map": ap / min(r, k) if r else 0.0,
    }


def test_random_lists_match_naive_reference():
    rng = np.random.default_rng(7)
    n_items, n_users, kmax = 30, 40, 8
    ranked = np.stack([rng.permutation(n_items)[:kmax] for _ in range(n_users)])
    ranked[rng.random(ranked.shape) < 0.1] = -1
    truth = sp.random(n_users, n_items, density=0.15, format="csr", random_state=3)
    hits = hit_matrix(ranked, truth)
    n_rel = np.diff(canonical_truth(truth).indptr)
    values = compute(hits, n_rel, [1, 3, 8], ALL)
    for b in range(n_users):
        rel = set(truth[b].indices.tolist())
        for k in (1, 3, 8):
            ref = _naive(ranked[b].tolist(), rel, k)
            for name in ALL:
                assert values[f"{name}@{k}"][b] == pytest.approx(ref[name]), (b, k, name)


def test_hit_matrix_basic_and_padding():
    ranked = np.array([[3, 1, -1], [0, 2, 1]])
    truth = sp.csr_matrix(np.array([[0, 1, 0, 0, 1], [1, 1, 0, 0, 0]], dtype=np.float32))
    np.testing.assert_array_equal(
        hit_matrix(ranked, truth), [[False, True, False], [True, False, True]]
    )


def test_hit_matrix_non_canonical_truth():
    # row 0 stores item 2 twice and an explicit zero for item 1; indices are unsorted.
    data = np.array([1.0, 0.0, 1.0, 1.0], dtype=np.float32)
    indices = np.array([2, 1, 2, 0])
    indptr = np.array([0, 3, 4])
    truth = sp.csr_matrix((data, indices, indptr), shape=(2, 3))
    truth.has_sorted_indices = False
    ranked = np.array([[1, 2, 0], [2, 1, 0]])
    np.testing.assert_array_equal(
        hit_matrix(ranked, truth), [[False, True, False], [False, False, True]]
    )
    assert np.diff(canonical_truth(truth).indptr).tolist() == [1, 1]


def test_hit_matrix_rejects_bad_input():
    truth = sp.csr_matrix((2, 4))
    with pytest.raises(ValueError, match="rows"):
        hit_matrix(np.zeros((3, 2), dtype=np.int64), truth)
    with pytest.raises(ValueError, match="outside"):
        hit_matrix(np.array([[0, 4], [1, 2]]), truth)
    assert not hit_matrix(np.array([[0, 1], [2, 3]]), truth).any()


def test_compute_keys_and_errors():
    hits = np.array([[True, False]])
    out = compute(hits, np.array([1]), [2, 1, 2], ["ndcg", "hit"])
    assert list(out) == ["ndcg@1", "ndcg@2", "hit@1", "hit@2"]
    with pytest.raises(ConfigError, match="unknown metric 'auc'"):
        compute(hits, np.array([1]), [1], ["auc"])
    for bad in ([0], [2.5], [True], []):
        with pytest.raises(ConfigError):
            compute(hits, np.array([1]), bad, ["hit"])
