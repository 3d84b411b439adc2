"""BPR-MF: matrix factorisation trained with the Bayesian Personalized Ranking loss
(Rendle et al., UAI 2009), in PyTorch on the CPU.

Training pairs are the distinct (user, item) pairs of the training data. Each epoch shuffles
them and draws one negative item per pair uniformly from the catalogue; a negative that the
user has in training is re-drawn up to ``neg_resample`` times, after which it is kept (only
users who have almost every item can end with such noise). All randomness comes from one
``torch.Generator`` seeded with ``seed``, so two fits with the same seed, data and thread
count give bit-identical weights.

With a validation frame, the model is evaluated every ``eval_every`` epochs (full ranking,
training items filtered) and training stops after ``patience`` evaluations without
improvement; the weights of the best evaluation are restored.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mgrec.baselines import check_fitted, check_users
from mgrec.config import from_dict, to_dict
from mgrec.data.dataset import Dataset
from mgrec.metrics import METRICS
from mgrec.recommender import Recommender
from mgrec.training import EarlyStopping, fit_epochs, torch_threads, validation_scorer

__all__ = ["BPRMF", "BPRMFConfig", "sample_negatives"]

logger = logging.getLogger(__name__)

@dataclass
class BPRMFConfig:
    """BPR-MF hyperparameters.

    Attributes:
        dim: embedding size.
        lr: Adam learning rate.
        reg: Adam weight decay (L2 on all embeddings, applied at every step).
        item_bias: learn a per-item bias added to every score.
        batch_size: training pairs per step.
        epochs: maximum number of epochs.
        eval_every: evaluate on the validation data every this many epochs.
        patience: stop after this many evaluations without improvement.
        valid_metric: the early-stopping metric, ``name@k`` as in :mod:`mgrec.evaluation`.
        init_std: standard deviation of the normal initialisation; ``None`` uses Xavier
            normal (``sqrt(2 / (rows + dim))``), as RecBole does.
        neg_resample: rounds of re-drawing negatives that are training positives.
        threads: torch intra-op threads while training (restored afterwards); ``0`` keeps
            the current setting. BPR batches are small, and on a busy machine several threads
            spend more time waiting for each other than computing, so one is the default.
            A fixed count also makes the result independent of the machine's core count.
        progress: show a tqdm bar over epochs.
    """

    dim: int = 64
    lr: float = 1e-3
    reg: float = 0.0
    item_bias: bool = False
    batch_size: int = 4096
    epochs: int = 200
    eval_every: int = 1
    patience: int = 10
    valid_metric: str = "ndcg@10"
    init_std: float | None = None
    neg_resample: int = 10
    threads: int = 1
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("dim", "batch_size", "epochs", "eval_every", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.reg < 0 or self.neg_resample < 0 or self.threads < 0:
            raise ValueError("reg, neg_resample and threads must be >= 0")
        if self.init_std is not None and self.init_std <= 0:
            raise ValueError(f"init_std must be > 0 or null, got {self.init_std}")
        name, _, k = self.valid_metric.partition("@")
        if name not in METRICS or not k.isdigit() or int(k) < 1:
            raise ValueError(
                f"valid_metric must look like 'ndcg@10' with a metric from "
                f"{', '.join(METRICS)}; got {self.valid_metric!r}"
            )


def sample_negatives(
    users: torch.Tensor,
    n_items: int,
    positive_keys: torch.Tensor,
    generator: torch.Generator,
    rounds: int = 10,
) -> torch.Tensor:
    """One uniform negative item per user, re-drawn while it is a known positive.

    Args:
        users: ``(P,)`` ``int64`` user codes.
        n_items: catalogue size.
        positive_keys: sorted ``int64`` keys ``user * n_items + item`` of the positives.
        generator: the source of randomness.
        rounds: re-draw rounds; negatives still positive after them are kept.

    Returns:
        ``(P,)`` ``int64`` item codes.
    """
    neg = torch.randint(n_items, users.shape, generator=generator, dtype=torch.int64)
    if len(positive_keys) == 0:
        return neg
    last = len(positive_keys) - 1
    for _ in range(rounds):
        query = users * n_items + neg
        hit = positive_keys[torch.searchsorted(positive_keys, query).clamp_(max=last)] == query
        n_hit = int(hit.sum())
        if n_hit == 0:
            break
        neg[hit] = torch.randint(n_items, (n_hit,), generator=generator, dtype=torch.int64)
    return neg


class BPRMF(Recommender):
    """Matrix factorisation with the BPR pairwise loss and uniform negative sampling.

    Args:
        config: a dict for :class:`BPRMFConfig`.
        seed: seeds the initialisation, shuffling and negative sampling.

    Attributes:
        history_: one dict per epoch: ``epoch``, ``loss``, ``seconds`` and, on evaluated
            epochs, ``valid`` (the early-stopping metric).
        best_epoch_: the epoch whose weights the model holds (the last one without
            validation data).
    """

    name = "bprmf"

    def __init__(self, config: dict[str, Any] | None = None, *, seed: int = 0) -> None:
        super().__init__()
        self.config = from_dict(BPRMFConfig, config, where="bprmf config")
        self.seed = int(seed)
        self.user_emb_: torch.Tensor | None = None
        self.item_emb_: torch.Tensor | None = None
        self.item_bias_: torch.Tensor | None = None
        self.history_: list[dict[str, float]] = []
        self.best_epoch_: int = 0
        self.best_valid_: float = float("nan")

    # ------------------------------------------------------------------ training
    def _init_params(self, gen: torch.Generator) -> list[torch.Tensor]:
        cfg = self.config

        def table(rows: int) -> torch.Tensor:
            std = cfg.init_std if cfg.init_std is not None else math.sqrt(2.0 / (rows + cfg.dim))
            return (torch.randn(rows, cfg.dim, generator=gen) * std).requires_grad_()

        self.user_emb_ = table(self.n_users_)
        self.item_emb_ = table(self.n_items_)
        params = [self.user_emb_, self.item_emb_]
        self.item_bias_ = None
        if cfg.item_bias:
            self.item_bias_ = torch.zeros(self.n_items_, requires_grad=True)
            params.append(self.item_bias_)
        return params

    def _fit(self, dataset: Dataset, train: pd.DataFrame, valid: pd.DataFrame | None) -> None:
        with torch_threads(self.config.threads):
            self._train(valid)

    def _train(self, valid: pd.DataFrame | None) -> None:
        cfg = self.config
        assert self.seen_ is not None
        gen = torch.Generator().manual_seed(self.seed)
        params = self._init_params(gen)
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.reg)

        coo = self.seen_.tocoo()  # distinct (user, item) pairs, sorted by user then item
        users = torch.from_numpy(coo.row.astype(np.int64))
        items = torch.from_numpy(coo.col.astype(np.int64))
        keys = users * self.n_items_ + items  # already sorted (CSR order)
        n_pairs = len(users)
        if n_pairs == 0:
            logger.warning("bprmf: no training interactions; the model keeps its initial weights")
            self._finish(best=None)
            return

        stopping = EarlyStopping(cfg.epochs, cfg.eval_every, cfg.patience, cfg.progress)
        hist = fit_epochs(
            lambda epoch: self._epoch(users, items, keys, opt, gen),
            stopping=stopping,
            validate=validation_scorer(self, valid, metric=cfg.valid_metric),
            snapshot=self._snapshot,
            restore=self._finish,
            name="bprmf",
        )
        self.history_, self.best_epoch_, self.best_valid_ = hist.epochs, hist.best_epoch, hist.best_valid
        self._finish(None)

    def _epoch(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        keys: torch.Tensor,
        opt: torch.optim.Optimizer,
        gen: torch.Generator,
    ) -> float:
        cfg = self.config
        assert self.user_emb_ is not None and self.item_emb_ is not None
        perm = torch.randperm(len(users), generator=gen)
        u_all, i_all = users[perm], items[perm]
        j_all = sample_negatives(u_all, self.n_items_, keys, gen, cfg.neg_resample)
        total = 0.0
        for start in range(0, len(u_all), cfg.batch_size):
            u = u_all[start:start + cfg.batch_size]
            i = i_all[start:start + cfg.batch_size]
            j = j_all[start:start + cfg.batch_size]
            eu = F.embedding(u, self.user_emb_)
            diff = (eu * (F.embedding(i, self.item_emb_) - F.embedding(j, self.item_emb_))).sum(-1)
            if self.item_bias_ is not None:
                diff = diff + self.item_bias_[i] - self.item_bias_[j]
            loss = -F.logsigmoid(diff).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(u)
        return total / len(u_all)

    def _snapshot(self) -> tuple[torch.Tensor, ...]:
        tensors = [self.user_emb_, self.item_emb_]
        if self.item_bias_ is not None:
            tensors.append(self.item_bias_)
        return tuple(t.detach().clone() for t in tensors if t is not None)

    def _finish(self, best: tuple[torch.Tensor, ...] | None) -> None:
        """Keep ``best`` (or the current weights) as plain tensors without autograd."""
        final = best if best is not None else self._snapshot()
        self.user_emb_, self.item_emb_ = final[0], final[1]
        self.item_bias_ = final[2] if len(final) > 2 else None

    # ------------------------------------------------------------------ scoring
    def score(self, users: np.ndarray) -> np.ndarray:
        """``(B, n_items)`` ``float32``: ``u . v_i (+ b_i)``."""
        check_fitted(self.user_emb_ is not None and self.item_emb_ is not None, self.name)
        assert self.user_emb_ is not None and self.item_emb_ is not None
        users = check_users(users, self.n_users_)
        with torch.no_grad():
            out = self.user_emb_[torch.from_numpy(users)] @ self.item_emb_.T
            if self.item_bias_ is not None:
                out += self.item_bias_
        return out.numpy().astype(np.float32, copy=False)

    # -------------------------------------------------------------- persistence
    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        check_fitted(self.user_emb_ is not None and self.item_emb_ is not None, self.name)
        assert self.user_emb_ is not None and self.item_emb_ is not None
        arrays = {
            "user_emb": self.user_emb_.detach().numpy().copy(),
            "item_emb": self.item_emb_.detach().numpy().copy(),
        }
        if self.item_bias_ is not None:
            arrays["item_bias"] = self.item_bias_.detach().numpy().copy()
        # Fit facts travel as an array: the config must stay a valid constructor argument.
        arrays["fit_info"] = np.array(
            [self.seed, self.best_epoch_, self.best_valid_, len(self.history_)], dtype=np.float64
        )
        return to_dict(self.config), arrays

    def _set_state(self, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.config = from_dict(BPRMFConfig, config, where="bprmf config")
        info = np.asarray(arrays.get("fit_info", np.zeros(4)), dtype=np.float64).reshape(-1)
        if info.shape != (4,):
            raise ValueError(f"fit_info has shape {info.shape}, expected (4,)")
        self.seed, self.best_epoch_, self.best_valid_ = int(info[0]), int(info[1]), float(info[2])
        self.history_ = []
        dim = self.config.dim
        user_emb, item_emb = arrays["user_emb"], arrays["item_emb"]
        if user_emb.shape != (self.n_users_, dim) or item_emb.shape != (self.n_items_, dim):
            raise ValueError(f"embedding shapes {user_emb.shape}, {item_emb.shape} do not match "
                             f"{self.n_users_} users, {self.n_items_} items, dim {dim}")
        self.user_emb_ = torch.from_numpy(np.array(user_emb, dtype=np.float32))
        self.item_emb_ = torch.from_numpy(np.array(item_emb, dtype=np.float32))
        self.item_bias_ = None
        if self.config.item_bias:
            bias = arrays["item_bias"]
            if bias.shape != (self.n_items_,):
                raise ValueError(f"item_bias has shape {bias.shape}, expected ({self.n_items_},)")
            self.item_bias_ = torch.from_numpy(np.array(bias, dtype=np.float32))
