#!/usr/bin/env python
"""A model folder over a synthetic catalogue of (by default) 1,000,000 items, for load tests.

``mgrec.data.synthetic`` simulates every event against the whole catalogue (``O(events x
items)`` score cells: 10^12 at a million items and a million events), so the data here is drawn
directly with numpy instead, in ``O(events + items)`` time and memory:

* items: a ``genre`` (categorical, ``--genres`` labels) and a Zipf-like popularity within
  their genre;
* users: ``--users`` users with 1-3 favourite genres; each event picks a favourite genre with
  probability 0.8 (else any genre), then an item of that genre by popularity;
* events: ``--events`` in all, log-normal per user (at least 3), timestamps uniform over a year;
* friends: a random graph of mean degree ``--degree``, mostly between users who share a
  favourite genre.

The fused model :class:`mgrec.mgr.MGR` is trained on a ``random`` split with the sampled
softmax (``loss="sampled_softmax"``: popularity-sampled negatives with the logQ correction),
since a full softmax over a million items per step is too slow, for ``--epochs`` (1) epochs
without validation (full-ranking validation would score every validation user against every
item), then saved with :func:`mgrec.experiment.save_run` exactly as ``mgrec train`` writes a
folder. Timings of each stage are printed and kept in ``run.json`` (``catalogue``).

Usage::

    python bench/load/make_catalogue.py --items 1000000 --out /tmp/models/synthetic-1m
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

DAY = 86400
START = 1577836800  # 2020-01-01 UTC


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Clock:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.last = self.t0
        self.stages: dict[str, float] = {}

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round(now - self.last, 3)
        print(f"[{now - self.t0:8.1f}s] {stage}: {now - self.last:.1f}s (peak RSS {peak_rss_mib():.0f} MiB)",
              flush=True)
        self.last = now


def make_dataset(n_users: int, n_items: int, n_events: int, n_genres: int, degree: float, seed: int):
    """The synthetic :class:`~mgrec.data.dataset.Dataset` (see the module docstring)."""
    from mgrec.data.dataset import Dataset, FeatureTable, SocialGraph
    from mgrec.data.vocab import Vocabulary

    rng = np.random.default_rng(seed)
    # items: a genre each, and a popularity rank inside the genre (Zipf-like weights 1/(r+10)^0.9)
    genre = rng.integers(0, n_genres, n_items)
    order = np.argsort(genre, kind="stable")  # items grouped by genre
    g_sorted = genre[order]
    g_start = np.searchsorted(g_sorted, np.arange(n_genres + 1))
    rank = np.arange(n_items) - g_start[g_sorted]  # rank inside the genre (lower item id: more popular)
    weight = 1.0 / (rank + 10.0) ** 0.9
    cdf = np.empty(n_items)
    for g in range(n_genres):  # per-genre cumulative popularity, normalised to [0, 1]
        a, b = g_start[g], g_start[g + 1]
        c = np.cumsum(weight[a:b])
        cdf[a:b] = c / c[-1] if b > a else c
    # users: 1-3 favourite genres; events per user log-normal, at least 3
    n_fav = rng.integers(1, 4, n_users)
    fav = rng.integers(0, n_genres, (n_users, 3))
    raw = rng.lognormal(0.0, 0.8, n_users)
    per_user = np.maximum(3, np.round(raw / raw.sum() * n_events)).astype(np.int64)
    users = np.repeat(np.arange(n_users), per_user)
    n = len(users)
    pick = rng.integers(0, 3, n) % n_fav[users]
    g_ev = np.where(rng.random(n) < 0.8, fav[users, pick], rng.integers(0, n_genres, n))
    # an item of genre g by popularity: invert the genre's cdf
    u = rng.random(n)
    pos = np.empty(n, np.int64)
    for g in range(n_genres):
        m = g_ev == g
        a, b = g_start[g], g_start[g + 1]
        if b == a:  # an empty genre (tiny catalogues only): any item
            pos[m] = rng.integers(0, n_items, int(m.sum()))
        else:
            pos[m] = a + np.minimum(np.searchsorted(cdf[a:b], u[m]), b - a - 1)
    items = order[pos] if n_items else pos
    ts = START + rng.integers(0, 365 * DAY, n)
    srt = np.lexsort((users, ts))
    inter = pd.DataFrame({"user": users[srt].astype(np.int64), "item": items[srt].astype(np.int64),
                          "weight": np.ones(n, np.float32), "timestamp": ts[srt].astype(np.int64)})
    # friends: mostly within a shared favourite genre
    n_links = int(n_users * degree / 2)
    src = rng.integers(0, n_users, n_links)
    same = rng.random(n_links) < 0.7
    by_genre = [np.flatnonzero(fav[:, 0] == g) for g in range(n_genres)]
    dst = rng.integers(0, n_users, n_links)
    for g in range(n_genres):
        m = same & (fav[src, 0] == g)
        if m.any() and len(by_genre[g]):
            dst[m] = rng.choice(by_genre[g], int(m.sum()))
    keep = src != dst
    social = SocialGraph(src[keep].astype(np.int64), dst[keep].astype(np.int64),
                         np.ones(int(keep.sum()), np.float32), directed=False)
    names = [f"genre{g:02d}" for g in range(n_genres)]
    item_frame = pd.DataFrame({"genre": pd.Series(np.asarray(names, dtype=object)[genre], dtype=object)})
    return Dataset(
        name="synthetic-catalogue",
        users=Vocabulary(f"u{k}" for k in range(n_users)),
        items=Vocabulary(f"i{k}" for k in range(n_items)),
        interactions=inter,
        item_features=FeatureTable(item_frame, {"genre": "categorical"}),
        social=social,
        meta={"weight_kind": "implicit", "generator": "bench/load/make_catalogue.py", "seed": seed},
    )


def hit_rate(model, split, n_users: int, k: int = 10, seed: int = 0, chunk: int = 32) -> dict[str, float]:
    """HitRate@k on the test events of ``n_users`` random test users (full ranking through
    ``score()``, a sanity check that the model learnt something; popularity for reference)."""
    test = split.test
    users = np.unique(test["user"].to_numpy())
    rng = np.random.default_rng(seed)
    users = rng.choice(users, min(n_users, len(users)), replace=False)
    truth = test.groupby("user")["item"].apply(set)
    hits = pop_hits = 0
    pop = np.bincount(split.train["item"].to_numpy(), minlength=model.n_items_)
    top_pop = np.argsort(-pop, kind="stable")[: k + 1000]
    for s in range(0, len(users), chunk):
        batch = users[s:s + chunk]
        top, _ = model.recommend(batch, k=k, filter_seen=True)
        for u, row in zip(batch, top):
            hits += bool(truth[u] & set(row.tolist()))
            seen = set(model.seen_[u].indices.tolist())
            p = [i for i in top_pop.tolist() if i not in seen][:k]
            pop_hits += bool(truth[u] & set(p))
    return {"users": len(users), f"hit@{k}": round(hits / len(users), 4),
            f"popularity_hit@{k}": round(pop_hits / len(users), 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--genres", type=int, default=24)
    p.add_argument("--degree", type=float, default=8.0, help="mean number of friends")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--negatives", type=int, default=1024, help="sampled negatives per batch")
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="torch threads while training")
    p.add_argument("--eval-users", type=int, default=300, help="sanity HitRate@10 on this many test users (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="model folder to write")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    clock = Clock()
    from mgrec.data.split import make_split
    from mgrec.experiment import ExperimentConfig, TrainedRun, save_run
    from mgrec.mgr import MGR

    clock.mark("import")
    ds = make_dataset(args.users, args.items, args.events, args.genres, args.degree, args.seed)
    n_seen = int(ds.interactions["item"].nunique())
    print(f"    {ds!r}; {n_seen} items have events", flush=True)
    clock.mark("generate")
    split = make_split(ds, "random", seed=args.seed)
    clock.mark("split")
    config = {"dim": args.dim, "loss": "sampled_softmax", "n_negatives": args.negatives, "epochs": args.epochs,
              "batch_size": args.batch_size, "max_len": args.max_len, "split_protocol": "random",
              "threads": args.threads}
    model = MGR(config, seed=args.seed).fit(ds, split.train, None)  # no validation: see the docstring
    hist = [{k: round(float(v), 4) for k, v in h.items()} for h in model.history_]
    print(f"    granularities {model.granularities_}, {model.behavior_mode_} mode, epochs {hist}", flush=True)
    clock.mark("train")
    sanity = hit_rate(model, split, args.eval_users, seed=args.seed) if args.eval_users else None
    if sanity:
        print(f"    sanity: {sanity}", flush=True)
        clock.mark("sanity")
    record = {"dataset": ds.name, "model": "mgr", "split": "random", "seed": args.seed, "data": ds.info(),
              "split_summary": split.summary(), "model_config": model.config_dict(),
              "train_seconds": clock.stages["train"], "epochs": len(hist),
              "catalogue": {"argv": sys.argv, "items_with_events": n_seen, "history": hist, "sanity": sanity,
                            "stages_s": dict(clock.stages)}}
    cfg = ExperimentConfig(dataset=ds.name, model="mgr", split="random", seed=args.seed, model_config=config)
    out = save_run(TrainedRun(model, ds, split, record), cfg, args.out)
    clock.mark("save")
    run_json = Path(out) / "run.json"
    rec = json.loads(run_json.read_text())
    rec["catalogue"]["stages_s"] = dict(clock.stages)
    rec["catalogue"]["total_s"] = round(sum(clock.stages.values()), 3)
    rec["catalogue"]["peak_rss_mib"] = round(peak_rss_mib(), 1)
    tmp = run_json.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=2) + "\n")
    os.replace(tmp, run_json)
    print(f"wrote {out} in {sum(clock.stages.values()):.1f}s, peak RSS {peak_rss_mib():.0f} MiB; "
          f"stages {clock.stages}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
