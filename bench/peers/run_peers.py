"""Side by side: mgr against RecBole, implicit and LightFM on the very same split (issue 5).

For each dataset and split: build the split as ``mgrec benchmark`` does, save and export it
(:mod:`export`), run every peer in its own virtual environment, one process at a time
(``peer_recbole.py``, ``peer_implicit.py``, ``peer_lightfm.py``), and mgr itself
(``mgr_side.py``, the equivalent of ``mgrec benchmark --models mgr --no-tune``). Each peer
writes its top-100 lists for the test users (train and valid items excluded, as mgrec does at
test time); mgrec's own evaluator scores them, so every metric has one definition. Peak RSS
is each child's own (``os.wait4`` in a small launcher, see :data:`LAUNCHER`). Writes
``OUT/peers-<dataset>.json`` (rows merged with an earlier run's by split, library and model)
and ``OUT/peers-<dataset>.md``. Usage::

    .venv/bin/python bench/peers/run_peers.py --datasets ml-100k,lastfm-2k --splits random,temporal \\
        --seed 0 --out bench/results
    .venv/bin/python bench/peers/run_peers.py --datasets ml-100k --peers recbole:lightgcn,implicit --skip-mgr
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: Every (library, model) pair, in table order.
PEERS = [("recbole", "bpr"), ("recbole", "lightgcn"), ("recbole", "sasrec"), ("recbole", "ease"),
         ("recbole", "multivae"), ("recbole", "pop"), ("implicit", "als"), ("implicit", "bpr"), ("lightfm", "warp")]
SCRIPTS = {"recbole": "peer_recbole.py", "implicit": "peer_implicit.py", "lightfm": "peer_lightfm.py"}
METRICS = ("ndcg", "recall", "hit", "mrr", "precision")
KEY_METRICS = ("ndcg@10", "recall@10", "hit@10", "mrr@10", "precision@10")
#: When this process started: names its entry in a report's ``runs``.
RUN_STARTED = time.strftime("%Y-%m-%d %H:%M:%S %Z")
#: A row is marked when mgr's epoch takes longer than this many RecBole LightGCN epochs.
EPOCH_RATIO_BAR = 3.0


class PeerError(RuntimeError):
    """A peer could not run (missing environment, failed process)."""


# ------------------------------------------------------------------------------ arguments
def parse_peers(text: str) -> list[tuple[str, str]]:
    """``recbole:lightgcn,implicit`` -> the chosen pairs in table order (a bare library: all
    its models)."""
    chosen = set()
    for token in (t.strip() for t in text.split(",") if t.strip()):
        lib, _, model = token.partition(":")
        matches = [(p_lib, p_model) for p_lib, p_model in PEERS if p_lib == lib and model in ("", p_model)]
        if not matches:
            known = ", ".join(f"{p_lib}:{p_model}" for p_lib, p_model in PEERS)
            raise SystemExit(f"run_peers: error: unknown peer {token!r}; choose from {known}")
        chosen.update(matches)
    return [p for p in PEERS if p in chosen]


def parse_caps(text: str) -> dict[tuple[str, str], int]:
    """``recbole:sasrec=20`` -> ``{("recbole", "sasrec"): 20}``."""
    caps = {}
    for token in (t.strip() for t in text.split(",") if t.strip()):
        name, _, value = token.partition("=")
        lib, _, model = name.partition(":")
        if (lib, model) not in PEERS or not value.isdigit():
            raise SystemExit(f"run_peers: error: bad --epoch-caps entry {token!r}; write it like recbole:sasrec=20")
        caps[(lib, model)] = int(value)
    return caps


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="ml-100k", help="comma-separated dataset names")
    ap.add_argument("--splits", default="random", help="comma-separated: random, temporal, loo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peers", default=",".join(f"{lib}:{model}" for lib, model in PEERS),
                    help="library:model pairs or bare libraries (default: all)")
    ap.add_argument("--skip-mgr", action="store_true", help="run the peers only")
    ap.add_argument("--threads", type=int, default=1, help="threads of every child (BLAS, OpenMP, torch)")
    ap.add_argument("--max-epochs", type=int, default=300, help="RecBole's epoch cap (early stopping still applies)")
    ap.add_argument("--epoch-caps", default="", help="tighter caps per peer, e.g. recbole:sasrec=20")
    ap.add_argument("--work", type=Path, default=Path("/tmp/mgrec-peers"), help="root of the work folders")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--data-root", default=os.environ.get("MGREC_DATA"))
    ap.add_argument("--rescore", action="store_true",
                    help="score the lists kept in the work folders again and rewrite the report (no training)")
    return ap


# ------------------------------------------------------------------------------ children
def peer_python(lib: str) -> Path:
    """The interpreter of a peer's virtual environment (:class:`PeerError` when missing)."""
    python = ROOT / ".peers" / lib / "bin" / "python"
    if not python.is_file():
        raise PeerError(f"no {lib} environment at {python.parent.parent}: run `bash bench/peers/setup.sh {lib}`")
    return python


def child_env(threads: int) -> dict[str, str]:
    """The environment of every child: pinned thread pools, RecBole's torch.load switch."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


#: Runs the command given after the file name and writes that process's peak RSS (KiB) to the
#: file. On Linux a child's ``ru_maxrss`` starts at its parent's RSS when it forks (the old
#: memory map's high-water mark is kept through ``exec``), so each child is started by this
#: small launcher instead of by this (large) process: the floor is the launcher's ~10 MB.
LAUNCHER = """
import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes in RecBole's log lines


def run_child(cmd: list[str], *, cwd: Path, log: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run ``cmd`` (an absolute executable first) to the end with its output in ``log``.

    Returns:
        ``(peak RSS in MB of that process alone, wall seconds)``.

    Raises:
        PeerError: a non-zero exit (with the log's last line).
    """
    cwd.mkdir(parents=True, exist_ok=True)
    rss_file = log.with_suffix(".maxrss")
    rss_file.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as sink:
        code = subprocess.run([sys.executable, "-c", LAUNCHER, str(rss_file), *cmd], cwd=cwd, env=env,
                              stdout=sink, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise PeerError(f"exit status {code}: {ANSI.sub('', tail[0])} (log: {log})")
    return int(rss_file.read_text()) / 1024.0, wall  # ru_maxrss is in KiB on Linux


# ------------------------------------------------------------------------------ scoring
def topn_recommender(lists: np.ndarray, users: np.ndarray, seen: Any, n_items: int):  # noqa: ANN201
    """A :class:`mgrec.recommender.Recommender` whose ranking of user ``users[r]`` is
    ``lists[r]`` (descending scores on the listed items, ``-inf`` elsewhere, ``-1`` entries
    ignored); ``seen`` (the training matrix) is filtered as for any mgrec model. Users without
    a list rank nothing, and no user gets the popularity fallback: the peer's lists are scored
    as they are."""
    from mgrec.recommender import Recommender

    row_of = {int(u): r for r, u in enumerate(users)}

    class TopNLists(Recommender):
        name = "topn-lists"
        cold_users_get_popularity = False

        def _fit(self, dataset, train, valid):  # noqa: ANN001 - never trained
            raise NotImplementedError

        def score(self, batch: np.ndarray) -> np.ndarray:
            out = np.full((len(batch), n_items), -np.inf, dtype=np.float32)
            for b, u in enumerate(batch):
                r = row_of.get(int(u))
                if r is not None:
                    items = lists[r][lists[r] >= 0]
                    out[b, items] = np.arange(len(items), 0, -1, dtype=np.float32)
            return out

        def _get_state(self):  # noqa: ANN202 - never saved
            raise NotImplementedError

        def _set_state(self, config, arrays):  # noqa: ANN001, ANN202
            raise NotImplementedError

    model = TopNLists()
    model.n_users_, model.n_items_ = seen.shape
    model.seen_ = seen
    return model


def score_lists(lists: np.ndarray, users: np.ndarray, data: Any, split: Any,
                only: np.ndarray | None = None) -> dict[str, float]:
    """mgrec's test metrics of the lists (``mgrec.evaluation.evaluate_split``: truth = test,
    valid items excluded, train items filtered), over every test user or the users ``only``."""
    from mgrec.data.dataset import to_csr
    from mgrec.evaluation import evaluate_split

    seen = to_csr(split.train, data.n_users, data.n_items)
    model = topn_recommender(lists, users, seen, data.n_items)
    out = evaluate_split(model, split, data, part="test", ks=(10,), metrics=METRICS, users=only)
    return {k: round(float(v), 6) for k, v in out.items() if k in KEY_METRICS or k == "n_users"}


def warm_users(split: Any) -> np.ndarray:
    """Test users with at least one training interaction; the others are cold-start users,
    whom only a model with user features (mgr, LightFM) can rank from what it knows of them."""
    return np.intersect1d(split.test["user"].to_numpy(), split.train["user"].to_numpy())


# ------------------------------------------------------------------------------ one row each
def run_peer(lib: str, model: str, work: Path, args: argparse.Namespace, data: Any, split: Any) -> dict[str, Any]:
    """Train one peer in its environment, score its lists; the row (or :class:`PeerError`)."""
    python = peer_python(lib)
    out = work / "runs" / f"{lib}-{model}"
    cap = parse_caps(args.epoch_caps).get((lib, model), args.max_epochs)
    cmd = [str(python), str(HERE / SCRIPTS[lib]), "--model", model, "--work", str(work.resolve()),
           "--out", str(out.resolve()), "--seed", str(args.seed), "--threads", str(args.threads),
           "--max-epochs", str(cap)]
    rss, wall = run_child(cmd, cwd=out, log=work / "runs" / f"{lib}-{model}.log", env=child_env(args.threads))
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    lists, users = np.load(out / "topn.npy"), np.load(out / "users.npy")
    metrics = score_lists(lists, users, data, split)
    warm = score_lists(lists, users, data, split, only=warm_users(split))
    return {**result, "metrics": metrics, "metrics_warm": warm, "peak_rss_mb": round(rss, 1),
            "wall_seconds": round(wall, 2),
            "epoch_cap": cap if lib == "recbole" else None}


def run_mgr(dataset: str, protocol: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """mgr on the saved split in its own process (``mgr_side.py``); the row."""
    out = work / "runs" / "mgrec-mgr"
    cmd = [str(Path(sys.executable).absolute()), str(HERE / "mgr_side.py"), "--dataset", dataset, "--split", protocol,
           "--seed", str(args.seed), "--work", str(work.resolve()), "--out", str(out.resolve()),
           "--threads", str(args.threads)]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    rss, wall = run_child(cmd, cwd=out, log=work / "runs" / "mgrec-mgr.log", env=child_env(args.threads))
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    result["metrics"] = {k: result["metrics"][k] for k in (*KEY_METRICS, "n_users")}
    return {**result, "peak_rss_mb": round(rss, 1), "wall_seconds": round(wall, 2)}


# ------------------------------------------------------------------------------ output
def git_commit() -> str:
    """``HEAD``'s short hash, with ``+dirty`` when tracked files differ from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode != 0
    return head.strip() + ("+dirty" if dirty else "")


def machine_note(threads: int) -> str:
    """CPU model, core count and the thread setting, in one line."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return (f"{model}, {os.cpu_count()} cores (shared with other jobs), {threads} thread(s) per child, "
            f"one child at a time, CPU only")


def merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` rows with those that ``new`` re-ran (same split, library, model, seed) replaced."""
    def key(r: dict[str, Any]) -> tuple:
        return r["split"], r["library"], r["model"], r["seed"]

    fresh = {key(r) for r in new}
    return [r for r in old if key(r) not in fresh] + new


def fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def split_table(rows: list[dict[str, Any]]) -> list[str]:
    """One markdown table for one split: mgr first, then the peers, with the mgr/peer ratios
    and the marks."""
    order = [("mgrec", "mgr"), *PEERS]
    rows = sorted(rows, key=lambda r: order.index((r["library"], r["model"])))
    mgr = next((r for r in rows if r["library"] == "mgrec" and "metrics" in r), None)
    gcn = next((r for r in rows if (r["library"], r["model"]) == ("recbole", "lightgcn") and "metrics" in r), None)
    head = ["library", "model", "NDCG@10", "Recall@10", "NDCG@10 warm", "s/epoch", "epochs", "total s", "peak RSS MB",
            "mgr/peer s/epoch", "mgr/peer NDCG@10", "mark"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            error = r["error"].replace("|", "/")
            lines.append(f"| {r['library']} | {r['model']} | failed: {error} |" + " |" * (len(head) - 3))
            continue
        ndcg, epoch = r["metrics"]["ndcg@10"], r.get("epoch_seconds")
        marks = []
        if r is mgr:
            if gcn and epoch and gcn.get("epoch_seconds") and epoch > EPOCH_RATIO_BAR * gcn["epoch_seconds"]:
                marks.append(f"**⚠ epoch > {EPOCH_RATIO_BAR:g}x LightGCN's**")
            ratios = ["1.00", "1.00"]
        else:
            if mgr and mgr["metrics"]["ndcg@10"] <= ndcg:
                marks.append("**⚠ mgr not ahead**")
            ratios = [ratio(mgr and mgr.get("epoch_seconds"), epoch), ratio(mgr and mgr["metrics"]["ndcg@10"], ndcg)]
        warm = r.get("metrics_warm", {}).get("ndcg@10")
        cells = [r["library"], r["model"], fmt(ndcg, 4), fmt(r["metrics"]["recall@10"], 4), fmt(warm, 4), fmt(epoch, 3),
                 str(r.get("epochs") or "-"), fmt(r.get("total_seconds"), 1), fmt(r.get("peak_rss_mb"), 0),
                 *ratios, " ".join(marks)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def users_line(rows: list[dict[str, Any]]) -> str:
    """How many test users a split has, and how many of them are cold (no training data)."""
    row = next((r for r in rows if "metrics_warm" in r), None)
    if row is None:
        return ""
    total, warm = row["metrics"]["n_users"], row["metrics_warm"]["n_users"]
    return f"{int(total)} test users, {int(total - warm)} of them without any training interaction (cold)."


def markdown(report: dict[str, Any]) -> str:
    """The markdown file of one dataset: the runs that made it, then one table per split."""
    lines = [f"# {report['dataset']}: mgr beside its peers", "", f"Machine: {report['machine']}.", "", "Runs:"]
    lines += [f"- {run['started']} at commit {run['git_commit']}: `{run['command']}`" for run in report["runs"]]
    lines += [""]
    for protocol in dict.fromkeys(r["split"] for r in report["rows"]):
        rows = [r for r in report["rows"] if r["split"] == protocol]
        lines += [f"## split `{protocol}`, seed {report['seed']}", "", users_line(rows), ""]
        lines += split_table(rows) + [""]
    lines += ["Metrics: mgrec's evaluator on each library's top-100 lists (train and valid items excluded); "
              "NDCG@10 warm: over the test users with training interactions only. "
              "s/epoch: one training pass without validation (EASE: its one closed-form fit). "
              "total s: training including validation (implicit, LightFM: the whole grid). "
              "Peak RSS: each process's own. Hyperparameters and grids: the JSON file.", ""]
    return "\n".join(lines)


def past_runs(old: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs an existing report records (a report from before ``runs`` existed: its one run)."""
    if "runs" in old:
        return list(old["runs"])
    if "command" in old:
        last = f"{old['date']} (its last row)"
        return [{"started": last, "command": old["command"], "git_commit": old["git_commit"]}]
    return []


def write_report(out_dir: Path, dataset: str, rows: list[dict[str, Any]], args: argparse.Namespace) -> Path:
    """Merge ``rows`` into ``OUT/peers-<dataset>.json`` (``--rescore``: replace them), add this run
    to the report's ``runs`` and rewrite the markdown beside it."""
    from mgrec.io import atomic_write_json, atomic_write_text

    path = out_dir / f"peers-{dataset}.json"
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"rows": []}
    run = {"started": RUN_STARTED, "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
           "git_commit": git_commit()}
    runs = [r for r in past_runs(old) if r["started"] != RUN_STARTED] + [run]
    report = {"dataset": dataset, "seed": args.seed, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "command": run["command"], "git_commit": run["git_commit"],
              "machine": machine_note(args.threads), "threads": args.threads, "runs": runs,
              "rows": rows if args.rescore else merge_rows(old["rows"], rows)}
    atomic_write_json(path, report)
    atomic_write_text(path.with_suffix(".md"), markdown(report))
    return path


# ------------------------------------------------------------------------------ main
def run_split(dataset: str, protocol: str, peers: list[tuple[str, str]], args: argparse.Namespace) -> None:
    """Everything for one (dataset, split): export, peers, mgr, report after each row."""
    from export import export_all, prepare_split

    data, split = prepare_split(dataset, protocol, args.seed, args.data_root)
    work = args.work / f"{dataset}-{protocol}-s{args.seed}"
    summary = export_all(work, data, split)
    print(f"[{dataset} {protocol}] exported to {work}: {summary['counts']}", flush=True)
    base = {"dataset": dataset, "split": protocol, "seed": args.seed}
    jobs = [] if args.skip_mgr else [("mgrec", "mgr")]
    rows: list[dict[str, Any]] = []
    for lib, model in jobs + peers:
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            row = run_mgr(dataset, protocol, work, args) if lib == "mgrec" else \
                run_peer(lib, model, work, args, data, split)
            print(f"[{dataset} {protocol}] {lib}:{model} ndcg@10 {row['metrics']['ndcg@10']:.4f} "
                  f"s/epoch {fmt(row.get('epoch_seconds'), 3)} epochs {row.get('epochs')} "
                  f"peak RSS {row['peak_rss_mb']:.0f} MB (started {started})", flush=True)
        except PeerError as err:
            print(f"[{dataset} {protocol}] {lib}:{model} FAILED: {err}", flush=True)
            row = {"error": str(err)}
        rows.append({**base, "library": lib, "model": model, **row, "run_at": started})
        write_report(args.out, dataset, rows, args)


def rescore(dataset: str, args: argparse.Namespace) -> None:
    """Score the rows of ``OUT/peers-<dataset>.json`` again from the lists kept in the work
    folders (no training); mgr keeps no lists, so its row gains only what follows from its
    metrics (warm = all when every test user is warm)."""
    from export import prepare_split

    path = args.out / f"peers-{dataset}.json"
    if not path.is_file():
        raise SystemExit(f"run_peers: error: nothing to re-score: {path} does not exist")
    rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
    for protocol in dict.fromkeys(r["split"] for r in rows):
        data, split = prepare_split(dataset, protocol, args.seed, args.data_root)
        runs, warm = args.work / f"{dataset}-{protocol}-s{args.seed}" / "runs", warm_users(split)
        for r in (r for r in rows if r["split"] == protocol and "metrics" in r):
            lists = runs / f"{r['library']}-{r['model']}" / "topn.npy"
            if lists.is_file():
                users = np.load(lists.with_name("users.npy"))
                r["metrics"] = score_lists(np.load(lists), users, data, split)
                r["metrics_warm"] = score_lists(np.load(lists), users, data, split, only=warm)
            elif "metrics_warm" not in r and len(warm) == r["metrics"]["n_users"]:
                r["metrics_warm"] = dict(r["metrics"])
    write_report(args.out, dataset, rows, args)
    print(f"re-scored {path}")


def main() -> None:
    args = build_parser().parse_args()
    if args.rescore:
        for dataset in (d.strip() for d in args.datasets.split(",") if d.strip()):
            rescore(dataset, args)
        return
    peers = parse_peers(args.peers)
    parse_caps(args.epoch_caps)  # fail before any work
    for lib in dict.fromkeys(lib for lib, _ in peers):
        try:
            peer_python(lib)
        except PeerError as err:
            raise SystemExit(f"run_peers: error: {err}") from None
    from mgrec.data.registry import load_dataset

    for dataset in (d.strip() for d in args.datasets.split(",") if d.strip()):
        has_time = load_dataset(dataset, root=args.data_root).has_time
        for protocol in (s.strip() for s in args.splits.split(",") if s.strip()):
            if protocol in ("temporal", "loo") and not has_time:
                print(f"[{dataset} {protocol}] skipped: {dataset} has no timestamps", flush=True)
                continue
            run_split(dataset, protocol, peers, args)


if __name__ == "__main__":
    main()
