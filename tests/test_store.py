"""The durable event store: SQLite (always) and PostgreSQL (when MGREC_TEST_POSTGRES is set).

PostgreSQL tests need a server: ``eval "$(bash .ci/postgres.sh)"`` starts a throwaway one and
exports ``MGREC_TEST_POSTGRES``; without it they skip, and fail in CI (``CI=true``).
"""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mgrec.errors import ConfigError, DataError, MgrecError
from mgrec.store import Event, EventStore, PostgresEventStore, SQLiteEventStore, mask_url, open_store

SRC = Path(__file__).resolve().parents[1] / "src"


def _postgres_url() -> str:
    url = os.environ.get("MGREC_TEST_POSTGRES", "")
    if not url:
        msg = 'MGREC_TEST_POSTGRES is not set (start a server with: eval "$(bash .ci/postgres.sh)")'
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return url


def _clean_postgres(store: EventStore) -> None:
    """Empty the events table and restart its seq, so every test (and rerun) starts at seq 1."""
    import psycopg

    with psycopg.connect(os.environ["MGREC_TEST_POSTGRES"], autocommit=True) as conn:
        conn.execute("TRUNCATE mgrec_events RESTART IDENTITY")


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path) -> str:
    """A URL of an empty store of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    url = _postgres_url()
    with open_store(url) as store:
        _clean_postgres(store)
    return url


@pytest.fixture
def store(store_url):
    with open_store(store_url) as s:
        yield s


def _events() -> list[Event]:
    return [
        Event("alice", "book", 1_700_000_000.0, 1.0),
        Event("bob", "film", 1_700_000_100.5, 2.5),
        Event("alice", "song", None, 0.0),
        Event("carol", "book", 1_700_000_200.0, 4.0),
    ]


# -- round trip -----------------------------------------------------------------------------


def test_empty_store(store):
    assert store.count() == 0
    assert store.last_seq() == 0
    frame = store.frame()
    assert list(frame.columns) == ["seq", "user_id", "item_id", "timestamp", "weight"]
    assert len(frame) == 0
    assert frame.dtypes.to_dict() == {
        "seq": np.dtype("int64"),
        "user_id": np.dtype("O"),
        "item_id": np.dtype("O"),
        "timestamp": np.dtype("float64"),
        "weight": np.dtype("float32"),
    }
    assert store.add([]) == []
    assert store.count() == 0


def test_round_trip(store):
    seqs = store.add(_events())
    assert seqs == [1, 2, 3, 4]
    assert store.count() == 4
    assert store.last_seq() == 4
    frame = store.frame()
    assert frame["seq"].tolist() == [1, 2, 3, 4]
    assert frame["user_id"].tolist() == ["alice", "bob", "alice", "carol"]
    assert frame["item_id"].tolist() == ["book", "film", "song", "book"]
    np.testing.assert_array_equal(
        frame["timestamp"].to_numpy()[[0, 1, 3]], [1_700_000_000.0, 1_700_000_100.5, 1_700_000_200.0]
    )
    assert math.isnan(frame["timestamp"].iloc[2])  # None -> NaN
    np.testing.assert_array_equal(frame["weight"].to_numpy(), np.array([1.0, 2.5, 0.0, 4.0], dtype=np.float32))
    assert frame["seq"].dtype == np.int64 and frame["weight"].dtype == np.float32
    assert frame["timestamp"].dtype == np.float64
    assert all(isinstance(u, str) for u in frame["user_id"])

    more = store.add([Event("dave", "game", 5.0), Event("bob", "book")])
    assert more == [5, 6]
    assert store.last_seq() == 6 and store.count() == 6
    assert store.frame()["seq"].tolist() == [1, 2, 3, 4, 5, 6]


def test_since_and_user_filters(store):
    store.add(_events())
    store.add([Event("bob", "song", 10.0), Event("alice", "film", 11.0)])
    assert store.frame(since=4)["seq"].tolist() == [5, 6]
    assert store.frame(since=4)["item_id"].tolist() == ["song", "film"]
    assert store.frame(since=6).empty
    assert store.frame(since=100).empty
    alice = store.frame(user_ids=["alice"])
    assert alice["seq"].tolist() == [1, 3, 6]
    assert alice["item_id"].tolist() == ["book", "song", "film"]
    both = store.frame(since=1, user_ids=("bob", "carol", "nobody"))
    assert both["seq"].tolist() == [2, 4, 5]
    assert both["user_id"].tolist() == ["bob", "carol", "bob"]
    assert store.frame(user_ids=[]).empty
    assert store.frame(user_ids=["nobody"]).empty
    assert list(store.frame(user_ids=[]).columns) == ["seq", "user_id", "item_id", "timestamp", "weight"]


def test_only_none_timestamps_give_float_nan(store):
    store.add([Event("u", "i"), Event("u", "j")])
    ts = store.frame()["timestamp"]
    assert ts.dtype == np.float64
    assert ts.isna().tolist() == [True, True]


def test_reopen_keeps_events(store_url):
    with open_store(store_url) as s:
        assert s.add(_events()) == [1, 2, 3, 4]
    with open_store(store_url) as s:  # schema creation is idempotent
        assert s.count() == 4
        assert s.frame()["item_id"].tolist() == ["book", "film", "song", "book"]
        assert s.add([Event("erin", "film", 3.0)]) == [5]
    with open_store(store_url) as s:
        assert s.last_seq() == 5
        assert s.frame(since=4)["user_id"].tolist() == ["erin"]


def test_closed_store_refuses_calls(store_url):
    with open_store(store_url) as s:
        s.add([Event("u", "i")])
    with pytest.raises(MgrecError, match="closed"):
        s.count()
    with pytest.raises(MgrecError, match="closed"):
        s.add([Event("u", "i")])
    s.close()  # twice is fine


# -- validation -----------------------------------------------------------------------------

BAD = [
    (Event("", "i"), "events[2].user_id", "empty"),
    (Event("   ", "i"), "events[2].user_id", "empty"),
    (Event("u", ""), "events[2].item_id", "empty"),
    (Event("u", "i\x00x"), "events[2].item_id", "NUL"),
    (Event(7, "i"), "events[2].user_id", "string"),  # type: ignore[arg-type]
    (Event("u", "i", weight=float("nan")), "events[2].weight", "finite"),
    (Event("u", "i", weight=-1.0), "events[2].weight", ">= 0"),
    (Event("u", "i", weight=float("inf")), "events[2].weight", "finite"),
    (Event("u", "i", weight="1"), "events[2].weight", "number"),  # type: ignore[arg-type]
    (Event("u", "i", timestamp=float("inf")), "events[2].timestamp", "finite"),
    (Event("u", "i", timestamp=float("-inf")), "events[2].timestamp", "finite"),
    (Event("u", "i", timestamp=float("nan")), "events[2].timestamp", "finite"),
    (("u", "i"), "events[2]", "Event"),
]


@pytest.mark.parametrize("bad,field,words", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_batch_writes_nothing(store, bad, field, words):
    store.add([Event("u0", "i0", 1.0)])
    batch = [Event("u1", "i1", 2.0), Event("u2", "i2", 3.0), bad, Event("u3", "i3", 4.0)]
    with pytest.raises(DataError) as info:
        store.add(batch)
    assert info.value.field == field
    assert f"field '{field}'" in str(info.value)
    assert words in str(info.value)
    assert store.count() == 1
    assert store.last_seq() == 1
    assert store.frame()["user_id"].tolist() == ["u0"]
    # The store still works, and the refused batch used no seq.
    assert store.add([Event("u4", "i4")]) == [2]
    assert store.count() == 2


# -- threads --------------------------------------------------------------------------------


def test_concurrent_adds(store):
    n_threads, n_batches, batch = 8, 15, 4
    results: dict[int, list[list[int]]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(n_threads)

    def work(t: int) -> None:
        try:
            start.wait()
            mine = []
            for b in range(n_batches):
                mine.append(store.add([Event(f"t{t}", f"b{b}-{k}", float(b), 1.0) for k in range(batch)]))
                if b % 5 == 0:
                    store.frame(user_ids=[f"t{t}"])
                    store.count()
            results[t] = mine
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors, errors
    all_seqs = [s for t in results.values() for batch_seqs in t for s in batch_seqs]
    total = n_threads * n_batches * batch
    assert len(all_seqs) == total
    assert len(set(all_seqs)) == total
    assert store.count() == total
    frame = store.frame()
    assert sorted(all_seqs) == frame["seq"].tolist()
    for t, batches in results.items():
        for seqs in batches:
            assert seqs == sorted(seqs)
        mine = frame[frame["user_id"] == f"t{t}"]
        assert len(mine) == n_batches * batch
        # each returned seq belongs to the event it was returned for
        seq_to_item = dict(zip(mine["seq"], mine["item_id"]))
        for b, seqs in enumerate(batches):
            assert [seq_to_item[s] for s in seqs] == [f"b{b}-{k}" for k in range(batch)]


# -- SQLite specifics -----------------------------------------------------------------------


def test_sqlite_wal_and_full_sync(tmp_path):
    path = tmp_path / "deep" / "folder" / "ev.db"  # parent folders are created
    with open_store(f"sqlite:///{path}") as s:
        assert isinstance(s, SQLiteEventStore)
        assert s.journal_mode() == "wal"
        assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        s.add([Event("u", "i")])
    assert path.is_file()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file
        assert raw.execute("SELECT value FROM mgrec_meta WHERE key='schema_version'").fetchone()[0] == "1"
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master")}
        assert {"mgrec_events", "mgrec_meta", "mgrec_events_user_id"} <= tables
    finally:
        raw.close()


def test_sqlite_url_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///rel/events.db") as s:  # relative to the working folder
        s.add([Event("u", "i")])
        assert s.url == "sqlite:///rel/events.db"
    assert (tmp_path / "rel" / "events.db").is_file()
    absolute = tmp_path / "abs.db"
    with open_store(f"sqlite:///{absolute}") as s:  # sqlite:////abs/path
        s.add([Event("u", "i"), Event("v", "j")])
    assert str(absolute).startswith("/")
    with open_store("sqlite:///" + str(absolute)) as s:
        assert s.count() == 2
    for memory in ("sqlite://:memory:", "sqlite:///:memory:"):
        with open_store(memory) as s:
            assert s.add([Event("u", "i")]) == [1]
            assert s.frame()["user_id"].tolist() == ["u"]
    assert not (tmp_path / ":memory:").exists()


@pytest.mark.parametrize(
    "url,words",
    [
        ("mysql://root:pw@localhost/db", "unknown event store scheme 'mysql' in mysql://root:***@localhost/db"),
        ("redis://cache", "unknown event store scheme 'redis'"),
        ("events.db", "malformed event store URL 'events.db'"),
        ("", "empty"),
        ("sqlite://", "malformed SQLite URL sqlite://"),
        ("sqlite:///", "malformed SQLite URL sqlite:///"),
        ("sqlite://host/events.db", "malformed SQLite URL sqlite://host/events.db"),
        ("sqlite:///events.db?mode=ro", "malformed SQLite URL"),
        ("postgresql://u:pw@[::1/db", "postgresql://u:***@"),
    ],
)
def test_bad_urls(url, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        open_store(url)
    text = str(info.value)
    assert words in text
    assert "\n" not in text
    assert "pw@" not in text
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_unopenable_sqlite_paths(tmp_path):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    with pytest.raises(ConfigError, match=f"{folder} is a folder"):
        open_store(f"sqlite:///{folder}")
    a_file = tmp_path / "plain.txt"
    a_file.write_text("not a folder\n")
    with pytest.raises(ConfigError, match="cannot open event store") as info:
        open_store(f"sqlite:///{a_file}/events.db")  # parent is a file
    assert str(a_file) in str(info.value)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an SQLite database at all" * 200)
    with pytest.raises(ConfigError, match="garbage.db") as info:
        open_store(f"sqlite:///{garbage}")
    assert "not a database" in str(info.value)


def test_unknown_schema_version_is_refused(tmp_path):
    path = tmp_path / "ev.db"
    with open_store(f"sqlite:///{path}") as s:
        s.add([Event("u", "i")])
    raw = sqlite3.connect(path)
    raw.execute("UPDATE mgrec_meta SET value = '2' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    with pytest.raises(ConfigError, match="schema_version '2'; this mgrec reads version 1 only"):
        open_store(f"sqlite:///{path}")


def test_sqlite_frame_is_fast(tmp_path):
    with open_store(f"sqlite:///{tmp_path / 'big.db'}") as s:
        n = 100_000
        s.add([Event(f"u{i % 997}", f"i{i % 5003}", float(i), float(i % 5)) for i in range(n)])
        t0 = time.perf_counter()
        frame = s.frame()
        elapsed = time.perf_counter() - t0
        assert len(frame) == n
        assert frame["seq"].iloc[-1] == n
        assert frame["timestamp"].iloc[12345] == 12345.0
        assert frame["weight"].iloc[12345] == 12345 % 5
        assert elapsed < 1.5, f"frame() of {n} rows took {elapsed:.2f}s"
        # far more users than SQLite's bound-parameter limit, in one query
        many = [f"u{i}" for i in range(40_000)]
        assert len(s.frame(since=n - 1000, user_ids=many)) == 1000


def test_survives_kill_9(tmp_path):
    path = tmp_path / "kill.db"
    writer = textwrap.dedent(
        f"""
        import sys
        from mgrec.store import Event, open_store
        store = open_store({f"sqlite:///{path}"!r})
        b = 0
        while True:
            seqs = store.add([Event("u%d" % b, "i%d" % k, float(b), 1.0) for k in range(5)])
            print(seqs[-1], flush=True)
            b += 1
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [str(SRC), os.environ.get("PYTHONPATH")] if p))
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, env=env, text=True)
    acked: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while len(acked) < 40 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= 40, f"writer acknowledged only {len(acked)} batches"
    with open_store(f"sqlite:///{path}") as s:
        frame = s.frame()
        stored = set(frame["seq"].tolist())
        assert set(acked) <= stored
        assert all(seq - k in stored for seq in acked for k in range(5))  # whole batches
        assert s.count() % 5 == 0  # a batch is stored whole or not at all
        assert s.last_seq() >= acked[-1]
        assert s.count() == s.last_seq()


# -- PostgreSQL specifics -------------------------------------------------------------------


def test_postgres_unreachable_is_one_line_config_error():
    with pytest.raises(ConfigError) as info:
        open_store("postgresql://mgrec:hunter2@127.0.0.1:1/nowhere?connect_timeout=3")
    text = str(info.value)
    assert text.startswith("cannot connect to event store postgresql://mgrec:***@127.0.0.1:1/nowhere")
    assert "hunter2" not in text
    assert "\n" not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_postgres_bad_credentials():
    url = _postgres_url()
    import psycopg

    params = psycopg.conninfo.conninfo_to_dict(url)
    with pytest.raises(ConfigError) as info:
        open_store(f"postgresql://no_such_role:s3cret@{params['host']}:{params['port']}/{params['dbname']}")
    text = str(info.value)
    assert "no_such_role:***@" in text and "s3cret" not in text and "\n" not in text
    assert 'role "no_such_role" does not exist' in text


def test_postgres_store_and_masked_url():
    url = _postgres_url()
    with open_store(url.replace("postgresql://", "postgres://", 1)) as s:
        assert isinstance(s, PostgresEventStore)
        assert s.url.startswith("postgres://")
    assert mask_url("postgresql://u:p%40ss@db.example:5432/x") == "postgresql://u:***@db.example:5432/x"
    assert mask_url("postgresql://db/x?user=u&password=p") == "postgresql://db/x?user=u&password=***"
    assert mask_url("postgresql://u@db/x") == "postgresql://u@db/x"


def _kill_backend(url: str, pid: int) -> None:
    """Terminate a server process of the store's connection and wait until it is gone."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0] is True
        for _ in range(100):
            if not admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                return
            time.sleep(0.02)
    raise AssertionError(f"backend {pid} still alive")


def test_postgres_reconnects_after_the_connection_drops():
    url = _postgres_url()
    with open_store(url) as s:
        _clean_postgres(s)
        s.add([Event("u", "i", 1.0)])
        pid = s._conn.info.backend_pid
        _kill_backend(url, pid)
        assert s.count() == 1  # a read is retried once on a fresh connection
        assert s._conn.info.backend_pid != pid
        assert s.add([Event("v", "j", 2.0)]) == [2]
        assert s.frame()["user_id"].tolist() == ["u", "v"]


def test_postgres_write_on_dropped_connection_is_not_retried():
    url = _postgres_url()
    with open_store(url) as s:
        _clean_postgres(s)
        _kill_backend(url, s._conn.info.backend_pid)
        with pytest.raises(MgrecError) as info:
            s.add([Event("u", "i")])
        assert "add failed" in str(info.value) and "\n" not in str(info.value)
        assert s.add([Event("u", "i")]) == [1]  # reconnected; the failed batch was not written
        assert s.count() == 1


def test_frame_dataframe_type(store):
    store.add(_events())
    assert isinstance(store.frame(), pd.DataFrame)
