"""Serving quality of a trained fused model: ANN recall, compressed item vectors, ONNX.

Given a model folder written by ``mgrec train --model mgr``, this reports

* **ANN recall** against exact search (:class:`mgrec.retrieval.ExactIndex`) on the model's
  real item vectors, queried with the real user vectors of the test users (all of them, or a
  fixed random sample on a large catalogue: ``--ann-queries``), plain and with each user's
  training items excluded (as serving does), with build time, memory and search time per
  query (one query at a time, and batched):

  - the faiss **HNSW** graph (:class:`mgrec.retrieval.FaissIndex`) for several ``efSearch``
    values (``--no-hnsw`` skips it: building it over a million items takes ~10 minutes on one
    core);
  - the faiss **inverted file** (:class:`mgrec.retrieval.FaissIVFIndex`, default ``nlist``) for
    several ``nprobe`` values, the default one marked; the report also says which index
    ``build_index(kind="auto")`` (what the server uses) picks for this catalogue size;

* **compressed item vectors**: test NDCG@10 (and recall@10) with the item matrix stored in
  fp32, fp16 and int8: the scores are user vectors times the stored (de)quantised item
  matrix (``ExactIndex.scores``), ranked by mgrec's own evaluator
  (:func:`mgrec.evaluation.evaluate_split`, which ranks a chunk of users at a time: training
  items filtered, validation items excluded, metrics from :mod:`mgrec.metrics`), the change
  relative to fp32, and the bytes of the item matrix per mode. ``--max-eval-users N``
  evaluates a fixed random sample of ``N`` test users (still full ranking over every item);
* **ONNX**: :func:`mgrec.onnx_export.export_onnx` and :func:`mgrec.onnx_export.check_onnx`
  on a sample of test users (onnxruntime against PyTorch);
* optionally (``--scale-items N``), exact, HNSW (unless ``--no-hnsw-scale``) and IVF search
  on ``N`` random clustered vectors of the model's width: build times and per-query latency
  at catalogue scale.

Writes ``PREFIX.json`` and ``PREFIX.md``. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/serving_quality.py --model-dir /tmp/models/lastfm-mgr \\
        --out bench/results/serving-quality-lastfm-2k [--scale-items 1000000 [--no-hnsw-scale]]
    OMP_NUM_THREADS=1 .venv/bin/python bench/serving_quality.py --model-dir /tmp/models/synthetic-1m \\
        --out bench/results/serving-quality-synthetic-1m --no-hnsw --max-eval-users 5000
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mgrec.data.dataset import to_csr
from mgrec.evaluation import MEMORY_BUDGET_BYTES, default_chunk_size, evaluate_split
from mgrec.experiment import load_run
from mgrec.io import atomic_write_json, atomic_write_text
from mgrec.mgr import MGR
from mgrec.onnx_export import check_onnx, export_onnx
from mgrec.recommender import Recommender
from mgrec.retrieval import QUANTIZE_MODES, ExactIndex, FaissIndex, FaissIVFIndex, build_index

log = logging.getLogger("serving_quality")

EF_SEARCH = (16, 32, 64, 128, 256)
NPROBE = (4, 8, 16, 32, 64)
K = 10
#: ``--ann-queries 0`` (auto): all test users while ``queries x items`` stays under this many
#: exact scores, else a fixed random sample of that size (at least 1000 users).
ANN_SCORE_BUDGET = 2_000_000_000
#: ``build_index``'s ``auto`` switch point (exact below, inverted file at or above).
AUTO_THRESHOLD = int(inspect.signature(build_index).parameters["threshold"].default)


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


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


def sample_users(users: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``users`` itself when ``n`` is 0 or covers them all, else a fixed random sample of ``n`` (sorted)."""
    if n <= 0 or n >= len(users):
        return users
    return np.sort(np.random.default_rng(seed).choice(users, size=n, replace=False))


def auto_index(n_items: int) -> dict[str, Any]:
    """What ``build_index(kind="auto")`` builds for ``n_items`` items (without building it)."""
    if n_items < AUTO_THRESHOLD:
        return {"kind": "exact", "threshold": AUTO_THRESHOLD}
    nlist = max(1, min(n_items, round(np.sqrt(n_items))))
    return {"kind": "faiss-ivf", "threshold": AUTO_THRESHOLD, "nlist": nlist, "nprobe": max(16, nlist // 16)}


def exact_reference(p: np.ndarray, q: np.ndarray, exclude: list[np.ndarray], args: argparse.Namespace) -> tuple[
        dict[str, Any], np.ndarray, np.ndarray]:
    """Exact top-10 of every query (plain and seen excluded) and exact search timings."""
    exact = ExactIndex(q)  # ExactIndex.search scores a block of queries at a time (64 MiB of scores)
    (ref, _), t_exact = timed(exact.search, p, K)
    (ref_ex, _), t_exact_ex = timed(exact.search, p, K, exclude=exclude)
    info = {"exact_memory_bytes": exact.memory_bytes(), "exact_batch_ms_per_query": 1e3 * t_exact / len(p),
            "exact_batch_ms_per_query_seen_excluded": 1e3 * t_exact_ex / len(p),
            "exact_single_query_ms": single_query_ms(exact, p[: args.latency_queries])}
    return info, ref, ref_ex


def sweep(index: Any, attr: str, values: list[int], p: np.ndarray, exclude: list[np.ndarray], ref: np.ndarray,
          ref_ex: np.ndarray, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Recall@10 and timings of ``index`` for each value of its search parameter ``attr``."""
    rows = []
    for v in values:
        setattr(index, attr, v)
        (got, _), t = timed(index.search, p, K)
        (got_ex, _), t_ex = timed(index.search, p, K, exclude=exclude)
        rows.append({attr: v, "recall@10": overlap(got, ref), "recall@10_seen_excluded": overlap(got_ex, ref_ex),
                     "batch_ms_per_query": 1e3 * t / len(p), "batch_ms_per_query_seen_excluded": 1e3 * t_ex / len(p),
                     "single_query_ms": single_query_ms(index, p[: args.latency_queries])})
        log.info("  %s %d: recall@10 %.4f (seen excluded %.4f)", attr, v, rows[-1]["recall@10"],
                 rows[-1]["recall@10_seen_excluded"])
    return rows


def hnsw_section(p: np.ndarray, q: np.ndarray, exclude: list[np.ndarray], ref: np.ndarray, ref_ex: np.ndarray,
                 args: argparse.Namespace) -> dict[str, Any]:
    log.info("building HNSW over %d x %d", *q.shape)
    ann, t_build = timed(FaissIndex, q, m=args.hnsw_m, ef_construction=args.ef_construction)
    rows = sweep(ann, "ef_search", list(EF_SEARCH), p, exclude, ref, ref_ex, args)
    return {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction, "build_seconds": t_build,
            "hnsw_memory_bytes": ann.memory_bytes(), "ef_search": rows}


def nprobe_values(nlist: int, default: int, asked: list[int]) -> list[int]:
    """``asked`` clipped to ``nlist``, plus the default, sorted and distinct."""
    return sorted({min(v, nlist) for v in asked} | {min(default, nlist)})


def ivf_section(p: np.ndarray, q: np.ndarray, exclude: list[np.ndarray], ref: np.ndarray, ref_ex: np.ndarray,
                args: argparse.Namespace) -> dict[str, Any]:
    log.info("building IVF over %d x %d", *q.shape)
    ivf, t_build = timed(FaissIVFIndex, q, nlist=args.ivf_nlist)
    default = ivf.nprobe
    rows = sweep(ivf, "nprobe", nprobe_values(ivf.nlist, default, args.nprobe), p, exclude, ref, ref_ex, args)
    for r in rows:
        r["default"] = r["nprobe"] == default
    return {"nlist": ivf.nlist, "nlist_is_default": args.ivf_nlist is None, "default_nprobe": default,
            "build_seconds": t_build, "ivf_memory_bytes": ivf.memory_bytes(), "nprobe": rows}


def ann_section(p: np.ndarray, q: np.ndarray, exclude: list[np.ndarray], args: argparse.Namespace,
                sampled: bool) -> dict[str, Any]:
    info, ref, ref_ex = exact_reference(p, q, exclude, args)
    log.info("exact reference done (%.3f ms per batched query)", info["exact_batch_ms_per_query"])
    out: dict[str, Any] = {"n_items": len(q), "dim": int(q.shape[1]), "n_queries": len(p),
                           "queries_sampled": sampled, **info}
    out["hnsw"] = None if args.no_hnsw else hnsw_section(p, q, exclude, ref, ref_ex, args)
    out["ivf"] = ivf_section(p, q, exclude, ref, ref_ex, args)
    return out


def quantize_section(model: MGR, p: np.ndarray, q: np.ndarray, run: Any, users: np.ndarray | None,
                     args: argparse.Namespace) -> dict[str, Any]:
    """NDCG@10 per item-matrix storage; ``users``: the evaluated test users (``None``: all)."""
    split, dataset = run.split(), run.vocab_dataset()
    # the library evaluator ranks a chunk of users at a time; MGR.score recomputes the item
    # matrix once per chunk, so larger chunks than its 256 MiB default pay off at 1M items
    chunk = default_chunk_size(len(q), args.eval_budget_mib * 2**20)
    kw = {"part": "test", "ks": (K,), "metrics": ("ndcg", "recall"), "users": users, "chunk_size": chunk}
    library, t_lib = timed(evaluate_split, model, split, dataset, **kw)
    log.info("  library evaluation: NDCG@10 %.4f over %d users (%.1f s)", library["ndcg@10"], library["n_users"],
             t_lib)
    rows = []
    for mode in QUANTIZE_MODES:
        index = ExactIndex(q, quantize=mode)
        res, t = timed(evaluate_split, StoredItemsScorer(model, p, index), split, dataset, **kw)
        rows.append({"quantize": mode, "ndcg@10": res["ndcg@10"], "recall@10": res["recall@10"],
                     "n_users": res["n_users"], "memory_bytes": index.memory_bytes(),
                     "workspace_bytes": index.workspace_bytes, "eval_seconds": t})
        log.info("  %s: NDCG@10 %.4f (%.1f s)", mode, res["ndcg@10"], t)
        del index
    base = rows[0]
    for r in rows:
        r["ndcg@10_rel_change"] = r["ndcg@10"] / base["ndcg@10"] - 1.0 if base["ndcg@10"] else float("nan")
        r["memory_vs_fp32"] = r["memory_bytes"] / base["memory_bytes"]
    return {"library_ndcg@10": library["ndcg@10"], "library_recall@10": library["recall@10"],
            "library_eval_seconds": t_lib, "n_users": library["n_users"], "users_sampled": users is not None,
            "chunk_users": chunk, "modes": rows}


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
    """Exact vs HNSW vs IVF on ``n`` random clustered vectors (the catalogue-scale timing)."""
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
    out["hnsw"] = None
    if not args.no_hnsw_scale:
        log.info("building HNSW over %d x %d", n, dim)
        ann, t_build = timed(FaissIndex, x, m=args.hnsw_m, ef_construction=args.ef_construction)
        out.update({"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction, "hnsw_build_seconds": t_build,
                    "hnsw_memory_bytes": ann.memory_bytes(), "hnsw": []})
        for ef in EF_SEARCH:
            ann.ef_search = ef
            top, _ = ann.search(queries, K)
            out["hnsw"].append({"ef_search": ef, "recall@10": overlap(top, ref),
                                "single_query_ms": single_query_ms(ann, queries[:50])})
        del ann
    log.info("building IVF over %d x %d", n, dim)
    ivf, t_build = timed(FaissIVFIndex, x, nlist=args.ivf_nlist)
    default = ivf.nprobe
    out["ivf"] = {"nlist": ivf.nlist, "default_nprobe": default, "build_seconds": t_build,
                  "ivf_memory_bytes": ivf.memory_bytes(), "nprobe": []}
    for v in nprobe_values(ivf.nlist, default, args.nprobe):
        ivf.nprobe = v
        top, _ = ivf.search(queries, K)
        out["ivf"]["nprobe"].append({"nprobe": v, "default": v == default, "recall@10": overlap(top, ref),
                                     "single_query_ms": single_query_ms(ivf, queries[:50])})
    return out


def _mb(b: float) -> str:
    return f"{b / 2**20:.2f}"


def _auto_line(auto: dict[str, Any], n_items: int) -> str:
    if auto["kind"] == "exact":
        return (f"`build_index(kind=\"auto\")`, what the server builds, picks **exact** search for {n_items:,} items "
                f"(exact below {auto['threshold']:,} items, the faiss inverted file at or above).")
    return (f"`build_index(kind=\"auto\")`, what the server builds, picks the **faiss inverted file** for "
            f"{n_items:,} items (at or above {auto['threshold']:,} items; exact below), with nlist = "
            f"{auto['nlist']} and nprobe = {auto['nprobe']}: the IVF row marked *default*.")


def markdown(res: dict[str, Any]) -> str:
    lines = [f"<!-- serving quality, started {res['started']} -->", f"<!-- command: {res['command']} -->",
             (f"<!-- torch threads {res['threads']}, {res['cpus']} CPUs ({res['machine']}), load average at start "
              f"{' '.join(str(v) for v in res['load_average'])}: timings are wall-clock on a shared machine -->"),
             (f"<!-- total {res['total_seconds']:.0f} s (" +
              ", ".join(f"{k} {v:.0f} s" for k, v in res["section_seconds"].items()) +
              f"); peak RSS {res['peak_rss_mib']:.0f} MiB -->"), "",
             (f"Model `{res['model_dir']}` ({res['dataset']}, {res['split']} split): {res['n_users']} users, "
              f"{res['n_items']} items, D = {res['dim']}, {res['n_test_users']} test users."), ""]
    a = res["ann"]
    who = (f"a fixed random sample of {a['n_queries']} of the {res['n_test_users']} test users, seed {res['seed']}"
           if a["queries_sampled"] else f"all {a['n_queries']} test users")
    lines += [f"### ANN recall@10 vs exact search (queries: the real vectors of {who})", "",
              _auto_line(res["auto_index"], res["n_items"]), "",
              (f"Exact search (fp32, {_mb(a['exact_memory_bytes'])} MiB): {a['exact_single_query_ms']:.3f} ms per "
               f"single query, {a['exact_batch_ms_per_query']:.4f} ms per query batched "
               f"({a['exact_batch_ms_per_query_seen_excluded']:.4f} ms with seen items excluded). Recall@10 is the "
               "overlap with the exact top 10 over all items; *seen excluded*: both lists without the user's "
               "training items, as serving does."), ""]
    h = a["hnsw"]
    if h is None:
        lines += ["#### faiss HNSW", "", "Skipped (`--no-hnsw`).", ""]
    else:
        lines += ["#### faiss HNSW", "",
                  (f"M = {h['hnsw_m']}, efConstruction = {h['ef_construction']}: build {h['build_seconds']:.2f} s, "
                   f"{_mb(h['hnsw_memory_bytes'])} MiB."), "",
                  ("| efSearch | recall@10 | recall@10 (seen excluded) | ms/query single | ms/query batched "
                  "| ms/query batched (seen excluded) |"), "|---|---|---|---|---|---|"]
        for r in h["ef_search"]:
            lines.append(f"| {r['ef_search']} | {r['recall@10']:.4f} | {r['recall@10_seen_excluded']:.4f} | "
                         f"{r['single_query_ms']:.3f} | {r['batch_ms_per_query']:.4f} | "
                         f"{r['batch_ms_per_query_seen_excluded']:.4f} |")
        lines.append("")
    v = a["ivf"]
    lines += ["#### faiss inverted file (IVF)", "",
              (f"nlist = {v['nlist']}{' (the default, round(sqrt(items)))' if v['nlist_is_default'] else ''}, "
               f"default nprobe = {v['default_nprobe']} (max(16, nlist // 16)): build "
               f"{v['build_seconds']:.2f} s, {_mb(v['ivf_memory_bytes'])} MiB."), "",
              ("| nprobe | recall@10 | recall@10 (seen excluded) | ms/query single | ms/query batched "
              "| ms/query batched (seen excluded) |"), "|---|---|---|---|---|---|"]
    for r in v["nprobe"]:
        name = f"{r['nprobe']} (default)" if r["default"] else str(r["nprobe"])
        lines.append(f"| {name} | {r['recall@10']:.4f} | {r['recall@10_seen_excluded']:.4f} | "
                     f"{r['single_query_ms']:.3f} | {r['batch_ms_per_query']:.4f} | "
                     f"{r['batch_ms_per_query_seen_excluded']:.4f} |")
    qz = res["quantize"]
    who = (f"**sampled users, full ranking over all items**: a fixed random sample of {qz['n_users']} of the "
           f"{res['n_test_users']} test users (seed {res['seed'] + 1}, `--max-eval-users`), each ranked against "
           f"all {res['n_items']} items" if qz["users_sampled"]
           else f"all {qz['n_users']} test users, each ranked against all {res['n_items']} items")
    lines += ["", "### Compressed item vectors (exact search, test split)", "", f"Evaluated: {who}.", "",
              (f"Library evaluation of the model itself (`evaluate_split`, {qz['library_eval_seconds']:.1f} s): "
               f"NDCG@10 {qz['library_ndcg@10']:.4f}, recall@10 {qz['library_recall@10']:.4f}."), "",
              ("| item matrix | NDCG@10 | change vs fp32 | recall@10 | stored MiB | vs fp32 | float32 workspace KiB "
              "| eval s |"), "|---|---|---|---|---|---|---|---|"]
    for r in qz["modes"]:
        lines.append(f"| {r['quantize'] if r['quantize'] != 'none' else 'fp32'} | {r['ndcg@10']:.4f} | "
                     f"{100 * r['ndcg@10_rel_change']:+.2f}% | {r['recall@10']:.4f} | {_mb(r['memory_bytes'])} | "
                     f"{r['memory_vs_fp32']:.3f} | {r['workspace_bytes'] / 1024:.0f} | {r['eval_seconds']:.1f} |")
    o = res["onnx"]
    lines += ["", "### ONNX (onnxruntime vs PyTorch)", "",
              "| users | k | ordered top-k identical | top-k sets identical | max abs score diff | export s | file MiB |",
              "|---|---|---|---|---|---|---|",
              (f"| {o['users']} | {o['k']} | {o['top_k_agreement']:.4f} | {o['top_k_set_agreement']:.4f} | "
               f"{o['max_abs_score_diff']:.2e} | {o['export_seconds']:.1f} | {_mb(o['file_bytes'])} |")]
    s = res.get("scale")
    if s:
        iv = s["ivf"]
        lines += ["", (f"### Catalogue scale: {s['n_items']} random clustered items x {s['dim']} dims, "
                       f"{s['n_queries']} queries"), ""]
        if s["hnsw"] is None:
            lines.append("HNSW skipped (`--no-hnsw-scale`).")
        else:
            lines.append(f"HNSW M = {s['hnsw_m']}, efConstruction = {s['ef_construction']}: build "
                         f"{s['hnsw_build_seconds']:.1f} s, {_mb(s['hnsw_memory_bytes'])} MiB.")
        lines += [(f"IVF nlist = {iv['nlist']}, default nprobe = {iv['default_nprobe']}: build "
                   f"{iv['build_seconds']:.1f} s, {_mb(iv['ivf_memory_bytes'])} MiB."), "",
                  "| search | ms/query (single) | recall@10 vs exact fp32 | stored MiB |", "|---|---|---|---|"]
        for r in s["exact"]:
            lines.append(f"| exact {r['quantize'] if r['quantize'] != 'none' else 'fp32'} | "
                         f"{r['single_query_ms']:.2f} | {r['recall@10_vs_fp32']:.4f} | {_mb(r['memory_bytes'])} |")
        for r in s["hnsw"] or []:
            lines.append(f"| HNSW efSearch {r['ef_search']} | {r['single_query_ms']:.3f} | {r['recall@10']:.4f} | "
                         f"{_mb(s['hnsw_memory_bytes'])} |")
        for r in iv["nprobe"]:
            lines.append(f"| IVF nprobe {r['nprobe']}{' (default)' if r['default'] else ''} | "
                         f"{r['single_query_ms']:.3f} | {r['recall@10']:.4f} | {_mb(iv['ivf_memory_bytes'])} |")
    return "\n".join(lines) + "\n"


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True, help="folder written by `mgrec train --model mgr`")
    ap.add_argument("--out", required=True, help="output prefix (PREFIX.json, PREFIX.md)")
    ap.add_argument("--onnx-users", type=int, default=256, help="test users for the ONNX check")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--no-hnsw", action="store_true",
                    help="skip the HNSW index on the model's vectors (its build takes ~10 min at 1M items)")
    ap.add_argument("--ivf-nlist", type=int, default=None, help="IVF groups (default: the library's, sqrt(items))")
    ap.add_argument("--nprobe", type=_int_list, default=list(NPROBE),
                    help="IVF nprobe values, comma-separated (clipped to nlist; the default nprobe is added)")
    ap.add_argument("--ann-queries", type=int, default=0,
                    help=("test users whose vectors query the ANN indexes (a fixed random sample); 0: all test "
                          f"users, capped at max(1000, {ANN_SCORE_BUDGET:.0e} / items)"))
    ap.add_argument("--max-eval-users", type=int, default=0,
                    help="evaluate NDCG on a fixed random sample of N test users (full ranking); 0: all")
    ap.add_argument("--eval-budget-mib", type=int, default=4 * MEMORY_BUDGET_BYTES // 2**20,
                    help="score memory of one evaluation chunk of users")
    ap.add_argument("--latency-queries", type=int, default=200, help="queries timed one at a time")
    ap.add_argument("--scale-items", type=int, default=0, help="also time N random items (e.g. 1000000)")
    ap.add_argument("--no-hnsw-scale", action="store_true", help="skip the HNSW build in the --scale-items timing")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("faiss", "onnxscript", "onnx_ir", "torch"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t_start = time.perf_counter()
    sections: dict[str, float] = {}

    def mark(name: str, t0: float) -> None:
        sections[name] = time.perf_counter() - t0
        log.info("%s: %.1f s, peak RSS %.0f MiB", name, sections[name], peak_rss_mib())

    t0 = time.perf_counter()
    run = load_run(args.model_dir)
    model = run.model
    if not isinstance(model, MGR):
        print(f"error: {args.model_dir} holds a {model.name!r} model; this benchmark needs 'mgr'", file=sys.stderr)
        return 2
    split = run.split()
    test_users = np.unique(split.test["user"].to_numpy(np.int64))
    p_all, q = vectors(model)
    seen = to_csr(split.train, model.n_users_, model.n_items_)
    n_items = len(q)
    mark("load", t0)
    log.info("%d test users, %d items, D = %d", len(test_users), n_items, q.shape[1])

    n_ann = args.ann_queries or max(1000, ANN_SCORE_BUDGET // max(n_items, 1))
    ann_users = sample_users(test_users, n_ann, args.seed)
    eval_users = sample_users(test_users, args.max_eval_users, args.seed + 1)
    exclude = [seen.indices[seen.indptr[u]:seen.indptr[u + 1]].astype(np.int64) for u in ann_users]

    res: dict[str, Any] = {
        "started": started, "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "threads": torch.get_num_threads(), "load_average": [round(v, 2) for v in os.getloadavg()],
        "cpus": os.cpu_count(), "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "model_dir": str(args.model_dir), "dataset": run.record.get("dataset"), "split": run.record.get("split"),
        "n_users": model.n_users_, "n_items": model.n_items_, "dim": int(q.shape[1]),
        "n_test_users": len(test_users), "granularities": model.granularities_,
        "behavior_mode": model.behavior_mode_, "seed": args.seed, "auto_index": auto_index(n_items),
        "options": {k: v for k, v in vars(args).items() if k not in ("model_dir", "out")},
    }
    log.info("ANN recall (%d query users%s)", len(ann_users), ", sampled" if len(ann_users) < len(test_users) else "")
    t0 = time.perf_counter()
    res["ann"] = ann_section(p_all[ann_users], q, exclude, args, sampled=len(ann_users) < len(test_users))
    mark("ann", t0)
    log.info("compressed item vectors (%d users)", len(eval_users))
    t0 = time.perf_counter()
    res["quantize"] = quantize_section(model, p_all, q, run,
                                       eval_users if len(eval_users) < len(test_users) else None, args)
    mark("quantize", t0)
    log.info("ONNX")
    t0 = time.perf_counter()
    res["onnx"] = onnx_section(model, test_users, args.onnx_users, args.seed)
    mark("onnx", t0)
    if args.scale_items:
        t0 = time.perf_counter()
        res["scale"] = scale_section(args.scale_items, int(q.shape[1]), args)
        mark("scale", t0)
    res["section_seconds"] = sections
    res["total_seconds"] = time.perf_counter() - t_start
    res["peak_rss_mib"] = peak_rss_mib()
    out = Path(args.out)
    atomic_write_json(out.with_name(out.name + ".json"), res)
    md = markdown(res)
    atomic_write_text(out.with_name(out.name + ".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
