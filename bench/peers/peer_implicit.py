"""implicit 0.7.2 (ALS, BPR) on an exported split; runs in ``.peers/implicit``.

64 factors. A small grid over the regularisation and alpha (ALS) or learning rate (BPR) is
searched on validation NDCG@10; each configuration trains once and is checked at several
iteration counts (``implicit`` keeps its factors between ``fit`` calls, so training goes on
from the last checkpoint; BPR's sampler restarts from the seed at each checkpoint). The best
(configuration, iterations) is kept and ranks the test users. ``total_seconds`` covers the
whole grid. Usage::

    .peers/implicit/bin/python bench/peers/peer_implicit.py --model als --work W --out O
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import peer_common as pc

FACTORS = 64
GRIDS = {
    "als": {"regularization": [0.1, 1.0, 10.0, 100.0], "alpha": [1.0, 5.0, 20.0]},
    "bpr": {"learning_rate": [0.005, 0.01, 0.02], "regularization": [0.001, 0.01, 0.1]},
}
CHECKPOINTS = {"als": [5, 10, 15, 25, 40], "bpr": [25, 50, 100, 200, 300]}


def make(model: str, params: dict, seed: int, threads: int):  # noqa: ANN201 - an implicit model
    from implicit.als import AlternatingLeastSquares
    from implicit.bpr import BayesianPersonalizedRanking

    cls = AlternatingLeastSquares if model == "als" else BayesianPersonalizedRanking
    return cls(factors=FACTORS, iterations=1, random_state=seed, num_threads=threads, **params)


def scorer(model):  # noqa: ANN001, ANN201
    """Scores of every item for a batch of users, from the factors."""
    users_f, items_f = np.asarray(model.user_factors), np.asarray(model.item_factors)
    return lambda users: users_f[users] @ items_f.T


def train_config(model_name: str, params: dict, parts: dict, seed: int, threads: int) -> dict:
    """Train one configuration up to the last checkpoint; return its best checkpoint."""
    model = make(model_name, params, seed, threads)
    done, epoch_times, best = 0, [], {"ndcg": -1.0}
    for stop in CHECKPOINTS[model_name]:
        model.iterations = stop - done
        t0 = time.perf_counter()
        model.fit(parts["train"], show_progress=False)
        epoch_times += [(time.perf_counter() - t0) / (stop - done)] * (stop - done)
        done = stop
        ndcg = pc.valid_ndcg(scorer(model), parts)
        if ndcg > best["ndcg"]:
            best = {"ndcg": ndcg, "iterations": stop, "epoch_seconds": float(np.mean(epoch_times)),
                    "user_factors": np.array(model.user_factors), "item_factors": np.array(model.item_factors)}
    return best


def main() -> None:
    args = pc.base_parser(__doc__).parse_args()
    pc.set_threads(args.threads)
    if args.model not in GRIDS:
        raise SystemExit(f"unknown implicit model {args.model!r}; choose from {sorted(GRIDS)}")
    parts = pc.load_parts(args.work)
    clock = pc.Clock()
    grid, trials, best = GRIDS[args.model], [], None
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values))
        result = train_config(args.model, params, parts, args.seed, args.threads)
        trials.append({**params, "iterations": result["iterations"], "valid_ndcg@10": round(result["ndcg"], 6)})
        print(f"{args.model} {params}: best valid ndcg@10 {result['ndcg']:.4f} at {result['iterations']} it",
              flush=True)
        if best is None or result["ndcg"] > best["ndcg"]:
            best, best_params = result, params
    total = clock.seconds()
    factors = {"user_factors": best["user_factors"], "item_factors": best["item_factors"]}
    pc.write_topn(args.out, lambda u: factors["user_factors"][u] @ factors["item_factors"].T, parts)
    pc.write_result(args.out, {
        "library": "implicit", "model": args.model, "epoch_seconds": round(best["epoch_seconds"], 4),
        "epochs": best["iterations"], "total_seconds": total, "valid_ndcg@10": round(best["ndcg"], 6),
        "hyperparameters": {"factors": FACTORS, **best_params, "iterations": best["iterations"]},
        "grid": {**grid, "iterations (checkpoints)": CHECKPOINTS[args.model]}, "trials": trials,
        "input": "binary train matrix (users x items)",
    })


if __name__ == "__main__":
    main()
