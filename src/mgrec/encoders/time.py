"""Granularity ``time``: when the request happens.

From the request time ``batch.time`` (unix seconds, UTC): an hour-of-day embedding (24), a
day-of-week embedding (7, Monday = 0), a log2-bucket embedding of the gap since the user's
last event (from ``batch.hist_times``; unknown without history), and the drift position
``(time - t_min) / (t_max - t_min)`` (0 at the start of the training data, 1 at its end)
through a small MLP, which lets the model follow slow changes of taste and catalogue.
A row with an unknown (NaN) time is absent.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mgrec.encoders import N_TIME_BUCKETS, time_buckets
from mgrec.encoders.base import Batch

__all__ = ["TimeEncoder"]

_DAY = 86_400.0
_HOUR = 3_600.0
#: 1970-01-01 was a Thursday: day index 0 maps to weekday 3 (Monday = 0).
_EPOCH_WEEKDAY = 3
#: Drift positions are clipped to this range (requests far outside the training span).
_DRIFT_RANGE = (-1.0, 2.0)


class TimeEncoder(nn.Module):
    """Request-time context as one vector.

    Args:
        dim: the output size ``D``.
        t_min: the earliest training timestamp (unix seconds).
        t_max: the latest training timestamp (a span of 0 is treated as 1 second).
        n_time_buckets: log2 gap buckets, including bucket 0 for an unknown gap.
        n_items: the padding item code; when given, the last history slot counts as an event
            iff ``hist_items[:, -1] != n_items``, else iff ``hist_times[:, -1] > 0`` (the
            :class:`Batch` contract pads times with 0).

    Raises:
        ValueError: for non-finite ``t_min``/``t_max`` or ``t_max < t_min``.
    """

    granularity = "time"

    def __init__(
        self,
        dim: int,
        *,
        t_min: float,
        t_max: float,
        n_time_buckets: int = N_TIME_BUCKETS,
        n_items: int | None = None,
    ) -> None:
        super().__init__()
        if not (math.isfinite(t_min) and math.isfinite(t_max)) or t_max < t_min:
            raise ValueError(f"need finite t_min <= t_max, got {t_min}, {t_max}")
        self.out_dim = int(dim)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.n_time_buckets = int(n_time_buckets)
        self.n_items = n_items
        self.hour = nn.Embedding(24, dim)
        self.weekday = nn.Embedding(7, dim)
        self.gap = nn.Embedding(n_time_buckets, dim)
        self.drift = nn.Sequential(nn.Linear(1, dim), nn.Tanh(), nn.Linear(dim, dim))

    def features(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The discrete and continuous time inputs of each row.

        Returns:
            ``hour`` (0..23) and ``weekday`` (Monday = 0) int64, ``gap_bucket`` int64 (0 =
            unknown), ``drift`` float (clipped to [-1, 2]) and ``present`` bool, each ``(B,)``;
            rows with an unknown time use ``t_min`` (and are absent).
        """
        t = batch.time.to(torch.float64)
        present = torch.isfinite(t)
        safe = torch.where(present, t, torch.full_like(t, self.t_min))
        days = torch.floor(safe / _DAY)
        hour = torch.floor((safe - days * _DAY) / _HOUR).clamp(0, 23).to(torch.int64)
        weekday = torch.remainder(days.to(torch.int64) + _EPOCH_WEEKDAY, 7)
        gap = torch.full_like(safe, float("nan"))
        if batch.hist_times.shape[1]:
            last = batch.hist_times[:, -1].to(torch.float64)
            if self.n_items is None:
                real = last > 0
            else:
                real = batch.hist_items[:, -1] != self.n_items
            gap = torch.where(real, safe - last, gap)
        span = max(self.t_max - self.t_min, 1.0)
        drift = ((safe - self.t_min) / span).clamp(*_DRIFT_RANGE)
        return {"hour": hour, "weekday": weekday, "present": present,
                "gap_bucket": time_buckets(gap, self.n_time_buckets), "drift": drift}

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(vectors (B, D), present (B,) bool)``."""
        f = self.features(batch)
        drift = f["drift"].to(self.hour.weight.dtype).unsqueeze(-1)
        vec = self.hour(f["hour"]) + self.weekday(f["weekday"]) + self.gap(f["gap_bucket"]) \
            + self.drift(drift)
        present = f["present"]
        return vec * present.unsqueeze(-1).to(vec.dtype), present
