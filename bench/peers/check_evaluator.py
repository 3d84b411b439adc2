"""Cross-check mgrec's evaluator against RecBole's metric code on one shared score matrix.

The same seeded ``(users x items)`` score matrix, relevant items and seen (training) items go to
both sides:

* mgrec: :func:`mgrec.evaluation.evaluate` on a model whose ``score`` returns the matrix (so the
  check covers the real path: seen items filtered, users chunked, top-k, metrics);
* RecBole 1.2.1, in its own virtual environment (``bash bench/peers/setup.sh recbole``): seen
  items set to ``-inf``, ``torch.topk``, then RecBole's own ``NDCG``, ``Recall``, ``Precision``,
  ``Hit``, ``MRR`` and ``MAP`` ``metric_info`` on the hit matrix and the number of relevant items.

Scores are continuous random numbers (shifted up for relevant items, so the metrics are far
from 0), so no two items tie. Usage::

    .venv/bin/python bench/peers/check_evaluator.py            # runs both sides, writes the result
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
KS = (5, 10, 20)
NAMES = {"ndcg": "NDCG", "recall": "Recall", "precision": "Precision", "hit": "Hit", "mrr": "MRR", "map": "MAP"}


def make_data(path: Path, seed: int, n_users: int, n_items: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n_users, n_items)).astype(np.float32)
    seen = rng.random((n_users, n_items)) < 0.05
    truth = (rng.random((n_users, n_items)) < 0.03) & ~seen
    truth[: n_users // 20] = False  # some users have nothing to find: both sides skip them
    scores += 1.5 * truth  # a model with some skill, so that the metrics are far from 0
    np.savez(path, scores=scores, seen=seen, truth=truth)


def mgrec_side(path: Path) -> dict[str, float]:
    import scipy.sparse as sp

    from mgrec.evaluation import evaluate
    from mgrec.recommender import Recommender

    data = np.load(path)

    class Scores(Recommender):
        name = "scores"

        def _fit(self, dataset, train, valid):  # noqa: ANN001 - never called
            raise NotImplementedError

        def score(self, users: np.ndarray) -> np.ndarray:
            return data["scores"][users]

        def _get_state(self):  # noqa: ANN202 - never saved
            raise NotImplementedError

        def _set_state(self, config, arrays):  # noqa: ANN001, ANN202
            raise NotImplementedError

    model = Scores()
    model.n_users_, model.n_items_ = data["scores"].shape
    model.seen_ = sp.csr_matrix(data["seen"].astype(np.float32))
    out = evaluate(model, sp.csr_matrix(data["truth"].astype(np.float32)), ks=KS, metrics=tuple(NAMES))
    return {f"{m}@{k}": out[f"{m}@{k}"] for m in NAMES for k in KS}


def recbole_side(path: Path) -> dict[str, float]:
    import torch
    from recbole.evaluator import metrics as rm

    if not hasattr(np, "float"):  # RecBole's Config sets this alias for its metric code
        np.float = np.float_  # type: ignore[attr-defined]
    data = np.load(path)
    keep = data["truth"].any(axis=1)
    scores = torch.from_numpy(np.where(data["seen"], -np.inf, data["scores"])[keep])
    truth = torch.from_numpy(data["truth"][keep])
    top = torch.topk(scores, max(KS), dim=1).indices
    pos_index = torch.gather(truth, 1, top).numpy()
    pos_len = truth.sum(dim=1).numpy()
    config = {"topk": list(KS), "metric_decimal_place": 12}
    out = {}
    for m, cls in NAMES.items():
        metric = getattr(rm, cls)(config)
        try:
            values = metric.metric_info(pos_index, pos_len)
        except TypeError:  # Hit, MRR and Precision take the hit matrix only
            values = metric.metric_info(pos_index)
        for k in KS:
            out[f"{m}@{k}"] = float(values[:, k - 1].mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=("mgrec", "recbole"))
    ap.add_argument("--data", type=Path, default=Path("/tmp/mgrec-evalcheck.npz"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=1500)
    ap.add_argument("--recbole-python", default=str(ROOT / ".peers" / "recbole" / "bin" / "python"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "evaluator-vs-recbole.json")
    args = ap.parse_args()
    if args.side == "mgrec":
        print(json.dumps(mgrec_side(args.data)))
        return
    if args.side == "recbole":
        print(json.dumps(recbole_side(args.data)))
        return
    make_data(args.data, args.seed, args.users, args.items)
    ours = mgrec_side(args.data)
    theirs = json.loads(subprocess.run([args.recbole_python, __file__, "--side", "recbole", "--data", str(args.data)],
                                       check=True, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1])
    diff = {k: abs(ours[k] - theirs[k]) for k in ours}
    worst = max(diff.values())
    result = {"users": args.users, "items": args.items, "seed": args.seed, "mgrec": ours, "recbole": theirs,
              "abs_diff": diff, "max_abs_diff": worst, "agree_1e-4": worst <= 1e-4}
    from mgrec.io import atomic_write_json

    atomic_write_json(args.out, result)
    for k in ours:
        print(f"{k:14s} mgrec {ours[k]:.6f}  recbole {theirs[k]:.6f}  |diff| {diff[k]:.2e}")
    print(f"max |diff| {worst:.2e}: {'agree' if worst <= 1e-4 else 'DISAGREE'} to 1e-4")
    sys.exit(0 if worst <= 1e-4 else 1)


if __name__ == "__main__":
    main()
