"""How much of the training split each torchrun rank loads from a shards folder.

For each dataset: ``mgrec data split NAME --format shards`` (seed 0, ``random``), then
:func:`mgrec.data.shards.load_shard` for every rank of 2 and 4 processes, as ``mgrec train
--shards`` does for ``mgr`` (its default ``max_friends``: a rank loads its own users' events and
those of the friends the model reads for them). Writes ``OUT/shard-sizes.json`` and
``OUT/shard-sizes.md``. Usage::

    MGREC_DATA=../shared/data .venv/bin/python bench/shard_sizes.py --out bench/results
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("ml-100k", "lastfm-2k", "ciao", "synthetic-1m")


def measure(name: str, work: Path, worlds: tuple[int, ...]) -> list[dict]:
    from mgrec.data.shards import load_shard, save_shards
    from mgrec.experiment import ExperimentConfig, prepare
    from mgrec.mgr_config import MGRConfig

    folder = work / name
    t0 = time.perf_counter()
    save_shards(folder, *prepare(ExperimentConfig(dataset=name, model="mgr", split="random", seed=0)))
    write_s = time.perf_counter() - t0
    total = len(load_shard(folder)[1].train)
    rows = []
    for world in worlds:
        for rank in range(world):
            t0 = time.perf_counter()
            data, split = load_shard(folder, rank, world, max_friends=MGRConfig.max_friends)
            owned = int(data.shard.owns(split.train["user"].to_numpy()).sum())
            rows.append({"dataset": name, "world_size": world, "rank": rank, "train_events": total,
                         "loaded": len(split.train), "owned": owned, "load_s": round(time.perf_counter() - t0, 2),
                         "write_s": round(write_s, 1), "has_social": data.social is not None})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--worlds", default="2,4")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from mgrec.io import atomic_write_json, atomic_write_text

    worlds = tuple(int(w) for w in args.worlds.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets.split(","):
            rows += measure(name, Path(tmp), worlds)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    lines = ["# Training events each rank loads from a shards folder (`random` split, seed 0)", "",
             f"Commit {commit}. `python bench/shard_sizes.py`: each rank keeps its own users' events and "
             "those of the friends `mgr` reads for them (`max_friends` 20).", "",
             "| dataset | processes | rank | train events | loaded by the rank | owned by the rank | load s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['world_size']} | {r['rank']} | {r['train_events']:,} | "
                     f"{r['loaded']:,} ({100 * r['loaded'] / r['train_events']:.1f}%) | "
                     f"{r['owned']:,} ({100 * r['owned'] / r['train_events']:.1f}%) | {r['load_s']} |")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "shard-sizes.json", {"commit": commit, "rows": rows})
    atomic_write_text(args.out / "shard-sizes.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
