"""``mgrec serve`` as a real process on a loopback port: every endpoint, keys and roles, bad
input, live events, durability across restarts and ``kill -9``, and hot reload under load."""

from __future__ import annotations

import json
import shutil
import threading
import time

import httpx
import numpy as np
import pytest
from serving_helpers import KEYS, Server, auth, train_model_dir, write_keys
from worlds import small_world

from mgrec.cli import main
from mgrec.errors import ConfigError
from mgrec.server.auth import ApiKeys, load_api_keys
from mgrec.server.run import ServeConfig, build_app
from mgrec.store import open_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    a = train_model_dir(root / "model-a", fusion="weighted", seed=0)
    b = train_model_dir(root / "model-b", fusion="weighted", seed=1)
    return root, a, b


@pytest.fixture(scope="module")
def server(folders):
    root, a, _ = folders
    srv = Server(a, f"sqlite:///{root / 'events.db'}", write_keys(root / "keys.txt"), root / "server.log").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def ids(server):
    users = httpx.get(server.url + "/v1/users?limit=1000", headers=auth("read")).json()["ids"]
    items = httpx.get(server.url + "/v1/items?limit=1000", headers=auth("read")).json()["ids"]
    return users, items


def _get(server, path, role="read", **kw):
    return httpx.get(server.url + path, headers=auth(role) if role else {}, timeout=30, **kw)


def _post(server, path, body, role="write", **kw):
    return httpx.post(server.url + path, json=body, headers=auth(role) if role else {}, timeout=30, **kw)


# ------------------------------------------------------------------------- auth
PROTECTED = [("GET", "/v1/users/u0/recommendations", None, "read"),
             ("POST", "/v1/recommendations", {"history": []}, "read"),
             ("GET", "/v1/items/i0/similar", None, "read"),
             ("GET", "/v1/users", None, "read"),
             ("GET", "/v1/users/u0", None, "read"),
             ("GET", "/v1/info", None, "read"),
             ("POST", "/v1/events", {"user_id": "u0", "item_id": "i0"}, "write"),
             ("POST", "/v1/admin/reload", None, "admin")]


@pytest.mark.parametrize("method,path,body,role", PROTECTED)
def test_missing_key_401_unknown_key_401_wrong_role_403(server, method, path, body, role):
    def call(headers):
        return httpx.request(method, server.url + path, json=body, headers=headers, timeout=30)

    r = call({})
    assert r.status_code == 401 and r.json()["field"] == "Authorization"
    assert r.headers["www-authenticate"] == "Bearer"
    assert call({"Authorization": "Bearer not-a-key-at-all-xxxxxxxx"}).status_code == 401
    assert call({"Authorization": KEYS["read"]}).status_code == 401  # no "Bearer" scheme
    lower = {"read": None, "write": "read", "admin": "write"}[role]
    if lower is not None:
        r = call(auth(lower))
        assert r.status_code == 403 and f"needs '{role}'" in r.json()["error"]


def test_open_endpoints_and_page(server):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["ready"] is True and len(ready["model_version"]) == 12
    schema = httpx.get(server.url + "/openapi.json").json()
    for path in ("/v1/users/{user_id}/recommendations", "/v1/recommendations", "/v1/items/{item_id}/similar",
                 "/v1/events", "/v1/admin/reload"):
        assert path in schema["paths"]
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "<title>mgrec</title>" in page.text


def test_keys_file_and_env(tmp_path):
    f = tmp_path / "keys"
    f.write_text("read:aaaaaaaaaaaaaaaaaaaa\n\n# comment\nadmin:bbbbbbbbbbbbbbbbbbbb\n")
    keys = load_api_keys(f, env={"MGREC_API_KEYS": "write:cccccccccccccccccccc"})
    assert keys.role_of("aaaaaaaaaaaaaaaaaaaa") == "read"
    assert keys.role_of("cccccccccccccccccccc") == "write"
    assert keys.role_of("bbbbbbbbbbbbbbbbbbbb") == "admin" and keys.role_of("nope") is None
    assert keys.role_of(None) is None and keys.role_of("") is None
    assert ApiKeys.allows("admin", "read") and ApiKeys.allows("write", "read") and not ApiKeys.allows("read", "write")
    for bad, msg in (("reader:aaaaaaaaaaaaaaaaaaaa", "line 1: expected '<role>:<key>'"),
                     ("read:short", "line 1: the key is shorter"),
                     ("read:aaaaaaaaaaaaaaaaaaaa\nwrite:aaaaaaaaaaaaaaaaaaaa", "line 2: the same key appears twice"),
                     ("nocolon", "expected")):
        f.write_text(bad)
        with pytest.raises(ConfigError, match=msg) as err:
            load_api_keys(f, env={})
        assert "aaaaaaaaaaaaaaaaaaaa" not in str(err.value)
    with pytest.raises(ConfigError, match="cannot read the API keys file"):
        load_api_keys(tmp_path / "missing", env={})


def test_serve_refuses_no_keys_and_open_no_auth(folders, tmp_path, monkeypatch):
    _, a, _ = folders
    monkeypatch.delenv("MGREC_API_KEYS", raising=False)
    with pytest.raises(ConfigError, match="no API keys"):
        build_app(ServeConfig(model_dir=str(a), store=f"sqlite:///{tmp_path / 'e.db'}"))
    with pytest.raises(ConfigError, match="only allowed on loopback"):
        build_app(ServeConfig(model_dir=str(a), host="0.0.0.0", no_auth=True, store=f"sqlite:///{tmp_path / 'e.db'}"))
    assert main(["serve", "--model-dir", str(tmp_path / "none"), "--no-auth",
                 "--store", f"sqlite:///{tmp_path / 'e.db'}"]) == 2


# -------------------------------------------------------------- recommendations
def test_known_user_recommendations_and_weighted_explanations(server, ids):
    users, _ = ids
    r = _get(server, f"/v1/users/{users[0]}/recommendations?k=7&explain=true")
    assert r.status_code == 200
    body = r.json()
    assert body["user_id"] == users[0] and len(body["items"]) == 7 and len(body["model_version"]) == 12
    scores = [x["score"] for x in body["items"]]
    assert scores == sorted(scores, reverse=True)
    for x in body["items"]:  # weighted fusion: the contributions add up to the score
        assert set(x["contributions"]) == {"user", "item", "behavior", "social", "time"}
        assert sum(x["contributions"].values()) == pytest.approx(x["score"], abs=1e-3)
    seen = {h["item_id"] for h in _get(server, f"/v1/users/{users[0]}?limit=1000").json()["history"]}
    assert not seen & {x["item_id"] for x in body["items"]}
    plain = _get(server, f"/v1/users/{users[0]}/recommendations?k=7").json()
    assert [x["item_id"] for x in plain["items"]] == [x["item_id"] for x in body["items"]]
    assert all(x["contributions"] is None for x in plain["items"])
    everything = _get(server, f"/v1/users/{users[0]}/recommendations?k=200&exclude_seen=false").json()
    assert seen <= {x["item_id"] for x in everything["items"]}


def test_cold_user_path(server, ids):
    users, items = ids
    body = {"history": [{"item_id": items[3], "timestamp": 1.7e9}, {"item_id": items[9], "timestamp": 1.7e9 + 60},
                        {"item_id": "not-an-item"}],
            "features": {"age": 30, "gender": "F"}, "friends": [users[1], users[2], "ghost"],
            "time": 1.7e9 + 3600, "k": 5, "explain": True}
    r = _post(server, "/v1/recommendations", body, role="read")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["user_id"] is None and len(out["items"]) == 5
    assert out["ignored"] == {"history": ["not-an-item"], "friends": ["ghost"]}
    assert {items[3], items[9]}.isdisjoint(x["item_id"] for x in out["items"])
    for x in out["items"]:
        assert sum(x["contributions"].values()) == pytest.approx(x["score"], abs=1e-3)
    # features and friends change the list of a user with the same history
    alone = _post(server, "/v1/recommendations", {"history": body["history"][:2], "k": 5}, role="read").json()
    assert [x["score"] for x in alone["items"]] != [x["score"] for x in out["items"]]
    empty = _post(server, "/v1/recommendations", {"k": 3}, role="read").json()
    assert len(empty["items"]) == 3


def test_similar_items(server, ids):
    _, items = ids
    r = _get(server, f"/v1/items/{items[0]}/similar?k=4")
    assert r.status_code == 200
    out = r.json()
    assert out["item_id"] == items[0] and len(out["items"]) == 4
    assert items[0] not in [x["item_id"] for x in out["items"]]
    sims = [x["score"] for x in out["items"]]
    assert sims == sorted(sims, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in sims)


# -------------------------------------------------------------------- bad input
@pytest.mark.parametrize("path,field", [
    ("/v1/users/u0/recommendations?k=0", "k"),
    ("/v1/users/u0/recommendations?k=1001", "k"),
    ("/v1/users/u0/recommendations?k=ten", "k"),
    ("/v1/users/u0/recommendations?explain=maybe", "explain"),
    ("/v1/items/i0/similar?k=-1", "k"),
    ("/v1/users?limit=0", "limit"),
])
def test_bad_query_422_names_the_field(server, path, field):
    r = _get(server, path)
    assert r.status_code == 422 and r.json()["field"] == field, r.text


@pytest.mark.parametrize("path,body,field", [
    ("/v1/events", {"user_id": "u0", "item_id": "i0", "weight": -1}, "weight"),
    ("/v1/events", {"user_id": "u0", "item_id": "i0", "weight": "heavy"}, "weight"),
    ("/v1/events", {"user_id": "", "item_id": "i0"}, "user_id"),
    ("/v1/events", {"item_id": "i0"}, "user_id"),
    ("/v1/events", {"user_id": "u0", "item_id": "i0", "colour": "red"}, "colour"),
    ("/v1/events", {"events": []}, "events"),
    ("/v1/events", {"events": [{"user_id": "u0", "item_id": "i0"}, {"user_id": "u0", "item_id": "i1",
                                                                   "timestamp": "yesterday"}]}, "events.1.timestamp"),
    ("/v1/recommendations", {"k": 0}, "k"),
    ("/v1/recommendations", {"k": 5000}, "k"),
    ("/v1/recommendations", {"history": [{"item_id": "i0"}] * 1001}, "history"),
    ("/v1/recommendations", {"history": [{"item": "i0"}]}, "history.0.item_id"),
    ("/v1/recommendations", {"features": {"height": 1}}, "height"),
    ("/v1/recommendations", {"features": {"age": "old"}}, "age"),
    ("/v1/recommendations", {"time": "noon"}, "time"),
])
def test_bad_body_422_names_the_field(server, path, body, field):
    r = _post(server, path, body, role="write")
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and r.json()["error"]


def test_malformed_and_oversized_bodies(server):
    r = httpx.post(server.url + "/v1/events", content=b"{not json", timeout=30,
                   headers={**auth("write"), "content-type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()
    r = httpx.post(server.url + "/v1/events", content=b" " * (1 << 20 + 1), timeout=30,
                   headers={**auth("write"), "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body"


def test_unknown_ids_404(server):
    r = _get(server, "/v1/users/nobody-at-all/recommendations")
    assert r.status_code == 404 and r.json() == {"error": "unknown user 'nobody-at-all'", "field": "user_id"}
    r = _get(server, "/v1/items/no-such-item/similar")
    assert r.status_code == 404 and r.json()["field"] == "item_id"
    assert _get(server, "/v1/users/nobody-at-all").status_code == 404


# ------------------------------------------------------------------ live events
def test_events_change_recommendations_at_once_and_survive_restart(server, ids):
    users, items = ids
    user = users[5]
    before = [x["item_id"] for x in _get(server, f"/v1/users/{user}/recommendations?k=10").json()["items"]]
    top = before[:3]
    t0 = _get(server, f"/v1/users/{user}").json()["history"][0]["timestamp"]
    events = [{"user_id": user, "item_id": it, "timestamp": t0 + 60 * (n + 1)} for n, it in enumerate(top)]
    r = _post(server, "/v1/events", {"events": events})
    assert r.status_code == 200 and r.json()["stored"] == 3 and r.json()["applied"] == 3
    after = [x["item_id"] for x in _get(server, f"/v1/users/{user}/recommendations?k=10").json()["items"]]
    assert after != before and not set(top) & set(after)
    assert [h["item_id"] for h in _get(server, f"/v1/users/{user}?limit=3").json()["history"]] == top[::-1]
    # a brand-new user known only from events is served through the cold path
    r = _post(server, "/v1/events", {"user_id": "visitor-1", "item_id": items[2]})
    assert r.status_code == 200 and r.json()["applied"] == 0
    assert _get(server, "/v1/users/visitor-1/recommendations?k=5").status_code == 200
    # unknown items are stored and reported
    r = _post(server, "/v1/events", {"user_id": user, "item_id": "brand-new-item"})
    assert r.json()["unknown_items"] == ["brand-new-item"]
    server.stop()
    server.start()
    again = [x["item_id"] for x in _get(server, f"/v1/users/{user}/recommendations?k=10").json()["items"]]
    assert again == after
    assert _get(server, "/v1/users/visitor-1/recommendations?k=5").status_code == 200


def test_metrics(server, ids):
    users, _ = ids
    _get(server, f"/v1/users/{users[0]}/recommendations")
    text = httpx.get(server.url + "/metrics").text
    assert 'mgrec_requests_total{method="GET",route="/v1/users/{user_id}/recommendations",status="200"}' in text
    assert 'mgrec_request_seconds_bucket{le="0.05",route="/v1/users/{user_id}/recommendations"}' in text
    assert "mgrec_model_info{model=\"mgr\",version=" in text


def test_events_survive_kill_9_during_writes(folders, tmp_path, ids):
    root, a, _ = folders
    users, items = ids
    store = f"sqlite:///{tmp_path / 'kill.db'}"
    srv = Server(a, store, write_keys(tmp_path / "keys"), tmp_path / "kill.log").start()
    acked: list[dict] = []
    stop = threading.Event()

    def writer(n: int) -> None:
        with httpx.Client(base_url=srv.url, headers=auth("write"), timeout=10) as c:
            k = 0
            while not stop.is_set():
                ev = {"user_id": users[(n * 7 + k) % len(users)], "item_id": items[k % len(items)],
                      "timestamp": 1.8e9 + k, "weight": float(n + 1)}
                try:
                    r = c.post("/v1/events", json=ev)
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acked.append({**ev, "seq": r.json()["last_seq"]})
                k += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    srv.kill9()
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) >= 60
    with open_store(store) as s:
        frame = s.frame()
    stored = {int(q): (u, i, w)
              for q, u, i, w in zip(frame["seq"], frame["user_id"], frame["item_id"], frame["weight"], strict=True)}
    for ev in acked:  # every acknowledged event is there, intact
        assert stored[ev["seq"]] == (ev["user_id"], ev["item_id"], pytest.approx(ev["weight"]))
    srv.start()  # and the server comes back on the same store
    assert _get(srv, f"/v1/users/{users[0]}/recommendations").status_code == 200
    srv.stop()


# -------------------------------------------------------------------- reloading
def test_hot_reload_under_load_has_no_failed_request(folders, tmp_path, ids):
    root, a, b = folders
    users, _ = ids
    live = tmp_path / "live"
    shutil.copytree(a, live)
    srv = Server(live, f"sqlite:///{tmp_path / 'reload.db'}", write_keys(tmp_path / "keys"), tmp_path / "r.log",
                 "--watch").start()
    v_a = _get(srv, "/v1/info").json()["model_version"]
    failures: list[str] = []
    versions: set[str] = set()
    done = threading.Event()
    count = [0]

    def reader(n: int) -> None:
        with httpx.Client(base_url=srv.url, headers=auth("read"), timeout=30) as c:
            k = 0
            while not done.is_set():
                try:
                    r = c.get(f"/v1/users/{users[(n + k) % len(users)]}/recommendations?k=10")
                    if r.status_code != 200 or len(r.json()["items"]) != 10:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        versions.add(r.json()["model_version"])
                except httpx.HTTPError as err:
                    failures.append(repr(err))
                k += 1
                count[0] += 1

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        admin = httpx.Client(base_url=srv.url, headers=auth("admin"), timeout=60)
        r = admin.post("/v1/admin/reload", json={"model_dir": str(b)})
        assert r.status_code == 200
        v_b = r.json()["model_version"]
        assert v_b != v_a
        time.sleep(0.3)
        # a broken folder is refused and the model keeps serving
        broken = tmp_path / "broken"
        shutil.copytree(a, broken)
        w = broken / "model" / "weights.safetensors"
        w.write_bytes(w.read_bytes()[:1000])
        r = admin.post("/v1/admin/reload", json={"model_dir": str(broken)})
        assert r.status_code == 409 and "old model keeps serving" in r.json()["error"]
        assert _get(srv, "/v1/info").json()["model_version"] == v_b
        # the watcher picks up a folder swapped in by rename, as `mgrec train --out` does
        r = admin.post("/v1/admin/reload", json={"model_dir": str(live)})
        assert r.json()["model_version"] == v_a
        staged = tmp_path / ".staged"
        shutil.copytree(b, staged)
        old = tmp_path / ".old"
        live.rename(old)
        staged.rename(live)
        deadline = time.monotonic() + 20
        while _get(srv, "/v1/info").json()["model_version"] != v_b and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _get(srv, "/v1/info").json()["model_version"] == v_b
        time.sleep(0.3)
    finally:
        done.set()
        for t in threads:
            t.join()
        srv.stop()
    assert not failures, failures[:5]
    assert count[0] > 50 and {v_a, v_b} <= versions
    log = (tmp_path / "r.log").read_text()
    assert "model folder changed: now serving" in log  # the watcher's reload
    assert "reload failed, the old model keeps serving" in log  # the broken folder, through the API


def test_logs_never_contain_keys(server, folders):
    root, _, _ = folders
    _get(server, "/v1/users/nobody/recommendations")
    _post(server, "/v1/events", {"user_id": "u0", "item_id": "i0"}, role="read")
    httpx.get(server.url + "/v1/info", headers={"Authorization": "Bearer wrong-key-zzzzzzzzzzzz"})
    log = (root / "server.log").read_text()
    assert "Uvicorn running" in log or "serving" in log
    for key in (*KEYS.values(), "wrong-key-zzzzzzzzzzzz"):
        assert key not in log


# ------------------------------------------------------------ retrain from store
def test_train_from_store(tmp_path):
    store = f"sqlite:///{tmp_path / 'ev.db'}"
    with open_store(store) as s:
        from mgrec.store import Event

        s.add([Event("newcomer", "i1", 1.8e9, 1.0), Event("newcomer", "i2", 1.8e9 + 5, 1.0),
               Event("u0", "i3", 1.8e9 + 9, 2.0)])
    out = tmp_path / "m"
    assert main(["train", "--dataset", "synthetic", "--model", "pop", "--from-store", store, "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["store_seq"] == 3 and record["config"]["store"] == store
    assert "newcomer" in json.loads((out / "users.json").read_text())
    alone = tmp_path / "m2"
    assert main(["train", "--model", "pop", "--from-store", store, "--out", str(alone), "--split", "random"]) == 0
    assert sorted(json.loads((alone / "users.json").read_text())) == ["newcomer", "u0"]
    assert main(["train", "--model", "pop", "--out", str(tmp_path / "x")]) == 2
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["train", "--model", "pop", "--from-store", empty, "--out", str(tmp_path / "y")]) == 2


def test_engine_replays_only_events_after_training(folders, tmp_path):
    """A model trained on the store's first events replays only the later ones."""
    _, a, _ = folders
    from mgrec.server.engine import Engine
    from mgrec.store import Event

    store = open_store(f"sqlite:///{tmp_path / 'e.db'}")
    store.add([Event("u0", "i1", 1.9e9, 1.0)])
    live = tmp_path / "m"
    shutil.copytree(a, live)
    record = json.loads((live / "run.json").read_text())
    (live / "run.json").write_text(json.dumps({**record, "store_seq": 1}))
    engine = Engine(live, store)
    assert engine.snapshot.applied_seq == 1
    n = int(np.diff(engine.snapshot.model.context_.indptr)[engine.snapshot.user_code["u0"]])
    engine.add_events([Event("u0", "i2", 1.9e9 + 1, 1.0)])
    assert int(np.diff(engine.snapshot.model.context_.indptr)[engine.snapshot.user_code["u0"]]) == n + 1
    engine.close()
    store.close()


def test_group_commit_answers_each_caller(folders, tmp_path):
    """Concurrent calls share transactions; each caller gets its own counts and last sequence
    number, and a bad call fails alone."""
    from concurrent.futures import ThreadPoolExecutor

    from mgrec.errors import DataError
    from mgrec.server.engine import Engine
    from mgrec.store import Event

    _, a, _ = folders
    store = open_store(f"sqlite:///{tmp_path / 'g.db'}")
    engine = Engine(a, store)
    users = list(engine.snapshot.user_code)[:40]
    calls = [[Event(u, "i1", 1.9e9 + k, 1.0)] * (1 + k % 3) + [Event(u, "nope", 1.9e9, 1.0)] * (k % 2)
             for k, u in enumerate(users)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(engine.add_events, calls))
    assert [x["stored"] for x in answers] == [len(c) for c in calls]
    assert [x["applied"] for x in answers] == [1 + k % 3 for k in range(40)]
    assert [x["unknown_items"] for x in answers] == [["nope"] * (k % 2) for k in range(40)]
    seqs = [x["last_seq"] for x in answers]
    assert len(set(seqs)) == 40 and store.count() == sum(map(len, calls))
    frame = store.frame()
    for x, call in zip(answers, calls, strict=True):  # each caller's last sequence number is its own event
        assert frame.loc[frame["seq"] == x["last_seq"], "user_id"].item() == call[0].user_id
    with pytest.raises(DataError, match="weight"):
        engine.add_events([Event("u0", "i1", None, float("nan"))])
    assert store.count() == sum(map(len, calls))
    engine.close()
    store.close()


def test_server_on_postgresql_store(folders, tmp_path, ids):
    """The same live-event path with ``--store postgresql://...`` (CI starts one on loopback)."""
    import os

    url = os.environ.get("MGREC_TEST_POSTGRES")
    if not url:
        msg = "MGREC_TEST_POSTGRES is not set (eval \"$(bash .ci/postgres.sh)\" starts a server)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    _, a, _ = folders
    users, items = ids
    import psycopg

    open_store(url).close()  # the tables exist; start them empty
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE mgrec_events RESTART IDENTITY")
    srv = Server(a, url, write_keys(tmp_path / "keys"), tmp_path / "pg.log").start()
    try:
        user = users[7]
        before = [x["item_id"] for x in _get(srv, f"/v1/users/{user}/recommendations?k=5").json()["items"]]
        t0 = _get(srv, f"/v1/users/{user}").json()["history"][0]["timestamp"]
        r = _post(srv, "/v1/events", {"events": [{"user_id": user, "item_id": it, "timestamp": t0 + 10 + n}
                                                 for n, it in enumerate(before[:2])]})
        assert r.status_code == 200 and r.json()["last_seq"] == 2
        after = [x["item_id"] for x in _get(srv, f"/v1/users/{user}/recommendations?k=5").json()["items"]]
        assert not set(before[:2]) & set(after)
        srv.stop()
        srv.start()
        assert [x["item_id"] for x in _get(srv, f"/v1/users/{user}/recommendations?k=5").json()["items"]] == after
    finally:
        srv.stop()
    with open_store(url) as s:
        assert s.count() == 2 and s.frame()["user_id"].tolist() == [user, user]


def test_engine_serves_a_baseline_model(tmp_path):
    """A model without vectors, explanations or cold start (EASE): scores from the grown
    interaction matrix, similar items from co-occurrence, new users by popularity."""
    from mgrec.baselines.ease import EASE
    from mgrec.data.split import make_split
    from mgrec.data.synthetic import make_synthetic
    from mgrec.experiment import ExperimentConfig, TrainedRun, save_run
    from mgrec.server.engine import Engine, NotFound
    from mgrec.store import Event

    ds = make_synthetic(small_world(n_users=100, n_items=60, mean_events=10), seed=0)
    split = make_split(ds, "random", seed=0)
    model = EASE({"reg": 50.0}).fit(ds, split.train, split.valid)
    save_run(TrainedRun(model, ds, split, {"dataset": "synthetic", "model": "ease"}),
             ExperimentConfig(dataset="synthetic", model="ease"), tmp_path / "ease")
    store = open_store(f"sqlite:///{tmp_path / 'e.db'}")
    engine = Engine(tmp_path / "ease", store)
    snap = engine.snapshot
    assert snap.index_kind == "none" and not snap.can_explain and not snap.can_cold_start
    user = next(iter(snap.user_code))
    rec, _ = engine.recommend_user(user, 5)
    assert len(rec.items) == 5 and rec.contributions is None
    with pytest.raises(ConfigError, match="no per-granularity explanations"):
        engine.recommend_user(user, 5, explain=True)
    engine.add_events([Event(user, rec.items[0], None, 1.0)])
    after, _ = engine.recommend_user(user, 5)
    assert rec.items[0] not in after.items and after.scores != rec.scores  # EASE reads the grown row
    sim, _ = engine.similar(rec.items[1], 4)
    assert len(sim.items) == 4 and rec.items[1] not in sim.items
    cold, _ = engine.recommend_context([(rec.items[2], None)], {"age": 30}, [user], None, 3)
    assert cold.fallback == "popularity" and cold.ignored == {"features": ["age"]} and rec.items[2] not in cold.items
    with pytest.raises(NotFound):
        engine.similar("nope", 3)
    info = engine.user_info(user)
    assert info["known"] and rec.items[0] in {h["item_id"] for h in info["history"]}
    engine.close()
    store.close()
