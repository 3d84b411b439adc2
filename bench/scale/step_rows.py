"""How many id-table rows one ``mgr`` training step updates, per world size (issue 5).

A step's lookups are fixed by the config (1024 users, their 20 friends, 50 history events
and 20 x 10 friends' items each, 1024 positives and 1024 sampled negatives), but the number of
*distinct* rows they hit is not: in a small world the same rows recur across a batch and are
updated once, in a large one they spread out. This script counts, for the first ``--steps``
steps of the scale benchmark's training (same data, split and config as
``run_scale.py``), the distinct rows of the user and item id tables in each step's sparse
gradient, i.e. the rows :class:`mgrec.optim.LazyAdamW` reads and writes. Usage::

    .venv/bin/python bench/scale/step_rows.py --sizes 1m,3m,10m --work /tmp/mgrec-scale --out bench/results

(the worlds are the Parquet folders ``run_scale.py`` writes). Output: ``scale-step-rows.json``
and ``scale-step-rows.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


class _Enough(Exception):
    """Raised from the optimiser once enough steps are counted."""


def count(folder: Path, steps: int, seed: int, threads: int) -> dict:
    import torch

    from mgrec.data.folder import load_folder
    from mgrec.data.preprocess import PreprocessConfig, preprocess
    from mgrec.data.split import make_split
    from mgrec.mgr import MGR
    from mgrec.optim import LazyAdamW

    torch.set_num_threads(threads)
    data = preprocess(load_folder(folder), PreprocessConfig())
    split = make_split(data, "random", seed=seed)
    data.meta["split_protocol"] = "random"
    seen: list[dict[int, int]] = []
    step = LazyAdamW.step

    def counting(self, closure=None):  # noqa: ANN001, ANN202
        seen.append({p.shape[0]: int(p.grad.coalesce().indices().shape[1])
                     for g in self.param_groups for p in g["params"] if p.grad is not None})
        if len(seen) >= steps:
            raise _Enough
        return step(self, closure)

    LazyAdamW.step = counting
    cfg = {"loss": "sampled_softmax", "n_negatives": 1024, "batch_size": 1024, "epochs": 1, "threads": threads,
           "item_item": "none"}
    with contextlib.suppress(_Enough):
        MGR(cfg, seed=seed).fit(data, split.train, None)
    users = np.array([s.get(data.n_users + 1, 0) for s in seen])
    items = np.array([s.get(data.n_items + 1, 0) for s in seen])
    return {"users": data.n_users, "items": data.n_items, "interactions": int(len(data.interactions)),
            "steps": len(seen), "user_rows_per_step": float(users.mean()), "item_rows_per_step": float(items.mean()),
            "user_rows_share": float(users.mean() / data.n_users),
            "item_rows_share": float(items.mean() / data.n_items)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1m,3m,10m")
    ap.add_argument("--work", type=Path, default=Path("/tmp/mgrec-scale"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(count(args.work / args.one, args.steps, args.seed, args.threads)))
        return
    from mgrec.io import atomic_write_json, atomic_write_text

    rows = []
    for size in args.sizes.split(","):
        if not (args.work / size / "interactions.parquet").is_file():
            raise SystemExit(f"no world at {args.work / size}: run bench/scale/run_scale.py first")
        cmd = [sys.executable, __file__, "--one", size, "--work", str(args.work), "--steps", str(args.steps),
               "--seed", str(args.seed), "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
        row = {"size": size, **json.loads(out.stdout.strip().splitlines()[-1])}
        print(json.dumps(row), flush=True)
        rows.append(row)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    command = "python bench/scale/step_rows.py " + " ".join(sys.argv[1:])
    atomic_write_json(args.out / "scale-step-rows.json", {"command": command, "date": started, "rows": rows})
    lines = ["| size | users | items | steps counted | distinct user rows / step | share of users | "
             "distinct item rows / step | share of items |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['size']} | {r['users']:,} | {r['items']:,} | {r['steps']} | {r['user_rows_per_step']:,.0f} | "
              f"{r['user_rows_share']:.1%} | {r['item_rows_per_step']:,.0f} | {r['item_rows_share']:.1%} |"
              for r in rows]
    text = f"<!-- {started}; command: {command} -->\n" + "\n".join(lines) + "\n"
    atomic_write_text(args.out / "scale-step-rows.md", text)


if __name__ == "__main__":
    main()
