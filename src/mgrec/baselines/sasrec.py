"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018), trained by
default with full-softmax cross-entropy over the catalogue (Klenitskiy & Vasilev, RecSys 2023).

Each user's training interactions form one sequence, ordered by timestamp when the training
frame has one (a stable sort: ties keep their row order), else by row order. At every
position the model predicts the next item from the items so far:

* input: item embedding (row ``n_items`` is the padding vector, fixed at zero) scaled by
  ``sqrt(dim)``, plus a learned position embedding, then ``n_blocks`` pre-LN causal
  self-attention blocks (``x + Drop(Attn(LN(x)))``, ``x + Drop(FFN(LN(x)))``, ReLU FFN of
  width ``dim``) and a final layer norm, as in the authors' reference implementation;
* output: the hidden state at each position is scored against every item embedding (tied
  weights); the loss is computed at real (non-padding) positions only.

Sequences are *left*-padded (position ``max_len - 1`` holds the latest item). A query
attends to earlier real items and itself, never to padding, so padding cannot change the
output at real positions. Long sequences are cut from the end into windows of ``max_len``
targets (``windows="all"``); ``windows="last"`` keeps each user's latest one (the paper).

``score(users)`` encodes each user's ``max_len`` most recent training items and scores the
last position against all items. A user without training items gets the scores of an
all-padding sequence (the same vector for every such user).

All randomness (initialisation, shuffling, dropout, negatives) comes from one
``torch.Generator`` seeded with ``seed``: same seed, data and threads give identical weights.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from mgrec.baselines import check_fitted, check_users
from mgrec.config import from_dict, to_dict
from mgrec.data.dataset import Dataset
from mgrec.losses import bpr_loss, dot_softmax_loss, sampled_softmax_loss
from mgrec.metrics import METRICS
from mgrec.recommender import Recommender
from mgrec.training import EarlyStopping, fit_epochs, torch_threads, validation_scorer

__all__ = ["SASRec", "SASRecConfig", "latest_history", "training_windows", "user_sequences"]

logger = logging.getLogger(__name__)

_SCORE_BATCH = 1024  # users encoded at once by SASRec.score


@dataclass
class SASRecConfig:
    """SASRec hyperparameters.

    Attributes:
        max_len: the most recent items the model reads (sequence length).
        dim: hidden size (embeddings, attention and the feed-forward layer).
        n_blocks: self-attention blocks.
        n_heads: attention heads; must divide ``dim``.
        dropout: dropout on the input embeddings, attention weights and block outputs.
        loss: ``softmax`` (full cross-entropy), ``sampled_softmax`` (uniform negatives with
            the logQ correction) or ``bpr`` (each positive against each negative).
        n_negatives: uniform negatives per batch, shared by its positions (``sampled_softmax``
            and ``bpr`` only); a negative equal to a position's target is ignored there.
        windows: ``all`` trains on every window of each long sequence, ``last`` only on the
            most recent one (the paper).
        lr: Adam learning rate (betas 0.9, 0.98 as in the paper).
        weight_decay: Adam weight decay.
        batch_size: sequence windows per step.
        epochs: maximum number of epochs.
        eval_every: evaluate on the validation data every this many epochs.
        patience: stop after this many evaluations without improvement.
        valid_metric: the early-stopping metric, ``name@k`` as in :mod:`mgrec.evaluation`.
        init_std: standard deviation of the normal initialisation of embeddings and weights.
        threads: torch intra-op threads while training; ``0`` keeps the current setting.
        progress: show a tqdm bar over epochs.
    """

    max_len: int = 50
    dim: int = 64
    n_blocks: int = 2
    n_heads: int = 1
    dropout: float = 0.2
    loss: Literal["softmax", "sampled_softmax", "bpr"] = "softmax"
    n_negatives: int = 128
    windows: Literal["all", "last"] = "all"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 200
    eval_every: int = 1
    patience: int = 10
    valid_metric: str = "ndcg@10"
    init_std: float = 0.02
    threads: int = 1
    progress: bool = False

    def __post_init__(self) -> None:
        ints = ("max_len", "dim", "n_blocks", "n_heads", "n_negatives", "batch_size", "epochs",
                "eval_every", "patience")
        for name in ints:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.dim % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide dim ({self.dim})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0 or self.init_std <= 0 or self.weight_decay < 0 or self.threads < 0:
            raise ValueError("lr and init_std must be > 0; weight_decay and threads >= 0")
        name, _, k = self.valid_metric.partition("@")
        if name not in METRICS or not k.isdigit() or int(k) < 1:
            raise ValueError(f"valid_metric must look like 'ndcg@10' with a metric from "
                             f"{', '.join(METRICS)}; got {self.valid_metric!r}")


# --------------------------------------------------------------------------- sequences
def user_sequences(train: pd.DataFrame, n_users: int, *, by_time: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every user's training items in order, as a CSR-like pair.

    Args:
        train: interactions with ``user``, ``item`` (and ``timestamp`` if ``by_time``).
        n_users: number of users.
        by_time: order each user's items by timestamp (stable: ties keep row order);
            otherwise by row order.

    Returns:
        ``(items, indptr)``: user ``u``'s sequence is ``items[indptr[u]:indptr[u + 1]]``.
    """
    users = train["user"].to_numpy(dtype=np.int64)
    items = train["item"].to_numpy(dtype=np.int64)
    order = np.arange(len(users))
    if by_time:
        order = np.argsort(train["timestamp"].to_numpy(dtype=np.int64), kind="stable")
    order = order[np.argsort(users[order], kind="stable")]
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return items[order], indptr


def training_windows(
    items: np.ndarray, indptr: np.ndarray, max_len: int, pad: int, *, last_only: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Cut each sequence into left-padded next-item windows, from its end backwards.

    A sequence ``s`` of length ``n`` has targets ``s[1:]``; the input at a target's slot is
    the item before it. The most recent ``max_len`` targets form the first window, the
    ``max_len`` before them the second, and so on; the oldest window may be partial.

    Args:
        items: the sequences, as returned by :func:`user_sequences`.
        indptr: their offsets.
        max_len: window length.
        pad: the padding code (``n_items``).
        last_only: keep only each user's most recent window.

    Returns:
        ``(inputs, targets)``, both ``(W, max_len)`` ``int64``; ``targets == pad`` marks
        padding.

    Example:
        >>> inp, tgt = training_windows(np.array([5, 6, 7, 8]), np.array([0, 4]), 2, pad=9)
        >>> inp.tolist(), tgt.tolist()
        ([[6, 7], [9, 5]], [[7, 8], [9, 6]])
    """
    n_targets = np.maximum(np.diff(indptr) - 1, 0)
    n_windows = (n_targets + max_len - 1) // max_len
    n_windows = np.minimum(n_windows, 1) if last_only else n_windows
    w_off = np.concatenate([[0], np.cumsum(n_windows)])
    user_of = np.repeat(np.arange(len(n_targets)), n_targets)
    t_off = np.concatenate([[0], np.cumsum(n_targets)])
    p = np.arange(int(t_off[-1])) - t_off[user_of] + 1  # position of each target in its sequence
    from_end = n_targets[user_of] - p  # 0 for a user's last target
    window = from_end // max_len
    keep = window < n_windows[user_of]
    g = (indptr[user_of] + p)[keep]
    rows, cols = (w_off[user_of] + window)[keep], (max_len - 1 - from_end % max_len)[keep]
    inputs = np.full((int(w_off[-1]), max_len), pad, np.int64)
    targets = inputs.copy()
    inputs[rows, cols], targets[rows, cols] = items[g - 1], items[g]
    return inputs, targets


def latest_history(items: np.ndarray, indptr: np.ndarray, max_len: int, pad: int) -> np.ndarray:
    """Each user's ``max_len`` most recent items, left-padded with ``pad``: ``(n_users, max_len)``."""
    counts = np.diff(indptr)
    take = np.minimum(counts, max_len)
    user_of = np.repeat(np.arange(len(counts)), take)
    j = np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take)
    hist = np.full((len(counts), max_len), pad, np.int64)
    hist[user_of, max_len - take[user_of] + j] = items[indptr[user_of + 1] - take[user_of] + j]
    return hist


# ----------------------------------------------------------------------------- network
def _dropout(x: torch.Tensor, p: float, gen: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout drawing its mask from ``gen``; the identity when ``gen`` is None."""
    if gen is None or p == 0.0:
        return x
    keep = torch.rand(x.shape, generator=gen) >= p
    return x * keep * (1.0 / (1.0 - p))


class _Block(nn.Module):
    """Pre-LN causal self-attention block with a ReLU feed-forward layer of width ``dim``."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        # weights ``w_*`` are initialised by _SASRecNet.reset_parameters; biases start at 0
        self.w_qkv, self.b_qkv = nn.Parameter(torch.empty(3 * dim, dim)), nn.Parameter(torch.zeros(3 * dim))
        self.w_out, self.b_out = nn.Parameter(torch.empty(dim, dim)), nn.Parameter(torch.zeros(dim))
        self.w_ff1, self.b_ff1 = nn.Parameter(torch.empty(dim, dim)), nn.Parameter(torch.zeros(dim))
        self.w_ff2, self.b_ff2 = nn.Parameter(torch.empty(dim, dim)), nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = F.linear(self.norm1(x), self.w_qkv, self.b_qkv).chunk(3, dim=-1)
        q, k, v = (t.view(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)
        att = _dropout(att.masked_fill(~allowed, float("-inf")).softmax(-1), self.dropout, gen)
        h = (att @ v).transpose(1, 2).reshape(b, n, d)
        x = x + _dropout(F.linear(h, self.w_out, self.b_out), self.dropout, gen)
        h = F.linear(F.relu(F.linear(self.norm2(x), self.w_ff1, self.b_ff1)), self.w_ff2, self.b_ff2)
        return x + _dropout(h, self.dropout, gen)


class _SASRecNet(nn.Module):
    """Embeddings, blocks and the final norm; ``forward`` returns ``(B, n, dim)`` states."""

    def __init__(self, n_items: int, cfg: SASRecConfig) -> None:
        super().__init__()
        self.n_items, self.dropout = n_items, cfg.dropout
        self.item_emb = nn.Parameter(torch.zeros(n_items + 1, cfg.dim))
        self.pos_emb = nn.Parameter(torch.zeros(cfg.max_len, cfg.dim))
        self.blocks = nn.ModuleList(_Block(cfg.dim, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_blocks))
        self.norm = nn.LayerNorm(cfg.dim)

    def reset_parameters(self, gen: torch.Generator, std: float) -> None:
        """Normal(0, std) embeddings and weight matrices (padding row zero), zero biases."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name in ("item_emb", "pos_emb") or name.split(".")[-1].startswith("w_"):
                    p.copy_(torch.randn(p.shape, generator=gen) * std)
            self.item_emb[self.n_items].zero_()

    def items(self) -> torch.Tensor:
        """The ``(n_items, dim)`` output table (tied with the input embedding)."""
        return self.item_emb[: self.n_items]

    def forward(self, seq: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Encode left-padded ``(B, n)`` item codes, ``n <= max_len`` (the latest ``n`` slots).

        Dropout is active only when a generator is given.
        """
        n = seq.shape[1]
        real = seq != self.n_items
        x = F.embedding(seq, self.item_emb, padding_idx=self.n_items) * math.sqrt(self.item_emb.shape[1])
        x = _dropout(x + self.pos_emb[-n:], self.dropout, gen)
        # causal, never a padding key; every query may see itself (no all-masked rows).
        allowed = (torch.ones(n, n, dtype=torch.bool).tril() & real[:, None, None, :]) | torch.eye(n, dtype=torch.bool)
        for block in self.blocks:
            x = block(x, allowed, gen)
        return self.norm(x)


# ------------------------------------------------------------------------------- model
class SASRec(Recommender):
    """SASRec next-item model with full-softmax (default), sampled-softmax or BPR training.

    Args:
        config: a dict for :class:`SASRecConfig`.
        seed: seeds the initialisation, shuffling, dropout and negative sampling.

    Attributes:
        history_: one dict per epoch: ``epoch``, ``loss``, ``seconds`` and, on evaluated
            epochs, ``valid``.
        best_epoch_: the epoch whose weights the model holds.
    """

    name = "sasrec"

    def __init__(self, config: dict[str, Any] | None = None, *, seed: int = 0) -> None:
        super().__init__()
        self.config = from_dict(SASRecConfig, config, where="sasrec config")
        self.seed = int(seed)
        self.net_: _SASRecNet | None = None
        self.hist_: torch.Tensor | None = None
        self.history_: list[dict[str, float]] = []
        self.best_epoch_, self.best_valid_ = 0, float("nan")

    # ------------------------------------------------------------------ training
    def _fit(self, dataset: Dataset, train: pd.DataFrame, valid: pd.DataFrame | None) -> None:
        cfg, pad = self.config, self.n_items_
        items, indptr = user_sequences(train, self.n_users_, by_time="timestamp" in train.columns)
        self.hist_ = torch.from_numpy(latest_history(items, indptr, cfg.max_len, pad))
        inputs, targets = training_windows(items, indptr, cfg.max_len, pad, last_only=cfg.windows == "last")
        gen = torch.Generator().manual_seed(self.seed)
        self.net_ = _SASRecNet(self.n_items_, cfg)
        self.net_.reset_parameters(gen, cfg.init_std)
        if len(inputs) == 0:
            logger.warning("sasrec: no user has two training items; the model keeps its initial weights")
            self.history_, self.best_epoch_ = [], 0
            return
        opt = torch.optim.Adam(self.net_.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
        inp, tgt = torch.from_numpy(inputs), torch.from_numpy(targets)
        with torch_threads(cfg.threads):
            hist = fit_epochs(
                lambda epoch: self._epoch(inp, tgt, opt, gen),
                stopping=EarlyStopping(cfg.epochs, cfg.eval_every, cfg.patience, cfg.progress),
                validate=validation_scorer(self, valid, metric=cfg.valid_metric),
                snapshot=lambda: {k: v.detach().clone() for k, v in self.net_.state_dict().items()},
                restore=lambda snap: self.net_.load_state_dict(snap),
                name="sasrec",
            )
        self.history_, self.best_epoch_, self.best_valid_ = hist.epochs, hist.best_epoch, hist.best_valid

    def _epoch(self, inp: torch.Tensor, tgt: torch.Tensor, opt: torch.optim.Optimizer, gen: torch.Generator) -> float:
        assert self.net_ is not None
        perm = torch.randperm(len(inp), generator=gen)
        total, count = 0.0, 0
        for start in range(0, len(perm), self.config.batch_size):
            idx = perm[start:start + self.config.batch_size]
            seq, target = inp[idx], tgt[idx]
            real = target != self.n_items_
            first = int(real.any(0).int().argmax())  # left padding: drop all-padding columns
            seq, target, real = seq[:, first:], target[:, first:], real[:, first:]
            hidden = self.net_(seq, gen)[real]
            loss = self._loss(hidden, target[real], gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * len(hidden), count + len(hidden)
        return total / max(count, 1)

    def _loss(self, hidden: torch.Tensor, target: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The configured loss of ``(P, dim)`` states against their ``(P,)`` next items."""
        assert self.net_ is not None
        table = self.net_.items()
        if self.config.loss == "softmax":
            return dot_softmax_loss(hidden, table, target)
        neg = torch.randint(self.n_items_, (self.config.n_negatives,), generator=gen)
        pos_scores = (hidden * table[target]).sum(-1)
        neg_scores = hidden @ table[neg].T
        accidental = neg[None, :] == target[:, None]
        if self.config.loss == "bpr":
            return bpr_loss(pos_scores, neg_scores, mask=~accidental)
        log_q = torch.full((1,), -math.log(self.n_items_))  # uniform q = 1 / n_items
        return sampled_softmax_loss(pos_scores, neg_scores, pos_log_q=log_q.expand(len(target)),
                                    neg_log_q=log_q.expand(len(neg)), accidental=accidental)

    # ------------------------------------------------------------------ scoring
    def score(self, users: np.ndarray) -> np.ndarray:
        """``(B, n_items)`` ``float32``: the last position's state dotted with every item."""
        check_fitted(self.net_ is not None and self.hist_ is not None, self.name)
        assert self.net_ is not None and self.hist_ is not None
        users = check_users(users, self.n_users_)
        out = np.empty((len(users), self.n_items_), np.float32)
        with torch.no_grad():
            table = self.net_.items()
            for start in range(0, len(users), _SCORE_BATCH):
                seq = self.hist_[torch.from_numpy(users[start:start + _SCORE_BATCH])]
                out[start:start + len(seq)] = (self.net_(seq)[:, -1] @ table.T).numpy()
        return out

    def observe(self, users: np.ndarray, items: np.ndarray, times: np.ndarray | None = None,
                weights: np.ndarray | None = None) -> None:
        """New events join the end of their users' sequences (in time order when ``times`` are
        given, else in the order given), so the next ranking reads them; no retraining."""
        super().observe(users, items, times, weights)
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        if self.hist_ is None or not len(users):
            return
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        keys = (np.arange(len(users)),) if times is None else (np.asarray(times).reshape(-1),)
        order = np.lexsort((*keys, users))
        users, items = users[order], items[order]
        hist, pad, width = self.hist_.numpy().copy(), self.n_items_, self.hist_.shape[1]
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        for a, b in zip(starts, np.r_[starts[1:], len(users)]):
            row = hist[users[a]]
            seq = np.concatenate([row[row != pad], items[a:b]])[-width:]
            hist[users[a]] = np.concatenate([np.full(width - len(seq), pad, np.int64), seq])
        self.hist_ = torch.from_numpy(hist)  # replaced, not written in place (see Recommender.observed)

    # -------------------------------------------------------------- persistence
    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        check_fitted(self.net_ is not None and self.hist_ is not None, self.name)
        assert self.net_ is not None and self.hist_ is not None
        arrays = {f"net.{k}": v.detach().numpy().copy() for k, v in self.net_.state_dict().items()}
        arrays["history"] = self.hist_.numpy().copy()
        fit_info = [self.seed, self.best_epoch_, self.best_valid_, len(self.history_)]
        arrays["fit_info"] = np.array(fit_info, dtype=np.float64)  # fit facts: the config stays a config
        return to_dict(self.config), arrays

    def _set_state(self, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.config = from_dict(SASRecConfig, config, where="sasrec config")
        info = np.asarray(arrays.get("fit_info", np.zeros(4)), dtype=np.float64).reshape(-1)
        if info.shape != (4,):
            raise ValueError(f"fit_info has shape {info.shape}, expected (4,)")
        self.seed, self.best_epoch_, self.best_valid_ = int(info[0]), int(info[1]), float(info[2])
        self.history_ = []
        hist = np.asarray(arrays["history"])
        shape = (self.n_users_, self.config.max_len)
        if hist.shape != shape or (hist.size and not 0 <= hist.min() <= hist.max() <= self.n_items_):
            raise ValueError(f"history has shape {hist.shape} or codes outside 0..{self.n_items_}")
        net = _SASRecNet(self.n_items_, self.config)
        state = {k[4:]: torch.from_numpy(np.array(v, dtype=np.float32))
                 for k, v in arrays.items() if k.startswith("net.")}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"network weights do not fit the config: {err}") from None
        self.net_, self.hist_ = net, torch.from_numpy(hist.astype(np.int64))
