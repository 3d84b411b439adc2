"""The ``mgrec`` command: a thin adapter over the library.

Errors a user can cause print one line (``mgrec: error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from mgrec.errors import ConfigError, MgrecError

log = logging.getLogger("mgrec")


def _csv_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _seed_arg(text: str) -> list[int]:
    """``N`` (seeds ``0 .. N-1``) or a comma-separated list of distinct seeds (``1,2``)."""
    try:
        values = [int(t) for t in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count like 3 or seeds like 1,2, got {text!r}") from None
    if "," not in text:
        if values[0] <= 0:
            raise argparse.ArgumentTypeError(f"the number of seeds must be positive, got {text!r}")
        return list(range(values[0]))
    if any(v < 0 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"seeds must be distinct non-negative integers, got {text!r}")
    return values


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in _csv_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 5,10,20, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("cut-offs must be positive")
    return values


def _config_arg(text: str) -> dict[str, Any]:
    """``--config`` takes inline JSON or a path to a JSON file."""
    path = Path(text)
    raw = path.read_text(encoding="utf-8") if path.is_file() else text
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"--config is neither a JSON file nor JSON ({err.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--config must be a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mgrec", description="Multi-granularity recommender system.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="inspect, fetch and split datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    info = dsub.add_parser("info", help="counts and features of a dataset")
    info.add_argument("name")
    info.add_argument("--data-root")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    fetch = dsub.add_parser("fetch", help="download a public archive into the data root")
    fetch.add_argument("name")
    fetch.add_argument("--data-root")
    fetch.add_argument("--url", help="download from this URL instead of the official one")
    fetch.add_argument("--sha256", help="expected sha256 of the archive")
    fetch.add_argument("--force", action="store_true", help="replace an existing folder")
    split = dsub.add_parser("split", help="write a split (raw ids, TSV) for peer libraries, or shards for torchrun")
    split.add_argument("name")
    _add_data_options(split)
    split.add_argument("--out", required=True)
    split.add_argument("--format", default="tsv", choices=["tsv", "shards"],
                       help="tsv: raw ids, for peer libraries; shards: Parquet sorted by user, which each "
                            "torchrun rank reads in part (mgrec train --shards DIR)")

    train = sub.add_parser("train", help="train a model and save its folder")
    train.add_argument("--dataset", help="dataset name; with --from-store, default 'store' (the events alone)")
    train.add_argument("--model", required=True)
    _add_data_options(train)
    train.add_argument("--out", required=True, help="model folder to write")
    train.add_argument("--config", type=_config_arg, default={}, help="model config: JSON or a JSON file")
    train.add_argument("--tune", action="store_true", help="search hyperparameters on validation first")
    train.add_argument("--tune-budget", type=int)
    train.add_argument("--from-store", metavar="URL",
                       help="add every event of this store (sqlite:///PATH, postgresql://...) to the data")
    train.add_argument("--checkpoint-dir", metavar="DIR",
                       help="mgr: write a checkpoint (weights, optimizer, generators, early stopping) here "
                            "every --checkpoint-every epochs; under torchrun rank 0 writes it")
    train.add_argument("--checkpoint-every", type=int, default=1, metavar="N",
                       help="epochs between checkpoints (default 1; the last epoch always gets one)")
    train.add_argument("--resume", action="store_true",
                       help="continue from the latest checkpoint in --checkpoint-dir (none yet: start at epoch 1)")
    train.add_argument("--shards", metavar="DIR",
                       help="train on a folder written by 'mgrec data split NAME --format shards' (instead of "
                            "--dataset); under torchrun each rank reads only its users and their friends")
    train.set_defaults(split=None)

    srv = sub.add_parser("serve", help="serve a model folder over HTTP (FastAPI)")
    srv.add_argument("--model-dir", required=True)
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--store", metavar="URL",
                     help="event store: sqlite:///PATH (default: <model-dir>.events.db) or postgresql://...")
    srv.add_argument("--api-keys-file", help="'<role>:<key>' per line (roles read, write, admin); "
                     "MGREC_API_KEYS adds comma-separated entries")
    srv.add_argument("--no-auth", action="store_true", help="no API keys (loopback only, for development)")
    srv.add_argument("--watch", action="store_true", help="reload when the model folder changes")
    srv.add_argument("--index", default="auto", choices=["auto", "exact", "faiss-ivf", "faiss-hnsw", "faiss", "none"],
                     help="top-k retrieval: exact below 100k items, a faiss inverted file above (auto)")
    srv.add_argument("--quantize", default="none", choices=["none", "fp16", "int8"],
                     help="item vectors in the index")
    srv.add_argument("--threads", type=int, default=1, help="torch threads per request")

    ev = sub.add_parser("evaluate", help="full-ranking metrics of a saved model")
    ev.add_argument("--model-dir", required=True)
    ev.add_argument("--part", choices=("test", "valid"), default="test")
    ev.add_argument("--ks", type=_int_list, default=None, help="cut-offs, e.g. 5,10,20")
    ev.add_argument("--sampled-negatives", type=int, default=0,
                    help="ALSO report sampled-negative metrics (not comparable with full ranking)")
    ev.add_argument("--json", action="store_true")

    rec = sub.add_parser("recommend", help="top-k items for a user of a saved model")
    rec.add_argument("--model-dir", required=True)
    rec.add_argument("--user", required=True, help="raw user id")
    rec.add_argument("--k", type=int, default=10)
    rec.add_argument("--include-seen", action="store_true", help="do not drop training items")
    rec.add_argument("--json", action="store_true")

    bench = sub.add_parser("benchmark", help="datasets x models x seeds, to JSON and markdown")
    bench.add_argument("--datasets", type=_csv_list, required=True)
    bench.add_argument("--models", type=_csv_list, required=True)
    bench.add_argument("--split", default="random")
    bench.add_argument("--seeds", type=_seed_arg, default=[0],
                       help="N runs seeds 0..N-1; a list such as 1,2 runs those seeds (one seed: 2,); default 1")
    bench.add_argument("--out", required=True)
    bench.add_argument("--no-tune", action="store_true", help="use default hyperparameters")
    bench.add_argument("--tune-budget", type=int)
    bench.add_argument("--data-root")
    bench.add_argument("--config", type=_config_arg, default={},
                       help='fixed configs per model, JSON: {"mgr": {"dim": 64}}')
    bench.add_argument("--ablation", action="store_true",
                       help="add mgr-no-<granularity> rows, one per granularity the dataset has")
    bench.add_argument("--fusions", type=_csv_list, default=None,
                       help="add mgr-<fusion> rows, e.g. weighted,product,deep,gated")

    cold = sub.add_parser("coldstart", help="mgr on held-out users and items, against pop and random")
    cold.add_argument("--datasets", type=_csv_list, required=True)
    cold.add_argument("--seeds", type=int, default=1)
    cold.add_argument("--out", required=True, help="JSON rows; the markdown table goes beside it (.md)")
    cold.add_argument("--frac", type=float, default=0.1, help="share of users (items) held out, in (0, 0.5]")
    cold.add_argument("--config", type=_config_arg, default={}, help="mgr config: JSON or a JSON file")
    cold.add_argument("--data-root")

    onnx = sub.add_parser("export-onnx", help="write the fused model's scoring path as ONNX and check it")
    onnx.add_argument("--model-dir", required=True)
    onnx.add_argument("--out", required=True, help="the .onnx file to write (atomically)")
    onnx.add_argument("--k", type=int, default=10, help="top-k length of the graph's output")
    onnx.add_argument("--check-users", type=int, default=256,
                      help="compare onnxruntime with PyTorch on this many users (0: skip)")

    demo = sub.add_parser("demo", help="train and compare the models on the synthetic dataset")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="runs/demo", help="where to keep the demo's model folders")
    return p


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="random", help="random | loo | temporal")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root")
    p.add_argument("--kcore", type=int, default=None, help="k-core filter on users and items")
    p.add_argument("--min-rating", type=float, default=None, help="keep interactions with weight >= this")


def _preprocess_from_args(args: argparse.Namespace) -> Any:
    from mgrec.experiment import default_preprocess

    pre = default_preprocess(args.dataset if hasattr(args, "dataset") else args.name)
    if args.kcore is not None:
        pre.kcore_user = pre.kcore_item = args.kcore
    if args.min_rating is not None:
        pre.min_rating = args.min_rating
    return pre


def _emit(obj: Any, as_json: bool, text: str) -> None:
    if as_json:
        print(json.dumps(obj))
    else:
        print(text)


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "info":
        from mgrec.data.registry import load_dataset

        ds = load_dataset(args.name, root=args.data_root)
        info = ds.info()
        lines = [f"{k}: {v}" for k, v in info.items()]
        _emit(info, args.json, "\n".join(lines))
    elif args.data_command == "fetch":
        from mgrec.data.fetch import fetch

        path = fetch(args.name, root=Path(args.data_root) if args.data_root else None,
                     url=args.url, sha256=args.sha256, force=args.force)
        print(path)
    elif args.data_command == "split":
        from mgrec.data.preprocess import preprocess
        from mgrec.data.registry import load_dataset
        from mgrec.data.split import make_split

        ds = preprocess(load_dataset(args.name, root=args.data_root, seed=args.seed), _preprocess_from_args(args))
        sp = make_split(ds, args.split, seed=args.seed)
        if args.format == "shards":
            from mgrec.data.shards import save_shards

            save_shards(Path(args.out), ds, sp)
        else:
            sp.save(Path(args.out), ds)
        print(json.dumps(sp.summary()))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train and save; under torchrun (``RANK``/``WORLD_SIZE`` set) every rank trains its shard
    and rank 0 alone writes checkpoints, the model folder and the summary line."""
    from mgrec import distributed
    from mgrec.checkpoint import CheckpointPlan, checkpointing
    from mgrec.experiment import ExperimentConfig, run_experiment, save_run

    manifest = None
    if args.shards:
        from mgrec.data.shards import read_manifest

        given = [flag for flag, v in (("--dataset", args.dataset), ("--from-store", args.from_store),
                                      ("--split", args.split), ("--kcore", args.kcore),
                                      ("--min-rating", args.min_rating)) if v is not None]
        if given:
            raise ConfigError(f"--shards DIR holds the data, its preprocessing and its split; drop {', '.join(given)}")
        manifest = read_manifest(Path(args.shards))
        args.dataset, args.split = manifest["dataset"], manifest["protocol"]
    elif args.dataset is None and args.from_store is None:
        raise ConfigError("--dataset is required (or --from-store URL to train on the stored events)")
    args.split = args.split or "random"
    if args.resume and not args.checkpoint_dir:
        raise ConfigError("--resume needs --checkpoint-dir DIR (the folder the interrupted run wrote)")
    plan = None
    if args.checkpoint_dir:
        if args.model != "mgr" or args.tune:
            raise ConfigError("--checkpoint-dir works with --model mgr without --tune")
        plan = CheckpointPlan(Path(args.checkpoint_dir), every=args.checkpoint_every, resume=args.resume)
        plan.check_fresh()
    dataset = args.dataset = args.dataset or "store"
    with distributed.session() as dctx:
        if dctx.enabled and (args.model != "mgr" or args.tune):
            raise ConfigError(f"distributed training (WORLD_SIZE={dctx.world_size}) works with --model mgr "
                              "without --tune")
        cfg = ExperimentConfig(
            dataset=dataset, model=args.model, store=args.from_store, split=args.split, seed=args.seed,
            model_config=args.config, preprocess=None if manifest else _preprocess_from_args(args), tune=args.tune,
            tune_budget=args.tune_budget, data_root=args.data_root,
            progress=sys.stderr.isatty() and dctx.is_main, shards=args.shards,
        )
        with checkpointing(plan):
            run = run_experiment(cfg, evaluate_test=False)
        if not dctx.is_main:
            return 0
        if dctx.enabled:
            run.record["distributed"] = {"world_size": dctx.world_size, "backend": distributed.backend_for(dctx.device)}
        out = save_run(run, cfg, args.out)
    valid = run.record["valid"]
    print(f"saved {out}  (valid ndcg@10 {valid.get('ndcg@10', float('nan')):.4f}, "
          f"train {run.record['train_seconds']:.1f}s)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mgrec.evaluation import DEFAULT_KS, evaluate_sampled, evaluate_split
    from mgrec.experiment import load_run

    run = load_run(args.model_dir)
    split, data = run.split(), run.vocab_dataset()
    ks = args.ks or tuple(run.record.get("config", {}).get("ks", DEFAULT_KS))
    metrics = evaluate_split(run.model, split, data, part=args.part, ks=ks, progress=sys.stderr.isatty())
    if args.sampled_negatives > 0:
        import numpy as np

        from mgrec.data.dataset import to_csr

        truth_df = split.test if args.part == "test" else split.valid
        truth = to_csr(truth_df, len(run.users), len(run.items))
        exclude = to_csr(split.valid, len(run.users), len(run.items)) if args.part == "test" else None
        metrics.update(evaluate_sampled(run.model, truth, exclude=exclude, ks=ks,
                                        n_negatives=args.sampled_negatives,
                                        rng=np.random.default_rng(0)))
    text = "\n".join(f"{k:>14}: {v:.4f}" if isinstance(v, float) else f"{k:>14}: {v}" for k, v in metrics.items())
    _emit(metrics, args.json, text)
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from mgrec.experiment import load_run

    if args.k <= 0:
        raise ConfigError("--k must be positive")
    run = load_run(args.model_dir)
    if args.user not in run.users:
        raise ConfigError(f"unknown user {args.user!r} (the model knows {len(run.users)} users)")
    items, scores = run.model.recommend(run.users.code(args.user), k=args.k, filter_seen=not args.include_seen)
    keep = items >= 0
    out = {
        "user_id": args.user,
        "items": [{"item_id": run.items.id(i), "score": float(s)} for i, s in zip(items[keep], scores[keep])],
        "model": run.record.get("model"),
    }
    text = "\n".join(f"{n + 1:>3}. {r['item_id']}  {r['score']:.4f}" for n, r in enumerate(out["items"]))
    _emit(out, args.json, text)
    return 0


def _output_file(value: str, flag: str = "--out") -> Path:
    """The file a long run writes at its end, checked before the run starts: not a folder,
    and inside a folder that exists (or can be made) and can be written."""
    path = Path(value)
    if path.is_dir():
        raise ConfigError(f"{flag} {value}: is a folder; give the file to write, e.g. {path / 'results.json'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag} {value}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{flag} {value}: cannot write in {parent}")
            break
    return path


def cmd_benchmark(args: argparse.Namespace) -> int:
    from mgrec.benchmark import run_benchmark

    out = _output_file(args.out)

    def report(row: dict[str, Any]) -> None:
        m = row["metrics"]
        print(f"{row['dataset']:>16} {row['split']:>8} {row['model']:>8} seed {row['seed']}: "
              f"ndcg@10 {m['ndcg@10']:.4f} recall@10 {m['recall@10']:.4f} "
              f"train {row['train_seconds']:.1f}s eval {row['eval_seconds']:.1f}s "
              f"rss {row['peak_rss_mb']:.0f}MB", flush=True)

    run_benchmark(args.datasets, args.models, split=args.split, seeds=args.seeds, out=out,
                  tune=not args.no_tune, tune_budget=args.tune_budget, data_root=args.data_root,
                  model_configs=args.config, ablation=args.ablation, fusions=args.fusions, on_row=report)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def cmd_coldstart(args: argparse.Namespace) -> int:
    from mgrec.coldstart import run_coldstart

    out = _output_file(args.out)

    def report(row: dict[str, Any]) -> None:
        m = " ".join(f"{k} {'-' if v is None else f'{v:.4f}'}" for k, v in row["metrics"].items())
        print(f"{row['dataset']:>16} {row['protocol']:>18} {row['model']:>6} seed {row['seed']}: {m} "
              f"users {row['n_users']} train {row['train_seconds']:.1f}s", flush=True)

    run_coldstart(args.datasets, seeds=args.seeds, out=out, frac=args.frac, model_config=args.config,
                  data_root=args.data_root, on_row=report)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from mgrec.server.run import ServeConfig, serve

    logging.getLogger("mgrec").setLevel(logging.INFO)
    serve(ServeConfig(model_dir=args.model_dir, host=args.host, port=args.port, store=args.store,
                      api_keys_file=args.api_keys_file, no_auth=args.no_auth, watch=args.watch,
                      index=args.index, quantize=args.quantize, threads=args.threads))
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    import numpy as np

    from mgrec.experiment import load_run
    from mgrec.onnx_export import check_onnx, export_onnx

    logging.getLogger("onnx_ir").setLevel(logging.ERROR)  # the exporter's optimiser is chatty
    _output_file(args.out)
    run = load_run(args.model_dir)
    export_onnx(run.model, args.out, k=args.k)
    out: dict[str, Any] = {"onnx": str(args.out)}
    if args.check_users > 0:
        users = np.arange(min(args.check_users, len(run.users)), dtype=np.int64)
        out["check"] = check_onnx(run.model, args.out, users, k=args.k)
    print(json.dumps(out))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mgrec.demo import run_demo

    run_demo(seed=args.seed, out=Path(args.out))
    return 0


COMMANDS = {
    "data": cmd_data,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "recommend": cmd_recommend,
    "benchmark": cmd_benchmark,
    "coldstart": cmd_coldstart,
    "serve": cmd_serve,
    "export-onnx": cmd_export_onnx,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return COMMANDS[args.command](args)
    except MgrecError as err:
        print(f"mgrec: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mgrec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
