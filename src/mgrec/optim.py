"""The fused model's optimiser: AdamW, with sparse updates for very large id tables.

With sparse id tables (``MGRConfig.sparse_ids``), a step's gradient of the user and item
embedding tables covers only the rows the step looked up. Dense AdamW would still read and
write every row of every table on every step, so an epoch would cost ``O(steps x rows)``,
quadratic in the data size. :class:`SplitAdamW` keeps AdamW (decoupled weight decay) for the
dense parameters and :class:`LazyAdamW` for the sparse tables: Adam's moments and the
decoupled decay are updated for the looked-up rows only (the "lazy Adam" convention of
large-embedding trainers), so per step the work is proportional to the rows touched.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["LazyAdamW", "SplitAdamW", "make_optimizer", "sparse_parameters"]


def sparse_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The weights of ``module``'s embedding tables built with ``sparse=True`` (each once)."""
    seen: dict[int, nn.Parameter] = {}
    for m in module.modules():
        if isinstance(m, nn.Embedding) and m.sparse:
            seen.setdefault(id(m.weight), m.weight)
    return list(seen.values())


class LazyAdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay for sparse-gradient tables, touching looked-up rows only.

    The update of a looked-up row is :class:`torch.optim.SparseAdam`'s (moments, bias
    correction by the table's step count) after the row is decayed by ``1 - lr x
    weight_decay``; rows a step does not look up keep their weights and moments. Compared to
    SparseAdam it coalesces the gradient once and gathers and scatters the touched rows
    (``index_select`` / ``index_copy_``) instead of masking the whole table, which is what a
    step costs on tables of millions of rows. The state (``step``, ``exp_avg``,
    ``exp_avg_sq`` per table) has SparseAdam's keys.
    """

    def __init__(self, params: Iterable[nn.Parameter], *, lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: ARG002 - the Optimizer signature
        for group in self.param_groups:
            (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
            decay = 1.0 - lr * group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise ValueError("LazyAdamW takes sparse gradients (an nn.Embedding with sparse=True)")
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                grad = p.grad.coalesce()  # one row per looked-up id, duplicates summed
                rows, g = grad.indices()[0], grad.values()
                m = state["exp_avg"].index_select(0, rows).lerp_(g, 1.0 - beta1)
                v = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
                step_size = lr * math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
                w = p.index_select(0, rows)
                if decay != 1.0:
                    w.mul_(decay)
                w.addcdiv_(m, v.sqrt_().add_(eps), value=-step_size)
                p.index_copy_(0, rows, w)


class SplitAdamW:
    """AdamW over ``dense`` and :class:`LazyAdamW` over ``sparse`` parameters, with
    the optimiser interface the training loop and checkpoints use (``param_groups``,
    ``zero_grad``, ``step``, ``state_dict``, ``load_state_dict``; state indices run over the
    dense parameters first)."""

    def __init__(self, dense: Iterable[nn.Parameter], sparse: Iterable[nn.Parameter], *, lr: float,
                 weight_decay: float) -> None:
        dense, sparse = list(dense), list(sparse)
        self.dense = torch.optim.AdamW(dense, lr=lr, weight_decay=weight_decay, fused=True) if dense else None
        self.sparse = LazyAdamW(sparse, lr=lr, weight_decay=weight_decay) if sparse else None
        self._parts = [o for o in (self.dense, self.sparse) if o is not None]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self._parts for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self._parts:
            o.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        for o in self._parts:
            o.step()

    def state_dict(self) -> dict[str, Any]:
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        offset = 0
        for o in self._parts:
            sd = o.state_dict()
            state.update({offset + int(k): v for k, v in sd["state"].items()})
            for g in sd["param_groups"]:
                groups.append({**g, "params": [offset + int(i) for i in g["params"]]})
            offset += sum(len(g["params"]) for g in o.param_groups)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        offset, state = 0, state_dict["state"]
        for o in self._parts:
            n = sum(len(g["params"]) for g in o.param_groups)
            own = o.state_dict()
            o.load_state_dict({"state": {k - offset: v for k, v in state.items() if offset <= int(k) < offset + n},
                               "param_groups": own["param_groups"]})
            offset += n


def make_optimizer(net: nn.Module, name: str, *, lr: float, weight_decay: float) -> Any:
    """``adamw`` (fused; :class:`SplitAdamW` when ``net`` has sparse id tables) or ``sgd``
    (which takes sparse gradients as they are, with L2 ``weight_decay`` on dense ones)."""
    params = [p for p in net.parameters() if p.requires_grad]
    sparse = {id(p) for p in sparse_parameters(net)}
    if name == "sgd":
        if sparse and weight_decay:
            return torch.optim.SGD([{"params": [p for p in params if id(p) not in sparse]},
                                    {"params": [p for p in params if id(p) in sparse], "weight_decay": 0.0}],
                                   lr=lr, weight_decay=weight_decay)
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if sparse:
        return SplitAdamW([p for p in params if id(p) not in sparse], [p for p in params if id(p) in sparse],
                          lr=lr, weight_decay=weight_decay)
    # fused: one kernel over all parameters (the same update up to float rounding)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
