"""Granularity ``social``: what the user's friends are into.

Each friend ``f`` is represented by ``r_f = e_f + mean(q_v for v in f's recent items)``
(``e`` = the user id table shared with :class:`~mgrec.encoders.user.UserEncoder`, ``q`` = the
item tower). The user's own id vector attends over the present friends (masked softmax;
a cold user has a zero id vector, i.e. a plain mean of the friends). A second term reaches
friends of friends: row ``u`` of ``Â^hops E`` with ``Â = D_r^{-1/2} A D_c^{-1/2}`` the
normalised adjacency and ``E`` the id table, computed on the fly for the batch's rows only
(sparse products, no cache, so gradients reach ``E``; with sparse id tables the term reads
``E`` without a gradient, see ``SocialEncoder._multi_hop``).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from mgrec.encoders import bag_sum, masked_softmax, unique_rows
from mgrec.encoders.base import Batch
from mgrec.encoders.item import ItemTower
from mgrec.sparse import sparse_product

__all__ = ["SocialEncoder", "normalized_adjacency"]

#: The most entries of ``Â^hops`` kept for every user at once (see ``SocialEncoder._reach_matrix``).
REACH_MAX_NNZ = 20_000_000
#: Attention logits come from one (distinct friends x rows) product while it has at most this
#: many entries (a batch of few distinct friends), else from a gather of each slot's key.
PAIR_SCORES_MAX = 1 << 21


def normalized_adjacency(adjacency: sp.spmatrix, n_users: int) -> sp.csr_matrix:
    """``D_r^{-1/2} A D_c^{-1/2}`` over the positive entries of ``adjacency``.

    Args:
        adjacency: ``(n_users, n_users)`` sparse matrix (directed or symmetric, weighted or
            binary; non-positive entries are dropped).
        n_users: the expected size.

    Returns:
        A ``float32`` CSR matrix; rows and columns without links stay empty.

    Raises:
        ValueError: for a matrix of another shape.
    """
    if adjacency.shape != (n_users, n_users):
        raise ValueError(f"adjacency has shape {adjacency.shape}, expected ({n_users}, {n_users})")
    a = sp.csr_matrix(adjacency, dtype=np.float32)
    a.data = np.where(a.data > 0, a.data, 0).astype(np.float32)
    a.eliminate_zeros()
    rows = np.asarray(a.sum(axis=1)).ravel()
    cols = np.asarray(a.sum(axis=0)).ravel()
    r = np.where(rows > 0, 1.0 / np.sqrt(np.maximum(rows, 1e-12)), 0.0).astype(np.float32)
    c = np.where(cols > 0, 1.0 / np.sqrt(np.maximum(cols, 1e-12)), 0.0).astype(np.float32)
    out = sp.csr_matrix(sp.diags(r) @ a @ sp.diags(c), dtype=np.float32)
    out.sort_indices()
    return out


class SocialEncoder(nn.Module):
    """Friends' influence as one vector.

    Args:
        user_table: the user id embedding (``n_users + 1`` rows, last = padding), shared with
            the user encoder and held by reference (the model registers it once).
        tower: the shared item tower, held by reference.
        dim: the output size ``D``; ``user_table`` and ``tower`` must have the same width.
        adjacency: ``(n_users, n_users)`` social links for the multi-hop term, or ``None``
            to leave it out.
        hops: the power of the normalised adjacency (0 leaves the term out).

    Raises:
        ValueError: for mismatched widths or adjacency shape.
    """

    granularity = "social"

    def __init__(
        self,
        user_table: nn.Embedding,
        tower: ItemTower,
        dim: int,
        *,
        adjacency: sp.spmatrix | None,
        hops: int = 2,
    ) -> None:
        super().__init__()
        width = user_table.embedding_dim
        if tower.dim != width:
            raise ValueError(f"user table width {width} != item tower width {tower.dim}")
        if hops < 0:
            raise ValueError(f"hops must be >= 0, got {hops}")
        self._refs = (user_table, tower)
        self.n_users = user_table.num_embeddings - 1
        self.out_dim, self.hops = int(dim), int(hops)
        self.query = nn.Linear(width, width, bias=False)
        self.key = nn.Linear(width, width, bias=False)
        self.out = nn.Linear(width, dim)
        use_hops = adjacency is not None and hops > 0
        self._adj = normalized_adjacency(adjacency, self.n_users) if use_hops else None
        self.hop_proj = nn.Linear(width, dim, bias=False) if use_hops else None
        self._reach: sp.csr_matrix | None = None
        self._reach_too_big = False

    @property
    def user_table(self) -> nn.Embedding:
        return self._refs[0]

    @property
    def tower(self) -> ItemTower:
        return self._refs[1]

    def shared_modules(self) -> dict[str, nn.Module]:
        """Modules this encoder uses but does not own (the model registers them once)."""
        return {"user_table": self.user_table, "item_tower": self.tower}

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(vectors (B, D), present (B,) bool)``."""
        friends, f_items = batch.friends, batch.friend_items
        valid = friends != self.n_users
        present = valid.any(dim=1)
        # a friend's vector depends only on (friend, window): encode each distinct pair once
        # (a popular friend recurs across the batch; friends of the same cutoff share windows)
        b, f, length = f_items.shape
        pairs = torch.cat([friends.unsqueeze(-1), f_items], dim=-1).reshape(b * f, length + 1)
        exporting = torch.compiler.is_compiling() or torch.jit.is_tracing()
        if exporting:  # no data-dependent shapes or branches
            uniq, where = pairs, torch.arange(b * f, device=pairs.device)
        else:
            uniq, where = unique_rows(pairs)
        u_items = uniq[:, 1:]
        counts = (u_items != self.tower.n_items).sum(dim=1, keepdim=True).clamp(min=1)
        reps_u = self.user_table(uniq[:, 0]) + self.tower.pooled(u_items) / counts.to(self.user_table.weight.dtype)
        slot = where.reshape(b, f)  # each friend slot's row in reps_u
        keys, query = self.key(reps_u), self.query(self.user_table(batch.users))
        if not exporting and keys.shape[0] * b <= PAIR_SCORES_MAX:  # few distinct friends: all (friend, row)
            scores = (keys @ query.T)[slot, torch.arange(b, device=slot.device).unsqueeze(1)]
        else:  # gather each slot's key
            scores = (keys[slot] @ query.unsqueeze(-1)).squeeze(-1)
        logits = scores / math.sqrt(reps_u.shape[-1])
        w = masked_softmax(logits, valid)
        # sum_f w[b, f] reps_u[slot[b, f]], fused (masked slots have weight 0)
        vec = self.out(bag_sum(reps_u, slot, w, padding_idx=None))
        if self._adj is not None and self.hop_proj is not None:
            vec = vec + self.hop_proj(self._multi_hop(batch.users))
        return vec * present.unsqueeze(-1).to(vec.dtype), present

    def _reach_matrix(self) -> sp.csr_matrix | None:
        """``Â^hops`` for every user, computed once when it stays below :data:`REACH_MAX_NNZ`
        entries (then a batch's rows are a slice), else ``None`` (rows computed per batch)."""
        if self._reach is None and not self._reach_too_big:
            assert self._adj is not None
            reach, degree = self._adj, np.diff(self._adj.indptr).astype(np.float64)
            for _ in range(self.hops - 1):
                pattern = sp.csr_matrix((np.ones(reach.nnz), reach.indices, reach.indptr), shape=reach.shape)
                if float((pattern @ degree).sum()) > REACH_MAX_NNZ:  # an upper bound on the product's entries
                    self._reach_too_big = True
                    return None
                reach = reach @ self._adj
            reach = sp.csr_matrix(reach, dtype=np.float32)
            if reach.nnz > REACH_MAX_NNZ:
                self._reach_too_big = True
                return None
            self._reach = reach
        return self._reach

    def _factored_is_cheaper(self, codes: np.ndarray, known: np.ndarray, reach: sp.csr_matrix | None) -> bool:
        """Whether ``Â[users] (Â^(hops-1) E)`` takes fewer multiply-adds per column than the
        batch's rows of ``Â^hops`` (their entries, or a bound on them without ``reach``)."""
        assert self._adj is not None
        rows = np.where(known, codes, 0)
        first = np.diff(self._adj.indptr)[rows][known]
        factored = (self.hops - 1) * self._adj.nnz + int(first.sum())
        if reach is not None:
            return factored < int(np.diff(reach.indptr)[rows][known].sum())
        if self.hops != 2:  # no cheap bound on the batch's rows: keep them
            return False
        degree = np.diff(self._adj.indptr)
        hop_rows = self._adj[rows[known]]
        return factored < int(degree[hop_rows.indices].sum())

    def _multi_hop(self, users: torch.Tensor) -> torch.Tensor:
        """Rows ``users`` of ``Â^hops E`` (zero for unknown users), ``(B, D)``."""
        assert self._adj is not None
        weight = self.user_table.weight
        codes = users.detach().cpu().numpy()
        known = codes < self.n_users
        reach = self._reach_matrix()
        if self.hops > 1 and not self.user_table.sparse and self._factored_is_cheaper(codes, known, reach):
            # Â[users] (Â^(hops-1) E): the whole table's product each step, cheaper than the
            # batch's rows of Â^hops when those are dense (ciao: 1,100 of 5,859 users per row)
            table = weight[: self.n_users]
            for _ in range(self.hops - 1):
                table = sparse_product(table, self._adj)
            first = sp.csr_matrix(self._adj[np.where(known, codes, 0)].multiply(known[:, None].astype(np.float32)))
            return sparse_product(table, first)
        if reach is not None:
            rows = reach[np.where(known, codes, 0)]
        else:
            rows = self._adj[np.where(known, codes, 0)]
            for _ in range(self.hops - 1):
                rows = rows @ self._adj
        rows = sp.csr_matrix(rows.multiply(known[:, None].astype(np.float32)))
        rows.resize((len(codes), weight.shape[0]))  # the table's padding row: no entries
        if self.user_table.sparse:
            # Sparse id tables (hundreds of thousands of users and more): the term reads the
            # table without a gradient. A batch of 1024 users reaches 60k-100k distinct users in
            # two hops, and their rows in the gradient would make every step's optimiser update
            # (and its cache misses) grow with the table instead of the batch. ``hop_proj``
            # still learns, and the rows are the current weights, not a stale copy.
            return sparse_product(weight.detach(), rows)
        return sparse_product(weight, rows)
