"""What each granularity's terms are worth in a synthetic world, before any model is trained.

Ranks each ``loo`` test event's catalogue by the generator's own score
(:func:`mgrec.data.synthetic_oracle.oracle_ndcg`), whole and with each granularity's terms
left out, and also term by term. The request time is the user's last observed event + 1 s,
as in ``mgr``'s ``loo`` evaluation. Worlds are the default one plus any ``NAME=JSON`` given
(``SyntheticConfig`` fields to change). Writes ``OUT.json`` and ``OUT.md``::

    .venv/bin/python bench/synthetic_oracle.py --out bench/results/synthetic-oracle \\
        'C={"n_users": 6000, "mean_events": 13.0, "w_daypart": 2.0}'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import pandas as pd

from mgrec.data.split import make_split
from mgrec.data.synthetic import SyntheticConfig, make_synthetic
from mgrec.data.synthetic_oracle import TERM_GROUPS, oracle_ndcg
from mgrec.io import atomic_write_json, atomic_write_text

#: variant -> terms left out: each granularity's group, then single terms.
VARIANTS = {"all": (), **{f"no-{g}": terms for g, terms in TERM_GROUPS.items()},
            **{f"no-{t}": (t,) for terms in TERM_GROUPS.values() if len(terms) > 1 for t in terms}}


def run_world(name: str, changes: dict, seed: int) -> dict:
    cfg = dataclasses.replace(SyntheticConfig(), **changes)
    ds = make_synthetic(cfg, seed=seed)
    split = make_split(ds, "loo", seed=seed)
    history = pd.concat([split.train, split.valid])
    last = history.groupby("user")["timestamp"].max()
    requests = split.test.assign(request_time=last.reindex(split.test["user"]).to_numpy() + 1)
    t0 = time.perf_counter()
    ndcg = oracle_ndcg(cfg, seed, requests, history, variants=VARIANTS)
    return {"world": name, "changes": changes, "seed": seed, "events": len(ds.interactions),
            "test_events": len(requests), "ndcg@10": ndcg, "seconds": round(time.perf_counter() - t0, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("worlds", nargs="*", help="NAME=JSON: SyntheticConfig fields to change")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output stem (writes .json and .md)")
    args = ap.parse_args(argv)
    worlds = [("default", {})] + [(w.split("=", 1)[0], json.loads(w.split("=", 1)[1])) for w in args.worlds]
    rows = [run_world(name, changes, args.seed) for name, changes in worlds]
    atomic_write_json(args.out + ".json", rows)
    names = list(VARIANTS)
    lines = [f"# Oracle NDCG@10 of synthetic worlds (`loo` test events, seed {args.seed})", "",
             "Ranked by the generator's own score at the request time (last observed event + 1 s);",
             "`no-X`: the terms of granularity or term X left out. Change against `all` in brackets.", "",
             "| world | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for r in rows:
        base = r["ndcg@10"]["all"]
        cells = [f"{base:.4f}"] + [f"{r['ndcg@10'][n]:.4f} ({100 * (r['ndcg@10'][n] / base - 1):+.1f}%)"
                                   for n in names[1:]]
        lines.append(f"| {r['world']} | " + " | ".join(cells) + " |")
    lines += ["", "Worlds (changes to `SyntheticConfig`):", ""]
    lines += [f"- **{r['world']}**: `{json.dumps(r['changes'])}` ({r['events']:,} events)" for r in rows]
    atomic_write_text(args.out + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
