"""A durable store of interaction events for the recommendation server.

The server accepts events (``POST /v1/events``) and must keep every acknowledged one; the
recommendations of a user then read them back. :func:`open_store` picks a backend from a
URL:

* ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` (SQLAlchemy style) or
  ``sqlite://:memory:`` -- the default: an embedded SQLite file, no server to run. The file
  is in WAL mode with ``synchronous=FULL``, so once :meth:`EventStore.add` returns, the
  events survive a ``kill -9`` of the process (and a power cut). The parent folder is
  created.
* ``postgresql://user:password@host:port/db`` (or ``postgres://``) -- PostgreSQL through
  psycopg 3, imported only when such a URL is opened, so SQLite users do not need it.
  ``synchronous_commit`` is forced on for the session, so a commit is on disk when it
  returns.

Design:

* One table ``mgrec_events(seq, user_id, item_id, ts, weight)`` whose ``seq`` is an
  increasing integer key assigned by the database (``AUTOINCREMENT`` / ``BIGSERIAL``), with
  an index on ``user_id``; and ``mgrec_meta(key, value)`` holding ``schema_version``. The
  schema is created idempotently when a store is opened; a database written by an unknown
  schema version is refused.
* Every store owns one connection guarded by a :class:`threading.Lock`, so the server may
  call it from a thread pool. PostgreSQL reconnects when the connection is found broken.
* :meth:`EventStore.add` validates the whole batch before writing anything, then writes it
  in one transaction: a batch is stored whole or not at all.
* Writers are serialised (SQLite ``BEGIN IMMEDIATE``; a transaction-level advisory lock on
  PostgreSQL), so events become visible in ``seq`` order and a reader that remembers the
  last ``seq`` it saw can poll ``frame(since=last)`` without missing rows, even with several
  server processes on one database.
* :meth:`EventStore.frame` runs one query and builds the :class:`pandas.DataFrame` from
  column lists.

Every problem a user can cause (bad URL, unreachable server, unopenable file, bad event)
becomes a one-line :class:`~mgrec.errors.ConfigError`, :class:`~mgrec.errors.DataError` or
:class:`~mgrec.errors.MgrecError`; passwords are masked in every message.

Example:
    >>> with open_store("sqlite://:memory:") as store:
    ...     store.add([Event("u1", "i1", 1700000000.0), Event("u1", "i2", weight=2.0)])
    ...     store.frame()["item_id"].tolist()
    [1, 2]
    ['i1', 'i2']
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import numpy as np
import pandas as pd

from mgrec.errors import ConfigError, DataError, MgrecError

__all__ = ["SCHEMA_VERSION", "Event", "EventStore", "PostgresEventStore", "SQLiteEventStore", "mask_url",
           "open_store", "validate_events"]

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


# ------------------------------------------------------------------------------------------
# SQLite
# ------------------------------------------------------------------------------------------

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS mgrec_meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS mgrec_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    ts DOUBLE PRECISION NULL,
    weight REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS mgrec_events_user_id ON mgrec_events (user_id);
"""


class SQLiteEventStore(EventStore):
    """Events in an embedded SQLite file (WAL mode, ``synchronous=FULL``).

    Args:
        path: the database file (created with its parent folder), or ``":memory:"``.
        url: the URL the store was opened with, for messages.
        timeout: seconds to wait for another process's write lock.

    Raises:
        ConfigError: the file cannot be opened or is not an mgrec event store.
    """

    def __init__(self, path: str | Path, url: str | None = None, *, timeout: float = 30.0) -> None:
        memory = str(path) == ":memory:"
        super().__init__(url or ("sqlite://:memory:" if memory else f"sqlite:///{path}"))
        self.path = None if memory else Path(path)
        try:
            if self.path is not None:
                if self.path.is_dir():
                    raise ConfigError(f"cannot open event store {self.url}: {self.path} is a folder")
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit transactions; add() issues BEGIN IMMEDIATE itself.
            self._conn = sqlite3.connect(
                ":memory:" if memory else str(self.path),
                timeout=timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as err:
            raise ConfigError(f"cannot open event store {self.url} (path {path}): {_one_line(err)}") from None
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _SQLITE_SCHEMA.split(";"):
                    if stmt.strip():
                        self._conn.execute(stmt)
                self._conn.execute(
                    "INSERT OR IGNORE INTO mgrec_meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
                row = self._conn.execute("SELECT value FROM mgrec_meta WHERE key = 'schema_version'").fetchone()
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            _check_version(row[0] if row else None, self.url)
        except sqlite3.Error as err:
            self._conn.close()
            raise ConfigError(f"cannot open event store {self.url} (path {path}): {_one_line(err)}") from None
        except BaseException:
            self._conn.close()
            raise

    def journal_mode(self) -> str:
        """Return SQLite's journal mode (``"wal"`` for a file, ``"memory"`` for ``:memory:``)."""
        return self._locked(lambda: str(self._conn.execute("PRAGMA journal_mode").fetchone()[0]))

    def _run(self, what: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except sqlite3.Error as err:
            raise MgrecError(f"event store {self.url}: {what} failed: {_one_line(err)}") from None

    def _add(self, rows: list[tuple[str, str, float | None, float]]) -> list[int]:
        def write() -> list[int]:
            conn = self._conn
            # IMMEDIATE takes the write lock now: no other writer can interleave, so the
            # AUTOINCREMENT keys of this batch are consecutive and end at last_insert_rowid().
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT INTO mgrec_events (user_id, item_id, ts, weight) VALUES (?, ?, ?, ?)", rows)
                last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return list(range(last - len(rows) + 1, last + 1))

        return self._run("add", write)

    def _select(self, since: int, users: list[str] | None) -> list[tuple[Any, ...]]:
        sql = "SELECT seq, user_id, item_id, ts, weight FROM mgrec_events WHERE seq > ?"
        params: list[Any] = [since]
        if users is not None:
            # One parameter whatever the number of users (no SQLITE_MAX_VARIABLE_NUMBER limit).
            sql += " AND user_id IN (SELECT value FROM json_each(?))"
            params.append(json.dumps(users))
        sql += " ORDER BY seq"
        return self._run("read", lambda: self._conn.execute(sql, params).fetchall())

    def _count(self) -> int:
        return self._run("count", lambda: int(self._conn.execute("SELECT COUNT(*) FROM mgrec_events").fetchone()[0]))

    def _last_seq(self) -> int:
        return self._run(
            "read", lambda: int(self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM mgrec_events").fetchone()[0])
        )

    def _close(self) -> None:
        self._conn.close()


# ------------------------------------------------------------------------------------------
# PostgreSQL
# ------------------------------------------------------------------------------------------

_PG_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS mgrec_meta (key TEXT PRIMARY KEY, value TEXT)",
    """CREATE TABLE IF NOT EXISTS mgrec_events (
        seq BIGSERIAL PRIMARY KEY,
        user_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        ts DOUBLE PRECISION NULL,
        weight REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS mgrec_events_user_id ON mgrec_events (user_id)",
)
# Keys of the transaction-level advisory locks that serialise schema creation and writers.
_PG_LOCK_SCHEMA = 0x6D677265
_PG_LOCK_WRITE = 0x6D677266


class PostgresEventStore(EventStore):
    """Events in a PostgreSQL table, through one psycopg 3 connection guarded by a lock.

    Args:
        url: ``postgresql://`` or ``postgres://`` URL, as libpq reads it.
        connect_timeout: seconds to wait for the server, unless the URL sets one.

    Raises:
        ConfigError: psycopg is missing, the URL is malformed, or the server cannot be
            reached or refuses the login.
    """

    def __init__(self, url: str, *, connect_timeout: int = 10) -> None:
        super().__init__(url)
        try:
            import psycopg
        except ImportError:
            raise ConfigError(f"event store {self.url} needs psycopg 3 (pip install 'psycopg[binary]')") from None
        self._psycopg = psycopg
        try:
            params = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error as err:
            raise ConfigError(f"malformed PostgreSQL URL {self.url}: {_one_line(err, url)}") from None
        self._password = str(params.get("password") or "") or None
        self._conninfo = url
        self._connect_kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            self._connect_kwargs["connect_timeout"] = connect_timeout
        self._conn: Any = None
        with self._lock:
            self._connection()
            self._create_schema()

    def _text(self, err: BaseException) -> str:
        return _one_line(err, self._conninfo, self._password)

    def _connection(self) -> Any:
        """Return the open connection, connecting (again) when there is none or it broke."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                conn.close()
            self._conn = None
        psycopg = self._psycopg
        try:
            conn = psycopg.connect(self._conninfo, **self._connect_kwargs)
        except psycopg.Error as err:
            raise ConfigError(f"cannot connect to event store {self.url}: {self._text(err)}") from None
        try:
            conn.execute("SET synchronous_commit TO on")
        except psycopg.Error as err:
            conn.close()
            raise MgrecError(f"event store {self.url}: {self._text(err)}") from None
        self._conn = conn
        return conn

    def _create_schema(self) -> None:
        psycopg = self._psycopg
        conn = self._conn
        try:
            with conn.transaction():
                # Concurrent CREATE TABLE IF NOT EXISTS can still collide; serialise it.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK_SCHEMA,))
                for stmt in _PG_SCHEMA:
                    conn.execute(stmt)
                conn.execute(
                    "INSERT INTO mgrec_meta (key, value) VALUES ('schema_version', %s) ON CONFLICT (key) DO NOTHING",
                    (str(SCHEMA_VERSION),),
                )
                row = conn.execute("SELECT value FROM mgrec_meta WHERE key = 'schema_version'").fetchone()
        except psycopg.Error as err:
            conn.close()
            raise ConfigError(f"cannot create the tables of event store {self.url}: {self._text(err)}") from None
        try:
            _check_version(row[0] if row else None, self.url)
        except ConfigError:
            conn.close()
            raise

    def _run(self, what: str, fn: Callable[[Any], _T], *, retry: bool) -> _T:
        """Run ``fn(connection)``; retry once on a fresh connection if ``retry`` and it broke.

        Writes are never retried: a commit whose answer was lost may have happened, and
        writing again would store the batch twice.
        """
        psycopg = self._psycopg
        for attempt in (0, 1):
            conn = self._connection()
            try:
                return fn(conn)
            except psycopg.OperationalError as err:
                if retry and attempt == 0 and conn.broken:
                    continue
                raise MgrecError(f"event store {self.url}: {what} failed: {self._text(err)}") from None
            except psycopg.Error as err:
                raise MgrecError(f"event store {self.url}: {what} failed: {self._text(err)}") from None
        raise AssertionError("unreachable")

    def _add(self, rows: list[tuple[str, str, float | None, float]]) -> list[int]:
        users, items, ts, weights = (list(col) for col in zip(*rows))

        def write(conn: Any) -> list[int]:
            with conn.transaction():
                # One writer at a time, across processes: rows then commit in seq order, so a
                # reader polling frame(since=last) never skips a row committed late.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK_WRITE,))
                cur = conn.execute(
                    "INSERT INTO mgrec_events (user_id, item_id, ts, weight) "
                    "SELECT u, i, t, w FROM unnest(%s::text[], %s::text[], %s::float8[], %s::real[]) "
                    "WITH ORDINALITY AS x(u, i, t, w, n) ORDER BY n RETURNING seq",
                    (users, items, ts, weights),
                )
                # nextval() runs in input order (ORDER BY n); RETURNING's order is unspecified.
                return sorted(int(r[0]) for r in cur.fetchall())

        return self._run("add", write, retry=False)

    def _select(self, since: int, users: list[str] | None) -> list[tuple[Any, ...]]:
        sql = "SELECT seq, user_id, item_id, ts, weight FROM mgrec_events WHERE seq > %s"
        params: list[Any] = [since]
        if users is not None:
            sql += " AND user_id = ANY(%s::text[])"
            params.append(users)
        sql += " ORDER BY seq"
        return self._run("read", lambda conn: conn.execute(sql, params).fetchall(), retry=True)

    def _count(self) -> int:
        return self._run(
            "count", lambda conn: int(conn.execute("SELECT COUNT(*) FROM mgrec_events").fetchone()[0]), retry=True
        )

    def _last_seq(self) -> int:
        return self._run(
            "read",
            lambda conn: int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM mgrec_events").fetchone()[0]),
            retry=True,
        )

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# ------------------------------------------------------------------------------------------


def _sqlite_path(url: str) -> str:
    """Return the file path (or ``":memory:"``) of a ``sqlite://`` URL."""
    rest = url[len("sqlite://") :]
    if rest in (":memory:", "/:memory:"):
        return ":memory:"
    if not rest.startswith("/"):
        raise ConfigError(
            f"malformed SQLite URL {mask_url(url)}: use sqlite:///relative/path.db, "
            "sqlite:////absolute/path.db or sqlite://:memory:"
        )
    path = rest[1:]  # sqlite:///rel -> "rel"; sqlite:////abs -> "/abs"
    if not path or path.endswith("/") or any(ch in path for ch in "?#\x00"):
        raise ConfigError(f"malformed SQLite URL {mask_url(url)}: no database file path (or a ? # in it)")
    return path


def open_store(url: str) -> EventStore:
    """Open (creating if needed) the event store at ``url``.

    Args:
        url: ``sqlite:///relative.db``, ``sqlite:////absolute.db``, ``sqlite://:memory:``,
            ``postgresql://user:password@host:port/db`` or ``postgres://...``.

    Returns:
        An open store; close it, or use it in a ``with`` block.

    Raises:
        ConfigError: unknown scheme, malformed URL, or a database that cannot be opened
            (the message names the URL, password masked).
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"event store URL is empty: {url!r}")
    url = url.strip()
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ConfigError(
            f"malformed event store URL {mask_url(url)!r}: expected sqlite:///path.db or postgresql://host/db"
        )
    if scheme == "sqlite":
        return SQLiteEventStore(_sqlite_path(url), url)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        if scheme == "postgresql+psycopg":
            url = "postgresql" + url[len(scheme) :]
        return PostgresEventStore(url)
    raise ConfigError(f"unknown event store scheme {scheme!r} in {mask_url(url)}: use sqlite:/// or postgresql://")
