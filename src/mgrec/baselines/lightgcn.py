"""LightGCN: linear graph convolution on the user-item graph (He et al., SIGIR 2020), on the CPU.

Users and items are the nodes of one bipartite graph built from the binary training matrix
``R`` (``n_users x n_items``). Its symmetric-normalised adjacency is

    A_hat = D^-1/2 [[0, R], [R^T, 0]] D^-1/2,   so  A_hat[u, i] = 1 / sqrt(d_u d_i),

with ``d`` the node degrees (isolated nodes get an all-zero row). Each of ``n_layers``
layers multiplies the embeddings by ``A_hat``, with no weights and no non-linearity, and the
final embedding of a node is the mean of its layer outputs, the ego embedding (layer 0)
included. A score is the dot product of the final user and item embeddings.

Training follows the paper's code: the BPR loss over (user, positive, uniform negative)
triples plus ``reg_weight * (|e_u|^2 + |e_i|^2 + |e_j|^2) / (2 B)`` on the batch's *ego*
embeddings, Adam, and a full propagation per batch (gradients flow through every layer).
``A_hat`` is a torch CSR tensor; as it is symmetric, the backward pass of a layer is one more
product with the same matrix (:class:`_SymmetricSpMM`), which keeps an ml-100k epoch well
under a second on one thread.

After training, the propagated embeddings are cached; :meth:`LightGCN.score` is then a matrix
product, and a saved model holds both the ego and the propagated embeddings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from mgrec.baselines import check_fitted, check_users
from mgrec.baselines.bprmf import sample_negatives
from mgrec.config import from_dict, to_dict
from mgrec.data.dataset import Dataset
from mgrec.losses import bpr_loss
from mgrec.metrics import METRICS
from mgrec.recommender import Recommender
from mgrec.sparse import to_torch_csr
from mgrec.training import EarlyStopping, fit_epochs, torch_threads, validation_scorer

__all__ = ["LightGCN", "LightGCNConfig", "normalized_adjacency", "propagate", "to_torch_csr"]

logger = logging.getLogger(__name__)


@dataclass
class LightGCNConfig:
    """LightGCN hyperparameters.

    Attributes:
        dim: embedding size.
        n_layers: propagation layers ``K``; ``0`` is plain matrix factorisation.
        lr: Adam learning rate.
        reg_weight: weight of the L2 penalty on the batch's ego embeddings (the paper's
            ``decay``; RecBole uses 1e-5 to 1e-4).
        batch_size: training triples per step.
        epochs: maximum number of epochs.
        eval_every: evaluate on the validation data every this many epochs.
        patience: stop after this many evaluations without improvement.
        valid_metric: the early-stopping metric, ``name@k`` as in :mod:`mgrec.evaluation`.
        init_std: standard deviation of the normal initialisation (the paper uses 0.1).
        neg_resample: rounds of re-drawing negatives that are training positives.
        threads: torch intra-op threads while training (restored afterwards); ``0`` keeps
            the current setting.
        progress: show a tqdm bar over epochs.
    """

    dim: int = 64
    n_layers: int = 3
    lr: float = 1e-3
    reg_weight: float = 1e-4
    batch_size: int = 2048
    epochs: int = 300
    eval_every: int = 1
    patience: int = 10
    valid_metric: str = "ndcg@10"
    init_std: float = 0.1
    neg_resample: int = 10
    threads: int = 1
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("dim", "batch_size", "epochs", "eval_every", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.init_std <= 0:
            raise ValueError(f"lr and init_std must be > 0, got {self.lr}, {self.init_std}")
        for name in ("n_layers", "reg_weight", "neg_resample", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        name, _, k = self.valid_metric.partition("@")
        if name not in METRICS or not k.isdigit() or int(k) < 1:
            raise ValueError(
                f"valid_metric must look like 'ndcg@10' with a metric from "
                f"{', '.join(METRICS)}; got {self.valid_metric!r}"
            )


# --------------------------------------------------------------------------- the graph
def normalized_adjacency(interactions: sp.spmatrix) -> sp.csr_matrix:
    """The symmetric-normalised adjacency of the user-item bipartite graph.

    Args:
        interactions: ``(n_users, n_items)`` training matrix; any stored non-zero counts
            as one edge (values and duplicates are ignored).

    Returns:
        ``(n_users + n_items)`` square ``float32`` CSR matrix, users first: entry
        ``[u, n_users + i] = [n_users + i, u] = 1 / sqrt(d_u d_i)`` for every edge, where
        ``d`` counts a node's distinct neighbours; all other entries are zero.

    Example:
        >>> a = normalized_adjacency(sp.csr_matrix([[1, 1]]))
        >>> a.toarray()[0].astype(float).round(4).tolist()  # user 0: degree 2; items: degree 1
        [0.0, 0.7071, 0.7071]
    """
    r = sp.csr_matrix(interactions, dtype=np.float32, copy=True)
    r.sum_duplicates()
    r.eliminate_zeros()
    r.data[:] = 1.0
    n_users, n_items = r.shape
    d_user = np.asarray(r.sum(axis=1), dtype=np.float64).ravel()
    d_item = np.asarray(r.sum(axis=0), dtype=np.float64).ravel()
    # Nodes with an edge have degree >= 1; isolated ones have no entries to scale.
    inv_user = 1.0 / np.sqrt(np.maximum(d_user, 1.0))
    inv_item = 1.0 / np.sqrt(np.maximum(d_item, 1.0))
    coo = r.tocoo()
    vals = (inv_user[coo.row] * inv_item[coo.col]).astype(np.float32)
    rows = np.concatenate([coo.row, coo.col + n_users]).astype(np.int64)
    cols = np.concatenate([coo.col + n_users, coo.row]).astype(np.int64)
    n = n_users + n_items
    adj = sp.csr_matrix((np.concatenate([vals, vals]), (rows, cols)), shape=(n, n))
    adj.sort_indices()
    return adj


class _SymmetricSpMM(torch.autograd.Function):
    """``A @ x`` for a constant symmetric sparse ``A``: the gradient is ``A @ grad``."""

    @staticmethod
    def forward(ctx: Any, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.adj = adj
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:  # type: ignore[override]
        return None, torch.sparse.mm(ctx.adj, grad.contiguous())


def propagate(adj: torch.Tensor, ego: torch.Tensor, n_layers: int) -> torch.Tensor:
    """LightGCN propagation: the mean of ``ego, A ego, ..., A^K ego``.

    Args:
        adj: ``(N, N)`` symmetric normalised adjacency, a torch sparse tensor (CSR is fastest).
        ego: ``(N, dim)`` layer-0 embeddings of all nodes (users first, then items).
        n_layers: ``K``; ``0`` returns ``ego`` itself.

    Returns:
        ``(N, dim)`` final embeddings; differentiable with respect to ``ego``.
    """
    if n_layers == 0:
        return ego
    total, layer = ego, ego
    for _ in range(n_layers):
        layer = _SymmetricSpMM.apply(adj, layer)
        total = total + layer
    return total / (n_layers + 1)


# --------------------------------------------------------------------------- the model
class LightGCN(Recommender):
    """LightGCN trained with BPR and uniform negatives, early-stopped on validation.

    Args:
        config: a dict for :class:`LightGCNConfig`.
        seed: seeds the initialisation, shuffling and negative sampling.

    Attributes:
        history_: one dict per epoch: ``epoch``, ``loss``, ``seconds`` and, on evaluated
            epochs, ``valid`` (the early-stopping metric).
        best_epoch_: the epoch whose weights the model holds (the last one without
            validation data).
        best_valid_: the validation score of that epoch (``nan`` without validation data).
    """

    name = "lightgcn"

    def __init__(self, config: dict[str, Any] | None = None, *, seed: int = 0) -> None:
        super().__init__()
        self.config = from_dict(LightGCNConfig, config, where="lightgcn config")
        self.seed = int(seed)
        self.user_ego_: torch.Tensor | None = None
        self.item_ego_: torch.Tensor | None = None
        self.user_emb_: torch.Tensor | None = None  # propagated, cached
        self.item_emb_: torch.Tensor | None = None
        self.history_: list[dict[str, float]] = []
        self.best_epoch_: int = 0
        self.best_valid_: float = float("nan")
        self._adj: torch.Tensor | None = None

    # ------------------------------------------------------------------ training
    def _fit(self, dataset: Dataset, train: pd.DataFrame, valid: pd.DataFrame | None) -> None:
        with torch_threads(self.config.threads):
            try:
                self._train(valid)
            finally:
                self._adj = None  # only needed while the ego embeddings change

    def _train(self, valid: pd.DataFrame | None) -> None:
        cfg = self.config
        assert self.seen_ is not None
        gen = torch.Generator().manual_seed(self.seed)
        n_nodes = self.n_users_ + self.n_items_
        ego = torch.randn(n_nodes, cfg.dim, generator=gen) * cfg.init_std
        self.user_ego_ = ego[: self.n_users_].clone().requires_grad_()
        self.item_ego_ = ego[self.n_users_:].clone().requires_grad_()
        self._adj = to_torch_csr(normalized_adjacency(self.seen_))
        self.user_emb_ = self.item_emb_ = None
        self.history_, self.best_epoch_, self.best_valid_ = [], 0, float("nan")

        coo = self.seen_.tocoo()  # distinct (user, item) pairs in CSR order
        users = torch.from_numpy(coo.row.astype(np.int64))
        items = torch.from_numpy(coo.col.astype(np.int64))
        keys = users * self.n_items_ + items  # sorted
        if len(users) == 0:
            logger.warning("lightgcn: no training interactions; the model keeps its initial weights")
            self._finish(None)
            return

        opt = torch.optim.Adam([self.user_ego_, self.item_ego_], lr=cfg.lr)
        hist = fit_epochs(
            lambda epoch: self._epoch(users, items, keys, opt, gen),
            stopping=EarlyStopping(cfg.epochs, cfg.eval_every, cfg.patience, cfg.progress),
            validate=validation_scorer(self, valid, metric=cfg.valid_metric),
            snapshot=self._snapshot,
            restore=self._finish,
            name="lightgcn",
        )
        self.history_, self.best_epoch_, self.best_valid_ = hist.epochs, hist.best_epoch, hist.best_valid
        if self.user_ego_.requires_grad:  # nothing restored (no validation): keep the last weights
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
        assert self.user_ego_ is not None and self.item_ego_ is not None and self._adj is not None
        self.user_emb_ = self.item_emb_ = None  # the cache goes stale with the first step
        perm = torch.randperm(len(users), generator=gen)
        u_all, i_all = users[perm], items[perm]
        j_all = sample_negatives(u_all, self.n_items_, keys, gen, cfg.neg_resample)
        n_users, total = self.n_users_, 0.0
        for start in range(0, len(u_all), cfg.batch_size):
            u = u_all[start:start + cfg.batch_size]
            i = i_all[start:start + cfg.batch_size] + n_users
            j = j_all[start:start + cfg.batch_size] + n_users
            nodes = torch.cat([u, i, j])  # one gather (and one scatter back) per batch
            ego = torch.cat([self.user_ego_, self.item_ego_])
            eu, ei, ej = F.embedding(nodes, propagate(self._adj, ego, cfg.n_layers)).chunk(3)
            loss = bpr_loss((eu * ei).sum(-1), (eu * ej).sum(-1))
            if cfg.reg_weight > 0:
                sq = F.embedding(nodes, ego).square().sum()
                loss = loss + cfg.reg_weight * sq / (2 * len(u))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(u)
        return total / len(u_all)

    def _propagated(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user and item embeddings of the current ego weights (cached)."""
        if self.user_emb_ is None or self.item_emb_ is None:
            assert self.user_ego_ is not None and self.item_ego_ is not None
            with torch.no_grad():
                ego = torch.cat([self.user_ego_.detach(), self.item_ego_.detach()])
                if self._adj is None:
                    assert self.seen_ is not None
                    self._adj = to_torch_csr(normalized_adjacency(self.seen_))
                final = propagate(self._adj, ego, self.config.n_layers).clone()
            self.user_emb_, self.item_emb_ = final[: self.n_users_], final[self.n_users_:]
        return self.user_emb_, self.item_emb_

    def _snapshot(self) -> tuple[torch.Tensor, ...]:
        user_emb, item_emb = self._propagated()
        assert self.user_ego_ is not None and self.item_ego_ is not None
        return (self.user_ego_.detach().clone(), self.item_ego_.detach().clone(),
                user_emb.clone(), item_emb.clone())

    def _finish(self, best: tuple[torch.Tensor, ...] | None) -> None:
        """Keep ``best`` (or the current weights) as plain tensors without autograd."""
        final = best if best is not None else self._snapshot()
        self.user_ego_, self.item_ego_, self.user_emb_, self.item_emb_ = final

    # ------------------------------------------------------------------ scoring
    def score(self, users: np.ndarray) -> np.ndarray:
        """``(B, n_items)`` ``float32``: dot products of the propagated embeddings."""
        check_fitted(self.user_ego_ is not None and self.item_ego_ is not None, self.name)
        users = check_users(users, self.n_users_)
        user_emb, item_emb = self._propagated()
        with torch.no_grad():
            out = user_emb[torch.from_numpy(users)] @ item_emb.T
        return out.numpy().astype(np.float32, copy=False)

    # -------------------------------------------------------------- persistence
    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        check_fitted(self.user_ego_ is not None and self.item_ego_ is not None, self.name)
        user_emb, item_emb = self._propagated()
        assert self.user_ego_ is not None and self.item_ego_ is not None
        arrays = {
            "user_ego": self.user_ego_.detach().numpy().copy(),
            "item_ego": self.item_ego_.detach().numpy().copy(),
            "user_emb": user_emb.numpy().copy(),
            "item_emb": item_emb.numpy().copy(),
            # Fit facts travel as an array: the config must stay a valid constructor argument.
            "fit_info": np.array(
                [self.seed, self.best_epoch_, self.best_valid_, len(self.history_)], dtype=np.float64
            ),
        }
        return to_dict(self.config), arrays

    def _set_state(self, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.config = from_dict(LightGCNConfig, config, where="lightgcn config")
        info = np.asarray(arrays.get("fit_info", np.zeros(4)), dtype=np.float64).reshape(-1)
        if info.shape != (4,):
            raise ValueError(f"fit_info has shape {info.shape}, expected (4,)")
        self.seed, self.best_epoch_, self.best_valid_ = int(info[0]), int(info[1]), float(info[2])
        self.history_ = []
        self._adj = None
        dim = self.config.dim
        tensors = {}
        for name, rows in (("user_ego", self.n_users_), ("item_ego", self.n_items_),
                           ("user_emb", self.n_users_), ("item_emb", self.n_items_)):
            arr = arrays[name]
            if arr.shape != (rows, dim):
                raise ValueError(f"{name} has shape {arr.shape}, expected ({rows}, {dim})")
            tensors[name] = torch.from_numpy(np.array(arr, dtype=np.float32))
        self.user_ego_, self.item_ego_ = tensors["user_ego"], tensors["item_ego"]
        self.user_emb_, self.item_emb_ = tensors["user_emb"], tensors["item_emb"]
