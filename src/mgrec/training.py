"""The training loop every gradient-trained model shares.

:func:`fit_epochs` runs epochs, scores the validation split every ``eval_every`` epochs
with the same full-ranking evaluation as the test, stops after ``patience`` evaluations
without improvement, and restores the best epoch's weights. Models supply three callables
(one epoch, take a snapshot, restore a snapshot); the loop owns the rest, so early stopping
means the same thing for BPR-MF, LightGCN, SASRec, MultiVAE and the fused model.

The loop's own state (:class:`FitState`: epoch, history, best snapshot, patience counter) can
be handed in to continue a run and is handed out after every epoch, which is what
checkpoints (:mod:`mgrec.checkpoint`) save and resume.

:func:`pack_steps` cuts an epoch's order of variable-size blocks (sequence windows) into
steps of about ``batch_size`` targets.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mgrec.allocator import tune_malloc
from mgrec.data.dataset import to_csr
from mgrec.errors import ConfigError

__all__ = ["EarlyStopping", "FitHistory", "FitState", "fit_epochs", "pack_steps", "validation_scorer", "torch_threads"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EarlyStopping:
    """When to evaluate and when to stop.

    Args:
        epochs: the most epochs to run.
        eval_every: evaluate on validation every this many epochs (and after the last).
        patience: stop after this many evaluations without a new best.
        progress: show a tqdm bar over epochs.
    """

    epochs: int = 200
    eval_every: int = 1
    patience: int = 10
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "eval_every", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class FitHistory:
    """What happened during :func:`fit_epochs`.

    Attributes:
        epochs: one dict per epoch: ``epoch``, ``loss``, ``train_seconds`` (the pass over the
            training data), ``seconds`` (with validation) and, where evaluated,
            ``valid``.
        best_epoch: the epoch whose weights the model holds.
        best_valid: its validation score (``nan`` without validation data).
    """

    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_valid: float = float("nan")

    @property
    def seconds_per_epoch(self) -> float:
        return sum(e["seconds"] for e in self.epochs) / max(len(self.epochs), 1)


@dataclass
class FitState:
    """Where :func:`fit_epochs` stands after an epoch: enough to continue it later.

    Attributes:
        epoch: the last completed epoch (0: none yet).
        history: the rows so far and the best epoch.
        best: the best snapshot (``None`` before the first evaluation or without validation).
        best_score: its validation score (``-inf`` before any).
        bad: evaluations since the last new best.
        finished: the loop has ended (early stop, non-finite loss or the last epoch).
    """

    epoch: int = 0
    history: FitHistory = field(default_factory=FitHistory)
    best: Any = None
    best_score: float = -math.inf
    bad: int = 0
    finished: bool = False


def fit_epochs(
    run_epoch: Callable[[int], float],
    *,
    stopping: EarlyStopping,
    validate: Callable[[], float] | None,
    snapshot: Callable[[], Any],
    restore: Callable[[Any], None],
    name: str = "model",
    state: FitState | None = None,
    on_epoch_end: Callable[[FitState], None] | None = None,
) -> FitHistory:
    """Train with early stopping on a validation score (higher is better).

    Args:
        run_epoch: trains one epoch (1-based number given) and returns its mean loss.
        stopping: epochs, evaluation interval and patience.
        validate: returns the validation score; ``None`` trains all epochs.
        snapshot: returns a copy of the weights.
        restore: puts a snapshot back.
        name: for log lines and the progress bar.
        state: continue from this state (a resumed checkpoint) instead of epoch 1; the model,
            its optimizer and generators must already hold that epoch's state. A finished
            state runs no epoch.
        on_epoch_end: called with the (live) state after every epoch, once its row is recorded
            and the stop decision taken (``state.finished``): the place to write checkpoints.

    Returns:
        The history; the model holds the best epoch's weights.
    """
    tune_malloc()  # step temporaries stay on the heap (see mgrec.allocator)
    st = state if state is not None else FitState()
    history = st.history
    epochs = range(st.epoch + 1, stopping.epochs + 1) if not st.finished else range(0)
    bar = tqdm(epochs, desc=name, unit="epoch", disable=not stopping.progress)
    for epoch in bar:
        t0 = time.perf_counter()
        loss = float(run_epoch(epoch))
        row: dict[str, float] = {"epoch": epoch, "loss": loss, "train_seconds": time.perf_counter() - t0}
        if validate is not None and (epoch % stopping.eval_every == 0 or epoch == stopping.epochs):
            score = float(validate())
            row["valid"] = score
            if score > st.best_score:
                st.best, st.best_score, st.bad = snapshot(), score, 0
                history.best_epoch = epoch
            else:
                st.bad += 1
        row["seconds"] = time.perf_counter() - t0
        history.epochs.append(row)
        bar.set_postfix(loss=f"{loss:.4f}", best=f"{st.best_score:.4f}")
        logger.info("%s epoch %d: loss %.5f%s (%.2fs)", name, epoch, loss,
                    f", valid {row['valid']:.5f}" if "valid" in row else "", row["seconds"])
        stop = False
        if not math.isfinite(loss):
            logger.warning("%s: loss is %s at epoch %d; stopping", name, loss, epoch)
            stop = True
        elif validate is not None and st.bad >= stopping.patience:
            logger.info("%s: early stop at epoch %d, best epoch %d (%.5f)",
                        name, epoch, history.best_epoch, st.best_score)
            stop = True
        st.epoch, st.finished = epoch, stop or epoch == stopping.epochs
        if on_epoch_end is not None:
            on_epoch_end(st)
        if stop:
            break
    bar.close()
    if st.best is not None:
        restore(st.best)
        history.best_valid = st.best_score
    else:
        history.best_epoch = len(history.epochs)
    return history


def pack_steps(order: np.ndarray, sizes: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Cut an epoch's order of blocks into steps of about ``batch_size`` targets each.

    Blocks are taken in ``order``; a block joins the step in which its last target falls when
    targets are counted off in runs of ``batch_size`` (so a step holds ``batch_size`` targets
    give or take one block, and every block is in exactly one step).

    Args:
        order: block indices in the epoch's order.
        sizes: ``(n_blocks,)`` the number of targets of each block (all positive).
        batch_size: targets per step.

    Returns:
        The steps, each an array of block indices (in ``order``'s order).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    order = np.asarray(order, dtype=np.int64)
    if len(order) == 0:
        return []
    step = (np.cumsum(np.asarray(sizes)[order]) - 1) // batch_size
    cuts = np.flatnonzero(np.diff(step)) + 1
    return np.split(order, cuts)


def validation_scorer(
    model: Any, valid: pd.DataFrame | None, *, metric: str = "ndcg@10", totals: bool = False
) -> Callable[[], Any] | None:
    """A callable that scores ``model`` on ``valid`` by full ranking (``None`` if no data).

    Args:
        model: a :class:`~mgrec.recommender.Recommender` whose ``fit`` has set its sizes.
        valid: the validation interactions.
        metric: ``name@k``.
        totals: return ``(sum over users, number of users)`` instead of the mean, for adding
            up the parts of a split that several processes hold.
    """
    if valid is None or len(valid) == 0:
        return None
    from mgrec.evaluation import evaluate

    name, _, k = metric.partition("@")
    truth = to_csr(valid, model.n_users_, model.n_items_)

    def score() -> Any:
        result = evaluate(model, truth, ks=(int(k),), metrics=(name,))
        value = float(result[metric])
        return (value * result["n_users"], float(result["n_users"])) if totals else value

    return score


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (``0``: unchanged), then restore.

    Small-batch training spends more time synchronising threads than computing on a busy
    2-core machine, and a fixed count keeps results independent of the core count.
    """
    before = torch.get_num_threads()
    if n > 0 and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
