"""``mgrec benchmark``: datasets x models x seeds, each run in a fresh process.

Each row runs in its own spawned process so that ``peak_rss_mb`` is that run's own peak
(data loading included), not the high-water mark of everything before it. Hyperparameters
are tuned on the validation split of the first seed and reused for the other seeds; the
budget and the chosen values go into every row.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mgrec.errors import ConfigError, MgrecError
from mgrec.experiment import ExperimentConfig, run_experiment
from mgrec.io import atomic_write_json, atomic_write_text

__all__ = ["run_benchmark", "markdown_table", "TABLE_METRICS"]

log = logging.getLogger(__name__)

TABLE_METRICS = ("ndcg@10", "recall@10", "precision@10", "f1@10", "map@10", "mrr@10", "hit@10")


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB.

    On Linux it is ``VmHWM`` of ``/proc/self/status``: the peak of the current address space.
    ``ru_maxrss`` is not used there because a spawned child inherits its parent's peak through
    the fork that precedes the exec, so a small run would report at least its parent's size.
    Elsewhere ``ru_maxrss`` (bytes on macOS, KiB on the other Unixes).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0


def _worker(cfg: ExperimentConfig, queue: Any) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run = run_experiment(cfg)
        rec = run.record
        row = {
            "dataset": cfg.dataset,
            "split": cfg.split,
            "model": cfg.model,
            "seed": cfg.seed,
            "metrics": rec["test"],
            "valid_metrics": rec["valid"],
            "train_seconds": rec["train_seconds"],
            "epoch_seconds": rec.get("epoch_seconds"),
            "epochs": rec.get("epochs"),
            "eval_seconds": rec["eval_seconds"],
            "prepare_seconds": rec["prepare_seconds"],
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "model_config": rec["model_config"],
            "data": {k: rec["data"][k] for k in ("users", "items", "interactions")},
        }
        if "fit_info" in rec:
            row["fit_info"] = rec["fit_info"]
        if "tuning" in rec:
            row["tuning"] = {k: v for k, v in rec["tuning"].items() if k != "trials"}
        queue.put(("ok", row))
    except Exception as err:  # noqa: BLE001 - reported to the parent as one line
        queue.put(("error", f"{type(err).__name__}: {err}"))


def _run_isolated(cfg: ExperimentConfig) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(cfg, queue))
    proc.start()
    status, payload = queue.get()
    proc.join()
    if status != "ok":
        raise MgrecError(f"{cfg.dataset}/{cfg.model}/seed {cfg.seed}: {payload}")
    return payload


def run_benchmark(
    datasets: list[str],
    models: list[str],
    *,
    split: str,
    seeds: int | Sequence[int],
    out: Path,
    tune: bool = True,
    tune_budget: int | None = None,
    data_root: str | None = None,
    model_configs: dict[str, dict[str, Any]] | None = None,
    ablation: bool = False,
    fusions: list[str] | None = None,
    isolate: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every (dataset, model, seed) and write ``out`` (JSON rows) and ``out``.md.

    Args:
        datasets: dataset names.
        models: model names.
        split: split protocol for all runs.
        seeds: a count ``N`` (seeds ``0 .. N-1``) or the seeds themselves; each seeds the
            split and the model.
        out: the JSON file; the markdown table goes to the same name with ``.md``.
        tune: tune each model on the first seed's validation split (the first of the list).
        tune_budget: at most this many trials per model.
        data_root: where the datasets are.
        model_configs: fixed configs per model (skip tuning of the keys they set).
        ablation: add ``mgr-no-<granularity>`` rows (see :func:`expand_models`).
        fusions: add ``mgr-<fusion>`` rows.
        isolate: run each row in a fresh process (honest peak RSS).
        on_row: called with each finished row (progress reporting).

    Returns:
        The rows, also written to ``out``.
    """
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list or min(seed_list) < 0 or len(set(seed_list)) != len(seed_list):
        raise ConfigError(f"seeds must be a positive count or distinct non-negative seeds, got {seeds!r}")
    for name, config in (model_configs or {}).items():
        if name not in models:
            raise ConfigError(f"config given for {name!r}, which is not a model of this run ({', '.join(models)}); "
                              'configs are given per model, e.g. {"mgr": {"dim": 64}}')
        if not isinstance(config, dict):
            raise ConfigError(f"the config of {name!r} must be a JSON object of settings, got {config!r}")
    rows: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    for dataset in datasets:
        tuned_configs: dict[str, dict[str, Any]] = {}
        for row_name, model, fixed in expand_models(dataset, models, ablation=ablation, fusions=fusions,
                                                     data_root=data_root):
            config = {**(model_configs or {}).get(model, {}), **fixed}
            # a variant (mgr-no-social, mgr-deep ...) reuses the plain model's tuned values
            inherited = model != row_name and model in tuned_configs
            if inherited:
                config = {**tuned_configs[model], **fixed}
            tuned, tuning = inherited or not tune, {"reused_from": model} if inherited else {}
            for seed in seed_list:
                cfg = ExperimentConfig(
                    dataset=dataset,
                    model=model,
                    split=split,
                    seed=seed,
                    model_config=config,
                    tune=not tuned,
                    tune_budget=tune_budget,
                    data_root=data_root,
                )
                row = _run_isolated(cfg) if isolate else _inline(cfg)
                row["model"] = row_name
                if cfg.tune:
                    config = dict(row["model_config"])
                    tuned_configs.setdefault(row_name, config)
                    tuned = True
                    tuning = {**row.get("tuning", {}), "reused_from_seed": seed}
                elif tuning:
                    row["tuning"] = tuning
                rows.append(row)
                if on_row is not None:
                    on_row(row)
                _write(out, rows, started, split)
    return rows


def expand_models(
    dataset: str,
    models: list[str],
    *,
    ablation: bool = False,
    fusions: list[str] | None = None,
    data_root: str | None = None,
) -> list[tuple[str, str, dict[str, Any]]]:
    """The rows to run for one dataset: ``(row name, model name, fixed config)``.

    ``fusions`` adds ``mgr-<fusion>`` rows; ``ablation`` adds ``mgr-no-<granularity>`` for each
    granularity the dataset has (the fused model trained without it).
    """
    specs = [(m, m, {}) for m in models]
    for fusion in fusions or []:
        from mgrec.fusion import FUSIONS

        if fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion {fusion!r}; choose from {', '.join(FUSIONS)}")
        specs.append((f"mgr-{fusion}", "mgr", {"fusion": fusion}))
    if ablation:
        from mgrec.data.registry import load_dataset

        present = load_dataset(dataset, root=data_root).granularities
        for g in present:
            specs.append((f"mgr-no-{g}", "mgr", {"granularities": [x for x in present if x != g]}))
    return specs


def _inline(cfg: ExperimentConfig) -> dict[str, Any]:
    from multiprocessing import Queue

    q: Any = Queue()
    _worker(cfg, q)
    status, payload = q.get()
    if status != "ok":
        raise MgrecError(payload)
    return payload


def _write(out: Path, rows: list[dict[str, Any]], started: str, split: str) -> None:
    atomic_write_json(out, rows)
    atomic_write_text(out.with_suffix(".md"), markdown_table(rows, title=f"split `{split}`, started {started}",
                                                             command=command_line()))


def command_line() -> str:
    """The ``mgrec ...`` command this process runs, for the header of a results table (empty
    when not run from the ``mgrec`` entry point)."""
    return "mgrec " + " ".join(sys.argv[1:]) if sys.argv and "mgrec" in sys.argv[0] else ""


def mean_std(values: list[float]) -> str:
    """``mean ± sample sd`` to 4 decimals (the value alone for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def markdown_table(rows: list[dict[str, Any]], *, title: str = "", command: str = "") -> str:
    """Mean ± standard deviation over seeds, one line per (dataset, split, model)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["split"], row["model"]), []).append(row)
    head = ["dataset", "split", "model", "seeds", *TABLE_METRICS, "s/epoch", "train s", "eval s", "peak RSS MB"]
    lines = []
    if title:
        lines += [f"<!-- {title} -->"]
    if command:
        lines += [f"<!-- command: {command} -->"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (dataset, split, model), grp in groups.items():
        cells = [dataset, split, model, str(len(grp))]
        cells += [mean_std([r["metrics"][m] for r in grp]) for m in TABLE_METRICS]
        per_epoch = [r["epoch_seconds"] for r in grp if r.get("epoch_seconds") is not None]
        cells += [f"{statistics.mean(per_epoch):.2f}" if per_epoch else "-"]
        cells += [f"{statistics.mean(r['train_seconds'] for r in grp):.2f}"]
        cells += [f"{statistics.mean(r['eval_seconds'] for r in grp):.2f}"]
        cells += [f"{max(r['peak_rss_mb'] for r in grp):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
