"""``mgrec demo``: the main job on the built-in synthetic dataset, start to finish.

Generates the dataset, splits it, tunes and trains every baseline on the validation split,
ranks all items for every test user, prints the comparison table, saves the best model and
shows a few users' recommendations through the same ``recommend()`` the CLI and API use.
"""

from __future__ import annotations

import time
from pathlib import Path

from mgrec.benchmark import TABLE_METRICS
from mgrec.experiment import ExperimentConfig, TrainedRun, run_experiment, save_run

__all__ = ["run_demo"]

DEMO_BUDGET = 4
#: The demo compares the fast baselines; the neural ones take minutes each on 2 cores.
DEMO_MODELS = ("pop", "itemknn", "ease", "bprmf")


def run_demo(*, seed: int = 0, out: Path = Path("runs/demo"), models: list[str] | None = None) -> dict[str, TrainedRun]:
    """Run the demo and print its report; returns the fitted runs by model name."""
    models = list(models or DEMO_MODELS)
    runs: dict[str, TrainedRun] = {}
    t_all = time.perf_counter()
    print(f"mgrec demo: synthetic dataset, random 8:1:1 split, seed {seed}, "
          f"full ranking over all items; hyperparameters tuned on validation (budget {DEMO_BUDGET})")
    for name in models:
        cfg = ExperimentConfig(dataset="synthetic", model=name, split="random", seed=seed,
                               tune=True, tune_budget=DEMO_BUDGET)
        run = run_experiment(cfg)
        runs[name] = run
        if len(runs) == 1:
            print(run.dataset)
        print(f"  {name:<8} trained in {run.record['train_seconds']:6.1f}s  "
              f"test ndcg@10 {run.record['test']['ndcg@10']:.4f}", flush=True)
    print()
    print(_table(runs))
    best = max(runs, key=lambda n: runs[n].record["valid"]["ndcg@10"])
    path = save_run(runs[best], ExperimentConfig(dataset="synthetic", model=best, split="random", seed=seed), out / best)
    print(f"\nbest on validation: {best}; saved to {path}")
    _show_users(runs[best], n_users=3)
    print(f"\ndemo finished in {time.perf_counter() - t_all:.0f}s. Next: mgrec recommend --model-dir {path} --user "
          f"{runs[best].dataset.users.id(0)} --k 10\n"
          f"or serve it on http://127.0.0.1:8000/ (web page, API): mgrec serve --model-dir {path} --no-auth")
    return runs


def _table(runs: dict[str, TrainedRun]) -> str:
    head = ["model", *TABLE_METRICS, "coverage@10", "train s", "eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, run in runs.items():
        m = run.record["test"]
        cells = [name, *(f"{m[k]:.4f}" for k in TABLE_METRICS), f"{m.get('coverage@10', float('nan')):.3f}",
                 f"{run.record['train_seconds']:.1f}", f"{run.record['eval_seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _show_users(run: TrainedRun, *, n_users: int) -> None:
    data, split = run.dataset, run.split
    users = sorted(set(split.test["user"].tolist()))[:n_users]
    items, _ = run.model.recommend(users, k=5)
    feats = data.user_features.frame if data.user_features is not None else None
    ifeats = data.item_features.frame if data.item_features is not None else None
    label_col = next((c for c in ("genre", "category", "genres") if ifeats is not None and c in ifeats), None)

    def label(code: int) -> str:
        raw = data.items.id(code)
        return f"{raw} ({ifeats[label_col].iloc[code]})" if label_col else raw

    for row, u in enumerate(users):
        profile = ", ".join(f"{k}={v}" for k, v in feats.iloc[u].items()) if feats is not None else "no profile"
        hist = split.train[split.train["user"] == u]
        if "timestamp" in hist:
            hist = hist.sort_values("timestamp")
        recent = ", ".join(label(i) for i in hist["item"].tolist()[-3:])
        test_items = set(split.test.loc[split.test["user"] == u, "item"].tolist())
        recs = ", ".join(label(i) + (" *" if i in test_items else "") for i in items[row] if i >= 0)
        print(f"\nuser {data.users.id(u)} [{profile}]")
        print(f"  recent history: {recent}")
        print(f"  top-5:          {recs}   (* = in the user's test set)")
