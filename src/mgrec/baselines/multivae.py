"""Mult-VAE: a variational autoencoder over each user's item set with a multinomial
likelihood (Liang, Krishnan, Hoffman & Jebara, WWW 2018), in PyTorch on the CPU.

The encoder reads the user's binary training row ``x``, L2-normalised, with input dropout,
through ``hidden`` tanh layers to the mean ``mu`` and log-variance ``logvar`` of a Gaussian
over a ``latent``-dimensional ``z``; the decoder mirrors it back to one logit per item. The
loss per user is the negative multinomial log-likelihood ``-sum_i x_i log softmax(f(z))_i``
plus ``beta`` times ``KL(q(z | x) || N(0, I))``, where ``beta`` grows linearly with the
number of gradient steps, ``min(anneal_cap, step / total_anneal_steps)``.

Scoring uses ``z = mu`` of the user's training row (no dropout, no sampling), so a fitted
model scores any user from ``seen_`` alone. Users without training items get the decoder's
response to an empty row, a popularity-like ranking.

All randomness (initialisation, user shuffling, the dropout masks and the reparameterisation
noise) comes from one ``torch.Generator`` seeded with ``seed``: two fits with the same seed,
data and thread count give bit-identical weights, whatever the global torch RNG holds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from mgrec.baselines import check_fitted, check_users
from mgrec.config import from_dict, to_dict
from mgrec.data.dataset import Dataset
from mgrec.metrics import METRICS
from mgrec.recommender import Recommender
from mgrec.training import EarlyStopping, fit_epochs, torch_threads, validation_scorer

__all__ = [
    "MultiVAE",
    "MultiVAEConfig",
    "VAENetwork",
    "anneal_beta",
    "gaussian_kl",
    "multinomial_nll",
]

logger = logging.getLogger(__name__)

_NET = "net."  # prefix of the network's weights in the saved arrays


@dataclass
class MultiVAEConfig:
    """Mult-VAE hyperparameters (defaults from the paper).

    Attributes:
        hidden: sizes of the encoder's hidden tanh layers; the decoder uses them reversed.
        latent: size of ``z``.
        dropout: probability of dropping each input entry while training (kept entries
            are scaled by ``1 / (1 - dropout)``).
        anneal_cap: the largest KL weight ``beta``.
        total_anneal_steps: gradient steps over which ``beta`` grows from 0 to 1 (capped at
            ``anneal_cap``); ``0`` uses ``anneal_cap`` from the first step.
        lr: Adam learning rate.
        reg: Adam weight decay on all weights and biases.
        batch_size: users per step.
        epochs: maximum number of epochs.
        eval_every: evaluate on the validation data every this many epochs.
        patience: stop after this many evaluations without improvement.
        valid_metric: the early-stopping metric, ``name@k`` as in :mod:`mgrec.evaluation`.
        threads: torch intra-op threads while training (restored afterwards); ``0`` keeps
            the current setting. A fixed count keeps results independent of the machine.
        progress: show a tqdm bar over epochs.
    """

    hidden: tuple[int, ...] = (600,)
    latent: int = 200
    dropout: float = 0.5
    anneal_cap: float = 0.2
    total_anneal_steps: int = 200_000
    lr: float = 1e-3
    reg: float = 0.0
    batch_size: int = 500
    epochs: int = 300
    eval_every: int = 1
    patience: int = 20
    valid_metric: str = "ndcg@10"
    threads: int = 1
    progress: bool = False

    def __post_init__(self) -> None:
        self.hidden = tuple(self.hidden)
        for name in ("latent", "batch_size", "epochs", "eval_every", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be at least 1, got {list(self.hidden)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.anneal_cap < 0 or self.total_anneal_steps < 0:
            raise ValueError("anneal_cap and total_anneal_steps must be >= 0")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.reg < 0 or self.threads < 0:
            raise ValueError("reg and threads must be >= 0")
        name, _, k = self.valid_metric.partition("@")
        if name not in METRICS or not k.isdigit() or int(k) < 1:
            raise ValueError(
                f"valid_metric must look like 'ndcg@10' with a metric from "
                f"{', '.join(METRICS)}; got {self.valid_metric!r}"
            )


# ---------------------------------------------------------------------------- pieces
def anneal_beta(step: int, total_steps: int, cap: float) -> float:
    """The KL weight at gradient step ``step`` (0-based): ``min(cap, step / total_steps)``.

    Args:
        step: gradient steps taken before this one.
        total_steps: steps over which the weight would reach 1; ``0`` means no annealing.
        cap: the largest weight.

    Returns:
        ``beta``.

    Example:
        >>> anneal_beta(50, 1000, 0.2), anneal_beta(5000, 1000, 0.2)
        (0.05, 0.2)
    """
    if total_steps <= 0:
        return float(cap)
    return float(min(cap, step / total_steps))


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Batch mean of ``KL(N(mu, diag(exp(logvar))) || N(0, I))``.

    Per row: ``0.5 * sum_d (exp(logvar_d) + mu_d^2 - 1 - logvar_d)``.

    Args:
        mu: ``(B, D)`` means.
        logvar: ``(B, D)`` log-variances.

    Returns:
        A scalar tensor.
    """
    return (0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar)).sum(dim=1).mean()


def multinomial_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Batch mean of the negative multinomial log-likelihood ``-sum_i x_i log softmax(logits)_i``.

    Args:
        logits: ``(B, N)`` decoder outputs.
        x: ``(B, N)`` item counts (binary rows here).

    Returns:
        A scalar tensor.
    """
    return -(F.log_softmax(logits, dim=1) * x).sum(dim=1).mean()


class VAENetwork(nn.Module):
    """Encoder and decoder MLPs of Mult-VAE with explicit, generator-seeded parameters.

    Weights use Xavier-normal initialisation and biases start at zero; nothing touches the
    global torch RNG.

    Args:
        n_items: catalogue size (input and output width).
        hidden: encoder hidden sizes.
        latent: size of ``z``.
        generator: source of the initial weights; ``None`` leaves them zero (for loading).
    """

    def __init__(
        self,
        n_items: int,
        hidden: Sequence[int],
        latent: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.latent = int(latent)
        enc = [n_items, *hidden, 2 * latent]
        dec = [latent, *reversed(list(hidden)), n_items]
        self.enc_w, self.enc_b = self._layers(enc, generator)
        self.dec_w, self.dec_b = self._layers(dec, generator)

    @staticmethod
    def _layers(
        dims: Sequence[int], generator: torch.Generator | None
    ) -> tuple[nn.ParameterList, nn.ParameterList]:
        weights, biases = nn.ParameterList(), nn.ParameterList()
        for d_in, d_out in pairwise(dims):
            w = torch.zeros(d_out, d_in)
            if generator is not None:
                w.normal_(0.0, math.sqrt(2.0 / (d_in + d_out)), generator=generator)
            weights.append(nn.Parameter(w))
            biases.append(nn.Parameter(torch.zeros(d_out)))
        return weights, biases

    @staticmethod
    def _mlp(h: torch.Tensor, weights: nn.ParameterList, biases: nn.ParameterList) -> torch.Tensor:
        last = len(weights) - 1
        for n, (w, b) in enumerate(zip(weights, biases)):
            h = F.linear(h, w, b)
            if n < last:
                h = torch.tanh(h)
        return h

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)``, each ``(B, latent)``, of an already normalised input."""
        out = self._mlp(x, self.enc_w, self.enc_b)
        return out[:, : self.latent], out[:, self.latent:]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, n_items)`` logits."""
        return self._mlp(z, self.dec_w, self.dec_b)


def _input_rows(
    matrix: sp.csr_matrix, users: np.ndarray, dropout: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, x_in)``: the binary rows of ``users`` and the encoder input.

    ``x_in`` is each row divided by its L2 norm, then (when ``generator`` is given and
    ``dropout > 0``) with each non-zero entry dropped with probability ``dropout`` and the
    rest scaled by ``1 / (1 - dropout)``. Dropping a zero changes nothing, so masks are drawn
    for the non-zeros only.
    """
    rows = matrix[users]
    counts = np.diff(rows.indptr)
    r = torch.from_numpy(np.repeat(np.arange(len(users)), counts).astype(np.int64))
    c = torch.from_numpy(rows.indices.astype(np.int64))
    x = torch.zeros(len(users), matrix.shape[1])
    x[r, c] = 1.0
    norm = torch.from_numpy(np.sqrt(np.maximum(counts, 1)).astype(np.float32))
    vals = 1.0 / norm[r]
    if generator is not None and dropout > 0 and len(vals):
        keep = torch.rand(len(vals), generator=generator) >= dropout
        vals = vals * keep / (1.0 - dropout)
    x_in = torch.zeros_like(x)
    x_in[r, c] = vals
    return x, x_in


class MultiVAE(Recommender):
    """Variational autoencoder with a multinomial likelihood over each user's items.

    Args:
        config: a dict for :class:`MultiVAEConfig`.
        seed: seeds the initialisation, shuffling, dropout and sampling.

    Attributes:
        history_: one dict per epoch: ``epoch``, ``loss``, ``seconds`` and, on evaluated
            epochs, ``valid`` (the early-stopping metric).
        best_epoch_: the epoch whose weights the model holds (the last one without
            validation data).
        best_valid_: its validation score (``nan`` without validation data).
        steps_: gradient steps taken (drives the KL annealing).
    """

    name = "multivae"

    def __init__(self, config: dict[str, Any] | None = None, *, seed: int = 0) -> None:
        super().__init__()
        self.config = from_dict(MultiVAEConfig, config, where="multivae config")
        self.seed = int(seed)
        self.net_: VAENetwork | None = None
        self.history_: list[dict[str, float]] = []
        self.best_epoch_: int = 0
        self.best_valid_: float = float("nan")
        self.steps_: int = 0

    # ------------------------------------------------------------------ training
    def _fit(self, dataset: Dataset, train: pd.DataFrame, valid: pd.DataFrame | None) -> None:
        with torch_threads(self.config.threads):
            self._train(valid)

    def _train(self, valid: pd.DataFrame | None) -> None:
        cfg = self.config
        assert self.seen_ is not None
        gen = torch.Generator().manual_seed(self.seed)
        self.net_ = VAENetwork(self.n_items_, cfg.hidden, cfg.latent, gen)
        self.steps_ = 0
        active = np.flatnonzero(np.diff(self.seen_.indptr) > 0)
        if len(active) == 0:
            logger.warning("multivae: no training interactions; the model keeps its initial weights")
            self.net_.eval()
            return
        opt = torch.optim.Adam(self.net_.parameters(), lr=cfg.lr, weight_decay=cfg.reg)
        stopping = EarlyStopping(cfg.epochs, cfg.eval_every, cfg.patience, cfg.progress)
        hist = fit_epochs(
            lambda epoch: self._epoch(active, opt, gen),
            stopping=stopping,
            validate=validation_scorer(self, valid, metric=cfg.valid_metric),
            snapshot=self._snapshot,
            restore=self._restore,
            name="multivae",
        )
        self.history_, self.best_epoch_, self.best_valid_ = hist.epochs, hist.best_epoch, hist.best_valid
        self.net_.eval()

    def _epoch(self, active: np.ndarray, opt: torch.optim.Optimizer, gen: torch.Generator) -> float:
        cfg = self.config
        assert self.net_ is not None and self.seen_ is not None
        self.net_.train()
        order = active[torch.randperm(len(active), generator=gen).numpy()]
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            users = order[start:start + cfg.batch_size]
            x, x_in = _input_rows(self.seen_, users, cfg.dropout, gen)
            mu, logvar = self.net_.encode(x_in)
            eps = torch.randn(mu.shape, generator=gen)
            z = mu + eps * torch.exp(0.5 * logvar)
            beta = anneal_beta(self.steps_, cfg.total_anneal_steps, cfg.anneal_cap)
            loss = multinomial_nll(self.net_.decode(z), x) + beta * gaussian_kl(mu, logvar)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.steps_ += 1
            total += float(loss.detach()) * len(users)
        self.net_.eval()  # validation between epochs scores in evaluation mode
        return total / len(order)

    def _snapshot(self) -> dict[str, torch.Tensor]:
        assert self.net_ is not None
        return {k: v.detach().clone() for k, v in self.net_.state_dict().items()}

    def _restore(self, state: dict[str, torch.Tensor]) -> None:
        assert self.net_ is not None
        self.net_.load_state_dict(state)

    # ------------------------------------------------------------------ scoring
    def score(self, users: np.ndarray) -> np.ndarray:
        """``(B, n_items)`` ``float32``: decoder logits at ``z = mu`` of each training row."""
        check_fitted(self.net_ is not None and self.seen_ is not None, self.name)
        assert self.net_ is not None and self.seen_ is not None
        users = check_users(users, self.n_users_)
        _, x_in = _input_rows(self.seen_, users, 0.0, None)
        with torch.no_grad():
            mu, _ = self.net_.encode(x_in)
            out = self.net_.decode(mu)
        return out.numpy().astype(np.float32, copy=False)

    # -------------------------------------------------------------- persistence
    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        check_fitted(self.net_ is not None, self.name)
        assert self.net_ is not None
        arrays = {_NET + k: v.detach().numpy().copy() for k, v in self.net_.state_dict().items()}
        # Fit facts travel as an array: the config must stay a valid constructor argument.
        arrays["fit_info"] = np.array(
            [self.seed, self.best_epoch_, self.best_valid_, len(self.history_), self.steps_],
            dtype=np.float64,
        )
        return to_dict(self.config), arrays

    def _set_state(self, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.config = from_dict(MultiVAEConfig, config, where="multivae config")
        info = np.asarray(arrays.get("fit_info", np.zeros(5)), dtype=np.float64).reshape(-1)
        if info.shape != (5,):
            raise ValueError(f"fit_info has shape {info.shape}, expected (5,)")
        self.seed, self.best_epoch_, self.best_valid_ = int(info[0]), int(info[1]), float(info[2])
        self.steps_ = int(info[4])
        self.history_ = []
        net = VAENetwork(self.n_items_, self.config.hidden, self.config.latent)
        state = {k[len(_NET):]: torch.from_numpy(np.array(v, dtype=np.float32))
                 for k, v in arrays.items() if k.startswith(_NET)}
        expected = net.state_dict()
        if set(state) != set(expected):
            raise ValueError(f"network weights {sorted(state)} do not match {sorted(expected)}")
        for key, value in expected.items():
            if state[key].shape != value.shape:
                raise ValueError(f"{_NET}{key} has shape {tuple(state[key].shape)}, expected "
                                 f"{tuple(value.shape)} ({self.n_items_} items, config sizes)")
        net.load_state_dict(state)
        net.eval()
        self.net_ = net
