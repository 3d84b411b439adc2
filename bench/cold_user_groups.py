"""How much a profile can tell about a cold user: popularity within profile groups.

An analysis for docs/benchmarks.md ("Cold start"), not a library model. It takes the exact
``cold_users`` protocol of ``mgrec coldstart`` (the same held-out users of the ``random``
split, ranked over the whole catalogue against all their interactions) and ranks each cold user's
items by their popularity among the training users of the same profile group, blended with
the global popularity: ``count_group(v) / n_group + lam * count(v) / n``. Groups are formed
from ml-100k's ``gender``, ``occupation`` and ``age`` (cut at 18, 25, 35, 45, 50 and 56, the
ml-1m age groups). ``lam`` values are all reported, not chosen, because the cold users are
the test set. Writes ``OUT.json`` and ``OUT.md``. Usage::

    MGREC_DATA=../shared/data .venv/bin/python bench/cold_user_groups.py --seeds 3 \\
        --out bench/results/cold-user-groups-ml-100k
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from mgrec import coldstart as C
from mgrec.experiment import ExperimentConfig, prepare

AGE_CUTS = [0, 18, 25, 35, 45, 50, 56, 200]
GROUPS = (("gender",), ("age",), ("occupation",), ("gender", "age"))
LAMS = (0.5, 1.0, 2.0)


def group_keys(frame: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    """One string key per user: the values of ``columns``, ``age`` cut into :data:`AGE_CUTS`."""
    parts = []
    for c in columns:
        col = pd.cut(frame[c], AGE_CUTS, right=False).astype(str) if c == "age" else frame[c].astype(str)
        parts.append(col.to_numpy(dtype=object))
    return np.array(["|".join(map(str, v)) for v in zip(*parts, strict=True)], dtype=object)


def run_seed(seed: int, frac: float) -> list[dict]:
    data, split = prepare(ExperimentConfig(dataset="ml-100k", model="pop", split="random", seed=seed))
    rng = np.random.default_rng([C._COLD_USER_STREAM, seed])  # the protocol's own draw
    held = C.draw_held_out(np.unique(split.train["user"].to_numpy()), frac, rng)
    train = C._drop(split.train, "user", held)
    users, items, times = C._events(data, held)
    shown, truth, evaluated = C._reveal(users, items, times, 0, data.n_items)
    n = data.n_items
    everyone = np.bincount(train["item"].to_numpy(), minlength=n).astype(float)
    prior = everyone / everyone.sum()
    top = np.argsort(-prior, kind="stable")[: C.K]
    rows = [{"seed": seed, "ranking": "pop (global)", "lam": None,
             **C.ranking_metrics(np.stack([top] * len(evaluated)), truth)}]
    frame = data.user_features.frame
    tu, ti = train["user"].to_numpy(), train["item"].to_numpy()
    for columns in GROUPS:
        keys = group_keys(frame, columns)
        for lam in LAMS:
            cache: dict[str, np.ndarray] = {}
            ranked = []
            for u in evaluated:
                k = keys[u]
                if k not in cache:
                    c = np.bincount(ti[keys[tu] == k], minlength=n).astype(float)
                    cache[k] = np.argsort(-(c / max(c.sum(), 1.0) + lam * prior), kind="stable")[: C.K]
                ranked.append(cache[k])
            rows.append({"seed": seed, "ranking": "pop within " + " x ".join(columns), "lam": lam,
                         **C.ranking_metrics(np.stack(ranked), truth)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--frac", type=float, default=0.1)
    ap.add_argument("--out", required=True, help="path without suffix: OUT.json and OUT.md are written")
    args = ap.parse_args()
    rows = [r for seed in range(args.seeds) for r in run_seed(seed, args.frac)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    table = pd.DataFrame(rows).groupby(["ranking", "lam"], dropna=False, sort=False)["ndcg@10"]
    lines = ["| ranking | lam | NDCG@10 per seed | mean |", "|---|---|---|---|"]
    for (ranking, lam), values in table:
        lam_text = "-" if pd.isna(lam) else f"{lam:g}"
        lines.append(f"| {ranking} | {lam_text} | {', '.join(f'{v:.4f}' for v in values)} | {values.mean():.4f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
