"""GPU figures (issue 5): ``mgr`` on CUDA for ml-100k and the 10M-interaction world, in one run.

A GPU lease is short, so the stages overlap where they do not share the GPU:

1. **background** (CPU only until step 4): generate ``synthetic-10m`` in memory, preprocess
   and split it (``random`` 8:1:1) and build ``mgr``'s features and contexts (the part of
   ``fit`` before the first step); then wait until the ml-100k stages are done.
2. **smoke**: ``mgr`` on a small synthetic world, ``random`` (set encoder) and ``loo``
   (sequence encoder), one epoch each, so a CUDA fault shows before the long stages.
3. **ml-100k**: seconds per training epoch (``random``, ``temporal``, ``loo``; 3 epochs
   each, training pass only, as ``bench/epoch_times.py``), then the full benchmark row
   ``mgrec benchmark --datasets ml-100k --models mgr --split random --seeds 1 --no-tune``.
4. **10M**: one epoch of ``mgr`` with sampled softmax + logQ (the settings of
   ``bench/scale/run_scale.py``) on the GPU, alone; then full-ranking evaluation of a fixed
   random sample of 10k test users (sampled users, every item ranked) and the faiss IVF
   build. If the epoch cannot finish inside ``--budget-s``, the run stops it and reports
   the steps done, their seconds and the epoch time they extrapolate to, marked as such.

Writes ``OUT/gpu.json`` (every stage's figures, rewritten after each stage) plus the benchmark's
own ``OUT/mgr-ml-100k-random-gpu.json``/``.md``. Usage, on a machine with CUDA::

    MGREC_DATA=DATA PYTHONPATH=src python bench/gpu/gpu_run.py --out OUT --budget-s 550
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "bench" / "scale"))


def _gpu_mb() -> float:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else 0.0


class Deadline(Exception):
    """The epoch ran into the budget."""


def _write(out: Path, name: str, payload: dict) -> None:
    tmp = out / f".{name}.tmp"
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, out / name)


def big(out: Path, flag: Path, deadline: float, threads: int, seed: int, world: str) -> None:
    """Stage 1 and 4 (a child process): the 10M world on the GPU."""
    import torch

    from mgrec.data.dataset import to_csr
    from mgrec.data.preprocess import PreprocessConfig, preprocess
    from mgrec.data.registry import load_dataset
    from mgrec.data.split import make_split
    from mgrec.evaluation import evaluate
    from mgrec.mgr import MGR
    from mgrec.retrieval import build_index

    torch.set_num_threads(threads)
    rec: dict = {"world": world, "threads": threads}
    t = time.perf_counter()
    raw = load_dataset(world, seed=seed)
    rec["generate_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    data = preprocess(raw, PreprocessConfig())
    del raw
    split = make_split(data, "random", seed=seed)
    data.meta["split_protocol"] = "random"
    rec["preprocess_split_s"] = round(time.perf_counter() - t, 1)
    rec.update(interactions=int(len(data.interactions)), users=data.n_users, items=data.n_items,
               train_interactions=int(len(split.train)))
    cfg = {"loss": "sampled_softmax", "n_negatives": 1024, "batch_size": 1024, "epochs": 1,
           "threads": threads, "item_item": "none"}
    rec["config"] = cfg
    rec["steps_per_epoch"] = math.ceil(len(split.train) / cfg["batch_size"])
    _write(out, "big.json", rec)
    model = MGR(cfg, seed=seed)
    marks: list[float] = []
    wrapped = MGR._loss

    def timed_loss(self, *args, **kwargs):  # one call per training step
        if not marks:  # the first step: wait for the GPU to be ours alone, then start the clock
            waited = time.perf_counter()
            while not flag.exists() and time.time() < deadline - 240:
                time.sleep(0.5)
            rec["waited_for_gpu_s"] = round(time.perf_counter() - waited, 1)
            rec["fit_setup_s"] = round(waited - fit_start, 1)
            marks.append(time.perf_counter())
        elif len(marks) % 200 == 1:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            rec["steps_done"], rec["steps_s"] = len(marks) - 1, round(time.perf_counter() - marks[0], 2)
            _write(out, "big.json", rec)
            if time.time() > deadline - 90:  # leave time to report
                raise Deadline
        marks.append(time.perf_counter())
        return wrapped(self, *args, **kwargs)

    MGR._loss = timed_loss
    fit_start = time.perf_counter()
    try:
        model.fit(data, split.train, None)
    except Deadline:
        done, secs = rec["steps_done"], rec["steps_s"]
        rec.update(epoch_complete=False, epoch_s_extrapolated=round(secs * rec["steps_per_epoch"] / done, 1))
        rec["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        rec["peak_gpu_mb"] = _gpu_mb()
        _write(out, "big.json", rec)
        return
    epoch_s = float(model.history_[0]["train_seconds"]) - rec["waited_for_gpu_s"]
    rec.update(epoch_complete=True, epoch_s=round(epoch_s, 2),
               steps_done=len(marks) - 1, fit_s=round(time.perf_counter() - fit_start - rec["waited_for_gpu_s"], 1),
               peak_gpu_mb=_gpu_mb())
    _write(out, "big.json", rec)
    truth = to_csr(split.test, data.n_users, data.n_items)
    exclude = to_csr(split.valid, data.n_users, data.n_items)
    candidates = np.flatnonzero(np.diff(truth.indptr) > 0)
    users = np.sort(np.random.default_rng(seed).choice(candidates, min(10_000, len(candidates)), replace=False))
    t = time.perf_counter()
    metrics = evaluate(model, truth, exclude=exclude, users=users, ks=(10,), metrics=("ndcg", "recall"))
    rec.update(eval_s=round(time.perf_counter() - t, 2), eval_users=int(len(users)), eval_users_sampled=True,
               ndcg10=round(metrics["ndcg@10"], 4), recall10=round(metrics["recall@10"], 4))
    _write(out, "big.json", rec)
    t = time.perf_counter()
    build_index(model.item_vectors(), kind="faiss-ivf")
    rec["ann_build_s"] = round(time.perf_counter() - t, 2)
    rec["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    _write(out, "big.json", rec)


def _big_entry(*args) -> None:
    try:
        big(*args)
    except Exception:  # noqa: BLE001 - reported in the output, not raised in a child
        (args[0] / "big.error.txt").write_text(traceback.format_exc())


def smoke(threads: int) -> dict:

    from mgrec.data.dataset import to_csr
    from mgrec.data.split import make_split
    from mgrec.data.synthetic import SyntheticConfig, make_synthetic
    from mgrec.evaluation import evaluate
    from mgrec.mgr import MGR

    out = {}
    data = make_synthetic(SyntheticConfig(n_users=300, n_items=200, mean_events=20), seed=0)
    # the 10M run's settings (sampled softmax, sparse id tables) last
    large = {"loss": "sampled_softmax", "n_negatives": 64, "item_item": "none"}  # sparse ids: auto
    for name, protocol, cfg in (("random", "random", {}), ("loo", "loo", {}), ("sampled", "random", large)):
        split = make_split(data, protocol, seed=0)
        data.meta["split_protocol"] = protocol
        t = time.perf_counter()
        model = MGR({"epochs": 2, "threads": threads, **cfg}, seed=0).fit(data, split.train, split.valid)
        truth = to_csr(split.test, data.n_users, data.n_items)
        m = evaluate(model, truth, ks=(10,), metrics=("ndcg",))
        out[name] = {"fit_s": round(time.perf_counter() - t, 2), "ndcg@10": round(m["ndcg@10"], 4),
                         "behavior_mode": model.behavior_mode_,
                         "cuda_mb": _gpu_mb()}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget-s", type=float, default=550.0)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--world", default="synthetic-10m", help="the large world (a smaller one for a dry run)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per ml-100k timing case")
    ap.add_argument("--skip-benchmark", action="store_true", help="dry run: no ml-100k benchmark row")
    ap.add_argument("--allow-cpu", action="store_true", help="dry run without a GPU")
    args = ap.parse_args()
    start = time.time()
    deadline = start + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    from mgrec.benchmark import run_benchmark
    from mgrec.distributed import current

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("no CUDA device: this script measures the GPU", file=sys.stderr)
        return 2
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "cpus": os.cpu_count(), "machine": platform.machine(),
                    "device_used": str(current().device), "threads": args.threads}
    flag = args.out / ".gpu-free"
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=_big_entry, args=(args.out, flag, deadline, args.threads, args.seed, args.world))
    child.start()
    try:
        report["smoke"] = smoke(args.threads)
    except Exception:
        report["smoke_error"] = traceback.format_exc()
        _write(args.out, "gpu.json", report)
        child.kill()
        print(report["smoke_error"], file=sys.stderr)
        return 3
    _write(args.out, "gpu.json", report)
    print("smoke", report["smoke"], flush=True)
    import epoch_times

    report["epochs"] = []
    for split in ("random", "temporal", "loo"):
        try:
            report["epochs"].append(epoch_times.measure("ml-100k", split, "mgr", args.epochs, args.threads))
        except Exception:
            report["epochs"].append({"split": split, "error": traceback.format_exc()})
        print(report["epochs"][-1], flush=True)
        _write(args.out, "gpu.json", report)
    if not args.skip_benchmark:
        t = time.perf_counter()
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        try:
            rows = run_benchmark(["ml-100k"], ["mgr"], split="random", seeds=1, tune=False,
                                 out=args.out / "mgr-ml-100k-random-gpu.json",
                                 model_configs={"mgr": {"threads": args.threads}})
            report["benchmark"] = {k: rows[0].get(k) for k in ("metrics", "train_seconds", "epoch_seconds",
                                                               "epochs", "eval_seconds", "peak_rss_mb")}
        except Exception:
            report["benchmark_error"] = traceback.format_exc()
        report["benchmark_s"] = round(time.perf_counter() - t, 1)
        _write(args.out, "gpu.json", report)
        print("benchmark", report.get("benchmark"), flush=True)
    flag.touch()
    child.join(timeout=max(1.0, deadline - time.time()))
    if child.is_alive():
        child.kill()
        report["big_killed"] = True
    big_path = args.out / "big.json"
    report["big"] = json.loads(big_path.read_text()) if big_path.exists() else None
    _write(args.out, "gpu.json", report)
    print("10m", report["big"], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
