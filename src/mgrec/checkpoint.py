"""Training checkpoints: write atomically every few epochs, resume after a crash or a kill.

A checkpoint is one ``safetensors`` file, ``DIR/epoch-0007.safetensors`` (no pickle: numpy
arrays plus a JSON header), holding everything needed to continue as if never stopped:

* ``net/<name>``: the network's weights; ``best/<name>``: the best epoch's snapshot;
* ``opt/<i>/<key>``: the optimizer's per-parameter state (AdamW moments and step);
* ``gen/<name>``: the byte states of the random generators (one noise generator per rank);
* the header's ``mgrec`` entry (JSON): the epoch, the loop state (history, best score,
  patience counter, finished), and a *fingerprint* of the run (model config, seed, world
  size, device type, a checksum of the training data). Resuming with another fingerprint is
  a :class:`~mgrec.errors.ConfigError` naming the file.

Files are written through a temporary file and renamed (:func:`mgrec.io.atomic_write_bytes`),
by rank 0 only, so a reader never sees half a checkpoint; the last ``keep`` are kept.

Training code finds the plan of the current command through :func:`active_plan`; the command
line sets it with :func:`checkpointing` (``mgrec train --checkpoint-dir DIR [--resume]``), so
no path ever enters a model's config.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save

from mgrec.distributed import DistContext
from mgrec.errors import ConfigError, DataError
from mgrec.io import atomic_write_bytes
from mgrec.training import FitHistory, FitState

__all__ = ["CheckpointPlan", "TrainingState", "active_plan", "checkpointing", "checkpoint_path",
           "list_checkpoints", "latest_checkpoint", "write_checkpoint", "read_checkpoint",
           "fingerprint", "data_checksum", "save_training_state", "load_training_state", "resume_training",
           "checkpoint_hook"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_HEADER_KEY = "mgrec"
_NAME = re.compile(r"^epoch-(\d+)\.safetensors$")


@dataclass(frozen=True)
class CheckpointPlan:
    """Where and how often to checkpoint.

    Args:
        directory: the checkpoint folder (shared by every node in a multi-node run).
        every: write after every this many epochs (and always after the last one).
        resume: continue from the latest checkpoint in ``directory`` (none there: start at
            epoch 1, with a warning).
        keep: keep this many of the newest checkpoints (0: all).
    """

    directory: Path
    every: int = 1
    resume: bool = False
    keep: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory))
        if self.every < 1:
            raise ConfigError(f"--checkpoint-every must be at least 1, got {self.every}")
        if self.keep < 0:
            raise ConfigError(f"checkpoint keep must be >= 0, got {self.keep}")

    def due(self, state: FitState) -> bool:
        """Whether the epoch ``state`` has just finished gets a checkpoint."""
        return state.finished or state.epoch % self.every == 0

    def check_fresh(self) -> None:
        """For a run that does not resume: the folder must hold no checkpoint (it would mix
        two runs' files).

        Raises:
            ConfigError: naming the newest checkpoint found.
        """
        found = latest_checkpoint(self.directory)
        if not self.resume and found is not None:
            raise ConfigError(f"{found}: the checkpoint folder already holds a run; pass --resume to "
                              "continue it, or choose an empty --checkpoint-dir")


_PLAN: contextvars.ContextVar[CheckpointPlan | None] = contextvars.ContextVar("mgrec_checkpoint_plan",
                                                                               default=None)


def active_plan() -> CheckpointPlan | None:
    """The plan :func:`checkpointing` set for this block, if any."""
    return _PLAN.get()


@contextmanager
def checkpointing(plan: CheckpointPlan | None) -> Iterator[None]:
    """Training inside the block checkpoints (and resumes) as ``plan`` says (``None``: never)."""
    token = _PLAN.set(plan)
    try:
        yield
    finally:
        _PLAN.reset(token)


# ---------------------------------------------------------------------- files
def checkpoint_path(directory: str | Path, epoch: int) -> Path:
    """``directory/epoch-NNNN.safetensors``."""
    return Path(directory) / f"epoch-{epoch:04d}.safetensors"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every checkpoint in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest checkpoint in ``directory``, or ``None``."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def write_checkpoint(path: str | Path, arrays: Mapping[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write ``arrays`` and the JSON ``meta`` to ``path`` atomically (safetensors, no pickle)."""
    data = save({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                metadata={_HEADER_KEY: json.dumps(meta)})
    atomic_write_bytes(path, data)


def read_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(arrays, meta)`` of a checkpoint.

    Raises:
        DataError: when the file is missing, truncated or not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("checkpoint not found", file=path)
    try:
        with safe_open(str(path), framework="np") as fh:
            header = (fh.metadata() or {}).get(_HEADER_KEY)
        arrays = load_file(str(path))
        meta = json.loads(header) if header is not None else None
    except (SafetensorError, OSError, ValueError) as err:
        raise DataError(f"not a readable checkpoint ({err})", file=path) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise DataError(f"not an mgrec checkpoint of format {FORMAT_VERSION}", file=path)
    return arrays, meta


def _prune(directory: Path, keep: int) -> None:
    if keep <= 0:
        return
    for _, old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)


# ---------------------------------------------------------------- fingerprints
def data_checksum(*arrays: np.ndarray) -> str:
    """SHA-256 over the dtypes, shapes and bytes of ``arrays`` (the training examples)."""
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def fingerprint(**parts: Any) -> dict[str, Any]:
    """A JSON-ready description of a run; two runs with equal fingerprints can share a checkpoint."""
    return json.loads(json.dumps(parts, sort_keys=True, default=str))


def _differences(saved: dict[str, Any], expected: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(expected)):
        a, b = saved.get(key), expected.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


# --------------------------------------------------------------- training state
@dataclass
class TrainingState:
    """What a checkpoint restores: the loop state and the generator states by name."""

    fit: FitState
    generators: dict[str, torch.Tensor]
    path: Path


def _tensor_arrays(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {f"{prefix}/{k}": v.detach().cpu().numpy().copy() for k, v in tensors.items()}


def _strip(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith(prefix + "/")}


def save_training_state(
    plan: CheckpointPlan,
    *,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: Mapping[str, torch.Tensor],
    fit: FitState,
    run: dict[str, Any],
) -> Path:
    """Write the checkpoint of the epoch ``fit`` has just finished (call on rank 0 only).

    Args:
        plan: the folder and how many files to keep.
        net: the network (its ``state_dict``).
        optimizer: its per-parameter tensors go to ``opt/``; plain values to the header.
        generators: name -> ``uint8`` generator state (``Generator.get_state()``).
        fit: the loop state; ``fit.best`` must be ``None`` or a name -> tensor snapshot.
        run: the run's :func:`fingerprint`.

    Returns:
        The file written.
    """
    arrays = _tensor_arrays("net", net.state_dict())
    if fit.best is not None:
        arrays.update(_tensor_arrays("best", fit.best))
    arrays.update(_tensor_arrays("gen", generators))
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in optimizer.state_dict()["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                arrays[f"opt/{index}/{key}"] = value.detach().cpu().numpy().copy()
            elif value is not None:
                scalars.setdefault(str(index), {})[key] = value
    hist = fit.history
    meta = {
        "format": FORMAT_VERSION, "epoch": fit.epoch, "run": run,
        "fit": {"history": hist.epochs, "best_epoch": hist.best_epoch, "best_score": fit.best_score,
                "bad": fit.bad, "finished": fit.finished, "has_best": fit.best is not None},
        "optimizer": {"class": type(optimizer).__name__, "scalars": scalars},
    }
    path = checkpoint_path(plan.directory, fit.epoch)
    write_checkpoint(path, arrays, meta)
    _prune(plan.directory, plan.keep)
    logger.info("checkpoint: wrote %s", path)
    return path


def load_training_state(
    path: str | Path,
    *,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    run: dict[str, Any],
    device: torch.device | str = "cpu",
) -> TrainingState:
    """Put a checkpoint's weights and optimizer state into ``net`` and ``optimizer``.

    Raises:
        ConfigError: when the checkpoint was written by a run with another fingerprint.
        DataError: when the file is unreadable or incomplete.
    """
    path = Path(path)
    arrays, meta = read_checkpoint(path)
    diff = _differences(meta.get("run", {}), run)
    if diff:
        raise ConfigError(f"{path}: the checkpoint was written by a different run ({', '.join(diff[:6])} "
                          "differ); resume with the original settings or use another --checkpoint-dir")
    opt_meta = meta.get("optimizer", {})
    if opt_meta.get("class") != type(optimizer).__name__:
        raise ConfigError(f"{path}: the checkpoint holds {opt_meta.get('class')} state, "
                          f"not {type(optimizer).__name__}")
    try:
        net.load_state_dict(_strip(arrays, "net"), strict=True)
        state: dict[int, dict[str, Any]] = {}
        for key, value in arrays.items():
            if key.startswith("opt/"):
                _, index, name = key.split("/", 2)
                state.setdefault(int(index), {})[name] = torch.from_numpy(np.array(value))
        for index, values in opt_meta.get("scalars", {}).items():
            state.setdefault(int(index), {}).update(values)
        optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    except (RuntimeError, ValueError, KeyError) as err:
        raise DataError(f"checkpoint does not fit the model ({err})", file=path) from None
    f = meta["fit"]
    history = FitHistory(epochs=list(f["history"]), best_epoch=int(f["best_epoch"]))
    best = None
    if f["has_best"]:
        best = {k: v.to(device) for k, v in _strip(arrays, "best").items()}
    fit = FitState(epoch=int(meta["epoch"]), history=history, best=best, best_score=float(f["best_score"]),
                   bad=int(f["bad"]), finished=bool(f["finished"]))
    return TrainingState(fit=fit, generators=_strip(arrays, "gen"), path=path)


# ------------------------------------------------------- the training loop's side
def resume_training(
    plan: CheckpointPlan,
    dctx: DistContext,
    *,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    noise: torch.Generator,
    order: torch.Generator | None,
    run: dict[str, Any],
) -> FitState | None:
    """Prepare ``plan``'s run on every rank: check a fresh run's folder is empty, or load the
    latest checkpoint (rank 0 picks it; every rank reads it, so a multi-node run needs a shared
    folder) into ``net``, ``optimizer`` and the generators.

    Args:
        noise: this rank's training-noise generator (saved per rank).
        order: the epoch-order generator shared by every rank, or ``None`` when ``noise``
            also draws the order (a single process).
        run: the run's :func:`fingerprint`.

    Returns:
        The loop state to continue from, or ``None`` to start at epoch 1.

    Raises:
        ConfigError: a fresh run over existing checkpoints, or a checkpoint of another run.
    """
    if not plan.resume:
        plan.check_fresh()
        return None
    found = list_checkpoints(plan.directory) if dctx.is_main else []
    epoch = dctx.broadcast_int(found[-1][0] if found else 0)
    if epoch == 0:
        logger.warning("no checkpoint in %s to resume from; starting at epoch 1", plan.directory)
        return None
    loaded = load_training_state(checkpoint_path(plan.directory, epoch), net=net, optimizer=optimizer,
                                 run=run, device=dctx.device)
    try:
        noise.set_state(loaded.generators[f"noise/{dctx.rank}"])
        if order is not None:
            order.set_state(loaded.generators["order"])
    except (KeyError, RuntimeError) as err:
        raise DataError(f"generator state missing or invalid ({err})", file=loaded.path) from None
    logger.info("resumed from %s (epoch %d); continuing at epoch %d", loaded.path, epoch, epoch + 1)
    return loaded.fit


def checkpoint_hook(
    plan: CheckpointPlan,
    dctx: DistContext,
    *,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    noise: torch.Generator,
    order: torch.Generator | None,
    run: dict[str, Any],
) -> Callable[[FitState], None]:
    """An ``on_epoch_end`` for :func:`~mgrec.training.fit_epochs` that writes ``plan``'s
    checkpoints: every rank hands in its noise generator's state, rank 0 writes the file."""

    def on_epoch_end(state: FitState) -> None:
        if not plan.due(state):
            return
        states = dctx.gather_bytes(noise.get_state())  # a collective: every rank takes part
        if dctx.is_main:
            gens = {f"noise/{r}": s for r, s in enumerate(states)}
            if order is not None:
                gens["order"] = order.get_state()
            save_training_state(plan, net=net, optimizer=optimizer, generators=gens, fit=state, run=run)

    return on_epoch_end
