"""Top-k retrieval over item vectors: the exact index against brute force, exclusions and
padding, compressed storage (fp16, int8), the faiss HNSW index's recall, and build_index."""

from __future__ import annotations

import numpy as np
import pytest

from mgrec.errors import ConfigError
from mgrec.retrieval import ExactIndex, FaissIndex, FaissIVFIndex, build_index, dequantize, quantize_rows


def _brute(x: np.ndarray, q: np.ndarray, k: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
    s = q.astype(np.float64) @ x.astype(np.float64).T
    if exclude is not None:
        for r, e in enumerate(exclude):
            s[r, e] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(r) & set(t)) / a.shape[1] for r, t in zip(a.tolist(), b.tolist(), strict=True)]))


@pytest.fixture(scope="module")
def rand():
    rng = np.random.default_rng(0)
    return rng.standard_normal((5000, 32)).astype(np.float32), rng.standard_normal((200, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((50, 32)).astype(np.float32)
    x = centers[rng.integers(0, 50, 20_000)] + 0.3 * rng.standard_normal((20_000, 32)).astype(np.float32)
    q = centers[rng.integers(0, 50, 200)] + 0.3 * rng.standard_normal((200, 32)).astype(np.float32)
    return x.astype(np.float32), q.astype(np.float32)


def test_exact_matches_brute_force(rand):
    x, q = rand
    items, scores = ExactIndex(x).search(q, 10)
    ref_items, ref_scores = _brute(x, q, 10)
    assert items.shape == scores.shape == (200, 10)
    assert items.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(items, ref_items)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-4)
    assert (np.diff(scores, axis=1) <= 0).all()
    one, _ = ExactIndex(x).search(q[0], 5)  # a single (D,) query is one row
    np.testing.assert_array_equal(one, ref_items[:1, :5])


def test_exact_exclusions_and_padding(rand):
    x, q = rand
    index = ExactIndex(x)
    top, _ = index.search(q[:3], 10)
    exclude = [top[0, :4], np.array([], np.int64), np.arange(0, 5000, 2)]
    items, scores = index.search(q[:3], 10, exclude=exclude)
    ref, _ = _brute(x, q[:3], 10, exclude)
    np.testing.assert_array_equal(items, ref)
    for row, e in zip(items, exclude, strict=True):
        assert not np.isin(row, e).any()
    # fewer items left than k: the tail is -1 / -inf
    small = ExactIndex(x[:6])
    items, scores = small.search(q[:2], 5, exclude=[np.array([0, 1, 2]), np.array([5])])
    assert (items[0, 3:] == -1).all() and np.isneginf(scores[0, 3:]).all()
    assert set(items[0, :3]) == {3, 4, 5} and np.isfinite(scores[0, :3]).all()
    assert (items[1] >= 0).all() and 5 not in items[1]
    # k larger than the catalogue
    items, scores = small.search(q[:2], 9)
    assert items.shape == (2, 9) and (items[:, 6:] == -1).all() and np.isneginf(scores[:, 6:]).all()
    assert sorted(items[0, :6]) == list(range(6))


def test_bad_queries(rand):
    x, q = rand
    index = ExactIndex(x)
    with pytest.raises(ConfigError, match="k must"):
        index.search(q, 0)
    with pytest.raises(ConfigError, match="shape"):
        index.search(q[:, :5], 3)
    with pytest.raises(ConfigError, match="one array per query"):
        index.search(q[:2], 3, exclude=[np.array([1])])
    with pytest.raises(ConfigError, match="excluded item codes"):
        index.search(q[:1], 3, exclude=[np.array([5000])])


def test_int8_quantization_error_bound(rand):
    x, _ = rand
    data, scales = quantize_rows(x, "int8")
    assert data.dtype == np.int8 and scales.dtype == np.float32 and scales.shape == (len(x),)
    assert np.abs(data.astype(np.int32)).max() <= 127
    np.testing.assert_allclose(scales, np.abs(x).max(axis=1) / 127, rtol=1e-6)
    err = np.abs(x - dequantize(data, scales))
    assert (err <= scales[:, None] / 2 * (1 + 1e-5) + 1e-7).all()
    zero, s0 = quantize_rows(np.zeros((2, 4)), "int8")  # an all-zero row stays zero
    assert (zero == 0).all() and (dequantize(zero, s0) == 0).all()
    half, none = quantize_rows(x, "fp16")
    assert half.dtype == np.float16 and none is None
    np.testing.assert_allclose(dequantize(half), x, rtol=1e-3, atol=1e-3)


def test_compressed_search_overlap_and_memory(rand):
    x, q = rand
    ref, _ = ExactIndex(x).search(q, 10)
    fp32, fp16, int8 = (ExactIndex(x, quantize=m) for m in ("none", "fp16", "int8"))
    # measured on this data (seed 0): fp16 1.000, int8 0.9885 (seeds 0-4: >= 0.9885)
    assert _overlap(fp16.search(q, 10)[0], ref) >= 0.995
    assert _overlap(int8.search(q, 10)[0], ref) >= 0.97
    # int8 scores are exactly those of the dequantised matrix
    data, scales = quantize_rows(x, "int8")
    np.testing.assert_allclose(int8.scores(q[:4]), q[:4] @ dequantize(data, scales).T, rtol=1e-5, atol=1e-4)
    # a small chunk size (several workspace blocks) gives the same result
    np.testing.assert_array_equal(ExactIndex(x, quantize="int8", chunk_rows=777).search(q, 10)[0],
                                  int8.search(q, 10)[0])
    n, d = x.shape
    assert fp32.memory_bytes() == n * d * 4
    assert fp16.memory_bytes() == n * d * 2
    assert int8.memory_bytes() == n * d + n * 4  # ~1/4 of fp32, plus one float32 scale per row
    assert int8.memory_bytes() / fp32.memory_bytes() <= 0.25 + 1.0 / d
    assert fp32.workspace_bytes == 0 and 0 < int8.workspace_bytes <= 2**20 + 4 * d


def test_exclusions_with_compressed_storage(rand):
    x, q = rand
    index = ExactIndex(x, quantize="int8")
    top, _ = index.search(q[:2], 3)
    items, _ = index.search(q[:2], 3, exclude=[top[0], top[1, :1]])
    assert not np.isin(items[0], top[0]).any() and top[1, 0] not in items[1]


def test_concurrent_searches_agree(rand):
    from concurrent.futures import ThreadPoolExecutor

    x, q = rand
    index = ExactIndex(x, quantize="int8", chunk_rows=500)
    ref = index.search(q, 10)[0]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda r: index.search(q[r:r + 50], 10)[0], range(0, 200, 50)))
    np.testing.assert_array_equal(np.concatenate(outs), ref)


def test_faiss_recall_and_exclusions(clustered):
    x, q = clustered
    exact = ExactIndex(x)
    ann = FaissIndex(x, m=16, ef_construction=64, ef_search=64)
    assert ann.kind == "faiss-hnsw" and ann.n_items == len(x) and ann.dim == x.shape[1]
    ref, _ = exact.search(q, 10)
    items, scores = ann.search(q, 10)
    assert _overlap(items, ref) >= 0.95  # measured 0.977
    assert (np.diff(scores, axis=1) <= 1e-5).all()
    excl = [r[:5] for r in ref]
    items, _ = ann.search(q, 10, exclude=excl)
    ref_ex, _ = exact.search(q, 10, exclude=excl)
    assert _overlap(items, ref_ex) >= 0.9  # measured 0.954
    for row, e in zip(items, excl, strict=True):
        assert not np.isin(row, e).any() and (row >= 0).all()
    assert ann.memory_bytes() > x.nbytes  # vectors + graph
    ann.ef_search = 200
    assert ann.ef_search == 200


def test_ivf_recall_exclusions_and_quantized_storage(clustered):
    x, q = clustered
    exact = ExactIndex(x)
    ann = FaissIVFIndex(x)  # nlist = sqrt(n), nprobe = max(16, nlist / 16)
    assert ann.kind == "faiss-ivf" and ann.nlist == round(np.sqrt(len(x))) and ann.nprobe == 16
    ref, _ = exact.search(q, 10)
    items, scores = ann.search(q, 10)
    assert _overlap(items, ref) >= 0.95
    assert (np.diff(scores, axis=1) <= 1e-5).all()
    excl = [r[:5] for r in ref]
    items, _ = ann.search(q, 10, exclude=excl)
    for row, e in zip(items, excl, strict=True):
        assert not np.isin(row, e).any() and (row >= 0).all()
    assert ann.memory_bytes() >= x.nbytes  # vectors + ids + centroids
    assert FaissIVFIndex(x, quantize="int8").memory_bytes() < 0.5 * ann.memory_bytes()
    again, _ = FaissIVFIndex(x).search(q, 10)  # the same centroids every time
    np.testing.assert_array_equal(again, ann.search(q, 10)[0])
    ann.nprobe = ann.nlist  # every group: exact
    assert _overlap(ann.search(q, 10)[0], ref) == 1.0


def test_ivf_keeps_long_vectors_reachable(clustered):
    """Items of very different norms (popular items grow long) stay reachable after the
    sphere transform, and scores are the inner products."""
    x, q = clustered
    scale = np.random.default_rng(5).lognormal(0.0, 0.5, len(x)).astype(np.float32)
    x = x * scale[:, None]
    ref, ref_scores = ExactIndex(x).search(q, 10, exclude=[np.arange(3)] * len(q))
    items, scores = FaissIVFIndex(x).search(q, 10, exclude=[np.arange(3)] * len(q))
    assert _overlap(items, ref) >= 0.95
    np.testing.assert_allclose(scores[items == ref], ref_scores[items == ref], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("cls", [FaissIndex, FaissIVFIndex])
def test_faiss_refetches_and_pads_every_kind(cls):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    q = rng.standard_normal((2, 8)).astype(np.float32)
    ann = cls(x)
    keep = np.array([4, 17, 33])
    items, scores = ann.search(q, 5, exclude=[np.setdiff1d(np.arange(50), keep), np.array([], np.int64)])
    assert set(items[0, :3]) == set(keep) and (items[0, 3:] == -1).all() and np.isneginf(scores[0, 3:]).all()
    assert (items[1] >= 0).all()


def test_faiss_refetches_and_pads():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    q = rng.standard_normal((2, 8)).astype(np.float32)
    ann = FaissIndex(x, m=8, ef_search=16)
    # all but 3 items excluded for row 0: only those 3 come back, then padding
    keep = np.array([4, 17, 33])
    items, scores = ann.search(q, 5, exclude=[np.setdiff1d(np.arange(50), keep), np.array([], np.int64)])
    assert set(items[0, :3]) == set(keep) and (items[0, 3:] == -1).all() and np.isneginf(scores[0, 3:]).all()
    assert (items[1] >= 0).all()
    items, _ = ann.search(q, 60)  # k beyond the catalogue
    assert items.shape == (2, 60) and (items[:, 50:] == -1).all()


def test_build_index_kinds_and_errors(rand):
    x, _ = rand
    assert isinstance(build_index(x, "auto", threshold=5001), ExactIndex)
    small = build_index(x[:300], "auto", threshold=300, nprobe=4, m=8, chunk_rows=64)
    assert isinstance(small, FaissIVFIndex) and small.nprobe == 4 and small.nlist == 17  # round(sqrt(300))
    hnsw = build_index(x[:300], "faiss", m=8, ef_search=32)
    assert isinstance(hnsw, FaissIndex) and hnsw.ef_search == 32
    exact = build_index(x, "auto", threshold=10_000, ef_search=32, quantize="int8")  # faiss option ignored
    assert isinstance(exact, ExactIndex) and exact.quantize == "int8" and exact.kind == "exact"
    assert isinstance(build_index(x[:300], "faiss", quantize="fp16"), FaissIndex)
    with pytest.raises(ConfigError, match="unknown index kind 'annoy'"):
        build_index(x, "annoy")
    with pytest.raises(ConfigError, match="unknown quantize mode 'int4'"):
        build_index(x, "exact", quantize="int4")
    with pytest.raises(ConfigError, match="unknown quantize mode"):
        quantize_rows(x, "bf16")
    with pytest.raises(ConfigError, match="unknown index parameter"):
        build_index(x, "exact", ef_search=10)
    with pytest.raises(ConfigError, match="unknown index parameter"):
        build_index(x, "faiss", nlist=10)
    with pytest.raises(ConfigError, match="unknown index parameter"):
        build_index(x, "auto", colour=10)
    with pytest.raises(ConfigError, match="nlist"):
        build_index(x[:10], "faiss-ivf", nlist=11)
    with pytest.raises(ConfigError, match="nprobe must be a positive integer"):
        build_index(x[:300], "faiss-ivf", nprobe=0)
    with pytest.raises(ConfigError, match="2-D"):
        build_index(x[0], "exact")
    with pytest.raises(ConfigError, match="finite"):
        build_index(np.full((3, 2), np.nan), "exact")
