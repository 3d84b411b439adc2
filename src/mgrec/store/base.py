"""Shared parts of the event stores: the event, validation, the base class, URL masking."""

from __future__ import annotations

import math
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real
from types import TracebackType
from typing import Any, Self, TypeVar

import numpy as np
import pandas as pd

from mgrec.errors import ConfigError, DataError, MgrecError

SCHEMA_VERSION = 1
"""Version of the table layout; a database holding another version is refused."""

_COLUMNS = ("seq", "user_id", "item_id", "timestamp", "weight")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Event:
    """One interaction of a user with an item.

    Args:
        user_id: the user, a non-empty string.
        item_id: the item, a non-empty string.
        timestamp: when it happened, in unix seconds; ``None`` when unknown.
        weight: how strong the interaction is (a count, a rating); finite and ``>= 0``.
    """

    user_id: str
    item_id: str
    timestamp: float | None = None
    weight: float = 1.0


def mask_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``, for logs and error messages.

    Example:
        >>> mask_url("postgresql://u:secret@host:5432/db?password=x")
        'postgresql://u:***@host:5432/db?password=***'
    """
    masked = url
    head, sep, rest = url.partition("://")
    if sep:
        end = len(rest)
        for ch in "/?#":
            pos = rest.find(ch)
            if pos >= 0:
                end = min(end, pos)
        authority = rest[:end]
        if "@" in authority:
            userinfo, host = authority.rsplit("@", 1)
            if ":" in userinfo:
                user = userinfo.split(":", 1)[0]
                authority = f"{user}:***@{host}"
        masked = f"{head}://{authority}{rest[end:]}"
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", masked)


def _one_line(err: BaseException, url: str | None = None, password: str | None = None) -> str:
    """Collapse an exception's text (libpq messages span lines) into one line.

    Args:
        err: the exception.
        url: a raw URL the text may quote; it is replaced by its masked form.
        password: a password the text may quote; it is replaced by ``***`` (when it is long
            enough not to mangle ordinary words).
    """
    text = str(err)
    if url:
        text = text.replace(url, mask_url(url))
    if password and len(password) >= 4:
        text = text.replace(password, "***")
    return " ".join(text.split()) or type(err).__name__


class EventStore(ABC):
    """Durable, append-only store of :class:`Event` rows, numbered by an increasing ``seq``.

    Thread-safe: one connection guarded by a lock. Use :func:`open_store` to make one; a
    store is a context manager that closes itself.

    Attributes:
        url: the store's URL with any password masked, fit for logs.
    """

    url: str

    def __init__(self, url: str) -> None:
        self.url = mask_url(url)
        self._lock = threading.Lock()
        self._closed = False

    # -- public API -------------------------------------------------------------------------

    def add(self, events: Sequence[Event]) -> list[int]:
        """Store a batch of events in one transaction.

        The whole batch is validated first; when any event is bad nothing is written.

        Args:
            events: the events, in order.

        Returns:
            The ``seq`` given to each event, in the order of ``events`` (increasing). The
            events are durable when this returns.

        Raises:
            DataError: an event is bad; ``field`` names it, e.g. ``events[3].weight``.
            MgrecError: the database failed (disk full, server gone).
        """
        rows = _validate(events)
        if not rows:
            return []
        return self._locked(lambda: self._add(rows))

    def frame(self, since: int = 0, user_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """Return the stored events with ``seq > since`` as a table ordered by ``seq``.

        Args:
            since: only events after this ``seq`` (``0``: all of them).
            user_ids: only these users' events; ``None``: every user's.

        Returns:
            Columns ``seq`` (int64), ``user_id`` and ``item_id`` (object, str),
            ``timestamp`` (float64, NaN when unknown) and ``weight`` (float32).
        """
        since = int(since)
        users: list[str] | None = None
        if user_ids is not None:
            if isinstance(user_ids, str):
                raise DataError("must be a sequence of user ids, not one string", field="user_ids")
            users = [str(u) for u in user_ids]
            if not users:
                return _build_frame([])
        return _build_frame(self._locked(lambda: self._select(since, users)))

    def count(self) -> int:
        """Return how many events are stored."""
        return self._locked(self._count)

    def last_seq(self) -> int:
        """Return the highest ``seq`` stored, ``0`` when the store is empty."""
        return self._locked(self._last_seq)

    def close(self) -> None:
        """Close the connection; later calls raise :class:`MgrecError`. Closing twice is fine."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- backend hooks ----------------------------------------------------------------------

    def _locked(self, fn: Callable[[], _T]) -> _T:
        with self._lock:
            if self._closed:
                raise MgrecError(f"event store {self.url} is closed")
            return fn()

    @abstractmethod
    def _add(self, rows: list[tuple[str, str, float | None, float]]) -> list[int]: ...

    @abstractmethod
    def _select(self, since: int, users: list[str] | None) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    def _count(self) -> int: ...

    @abstractmethod
    def _last_seq(self) -> int: ...

    @abstractmethod
    def _close(self) -> None: ...


def _validate(events: Sequence[Event]) -> list[tuple[str, str, float | None, float]]:
    """Check every event; return them as rows ``(user_id, item_id, ts, weight)``."""
    if isinstance(events, Event):
        events = [events]
    rows = []
    for i, ev in enumerate(events):
        where = f"events[{i}]"
        if not isinstance(ev, Event):
            raise DataError(f"expected an Event, got {type(ev).__name__}", field=where)
        for name in ("user_id", "item_id"):
            value = getattr(ev, name)
            if not isinstance(value, str):
                raise DataError(f"{name} must be a string, got {type(value).__name__}", field=f"{where}.{name}")
            if not value.strip():
                raise DataError(f"{name} is empty", field=f"{where}.{name}")
            if "\x00" in value:
                raise DataError(f"{name} contains a NUL character", field=f"{where}.{name}")
        weight = ev.weight
        if isinstance(weight, bool) or not isinstance(weight, Real):
            raise DataError(f"weight must be a number, got {type(weight).__name__}", field=f"{where}.weight")
        weight = float(weight)
        if not math.isfinite(weight) or weight < 0:
            raise DataError(f"weight must be finite and >= 0, got {weight!r}", field=f"{where}.weight")
        ts = ev.timestamp
        if ts is not None:
            if isinstance(ts, bool) or not isinstance(ts, Real):
                raise DataError(f"timestamp must be a number, got {type(ts).__name__}", field=f"{where}.timestamp")
            ts = float(ts)
            if not math.isfinite(ts):
                raise DataError(f"timestamp must be finite, got {ts!r}", field=f"{where}.timestamp")
        rows.append((ev.user_id, ev.item_id, ts, weight))
    return rows


def validate_events(events: Sequence[Event]) -> None:
    """Check ``events`` as :meth:`EventStore.add` does, without writing.

    Raises:
        DataError: naming the first bad field (``events[i].weight`` ...).
    """
    _validate(events)


def _build_frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    """Turn ``(seq, user_id, item_id, ts, weight)`` rows into the typed frame."""
    if rows:
        seq, users, items, ts, weight = zip(*rows)
    else:
        seq = users = items = ts = weight = ()
    return pd.DataFrame(
        {
            "seq": np.fromiter(seq, dtype=np.int64, count=len(rows)),
            "user_id": pd.Series(list(users), dtype=object),
            "item_id": pd.Series(list(items), dtype=object),
            "timestamp": np.array(ts, dtype=np.float64),  # None -> NaN
            "weight": np.array(weight, dtype=np.float32),
        },
        columns=list(_COLUMNS),
    )


def _check_version(found: str | None, url: str) -> None:
    if found != str(SCHEMA_VERSION):
        raise ConfigError(
            f"event store {url} has schema_version {found!r}; this mgrec reads version {SCHEMA_VERSION} only"
        )
