"""Seconds per training epoch of ``mgr`` (and mgrec's LightGCN for scale), measured alone.

The benchmark tables run two jobs at a time on the 2-core machine, so their ``s/epoch`` are
contended. This script measures the training pass only (validation excluded, as
``epoch_seconds`` in ``mgrec benchmark``), one model at a time, for a few epochs of seed 0's
split, with ``--threads`` torch threads (1 matches the peer table, where every child gets one
thread). Run it on an otherwise idle machine. Writes ``OUT/epoch-times.json`` and
``OUT/epoch-times.md``. Usage::

    MGREC_DATA=../shared/data .venv/bin/python bench/epoch_times.py --threads 1 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: (dataset, split, model): the rows measured by default.
CASES = (("ml-100k", "random", "mgr"), ("ml-100k", "temporal", "mgr"), ("ml-100k", "loo", "mgr"),
         ("lastfm-2k", "random", "mgr"), ("ml-100k", "random", "lightgcn"), ("lastfm-2k", "random", "lightgcn"))


def measure(dataset: str, split: str, model: str, epochs: int, threads: int) -> dict:
    import torch

    from mgrec.experiment import ExperimentConfig, prepare
    from mgrec.models import make_model

    torch.set_num_threads(threads)
    data, parts = prepare(ExperimentConfig(dataset=dataset, model=model, split=split, seed=0))
    cfg = {"epochs": epochs, "threads": threads, **({"item_item": "none"} if model == "mgr" else {})}
    fitted = make_model(model, cfg, seed=0).fit(data, parts.train, None)
    seconds = [round(h["train_seconds"], 3) for h in fitted.history_]
    row = {"dataset": dataset, "split": split, "model": model, "threads": threads, "epoch_seconds": seconds,
           "median_s": sorted(seconds)[len(seconds) // 2], "items": data.n_items, "train": len(parts.train)}
    if model == "mgr":
        row["loss"] = fitted.loss_
        row["behavior_mode"] = fitted.behavior_mode_
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--case", help="dataset,split,model: measure one case in this process (internal)")
    args = ap.parse_args(argv)
    if args.case:
        print(json.dumps(measure(*args.case.split(","), args.epochs, args.threads)))
        return 0
    rows = []
    for case in CASES:  # each case in a fresh process
        out = subprocess.run([sys.executable, __file__, "--case", ",".join(case), "--epochs", str(args.epochs),
                              "--threads", str(args.threads)], check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    report = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "commit": commit.strip(), "machine": platform.processor()
              or platform.machine(), "command": " ".join(["bench/epoch_times.py", *(argv or sys.argv[1:])]),
              "rows": rows}
    from mgrec.io import atomic_write_json, atomic_write_text

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "epoch-times.json", report)
    lines = [f"# Seconds per training epoch, measured alone ({report['date']}, commit {report['commit']})", "",
             f"`{report['command']}`; training pass only, seed 0, {args.threads} thread(s), "
             f"{args.epochs} epochs each (median shown, all in the JSON).", "",
             "| dataset | split | model | loss / mode | items | train events | s/epoch (median) | all epochs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mode = f"{r['loss']}, {r['behavior_mode']}" if r["model"] == "mgr" else ""
        lines.append(f"| {r['dataset']} | {r['split']} | {r['model']} | {mode} | {r['items']:,} | {r['train']:,} | "
                     f"{r['median_s']:.2f} | {', '.join(f'{s:.2f}' for s in r['epoch_seconds'])} |")
    atomic_write_text(args.out / "epoch-times.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
