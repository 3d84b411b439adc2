"""mgrec's own model on the saved split, in its own process (so that its peak RSS is its own).

The equivalent of ``mgrec benchmark --models mgr --no-tune`` for one (dataset, split, seed):
:func:`mgrec.experiment.run_experiment` with the default config, after checking that the split
it builds is the one saved in ``WORK/split`` (the split every peer was given). Writes
``<out>/result.json``. Usage::

    .venv/bin/python bench/peers/mgr_side.py --dataset ml-100k --split random --work W --out O
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from run_peers import KEY_METRICS, METRICS, warm_users

from mgrec.benchmark import peak_rss_mb
from mgrec.data.split import Split
from mgrec.evaluation import evaluate_split
from mgrec.experiment import ExperimentConfig, run_experiment


def same_split(a: Split, b: Split) -> bool:
    """Whether two splits hold the same rows in the same order."""
    return all(a.parts()[p].reset_index(drop=True).equals(b.parts()[p].reset_index(drop=True)) for p in a.parts())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--split", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ExperimentConfig(dataset=args.dataset, model="mgr", split=args.split, seed=args.seed,
                           data_root=args.data_root)
    run = run_experiment(cfg)
    saved = Split.load(args.work / "split", run.dataset)
    if not same_split(run.split, saved):
        raise SystemExit(f"the split mgr was trained on differs from {args.work / 'split'}")
    rec = run.record
    warm = evaluate_split(run.model, run.split, run.dataset, part="test", ks=(10,), metrics=METRICS,
                          users=warm_users(run.split))
    result = {
        "library": "mgrec", "model": "mgr", "metrics": rec["test"], "valid_metrics": rec["valid"],
        "metrics_warm": {k: round(float(v), 6) for k, v in warm.items() if k in KEY_METRICS or k == "n_users"},
        "epoch_seconds": rec.get("epoch_seconds"), "epochs": rec.get("epochs"),
        "total_seconds": rec["train_seconds"], "eval_seconds": rec["eval_seconds"],
        "self_peak_rss_mb": round(peak_rss_mb(), 1), "hyperparameters": rec["model_config"],
        "fit_info": rec.get("fit_info"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
