"""The embedded SQLite event store (WAL mode, ``synchronous=FULL``)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mgrec.errors import ConfigError, MgrecError
from mgrec.store.base import _T, SCHEMA_VERSION, EventStore, _check_version, _one_line, mask_url

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
