"""The PostgreSQL event store (psycopg 3, imported only when used)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from mgrec.errors import ConfigError, MgrecError
from mgrec.store.base import _T, SCHEMA_VERSION, EventStore, _check_version, _one_line

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
