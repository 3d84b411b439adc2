"""Serving quality of a trained fused model: ANN recall, compressed item vectors, ONNX.

Given a model folder written by ``mgrec train --model mgr``, this reports

* **ANN recall**: recall@10 of the faiss HNSW index (:class:`mgrec.retrieval.FaissIndex`)
  against exact search (:class:`mgrec.retrieval.ExactIndex`) on the model's real item
  vectors, queried with the real user vectors of every test user, for several ``efSearch``
  values (plain, and with each user's training items excluded, as serving does), with the
  index build time and search time per query;
* **compressed item vectors**: test NDCG@10 (and recall@10) with the item matrix stored in
  fp32, fp16 and int8: the scores are user vectors times the stored (de)quantised item
  matrix (``ExactIndex.scores``), ranked by mgrec's own evaluator
  (:func:`mgrec.evaluation.evaluate_split`: training items filtered, validation items
  excluded, metrics from :mod:`mgrec.metrics`), the change relative to fp32, and the bytes
  of the item matrix per mode;
* **ONNX**: :func:`mgrec.onnx_export.export_onnx` and :func:`mgrec.onnx_export.check_onnx`
  on a sample of test users (onnxruntime against PyTorch);
* optionally (``--scale-items N``), exact and HNSW search on ``N`` random clustered
  vectors of the model's width: HNSW build time and per-query latency at catalogue scale.

Writes ``PREFIX.json`` and ``PREFIX.md``. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/serving_quality.py --model-dir /tmp/models/lastfm-mgr \\
        --out bench/results/serving-quality-lastfm-2k [--scale-items 1000000]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mgrec.data.dataset import to_csr
from mgrec.evaluation import evaluate_split
from mgrec.experiment import load_run
from mgrec.io import atomic_write_json, atomic_write_text
from mgrec.mgr import MGR
from mgrec.onnx_export import check_onnx, export_onnx
from mgrec.recommender import Recommender
from mgrec.retrieval import QUANTIZE_MODES, ExactIndex, FaissIndex

log = logging.getLogger("serving_quality")

EF_SEARCH = (16, 32, 64, 128, 256)
K = 10


class StoredItemsScorer(Recommender):
    """A fitted MGR's rankings with the item matrix read from an :class:`ExactIndex` (maybe
    compressed): ``score(u) = p_u . q``, everything else (seen items, popularity fallback:
    none for mgr) as in :meth:`Recommender.recommend`, so :func:`evaluate_split` ranks it
    exactly as it ranks the model."""

    name = "mgr-stored-items"
    cold_users_get_popularity = MGR.cold_users_get_popularity

    def __init__(self, model: MGR, user_vectors: np.ndarray, index: ExactIndex) -> None:
        super().__init__()
        self.n_users_, self.n_items_, self.seen_ = model.n_users_, model.n_items_, model.seen_
        self._p, self._index = user_vectors, index

    def score(self, users: np.ndarray) -> np.ndarray:
        return self._index.scores(self._p[np.asarray(users, dtype=np.int64)])

    def _fit(self, *args: Any) -> None:
        raise NotImplementedError

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        raise NotImplementedError

    def _set_state(self, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError


def vectors(model: MGR, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``(user vectors of every known user (n_users, D), item vectors (n_items, D))``, float32."""
    net, ctx = model.net_, model.context_
    out = []
    with torch.no_grad():
        net.eval()
        with net.item_tower.shared_content():
            q = model._item_matrix().numpy().astype(np.float32)
            for s in range(0, ctx.n_users, chunk):
                users = np.arange(s, min(s + chunk, ctx.n_users))
                out.append(net.user_vectors(ctx.batch(users))[0].numpy().astype(np.float32))
    return np.concatenate(out), q


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of ``|a_row ∩ b_row| / k`` (``-1`` padding ignored)."""
    k = a.shape[1]
    return float(np.mean([len((set(x) & set(y)) - {-1}) / k for x, y in zip(a.tolist(), b.tolist(), strict=True)]))


def timed(fn: Any, *args: Any, **kw: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def single_query_ms(index: Any, queries: np.ndarray, k: int = K, repeat: int = 3) -> float:
    """Median milliseconds of one-query searches over ``queries`` (best of ``repeat`` passes)."""
    best = np.inf
    for _ in range(repeat):
        times = []
        for row in queries:
            t0 = time.perf_counter()
            index.search(row[None, :], k)
            times.append(time.perf_counter() - t0)
        best = min(best, float(np.median(times)))
    return best * 1e3


def ann_section(p: np.ndarray, q: np.ndarray, exclude: list[np.ndarray], args: argparse.Namespace) -> dict[str, Any]:
    exact = ExactIndex(q)
    (ref, _), t_exact = timed(exact.search, p, K)
    ref_ex, _ = exact.search(p, K, exclude=exclude)
    ann, t_build = timed(FaissIndex, q, m=args.hnsw_m, ef_construction=args.ef_construction)
    rows = []
    for ef in EF_SEARCH:
        ann.ef_search = ef
        (got, _), t = timed(ann.search, p, K)
        (got_ex, _), t_ex = timed(ann.search, p, K, exclude=exclude)
        rows.append({"ef_search": ef, "recall@10": overlap(got, ref), "recall@10_seen_excluded": overlap(got_ex, ref_ex),
                     "batch_ms_per_query": 1e3 * t / len(p), "batch_ms_per_query_seen_excluded": 1e3 * t_ex / len(p),
                     "single_query_ms": single_query_ms(ann, p[: args.latency_queries])})
    return {"n_items": len(q), "dim": int(q.shape[1]), "n_queries": len(p), "hnsw_m": args.hnsw_m,
            "ef_construction": args.ef_construction, "build_seconds": t_build,
            "hnsw_memory_bytes": ann.memory_bytes(), "exact_memory_bytes": exact.memory_bytes(),
            "exact_batch_ms_per_query": 1e3 * t_exact / len(p),
            "exact_single_query_ms": single_query_ms(exact, p[: args.latency_queries]), "ef_search": rows}


def quantize_section(model: MGR, p: np.ndarray, q: np.ndarray, run: Any) -> dict[str, Any]:
    split, dataset = run.split(), run.vocab_dataset()
    library = evaluate_split(model, split, dataset, part="test", ks=(K,), metrics=("ndcg", "recall"))
    rows = []
    for mode in QUANTIZE_MODES:
        index = ExactIndex(q, quantize=mode)
        res, t = timed(evaluate_split, StoredItemsScorer(model, p, index), split, dataset, part="test",
                       ks=(K,), metrics=("ndcg", "recall"))
        rows.append({"quantize": mode, "ndcg@10": res["ndcg@10"], "recall@10": res["recall@10"],
                     "n_users": res["n_users"], "memory_bytes": index.memory_bytes(),
                     "workspace_bytes": index.workspace_bytes, "eval_seconds": t})
    base = rows[0]
    for r in rows:
        r["ndcg@10_rel_change"] = r["ndcg@10"] / base["ndcg@10"] - 1.0 if base["ndcg@10"] else float("nan")
        r["memory_vs_fp32"] = r["memory_bytes"] / base["memory_bytes"]
    return {"library_ndcg@10": library["ndcg@10"], "library_recall@10": library["recall@10"], "modes": rows}


def onnx_section(model: MGR, users: np.ndarray, n: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(users, size=min(n, len(users)), replace=False))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mgr.onnx"
        _, t_export = timed(export_onnx, model, path, k=K)
        size = path.stat().st_size
        report, t_check = timed(check_onnx, model, path, sample, k=K)
    return {**report, "export_seconds": t_export, "check_seconds": t_check, "file_bytes": size}


def scale_section(n: int, dim: int, args: argparse.Namespace) -> dict[str, Any]:
    """Exact vs HNSW on ``n`` random clustered vectors (the catalogue-scale timing)."""
    rng = np.random.default_rng(args.seed)
    centers = rng.standard_normal((256, dim)).astype(np.float32)
    x = centers[rng.integers(0, 256, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    queries = centers[rng.integers(0, 256, 100)] + 0.5 * rng.standard_normal((100, dim)).astype(np.float32)
    out: dict[str, Any] = {"n_items": n, "dim": dim, "n_queries": 100, "exact": []}
    ref = None
    for mode in QUANTIZE_MODES:
        index = ExactIndex(x, quantize=mode)
        top, _ = index.search(queries, K)
        ref = top if ref is None else ref
        out["exact"].append({"quantize": mode, "single_query_ms": single_query_ms(index, queries[:20]),
                             "memory_bytes": index.memory_bytes(), "recall@10_vs_fp32": overlap(top, ref)})
        del index
    log.info("building HNSW over %d x %d", n, dim)
    ann, t_build = timed(FaissIndex, x, m=args.hnsw_m, ef_construction=args.ef_construction)
    out.update({"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction, "hnsw_build_seconds": t_build,
                "hnsw_memory_bytes": ann.memory_bytes(), "hnsw": []})
    for ef in EF_SEARCH:
        ann.ef_search = ef
        top, _ = ann.search(queries, K)
        out["hnsw"].append({"ef_search": ef, "recall@10": overlap(top, ref),
                            "single_query_ms": single_query_ms(ann, queries[:50])})
    return out


def _mb(b: float) -> str:
    return f"{b / 2**20:.2f}"


def markdown(res: dict[str, Any]) -> str:
    lines = [f"<!-- serving quality, started {res['started']} -->", f"<!-- command: {res['command']} -->",
             (f"<!-- torch threads {res['threads']}, {res['cpus']} CPUs ({res['machine']}), load average at start "
              f"{' '.join(str(v) for v in res['load_average'])}: timings are wall-clock on a shared machine -->"), "",
             (f"Model `{res['model_dir']}` ({res['dataset']}, {res['split']} split): {res['n_users']} users, "
              f"{res['n_items']} items, D = {res['dim']}, {res['n_test_users']} test users."), ""]
    a = res["ann"]
    lines += [f"### ANN recall@10 (faiss HNSW vs exact, {a['n_queries']} test-user queries)", "",
              (f"HNSW M = {a['hnsw_m']}, efConstruction = {a['ef_construction']}: build {a['build_seconds']:.2f} s, "
               f"{_mb(a['hnsw_memory_bytes'])} MiB (exact fp32: {_mb(a['exact_memory_bytes'])} MiB); exact search "
               f"{a['exact_single_query_ms']:.3f} ms per single query, {a['exact_batch_ms_per_query']:.4f} ms per "
               "query batched."), "",
              "| efSearch | recall@10 | recall@10 (seen excluded) | ms/query single | ms/query batched |",
              "|---|---|---|---|---|"]
    for r in a["ef_search"]:
        lines.append(f"| {r['ef_search']} | {r['recall@10']:.4f} | {r['recall@10_seen_excluded']:.4f} | "
                     f"{r['single_query_ms']:.3f} | {r['batch_ms_per_query']:.4f} |")
    qz = res["quantize"]
    lines += ["", "### Compressed item vectors (exact search, test split)", "",
              (f"Library evaluation of the model itself (`evaluate_split`): NDCG@10 {qz['library_ndcg@10']:.4f}, "
               f"recall@10 {qz['library_recall@10']:.4f}."), "",
              "| item matrix | NDCG@10 | change vs fp32 | recall@10 | stored MiB | vs fp32 | float32 workspace KiB |",
              "|---|---|---|---|---|---|---|"]
    for r in qz["modes"]:
        lines.append(f"| {r['quantize'] if r['quantize'] != 'none' else 'fp32'} | {r['ndcg@10']:.4f} | "
                     f"{100 * r['ndcg@10_rel_change']:+.2f}% | {r['recall@10']:.4f} | {_mb(r['memory_bytes'])} | "
                     f"{r['memory_vs_fp32']:.3f} | {r['workspace_bytes'] / 1024:.0f} |")
    o = res["onnx"]
    lines += ["", "### ONNX (onnxruntime vs PyTorch)", "",
              "| users | k | ordered top-k identical | top-k sets identical | max abs score diff | export s | file MiB |",
              "|---|---|---|---|---|---|---|",
              (f"| {o['users']} | {o['k']} | {o['top_k_agreement']:.4f} | {o['top_k_set_agreement']:.4f} | "
               f"{o['max_abs_score_diff']:.2e} | {o['export_seconds']:.1f} | {_mb(o['file_bytes'])} |")]
    s = res.get("scale")
    if s:
        lines += ["", (f"### Catalogue scale: {s['n_items']} random clustered items x {s['dim']} dims, "
                       f"{s['n_queries']} queries"), "",
                  (f"HNSW M = {s['hnsw_m']}, efConstruction = {s['ef_construction']}: build "
                   f"{s['hnsw_build_seconds']:.1f} s, {_mb(s['hnsw_memory_bytes'])} MiB."), "",
                  "| search | ms/query (single) | recall@10 vs exact fp32 | stored MiB |", "|---|---|---|---|"]
        for r in s["exact"]:
            lines.append(f"| exact {r['quantize'] if r['quantize'] != 'none' else 'fp32'} | "
                         f"{r['single_query_ms']:.2f} | {r['recall@10_vs_fp32']:.4f} | {_mb(r['memory_bytes'])} |")
        for r in s["hnsw"]:
            lines.append(f"| HNSW efSearch {r['ef_search']} | {r['single_query_ms']:.3f} | {r['recall@10']:.4f} | "
                         f"{_mb(s['hnsw_memory_bytes'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True, help="folder written by `mgrec train --model mgr`")
    ap.add_argument("--out", required=True, help="output prefix (PREFIX.json, PREFIX.md)")
    ap.add_argument("--onnx-users", type=int, default=256, help="test users for the ONNX check")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--latency-queries", type=int, default=200, help="queries timed one at a time")
    ap.add_argument("--scale-items", type=int, default=0, help="also time N random items (e.g. 1000000)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("faiss", "onnxscript", "onnx_ir", "torch"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    started = time.strftime("%Y-%m-%d %H:%M:%S")

    run = load_run(args.model_dir)
    model = run.model
    if not isinstance(model, MGR):
        print(f"error: {args.model_dir} holds a {model.name!r} model; this benchmark needs 'mgr'", file=sys.stderr)
        return 2
    split = run.split()
    test_users = np.unique(split.test["user"].to_numpy(np.int64))
    p_all, q = vectors(model)
    p = p_all[test_users]
    seen = to_csr(split.train, model.n_users_, model.n_items_)
    exclude = [seen.indices[seen.indptr[u]:seen.indptr[u + 1]].astype(np.int64) for u in test_users]
    log.info("%d test users, %d items, D = %d", len(test_users), len(q), q.shape[1])

    res: dict[str, Any] = {
        "started": started, "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "threads": torch.get_num_threads(), "load_average": [round(v, 2) for v in os.getloadavg()],
        "cpus": os.cpu_count(), "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "model_dir": str(args.model_dir), "dataset": run.record.get("dataset"), "split": run.record.get("split"),
        "n_users": model.n_users_, "n_items": model.n_items_, "dim": int(q.shape[1]),
        "n_test_users": len(test_users), "granularities": model.granularities_,
        "behavior_mode": model.behavior_mode_,
    }
    log.info("ANN recall")
    res["ann"] = ann_section(p, q, exclude, args)
    log.info("compressed item vectors")
    res["quantize"] = quantize_section(model, p_all, q, run)
    log.info("ONNX")
    res["onnx"] = onnx_section(model, test_users, args.onnx_users, args.seed)
    if args.scale_items:
        res["scale"] = scale_section(args.scale_items, int(q.shape[1]), args)
    out = Path(args.out)
    atomic_write_json(out.with_name(out.name + ".json"), res)
    md = markdown(res)
    atomic_write_text(out.with_name(out.name + ".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
