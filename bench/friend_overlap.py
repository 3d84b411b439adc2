"""How often a test item is among a friend's training items, against as many random users.

The ablation tables ask why the social granularity helps or not; this measures how much the
friends' histories say about a user's test items before any model is trained. For each test
event (user, item) of the split, it checks whether one of the user's friends (out-links for a
directed graph) has the item among their training events, and does the same with each friend
replaced by a uniformly random user (seeded).

    MGREC_DATA=../shared/data .venv/bin/python bench/friend_overlap.py \
        --runs ciao:loo lastfm-2k:random synthetic:loo --out bench/results/friend-overlap
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from mgrec.experiment import ExperimentConfig, prepare
from mgrec.io import atomic_write_json, atomic_write_text


def overlap(dataset: str, split: str, seed: int) -> dict[str, float | int | str]:
    data, parts = prepare(ExperimentConfig(dataset=dataset, model="pop", split=split, seed=seed))
    social = data.social
    if social is None or len(social.src) == 0:
        raise SystemExit(f"{dataset} has no social links")
    src, dst = np.asarray(social.src), np.asarray(social.dst)
    if not social.directed:
        src, dst = np.r_[src, dst], np.r_[dst, src]
    links = pd.DataFrame({"user": src, "friend": dst}).drop_duplicates()
    train = parts.train[["user", "item"]].rename(columns={"user": "friend"})
    test = parts.test[["user", "item"]].reset_index(drop=True)
    test["event"] = np.arange(len(test))

    def share(pairs: pd.DataFrame) -> float:
        hits = test.merge(pairs, on="user").merge(train, on=["friend", "item"])
        return hits["event"].nunique() / len(test)

    rand = links.assign(friend=np.random.default_rng(seed).integers(0, data.n_users, len(links)))
    return {"dataset": dataset, "split": split, "seed": seed, "test_events": len(test),
            "test_users_with_friends": float(test["user"].isin(links["user"]).mean()),
            "friends_per_user_median": float(links.groupby("user").size().median()),
            "in_friends_training_items": share(links), "in_random_users_training_items": share(rand)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="DATASET:SPLIT pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output stem: writes STEM.json and STEM.md")
    args = ap.parse_args()
    rows = [overlap(*run.split(":", 1), seed=args.seed) for run in args.runs]
    lines = ["| dataset | split | test events | with friends | friends (median) | item in a friend's training items "
             "| same, random users |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['split']} | {r['test_events']} | {r['test_users_with_friends']:.3f} | "
              f"{r['friends_per_user_median']:.0f} | {r['in_friends_training_items']:.3f} | "
              f"{r['in_random_users_training_items']:.3f} |" for r in rows]
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), rows)
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
