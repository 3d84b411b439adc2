"""Scale benchmark (issue 5): the five-granularity synthetic world at growing sizes.

For each size (``synthetic-1m``, ``-3m``, ``-10m``: 10% as many users, 2% as many items, 50% as
many friendships as interactions) it

1. generates the world once and writes it as a Parquet ``folder:`` dataset (not timed below);
2. in a fresh process: streams it back from Parquet (:mod:`mgrec.data.parquet_stream`),
   preprocesses and splits it (``random`` 8:1:1 per user) -- *load + preprocess s*;
3. fits ``mgr`` for one epoch with sampled softmax and logQ correction (``n_negatives``
   popularity-sampled negatives per batch; sparse id tables from 50k users + items, see
   :mod:`mgrec.optim`; no item-item part) -- *s/epoch* is that epoch alone, *fit s* adds the
   feature encoding and context building;
4. ranks the **whole catalogue** for a fixed random sample of ``eval_users`` test users
   (sampled users, not sampled items) -- *eval s* and NDCG@10 / Recall@10 on that sample;
5. builds a faiss IVF index over the item vectors -- *ANN build s*;

and records the process's peak RSS. Output: ``scale.json``, ``scale.md`` and one PNG per
figure against the size. Usage::

    .venv/bin/python bench/scale/run_scale.py --sizes 1m,3m,10m --work /tmp/mgrec-scale \\
        --out bench/results --plots docs/img
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FIGURES = (("load_s", "load + preprocess (s)"), ("epoch_s", "training s / epoch"),
           ("eval_s", "full-ranking eval of 10k users (s)"), ("ann_build_s", "ANN index build (s)"),
           ("peak_rss_mb", "peak RSS (MB)"))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def generate(size: str, folder: Path, seed: int) -> float:
    from mgrec.data.registry import load_dataset
    from mgrec.data.scale import write_parquet_folder

    t = time.perf_counter()
    ds = load_dataset(f"synthetic-{size}", seed=seed)
    write_parquet_folder(ds, folder)
    return time.perf_counter() - t


def measure(size: str, folder: Path, args: argparse.Namespace) -> dict:
    import torch

    from mgrec.data.dataset import to_csr
    from mgrec.data.folder import load_folder
    from mgrec.data.preprocess import PreprocessConfig, preprocess
    from mgrec.data.split import make_split
    from mgrec.evaluation import evaluate
    from mgrec.mgr import MGR
    from mgrec.retrieval import build_index

    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    data = preprocess(load_folder(folder), PreprocessConfig())
    split = make_split(data, "random", seed=args.seed)
    data.meta["split_protocol"] = "random"
    load_s = time.perf_counter() - t
    # the dense item-item part (n_items^2 floats) is for catalogues up to 40k items: left out
    # here so that every size trains the same model
    cfg = {"loss": "sampled_softmax", "n_negatives": args.n_negatives, "batch_size": args.batch_size,
           "epochs": 1, "threads": args.threads, "item_item": "none"}
    model = MGR(cfg, seed=args.seed)
    t = time.perf_counter()
    model.fit(data, split.train, None)
    fit_s = time.perf_counter() - t
    epoch_s = float(model.history_[0]["train_seconds"])
    truth = to_csr(split.test, data.n_users, data.n_items)
    exclude = to_csr(split.valid, data.n_users, data.n_items)
    candidates = np.flatnonzero(np.diff(truth.indptr) > 0)
    rng = np.random.default_rng(args.seed)
    users = np.sort(rng.choice(candidates, min(args.eval_users, len(candidates)), replace=False))
    t = time.perf_counter()
    metrics = evaluate(model, truth, exclude=exclude, users=users, ks=(10,), metrics=("ndcg", "recall"))
    eval_s = time.perf_counter() - t
    t = time.perf_counter()
    build_index(model.item_vectors(), kind="faiss-ivf")
    ann_s = time.perf_counter() - t
    return {
        "size": size, "interactions": int(len(data.interactions)), "users": data.n_users, "items": data.n_items,
        "social_links": int(len(data.social)) if data.social is not None else 0,
        "train_interactions": int(len(split.train)), "load_s": round(load_s, 2), "fit_s": round(fit_s, 2),
        "epoch_s": round(epoch_s, 2), "eval_s": round(eval_s, 2), "eval_users": int(len(users)),
        "eval_users_sampled": True, "ndcg@10": round(metrics["ndcg@10"], 4),
        "recall@10": round(metrics["recall@10"], 4), "ann_build_s": round(ann_s, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1), "granularities": model.granularities_, "config": cfg,
        "threads": args.threads,
    }


def _child(args: argparse.Namespace, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, *extra, "--seed", str(args.seed), "--threads", str(args.threads),
           "--n-negatives", str(args.n_negatives), "--batch-size", str(args.batch_size),
           "--eval-users", str(args.eval_users), "--work", str(args.work)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env={**os.environ})
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict]) -> str:
    head = ("| size | interactions | users | items | social links | generate s | load + preprocess s | "
            "s/epoch | fit s | eval s (10k sampled users, full ranking) | NDCG@10 | Recall@10 | "
            "ANN build s | peak RSS MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['size']} | {r['interactions']:,} | {r['users']:,} | {r['items']:,} | "
                     f"{r['social_links']:,} | {r.get('generate_s', float('nan')):.1f} | {r['load_s']:.1f} | "
                     f"{r['epoch_s']:.1f} | {r['fit_s']:.1f} | {r['eval_s']:.1f} | {r['ndcg@10']:.4f} | "
                     f"{r['recall@10']:.4f} | {r['ann_build_s']:.1f} | {r['peak_rss_mb']:,.0f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    x = [r["interactions"] / 1e6 for r in rows]
    paths = []
    for key, label in FIGURES:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.plot(x, [r[key] for r in rows], marker="o")
        if len(x) > 1 and rows[0][key] > 0:  # the linear-growth reference through the smallest size
            ax.plot(x, [rows[0][key] * v / x[0] for v in x], linestyle="--", color="grey", label="linear")
            ax.legend()
        ax.set_xlabel("interactions (millions)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"scale-{key.replace('_', '-')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1m,3m,10m")
    ap.add_argument("--work", type=Path, default=Path("/tmp/mgrec-scale"), help="where the Parquet folders go")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--plots", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-negatives", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--eval-users", type=int, default=10_000)
    ap.add_argument("--generate-one", help=argparse.SUPPRESS)
    ap.add_argument("--measure-one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate_one:
        print(json.dumps({"generate_s": generate(args.generate_one, args.work / args.generate_one, args.seed)}))
        return
    if args.measure_one:
        print(json.dumps(measure(args.measure_one, args.work / args.measure_one, args)))
        return
    from mgrec.io import atomic_write_json, atomic_write_text

    rows = []
    for size in args.sizes.split(","):
        folder = args.work / size
        gen = {"generate_s": float("nan")}
        if not (folder / "interactions.parquet").is_file():
            gen = _child(args, ["--generate-one", size])
        row = {**_child(args, ["--measure-one", size]), **gen}
        print(json.dumps(row), flush=True)
        rows.append(row)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    command = "python bench/scale/run_scale.py " + " ".join(sys.argv[1:])
    atomic_write_json(args.out / "scale.json", {"command": command, "date": started, "rows": rows})
    atomic_write_text(args.out / "scale.md", f"<!-- {started}; command: {command} -->\n" + markdown(rows))
    for path in plot(rows, args.plots):
        print("wrote", path)


if __name__ == "__main__":
    main()
