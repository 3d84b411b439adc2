"""Building the fused network of :class:`mgrec.mgr.MGR` from a JSON-ready description.

:func:`net_spec` records every size the network depends on (feature cardinalities, token
counts, granularities, time span); :func:`build_net` turns that description plus the context
and item arrays into a seeded :class:`~mgrec.model.MGRNet`. Saving the spec with the weights
means a loaded model rebuilds exactly the architecture it was trained with.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from mgrec.batching import ContextBuilder
from mgrec.feature_arrays import ItemArrays
from mgrec.mgr_config import resolve_loss

__all__ = ["build_net", "friend_adjacency", "net_spec"]


def net_spec(cfg: Any, granularities: list[str], behavior_mode: str, ctx: ContextBuilder,
             items: ItemArrays) -> dict[str, Any]:
    """Everything :func:`build_net` needs besides arrays, as plain JSON values.

    Args:
        cfg: the :class:`~mgrec.mgr.MGRConfig`.
        granularities: the resolved granularities.
        behavior_mode: ``sequence`` or ``set``.
        ctx: the context builder (user feature sizes, time span).
        items: the item arrays (item feature sizes).

    Returns:
        The spec dict.
    """
    ua, fa = ctx.user_arrays, items.features
    return {
        "n_users": ctx.n_users, "n_items": ctx.n_items, "dim": cfg.dim,
        "granularities": list(granularities), "fusion": cfg.fusion, "behavior_mode": behavior_mode,
        "id_dropout": cfg.id_dropout, "dropout": cfg.dropout, "max_len": cfg.max_len,
        "hist_dropout": cfg.hist_dropout, "linear": cfg.linear, "item_bias": cfg.item_bias,
        "user_ids": cfg.user_ids,
        "item": {"cardinalities": list(fa.cardinalities), "n_numeric": int(fa.num.shape[1]),
                 "n_bag_tokens": fa.n_bag_tokens - 1, "n_time_features": int(items.time_feats.shape[1])},
        "user": {"cardinalities": list(ua.cardinalities), "n_numeric": int(ua.num.shape[1]),
                 "n_bag_tokens": ua.n_bag_tokens - 1},
        "t_min": ctx.t_min, "t_max": ctx.t_max,
        "loss": (loss := resolve_loss(cfg, ctx.n_items)),
        "sparse_ids": use_sparse_ids(cfg, behavior_mode, ctx.n_users + ctx.n_items, loss=loss),
    }


#: ``sparse_ids="auto"`` switches to sparse id-table gradients from this many users + items.
SPARSE_IDS_MIN_ROWS = 50_000


def use_sparse_ids(cfg: Any, behavior_mode: str, rows: int, *, loss: str | None = None) -> bool:
    """Whether the user and item id tables train with sparse gradients (see ``MGRConfig``):
    ``auto`` with a sampled loss (``loss``: the resolved one, default ``cfg.loss``), set-mode
    histories and large tables."""
    loss = cfg.loss if loss is None else loss
    if loss == "auto":
        raise ValueError("use_sparse_ids needs the resolved loss, not 'auto'")
    return cfg.sparse_ids == "auto" and loss != "softmax" and behavior_mode == "set" and rows >= SPARSE_IDS_MIN_ROWS


def friend_adjacency(ctx: ContextBuilder) -> sp.csr_matrix:
    """Binary symmetric ``(n_users, n_users)`` adjacency of the context's friend lists."""
    n = ctx.n_users
    rows = np.repeat(np.arange(n, dtype=np.int64), ctx.friends.shape[1])
    cols = ctx.friends.reshape(-1)
    keep = cols < n
    rows, cols = rows[keep], cols[keep]
    a = sp.csr_matrix((np.ones(2 * len(rows), np.float32), (np.r_[rows, cols], np.r_[cols, rows])), shape=(n, n))
    a.data[:] = 1.0
    return a


def build_net(spec: dict[str, Any], ctx: ContextBuilder, items: ItemArrays, *, seed: int) -> nn.Module:
    """A freshly initialised :class:`~mgrec.model.MGRNet` (weights from ``Generator(seed)``).

    Args:
        spec: from :func:`net_spec`.
        ctx: the context builder (friend lists for the social graph).
        items: item arrays, loaded into the tower's buffers.
        seed: seeds the initialisation.

    Returns:
        The network in training mode.
    """
    from mgrec.encoders import init_module
    from mgrec.encoders.behavior import BehaviorEncoder
    from mgrec.encoders.item import ItemContentEncoder, ItemTower
    from mgrec.encoders.social import SocialEncoder
    from mgrec.encoders.time import TimeEncoder
    from mgrec.encoders.user import UserEncoder
    from mgrec.fusion import make_fusion
    from mgrec.model import MGRNet

    dim, grans = int(spec["dim"]), list(spec["granularities"])
    n_users, n_items = int(spec["n_users"]), int(spec["n_items"])
    si, su = spec["item"], spec["user"]
    sparse = bool(spec.get("sparse_ids", False))
    tower = ItemTower(n_items, dim, cat_cardinalities=si["cardinalities"], n_numeric=si["n_numeric"],
                      n_bag_tokens=si["n_bag_tokens"], n_time_features=si["n_time_features"],
                      id_dropout=spec["id_dropout"], use_content=True, sparse_ids=sparse)
    tower.set_item_data(*items.tensors())
    encoders: dict[str, nn.Module] = {}
    if "user" in grans:
        encoders["user"] = UserEncoder(
            n_users, dim, cat_cardinalities=su["cardinalities"], n_numeric=su["n_numeric"],
            n_bag_tokens=su["n_bag_tokens"], id_dropout=spec["id_dropout"],
            missing_columns=list(range(1, su["n_numeric"], 2)), sparse_ids=sparse,
            trained=ctx.trained if spec.get("user_ids", True) else np.zeros(n_users, dtype=bool))
    if "item" in grans:
        encoders["item"] = ItemContentEncoder(tower, dim)
    if "behavior" in grans:
        encoders["behavior"] = BehaviorEncoder(tower, dim, mode=spec["behavior_mode"], max_len=spec["max_len"],
                                               dropout=spec["dropout"],
                                               hist_dropout=float(spec.get("hist_dropout", 0.0)),
                                               linear=bool(spec.get("linear", False)))
    if "social" in grans:
        table = encoders["user"].id_embedding if "user" in encoders else \
            nn.Embedding(n_users + 1, dim, padding_idx=n_users, sparse=sparse)
        encoders["social"] = SocialEncoder(table, tower, dim, adjacency=friend_adjacency(ctx))
    if "time" in grans:
        encoders["time"] = TimeEncoder(dim, t_min=float(spec["t_min"]), t_max=float(spec["t_max"]))
    # models saved before the item bias have no key: they were built without it
    net = MGRNet(tower, encoders, make_fusion(spec["fusion"], grans, dim),
                 bias_coordinate=bool(spec.get("item_bias", False)))
    init_module(net, torch.Generator().manual_seed(int(seed)))
    return net
