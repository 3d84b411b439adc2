"""ONNX export of the fused model's scoring path, for serving without PyTorch.

:func:`export_onnx` writes one ONNX graph: the user tower (every granularity encoder and the
fusion, in evaluation mode) applied to the tensors of a :class:`~mgrec.encoders.base.Batch`,
the inner product with the item matrix (a constant: the trained catalogue plus any items
added with :meth:`~mgrec.mgr.MGR.add_items`) and the top-``k``::

    inputs  users, user_cat, user_num, user_bag, user_bag_w, hist_items, hist_times,
            hist_weights, friends, friend_items, time      (the Batch fields; dim 0 = batch)
    outputs scores (B, n_items) float32      (unless scores=False)
            top_items (B, k) int64, top_scores (B, k) float32

When the model has the friends' items part (:mod:`mgrec.social_items`), the graph adds its
weight times each item's count among ``friend_items``, as :meth:`MGR.score <mgrec.mgr.MGR.score>`
does. When the model has a profile prior (:mod:`mgrec.profile_prior`), the graph also holds it as
constants and, like :meth:`MGR.score <mgrec.mgr.MGR.score>`, gives its scores to the rows with
no history and no friends (every ``hist_items`` is the padding code, every ``friends`` too).

The inputs are what :meth:`ContextBuilder.batch <mgrec.batching.ContextBuilder.batch>` (known
users) or :meth:`~mgrec.batching.ContextBuilder.cold_batch` (new users) build, as numpy. The
ranking is the model's raw one: nothing is filtered (no seen items), exactly
``model.recommend(users, k, filter_seen=False)``.

Two parts of the PyTorch model are data, not operators, and are folded into constants: the
item tower's content table (what :meth:`ItemTower.shared_content` caches) and, when the
social encoder reaches friends of friends, its multi-hop rows ``Â^hops E`` for every user
(computed in PyTorch with scipy; a table of ``(n_users + 1, D)`` floats). The graph is
therefore only valid for the weights it was exported from.

:func:`check_onnx` runs the file with onnxruntime and compares it with PyTorch. Importing
this module loads neither ``onnx``/``onnxscript`` (the exporter loads them when exporting) nor
``onnxruntime`` (imported inside :func:`check_onnx`).
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mgrec.encoders.base import Batch
from mgrec.errors import ConfigError
from mgrec.io import atomic_write_bytes

__all__ = ["BATCH_INPUTS", "OUTPUTS", "check_onnx", "export_onnx", "onnx_inputs"]

logger = logging.getLogger(__name__)

#: The graph's input names: the :class:`Batch` fields, in order.
BATCH_INPUTS: tuple[str, ...] = tuple(f.name for f in fields(Batch))
#: The graph's output names (``scores`` is left out with ``scores=False``).
OUTPUTS: tuple[str, ...] = ("scores", "top_items", "top_scores")
#: Opset of the exported graph.
OPSET = 18


class _ScoringGraph(nn.Module):
    """``Batch`` tensors -> (scores,) top items, top scores, with constant item vectors."""

    def __init__(self, net: nn.Module, items: torch.Tensor, k: int, with_scores: bool,
                 prior: _PriorGraph | None = None, social: tuple[float, int] | None = None) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("items_t", items.T.contiguous())
        self.k, self.with_scores = int(k), bool(with_scores)
        self.prior = prior
        # the friends' items part: (weight, the padding code of friend_items)
        self.social = social

    def forward(self, users: torch.Tensor, user_cat: torch.Tensor, user_num: torch.Tensor,
                user_bag: torch.Tensor, user_bag_w: torch.Tensor, hist_items: torch.Tensor,
                hist_times: torch.Tensor, hist_weights: torch.Tensor, friends: torch.Tensor,
                friend_items: torch.Tensor, time: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = Batch(users=users, user_cat=user_cat, user_num=user_num, user_bag=user_bag,
                      user_bag_w=user_bag_w, hist_items=hist_items, hist_times=hist_times,
                      hist_weights=hist_weights, friends=friends, friend_items=friend_items, time=time)
        # MGRNet.user_vectors without its len(batch), which would fix the batch size
        parts, present = {}, {}
        for g, enc in self.net.encoders.items():
            parts[g], present[g] = enc(batch)
        p, _ = self.net.fusion(parts, present)
        scores = p @ self.items_t
        if self.social is not None:
            scores = scores + self.social[0] * _friend_counts(friend_items, self.social[1], scores.shape[1])
        if self.prior is not None:
            scores = self.prior(scores, user_cat, user_bag, user_bag_w, hist_items, friends)
        top_scores, top_items = torch.topk(scores, self.k, dim=1, largest=True, sorted=True)
        if self.with_scores:
            return scores, top_items, top_scores
        return top_items, top_scores


def _friend_counts(friend_items: torch.Tensor, pad: int, n_items: int) -> torch.Tensor:
    """``(B, n_items)`` each item's count among ``friend_items`` (:func:`mgrec.social_items.friend_item_counts`):
    padding goes to an extra column, dropped."""
    flat = friend_items.reshape(friend_items.shape[0], -1)
    flat = torch.where(flat >= pad, torch.full_like(flat, n_items), flat)
    counts = torch.zeros(flat.shape[0], n_items + 1, dtype=torch.float32)
    return counts.scatter_add(1, flat, torch.ones_like(flat, dtype=torch.float32))[:, :n_items]


class _PriorGraph(nn.Module):
    """The profile prior as constants: rows without history and friends get its scores."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        prior, ctx = model.prior_, model.context_
        self.register_buffer("weights", torch.from_numpy(prior.weights))
        self.register_buffer("keep", torch.from_numpy(prior.keep.astype(np.float32)))
        self.register_buffer("cat_offsets", torch.from_numpy(prior.cat_offsets))
        self.register_buffer("items_t", torch.from_numpy(prior.item_vectors(model.n_items_).T.copy()))
        self.bag_offset, self.n_items, self.n_users = int(prior.bag_offset), int(ctx.n_items), int(ctx.n_users)

    def _embed(self, codes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # codes past the table (none from the encoder) read row 0 at weight 0, as design_matrix drops them
        inside = codes < self.weights.shape[0]
        codes = torch.where(inside, codes, torch.zeros_like(codes))
        w = weights * self.keep[codes] * inside.to(weights.dtype)
        return (self.weights[codes] * w.unsqueeze(-1)).sum(dim=1)

    def forward(self, scores: torch.Tensor, user_cat: torch.Tensor, user_bag: torch.Tensor,
                user_bag_w: torch.Tensor, hist_items: torch.Tensor, friends: torch.Tensor) -> torch.Tensor:
        e = self._embed(user_cat + self.cat_offsets, (user_cat > 0).to(torch.float32))
        e = e + self._embed(user_bag + self.bag_offset, torch.where(user_bag > 0, user_bag_w, 0.0))
        q = torch.cat([e, torch.ones_like(e[:, :1])], dim=1)
        alone = (hist_items == self.n_items).all(dim=1) & (friends == self.n_users).all(dim=1)
        return torch.where(alone.unsqueeze(1), q @ self.items_t, scores)


def _check_mgr(model: Any) -> None:
    from mgrec.mgr import MGR

    if not isinstance(model, MGR):
        name = getattr(model, "name", type(model).__name__)
        raise ConfigError(f"ONNX export covers the fused model 'mgr' only, not {name!r}")
    if model.net_ is None or model.context_ is None:
        raise ConfigError("mgr: the model is not fitted; fit or load it before exporting")
    if getattr(model, "item_item_", None) is not None:
        raise ConfigError("ONNX export does not cover the item-item part of the behaviour granularity "
                          "(it reads the whole training history); train with item_item 'none' to export")



@contextmanager
def _frozen_data(model: Any) -> Iterator[None]:
    """Within the block the network reads its data-derived tables as constants: the item
    tower's content cache and each social encoder's multi-hop rows."""
    from mgrec.encoders.social import SocialEncoder

    net = model.net_
    patched: list[nn.Module] = []
    with torch.no_grad(), net.item_tower.shared_content():
        try:
            for enc in net.encoders.values():
                if isinstance(enc, SocialEncoder) and enc._adj is not None:
                    table = enc._multi_hop(torch.arange(enc.n_users + 1))  # row n_users: zero
                    enc._multi_hop = _HopLookup(table)  # instance attribute shadows the method
                    patched.append(enc)
            yield
        finally:
            for enc in patched:
                del enc.__dict__["_multi_hop"]


class _HopLookup:
    """``users -> table[users]``: the multi-hop term as a constant gather."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table

    def __call__(self, users: torch.Tensor) -> torch.Tensor:
        return self.table[users]


def _example_batch(model: Any) -> Batch:
    """Two rows to trace with (a batch of 1 would be specialised to a constant size)."""
    return model.context_.batch(np.array([0, min(1, model.context_.n_users - 1)], dtype=np.int64))


def _export_bytes(model: Any, k: int, scores: bool, dynamo: bool, optimize: bool = True) -> bytes:
    net = model.net_
    was_training = net.training
    net.eval()
    try:
        with _frozen_data(model):
            items = model._item_matrix().detach().to(torch.float32)
            prior = _PriorGraph(model) if getattr(model, "prior_", None) is not None else None
            part = getattr(model, "social_items_", None)
            social = None if part is None else (float(part.scale), int(model.context_.n_items))
            graph = _ScoringGraph(net, items, min(k, items.shape[0]), scores, prior, social).eval()
            batch = _example_batch(model)
            args = tuple(getattr(batch, name) for name in BATCH_INPUTS)
            outputs = list(OUTPUTS if scores else OUTPUTS[1:])
            if dynamo:
                # torch.export first, with the batch dimension dynamic: torch.onnx.export would
                # otherwise fall back silently to a draft export with a fixed batch size
                dim = torch.export.Dim("batch")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # torch-internal deprecations
                    exported = torch.export.export(graph, args, strict=False,
                                                   dynamic_shapes={n: {0: dim} for n in BATCH_INPUTS})
                    program = torch.onnx.export(exported, args, None, dynamo=True, input_names=list(BATCH_INPUTS),
                                                output_names=outputs, opset_version=OPSET, optimize=optimize,
                                                verbose=False, external_data=False)
                return program.model_proto.SerializeToString()
            buf = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    graph, args, buf, dynamo=False, input_names=list(BATCH_INPUTS),
                    output_names=outputs, opset_version=OPSET,
                    dynamic_axes={name: {0: "batch"} for name in [*BATCH_INPUTS, *outputs]})
            return buf.getvalue()
    finally:
        net.train(was_training)


def export_onnx(model: Any, path: str | Path, *, k: int = 10, scores: bool = True,
                dynamo: bool | None = None) -> None:
    """Write the fused model's scoring path as an ONNX graph (see the module docstring).

    Args:
        model: a fitted :class:`~mgrec.mgr.MGR`.
        path: the ``.onnx`` file to write; replaced atomically (a temporary file in the same
            folder, then a rename), so a failed export leaves no partial file.
        k: the top-``k`` length (clipped to the catalogue size).
        scores: also output the full ``(B, n_items)`` score matrix.
        dynamo: ``True`` uses the ``torch.export`` based exporter, ``False`` the TorchScript
            one; ``None`` tries ``torch.export`` first and falls back to TorchScript.

    Raises:
        ConfigError: for a model that is not a fitted ``mgr`` or a bad ``k``.
    """
    _check_mgr(model)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if dynamo is None:
        try:
            data = _export_bytes(model, int(k), scores, dynamo=True)
        except Exception as first:  # noqa: BLE001 - any exporter failure: try the other one
            logger.warning("mgr: torch.export based ONNX export failed (%s: %s); trying the TorchScript exporter",
                           type(first).__name__, _first_line(first))
            try:
                data = _export_bytes(model, int(k), scores, dynamo=False)
            except Exception as second:  # noqa: BLE001
                raise RuntimeError(f"ONNX export failed with both exporters: torch.export: "
                                   f"{type(first).__name__}: {_first_line(first)}; TorchScript: "
                                   f"{type(second).__name__}: {_first_line(second)}") from first
    else:
        data = _export_bytes(model, int(k), scores, dynamo=bool(dynamo))
    atomic_write_bytes(path, data)
    logger.info("mgr: wrote ONNX scoring graph %s (%.1f MB)", path, len(data) / 2**20)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def onnx_inputs(model: Any, users: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's input feed for known ``users`` (their training context), as numpy.

    Raises:
        ConfigError: for a model that is not a fitted ``mgr`` or bad user codes.
    """
    _check_mgr(model)
    batch = model.context_.batch(np.asarray(users, dtype=np.int64).reshape(-1))
    return {name: getattr(batch, name).numpy() for name in BATCH_INPUTS}


def check_onnx(model: Any, path: str | Path, users: np.ndarray, k: int = 10) -> dict[str, Any]:
    """Run an exported graph with onnxruntime on ``users`` and compare with PyTorch.

    The reference is ``model.recommend(users, k, filter_seen=False)`` (and ``model.score``
    for the full score matrix when the graph outputs it).

    Args:
        model: the :class:`~mgrec.mgr.MGR` the graph was exported from.
        path: the ``.onnx`` file.
        users: user codes to compare on.
        k: list length; at most the graph's own ``k``.

    Returns:
        ``{"users": n, "k": k, "top_k_agreement": share of users whose ordered top-k lists
        are identical, "top_k_set_agreement": share whose top-k sets are identical,
        "max_abs_score_diff": max |onnx - torch| over the full score matrix (over the top-k
        scores when the graph has no scores output), "max_abs_top_score_diff": the same over
        the top-k scores}``.

    Raises:
        ConfigError: for a model that is not a fitted ``mgr``, no or bad user codes, or a
            ``k`` longer than the graph's.
    """
    import onnxruntime as ort

    _check_mgr(model)
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    if len(users) == 0:
        raise ConfigError("check_onnx needs at least one user")
    opts = ort.SessionOptions()
    threads = torch.get_num_threads()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only (not the optimiser's notes)
    sess = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(names, onnx_inputs(model, users)), strict=True))
    graph_k = out["top_items"].shape[1]
    if k > graph_k:
        raise ConfigError(f"the graph was exported with k = {graph_k}; cannot check k = {k}")
    o_items, o_scores = out["top_items"][:, :k].astype(np.int64), out["top_scores"][:, :k]
    t_items, t_scores = model.recommend(users, k, filter_seen=False)
    t_items, t_scores = np.atleast_2d(t_items), np.atleast_2d(t_scores)
    ordered = (o_items == t_items).all(axis=1)
    as_sets = np.array([set(a) == set(b) for a, b in zip(o_items.tolist(), t_items.tolist(), strict=True)])
    top_diff = float(np.abs(o_scores - t_scores).max()) if o_scores.size else 0.0
    full_diff = top_diff
    if "scores" in out:
        full_diff = float(np.abs(out["scores"] - model.score(users)).max())
    return {"users": len(users), "k": int(k),
            "top_k_agreement": float(ordered.mean()), "top_k_set_agreement": float(as_sets.mean()),
            "max_abs_score_diff": full_diff, "max_abs_top_score_diff": top_diff}
