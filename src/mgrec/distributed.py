"""Data-parallel training across processes with ``torch.distributed`` (launched by torchrun).

``torchrun --nproc_per_node=N -m mgrec train ...`` starts ``N`` copies of the command with
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set;
:func:`session` reads them and joins the process group (``gloo`` on CPU, ``nccl`` on CUDA).
Without those variables, or with ``WORLD_SIZE=1``, nothing is initialised and every helper
here is a no-op, so single-process training is unchanged.

Each rank loads the same data (same seed, same split) and trains on its own shard of every
epoch: all ranks draw the same permutation from a generator seeded alike and take
``perm[rank::world]`` (:meth:`DistContext.shard`), padded by wrap-around so every rank runs the
same number of steps (as :class:`torch.utils.data.DistributedSampler` does). ``batch_size``
stays the *global* batch: each rank takes ``ceil(batch_size / world)`` examples per step
(:meth:`DistContext.local_batch`), so an epoch has the same number of optimizer steps and
the tuned hyperparameters keep their meaning.

Why an explicit gradient all-reduce rather than wrapping the network in
:class:`torch.nn.parallel.DistributedDataParallel`: the fused model is never called as
``net(batch)``; a step runs ``net.user_vectors``, ``net.item_vectors``, the item tower and the
behaviour encoder's ``states`` under ``shared_content()``, and which parameters get a
gradient changes from step to step (cold dropout, sampled negatives). DDP only synchronises
gradients for work done inside its own ``forward`` and needs ``find_unused_parameters`` for
the rest. So after ``loss.backward()`` :meth:`DistContext.average_gradients` flattens every
gradient into one buffer per dtype (one bucket), all-reduces it once with
:func:`torch.distributed.all_reduce` and divides by the world size: the same averaged
gradient DDP computes, with no hooks. A parameter gets a gradient if any rank produced one
(zeros from the others), as with DDP, so every replica applies the same optimizer step and
the replicas stay identical (:meth:`DistContext.check_replicas` verifies this at the end).

Validation (full ranking) runs on rank 0 alone and its score is broadcast, so every rank
takes the same early-stopping decision and stops at the same epoch. Files are written by
rank 0 only (:attr:`DistContext.is_main`).
"""

from __future__ import annotations

import datetime
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from mgrec.errors import ConfigError

__all__ = ["DEVICE_ENV", "DistContext", "current", "env_ranks", "select_device", "backend_for", "init_from_env",
           "session", "teardown"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Forces the training device (``cpu``, ``cuda``, ``cuda:1``); unset: CUDA when available.
DEVICE_ENV = "MGREC_DEVICE"


def env_ranks(environ: dict[str, str] | None = None) -> tuple[int, int, int] | None:
    """``(rank, local_rank, world_size)`` from torchrun's variables, or ``None`` without them.

    Raises:
        ConfigError: for values that are not integers or are out of range.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return None
    values = {}
    for name, default in (("RANK", None), ("WORLD_SIZE", None), ("LOCAL_RANK", "0")):
        text = env.get(name, default)
        if text is None:
            raise ConfigError(f"distributed launch: {name} is not set (RANK and WORLD_SIZE go together; "
                              "start with torchrun)")
        try:
            values[name] = int(text)
        except ValueError:
            raise ConfigError(f"distributed launch: {name}={text!r} is not an integer") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"distributed launch: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} "
                          "are inconsistent (need 0 <= RANK < WORLD_SIZE)")
    return rank, local, world


def select_device(local_rank: int = 0) -> torch.device:
    """``$MGREC_DEVICE`` if set, else ``cuda:<local_rank>`` when CUDA is present, else CPU.

    Raises:
        ConfigError: for an unknown device name or CUDA asked for but missing.
    """
    name = os.environ.get(DEVICE_ENV, "").strip()
    if not name:
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{DEVICE_ENV}={name!r} is not a device (cpu, cuda, cuda:1 ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{DEVICE_ENV}={name!r}, but CUDA is not available")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    elif device.type != "cpu":
        raise ConfigError(f"{DEVICE_ENV}={name!r}: only cpu and cuda are supported")
    return device


def backend_for(device: torch.device) -> str:
    """``nccl`` for CUDA devices, ``gloo`` for CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, the world size and its device.

    With ``world_size == 1`` every collective is a no-op and :meth:`shard` returns the input.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        """Whether there are other processes to talk to."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints results."""
        return self.rank == 0

    # ------------------------------------------------------------------ sharding
    def shard(self, indices: np.ndarray) -> np.ndarray:
        """This rank's share ``indices[rank::world]`` of an epoch's order.

        The order is first padded by wrap-around to a multiple of the world size, so every
        rank gets ``ceil(n / world)`` entries (and runs the same number of steps); the union
        over ranks is the whole epoch, with at most ``world - 1`` examples seen twice.
        """
        if not self.enabled or len(indices) == 0:
            return indices
        pad = (-len(indices)) % self.world_size
        if pad:
            indices = np.concatenate([indices, np.resize(indices, pad)])
        return indices[self.rank::self.world_size]

    def local_batch(self, batch_size: int) -> int:
        """Examples per rank and step when ``batch_size`` is the global batch."""
        return max(1, math.ceil(batch_size / self.world_size))

    # --------------------------------------------------------------- collectives
    @property
    def comm_device(self) -> torch.device:
        """Where tensors must live for the backend (CUDA for nccl, CPU for gloo)."""
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def average_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """Replace each ``param.grad`` by its mean over ranks (one all-reduce per dtype).

        A parameter without a gradient on this rank contributes zeros; it gets the average
        when any rank produced a gradient, and keeps ``None`` (skipped by the optimizer) only
        when none did, exactly as :class:`~torch.nn.parallel.DistributedDataParallel` would.
        """
        if not self.enabled:
            return
        groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for p in params:
            if p.grad is not None and p.grad.is_sparse:
                raise ConfigError("distributed training does not support sparse gradients")
            groups.setdefault((p.dtype, p.device), []).append(p)
        for (dtype, device), ps in groups.items():
            has = [p.grad is not None for p in ps]
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps]
                             + [torch.tensor(has, dtype=dtype, device=device)])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            n_grad = flat.numel() - len(ps)
            flags, grads = flat[n_grad:], flat[:n_grad].div_(self.world_size)
            offset = 0
            for p, flag in zip(ps, flags.tolist(), strict=True):
                n = p.numel()
                p.grad = grads[offset:offset + n].view_as(p) if flag > 0 else None
                offset += n

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums of ``values`` over ranks (float64)."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor(list(values), dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().tolist()

    def reduce_array(self, values: np.ndarray, op: str = "sum") -> np.ndarray:
        """Element-wise ``sum``, ``min`` or ``max`` of a numeric array over ranks (its dtype kept:
        integers stay exact)."""
        values = np.asarray(values)
        if not self.enabled:
            return values.copy()
        ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
        t = torch.from_numpy(np.ascontiguousarray(values)).to(self.comm_device)
        dist.all_reduce(t, op=ops[op])
        return t.cpu().numpy()

    def same_steps(self, steps: list[np.ndarray]) -> list[np.ndarray]:
        """Sharded data: this rank's steps made as many as the busiest rank's, by running its
        own steps again from the start (every rank must take part in each step's all-reduce)."""
        most, fewest = (int(v) for v in self.reduce_array(np.array([len(steps), -len(steps)], np.int64), "max"))
        fewest = -fewest
        if fewest == 0 and most > 0:  # every rank raises: none is left waiting in a collective
            raise ConfigError(f"a rank of {self.world_size} has no training step this epoch; use fewer processes")
        if len(steps) == most:
            return steps
        return [steps[i % len(steps)] for i in range(most)]

    def mean(self, total: float, count: int) -> float:
        """``sum(total) / sum(count)`` over ranks: the mean loss of a sharded epoch."""
        if not self.enabled:
            return total / max(count, 1)
        s, n = self.sum([total, count])
        return s / max(n, 1.0)

    def broadcast_float(self, value: float, src: int = 0) -> float:
        """Rank ``src``'s ``value`` on every rank."""
        if not self.enabled:
            return float(value)
        t = torch.tensor([value], dtype=torch.float64, device=self.comm_device)
        dist.broadcast(t, src=src)
        return float(t.item())

    def broadcast_int(self, value: int, src: int = 0) -> int:
        """Rank ``src``'s ``value`` on every rank."""
        if not self.enabled:
            return int(value)
        t = torch.tensor([value], dtype=torch.int64, device=self.comm_device)
        dist.broadcast(t, src=src)
        return int(t.item())

    def broadcast_module(self, module: torch.nn.Module, src: int = 0) -> None:
        """Copy rank ``src``'s parameters and buffers to every rank (as DDP does at start)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                if t.device == self.comm_device:
                    dist.broadcast(t.detach(), src=src)  # shares t's storage: in place
                else:
                    buf = t.detach().to(self.comm_device)
                    dist.broadcast(buf, src=src)
                    t.copy_(buf)

    def gather_bytes(self, data: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``uint8`` tensor ``data`` (all the same length), in rank order, on CPU."""
        data = data.detach().to(torch.uint8).reshape(-1)
        if not self.enabled:
            return [data.cpu()]
        local = data.to(self.comm_device)
        out = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(out, local)
        return [t.cpu() for t in out]

    def check_replicas(self, module: torch.nn.Module) -> None:
        """Raise when the ranks' parameters differ (a sign that gradients were not averaged).

        Raises:
            RuntimeError: when any rank's checksum differs from rank 0's.
        """
        if not self.enabled:
            return
        with torch.no_grad():
            local = sum(float(p.detach().double().abs().sum()) for p in module.parameters())
        mine = torch.tensor([local], dtype=torch.float64, device=self.comm_device)
        out = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(out, mine)
        sums = [float(t.item()) for t in out]
        if any(s != sums[0] for s in sums):
            raise RuntimeError(f"data-parallel replicas diverged: parameter checksums {sums}")

    def scored_on_main(self, score: Callable[[], float] | None,
                       module: torch.nn.Module) -> Callable[[], float] | None:
        """``score`` run by rank 0 alone, with ``module`` on the CPU, its result broadcast to
        every rank (so all take the same early-stopping decision); ``score`` itself for a
        single process on the CPU."""
        if score is None or (not self.enabled and self.device.type == "cpu"):
            return score

        def shared() -> float:
            value = float("nan")
            if self.is_main:
                with self.on_cpu(module):
                    value = score()
            return self.broadcast_float(value)

        return shared

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.enabled:
            dist.barrier()

    # ---------------------------------------------------------------- placement
    def place(self, obj: Any) -> Any:
        """``obj.to(device)`` for a tensor or a :class:`~mgrec.encoders.base.Batch`; on the CPU
        ``obj`` itself (batches are built there)."""
        return obj if self.device.type == "cpu" else obj.to(self.device)

    def device_scope(self) -> Any:
        """A context in which torch factory functions default to :attr:`device` (CPU: none)."""
        return self.device if self.device.type != "cpu" else nullcontext()

    def in_device_scope(self, fn: Callable[..., T]) -> Callable[..., T]:
        """``fn`` run inside :meth:`device_scope` (``fn`` itself on the CPU)."""
        if self.device.type == "cpu":
            return fn

        def scoped(*args: Any, **kwargs: Any) -> T:
            with self.device_scope():
                return fn(*args, **kwargs)

        return scoped

    @contextmanager
    def on_cpu(self, module: torch.nn.Module) -> Iterator[None]:
        """Run the block with ``module`` on the CPU (scoring works on CPU batches), then move it
        back; a no-op when training on the CPU. Parameters keep their identity, so an optimizer
        built over them stays valid."""
        if self.device.type == "cpu":
            yield
            return
        module.to("cpu")
        try:
            yield
        finally:
            module.to(self.device)


_CURRENT: DistContext | None = None


def current() -> DistContext:
    """The context :func:`session` set up; else the process group the caller initialised
    itself, if any; else a single process on :func:`select_device`."""
    if _CURRENT is not None:
        return _CURRENT
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local,
                           device=select_device(local))
    return DistContext(device=select_device(0))


def init_from_env(timeout_s: float = 1800.0) -> DistContext:
    """Join the process group torchrun describes (see the module docstring).

    Without torchrun's variables, or with ``WORLD_SIZE=1``, returns a single-process context
    and initialises nothing. Ranks other than 0 log warnings and errors only.

    Raises:
        ConfigError: for malformed variables.
    """
    global _CURRENT
    ranks = env_ranks()
    if ranks is None or ranks[2] == 1:
        _CURRENT = DistContext(device=select_device(ranks[1] if ranks else 0))
        return _CURRENT
    rank, local_rank, world = ranks
    device = select_device(local_rank)
    backend = backend_for(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
    _CURRENT = DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)
    if rank != 0:
        logging.getLogger("mgrec").setLevel(logging.WARNING)
    logger.info("distributed: rank %d of %d (local %d), backend %s, device %s",
                rank, world, local_rank, backend, device)
    return _CURRENT


def teardown() -> None:
    """Leave the process group (if any) and forget the context."""
    global _CURRENT
    _CURRENT = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def session() -> Iterator[DistContext]:
    """:func:`init_from_env` for the block, :func:`teardown` after it (also on errors)."""
    try:
        yield init_from_env()
    finally:
        teardown()
