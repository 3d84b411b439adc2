"""Per-epoch validation curve of ``mgr`` on one dataset, split and seed.

Fits ``mgr`` the way ``mgrec benchmark --no-tune`` does (the same preparation and split), with
``--config`` merged over the defaults, and records every epoch's training loss and validation
NDCG@10 (the network alone, before the post-training parts), the best epoch, and the finished
model's validation and test NDCG@10. It shows where early stopping would stop under a given
patience. Output: ``<out>.json`` and ``<out>.md``. Usage::

    MGREC_DATA=../shared/data OMP_NUM_THREADS=1 .venv/bin/python bench/valid_curve.py \\
        --dataset ciao --split random --seed 1 --config '{"patience": 30, "epochs": 60}' \\
        --out bench/results/valid-curve-ciao-random-s1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path


def stop_epoch(valid: list[float], patience: int) -> tuple[int, int]:
    """(best epoch, last epoch run) had training stopped after ``patience`` epochs without a
    new best; epochs count from 1."""
    best, best_epoch = float("-inf"), 0
    for epoch, score in enumerate(valid, start=1):
        if score > best:
            best, best_epoch = score, epoch
        elif epoch - best_epoch >= patience:
            return best_epoch, epoch
    return best_epoch, len(valid)


def markdown(res: dict) -> str:
    valid = [row["valid"] for row in res["history"]]
    lines = [f"<!-- {res['dataset']} {res['split']} seed {res['seed']}, config {json.dumps(res['config'])}, "
             f"commit {res['commit']} -->",
             f"Finished model (best epoch {res['best_epoch']}): valid NDCG@10 {res['valid_ndcg@10']:.4f}, "
             f"test NDCG@10 {res['test_ndcg@10']:.4f}.", ""]
    lines += ["| patience | best epoch | stops after | best valid NDCG@10 (network) |", "|---|---|---|---|"]
    for patience in (5, 10, 20, 30):
        best, last = stop_epoch(valid, patience)
        lines.append(f"| {patience} | {best} | {last} | {valid[best - 1]:.5f} |")
    lines += ["", "| epoch | loss | valid NDCG@10 (network) |", "|---|---|---|"]
    lines += [f"| {row['epoch']} | {row['loss']:.4f} | {row['valid']:.5f} |" for row in res["history"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--split", default="random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="{}", help="JSON merged over mgr's defaults")
    ap.add_argument("--out", required=True, help="output path without extension")
    args = ap.parse_args()

    from mgrec.evaluation import evaluate_split
    from mgrec.experiment import ExperimentConfig, prepare
    from mgrec.mgr import MGR

    config = json.loads(args.config)
    data, split = prepare(ExperimentConfig(dataset=args.dataset, model="mgr", split=args.split, seed=args.seed))
    model = MGR(config, seed=args.seed)
    t = time.perf_counter()
    model.fit(data, split.train, split.valid)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    res = {"dataset": args.dataset, "split": args.split, "seed": args.seed, "config": config, "commit": commit,
           "fit_seconds": round(time.perf_counter() - t, 1), "best_epoch": model.best_epoch_,
           "valid_ndcg@10": evaluate_split(model, split, data, part="valid")["ndcg@10"],
           "test_ndcg@10": evaluate_split(model, split, data)["ndcg@10"], "history": model.history_}
    Path(args.out + ".json").write_text(json.dumps(res, indent=1) + "\n")
    Path(args.out + ".md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
