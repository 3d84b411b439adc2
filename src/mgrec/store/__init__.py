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

from mgrec.errors import ConfigError
from mgrec.store.base import SCHEMA_VERSION, Event, EventStore, mask_url, validate_events
from mgrec.store.postgres import PostgresEventStore
from mgrec.store.sqlite import SQLiteEventStore, _sqlite_path

__all__ = ["SCHEMA_VERSION", "Event", "EventStore", "PostgresEventStore", "SQLiteEventStore", "mask_url",
           "open_store", "validate_events"]


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
