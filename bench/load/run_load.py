#!/usr/bin/env python
"""Load benchmark of ``mgrec serve`` on loopback, driven by ``wrk``.

One run serves one model folder with a fresh event store and generated API keys, then measures
``GET /v1/users/{id}/recommendations?k=10`` (user ids drawn uniformly from the model's users):

* ``steady``: each concurrency in ``--connections`` (default 1, 16, 64);
* ``reload``: 16 connections with ``POST /v1/admin/reload`` fired at the midpoint;
* ``events``: 16 connections while a writer posts single events (``POST /v1/events``) at a
  steady ``--event-rate`` (default 100/s).

Each scenario runs for ``--duration`` seconds after a ``--warmup`` run (not recorded). The
results go to ``PREFIX.json`` (every raw number) and ``PREFIX.md`` (a table). The exit status is
1 when any scenario saw an error (socket error, timeout or non-2xx answer), else 0.

Usage::

    python bench/load/run_load.py --model-dir /tmp/models/lastfm-mgr --out bench/results/load-lastfm-2k

Needs ``wrk`` (``apt-get install -y wrk``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import math
import os
import platform
import queue
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LUA = HERE / "recs.lua"
RECS_ROUTE = "/v1/users/{user_id}/recommendations"
EVENTS_ROUTE = "/v1/events"


# ----------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_info() -> dict[str, Any]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {"model": model, "cpu_count": os.cpu_count(), "affinity": affinity, "mem_total_mib": mem,
            "platform": platform.platform(), "python": platform.python_version()}


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS of ``pid`` in KiB."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in ("VmHWM", "VmRSS", "Threads"):
                out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` (all its threads) in seconds."""
    use = proc_usage(pid)
    return None if use is None else use["utime_s"] + use["stime_s"]


def proc_usage(pid: int) -> dict[str, float] | None:
    """User and system CPU seconds of ``pid`` (all threads) and context switches summed over
    its threads (many voluntary switches per request point at lock or GIL hand-offs)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    out = {"utime_s": int(fields[11]) / tick, "stime_s": int(fields[12]) / tick, "voluntary_ctxt": 0,
           "nonvoluntary_ctxt": 0, "threads": 0}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    out["voluntary_ctxt"] += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    out["nonvoluntary_ctxt"] += int(line.split()[1])
            out["threads"] += 1
        except OSError:
            pass
    return out


def usage_delta(a: dict[str, float] | None, b: dict[str, float] | None, requests: int) -> dict[str, Any] | None:
    """CPU and context switches between two :func:`proc_usage` readings, also per request (context
    switches are ``None`` when threads exited in between, as their counts went with them)."""
    if a is None or b is None:
        return None
    d = {k: round(b[k] - a[k], 3) for k in ("utime_s", "stime_s", "voluntary_ctxt", "nonvoluntary_ctxt")}
    d["threads_end"] = b["threads"]
    if d["voluntary_ctxt"] < 0 or d["nonvoluntary_ctxt"] < 0:  # threads that exited took their counts along
        d["voluntary_ctxt"] = d["nonvoluntary_ctxt"] = None
    if requests:
        d["cpu_ms_per_request"] = round(1000 * (d["utime_s"] + d["stime_s"]) / requests, 3)
        if d["voluntary_ctxt"] is not None:
            d["ctxt_per_request"] = round((d["voluntary_ctxt"] + d["nonvoluntary_ctxt"]) / requests, 2)
    return d


def quantiles(values: list[float], qs: tuple[float, ...] = (50, 95, 99)) -> dict[str, float | None]:
    if not values:
        return {f"p{q:g}": None for q in qs} | {"max": None, "mean": None}
    v = sorted(values)
    out: dict[str, float | None] = {}
    for q in qs:
        pos = min(len(v) - 1, max(0, math.ceil(q / 100 * len(v)) - 1))  # nearest rank
        out[f"p{q:g}"] = round(v[pos], 3)
    out["max"] = round(v[-1], 3)
    out["mean"] = round(sum(v) / len(v), 3)
    return out


class Client:
    """One keep-alive HTTP/1.1 connection to the server (reconnects after an error)."""

    def __init__(self, port: int, key: str | None = None, timeout: float = 30.0) -> None:
        self.port, self.key, self.timeout = port, key, timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> tuple[int, bytes]:
        headers = {"Connection": "keep-alive"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout or self.timeout)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                self.close()  # a stale keep-alive connection: retry once on a fresh one
                if attempt:
                    raise
            except Exception:
                self.close()
                raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> tuple[int, Any]:
        status, raw = self.request(method, path, body, timeout)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ----------------------------------------------------------------------------- the server
class Server:
    """``python -m mgrec serve`` in a subprocess with a fresh store and generated keys."""

    def __init__(self, model_dir: Path, work: Path, extra: list[str], log: Path) -> None:
        self.port = free_port()
        self.keys = {role: f"{role}-bench-{os.urandom(12).hex()}" for role in ("read", "write", "admin")}
        self.keys_file = work / "keys.txt"
        self.keys_file.write_text("# role:key\n" + "".join(f"{r}:{k}\n" for r, k in self.keys.items()))
        self.store = f"sqlite:///{work / 'events.db'}"
        self.log = log
        self.cmd = [sys.executable, "-m", "mgrec", "serve", "--model-dir", str(model_dir), "--port", str(self.port),
                    "--store", self.store, "--api-keys-file", str(self.keys_file), *extra]
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_seconds: float | None = None

    def start(self, timeout: float) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.setdefault("OMP_NUM_THREADS", "1")
        env.pop("MGREC_API_KEYS", None)
        t0 = time.monotonic()
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(self.cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        probe = Client(self.port, timeout=2.0)
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if probe.request("GET", "/readyz")[0] == 200:
                    self.ready_seconds = round(time.monotonic() - t0, 3)
                    probe.close()
                    return
            except OSError:
                probe.close()
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code


# ----------------------------------------------------------------------------- /metrics
# label values may hold '}' (the route template '/v1/users/{user_id}/...'), so match quoted strings
_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>(?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?'
                     r'\s+(?P<value>\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            labels = dict(_LABEL.findall(m.group("labels") or ""))
            try:
                out.append((m.group("name"), labels, float(m.group("value"))))
            except ValueError:
                pass
    return out


def metrics_snapshot(client: Client) -> list[tuple[str, dict[str, str], float]] | None:
    try:
        status, raw = client.request("GET", "/metrics")
    except OSError:
        return None
    return parse_metrics(raw.decode()) if status == 200 else None


def server_side(before: list | None, after: list | None, route: str) -> dict[str, Any] | None:
    """Requests by status and latency quantiles (from histogram buckets) on ``route`` between two
    ``/metrics`` snapshots."""
    if before is None or after is None:
        return None

    def index(snap: list) -> dict[tuple[str, tuple], float]:
        return {(n, tuple(sorted(lab.items()))): v for n, lab, v in snap}

    b, a = index(before), index(after)

    def delta(key: tuple[str, tuple]) -> float:
        return a.get(key, 0.0) - b.get(key, 0.0)

    statuses: dict[str, int] = {}
    for (name, labels) in a:
        lab = dict(labels)
        if name == "mgrec_requests_total" and lab.get("route") == route:
            d = round(delta((name, labels)))
            if d:
                statuses[lab["status"]] = statuses.get(lab["status"], 0) + d
    buckets = []
    for (name, labels) in a:
        lab = dict(labels)
        if name == "mgrec_request_seconds_bucket" and lab.get("route") == route:
            le = math.inf if lab["le"] == "+Inf" else float(lab["le"])
            buckets.append((le, delta((name, labels))))
    buckets.sort()
    count = delta(("mgrec_request_seconds_count", (("route", route),)))
    total = delta(("mgrec_request_seconds_sum", (("route", route),)))
    out: dict[str, Any] = {"route": route, "requests_by_status": statuses, "count": round(count),
                           "mean_ms": round(1000 * total / count, 3) if count else None}
    if count and buckets:
        for q in (50, 95, 99):
            target = q / 100 * count
            prev_le, prev_c = 0.0, 0.0
            value = None
            for le, c in buckets:
                if c >= target:
                    if math.isinf(le):
                        value = prev_le  # beyond the last finite bucket: report its bound
                    else:  # linear within the bucket, as Prometheus' histogram_quantile does
                        value = prev_le + (le - prev_le) * ((target - prev_c) / (c - prev_c) if c > prev_c else 1)
                    break
                prev_le, prev_c = le, c
            out[f"p{q}_ms"] = round(1000 * value, 3) if value is not None else None
    return out


# ----------------------------------------------------------------------------- wrk
def wrk_cmd(url: str, connections: int, seconds: float, ids_file: Path, key: str, k: int) -> list[str]:
    threads = max(1, min(connections, 2))
    return ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
            "--timeout", "5s", "-s", str(LUA), url, "--", str(ids_file), key, str(k)]


def parse_wrk(stdout: str, stderr: str, code: int) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("WRKJSON "):
            out = json.loads(line[len("WRKJSON "):])
            e = out["errors"]
            # wrk's 'status' errors (> 399) are a subset of the non-2xx counted by the script
            out["errors_total"] = e["connect"] + e["read"] + e["write"] + e["timeout"] + max(e["non2xx"],
                                                                                          e["status_gt_399"])
            out["exit_code"] = code
            return out
    raise RuntimeError(f"wrk printed no WRKJSON line (exit {code}):\n{stdout[-2000:]}\n{stderr[-2000:]}")


def run_wrk(cmd: list[str]) -> dict[str, Any]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return parse_wrk(proc.stdout, proc.stderr, proc.returncode)


# ----------------------------------------------------------------------------- event writer
class EventWriter:
    """Posts single events open-loop at a steady ``rate`` per second.

    A scheduler thread releases event ``n`` at ``t0 + n / rate``; ``lanes`` worker threads, each
    with its own keep-alive connection, send them. As long as fewer than ``lanes`` requests are
    in flight, every event goes out on time, so a slow answer does not lower the offered rate
    (``lanes / rate`` seconds of latency are absorbed). Latency is measured from the moment a
    request is sent; lateness (send time minus due time) is recorded separately.
    """

    def __init__(self, port: int, key: str, users: list[str], items: list[str], rate: float, lanes: int = 16,
                 seed: int = 0) -> None:
        self.port, self.key, self.users, self.items = port, key, users, items
        self.rate, self.lanes = rate, lanes
        self.rng = random.Random(seed)
        self._stop = threading.Event()
        self._queue: queue.Queue[tuple[float, dict[str, str]] | None] = queue.Queue()
        self.latencies: list[float] = []
        self.lateness: list[float] = []
        self.errors: dict[str, int] = {}
        self.released = 0
        self.sent = 0
        self.ok = 0
        self._lock = threading.Lock()
        self.t0 = 0.0
        self.t_end = 0.0
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self.t0 = time.perf_counter() + 0.05
        self._threads = [threading.Thread(target=self._lane, daemon=True, name=f"writer-{j}")
                         for j in range(self.lanes)]
        self._threads.append(threading.Thread(target=self._schedule, daemon=True, name="writer-clock"))
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self.t_end = time.perf_counter()
        for _ in range(self.lanes):
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=30)

    def _schedule(self) -> None:
        n = 0
        while True:
            due = self.t0 + n / self.rate
            wait = due - time.perf_counter()
            if wait > 0 and self._stop.wait(wait) or self._stop.is_set():
                return
            body = {"user_id": self.rng.choice(self.users), "item_id": self.rng.choice(self.items)}
            self._queue.put((due, body))
            self.released += 1
            n += 1

    def _lane(self) -> None:
        client = Client(self.port, self.key, timeout=10.0)
        while True:
            task = self._queue.get()
            if task is None or self._stop.is_set():
                break
            due, body = task
            t_send = time.perf_counter()
            try:
                status, raw = client.request("POST", EVENTS_ROUTE, body)
                ok = status == 200
                if ok:
                    try:
                        ok = json.loads(raw).get("stored") == 1
                    except ValueError:
                        ok = False
                err = None if ok else f"status {status}"
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                err = type(exc).__name__
            t_done = time.perf_counter()
            with self._lock:
                self.sent += 1
                self.latencies.append(1000 * (t_done - t_send))
                self.lateness.append(1000 * (t_send - due))
                if err is None:
                    self.ok += 1
                else:
                    self.errors[err] = self.errors.get(err, 0) + 1
        client.close()

    def summary(self) -> dict[str, Any]:
        elapsed = self.t_end - self.t0
        errors = sum(self.errors.values())
        return {"target_rate": self.rate, "lanes": self.lanes, "released": self.released, "sent": self.sent,
                "ok": self.ok, "errors": errors, "errors_by_kind": self.errors,
                "not_sent_at_stop": self.released - self.sent, "seconds": round(elapsed, 3),
                "achieved_rate": round(self.sent / elapsed, 3) if elapsed > 0 else None,
                "ok_rate": round(self.ok / elapsed, 3) if elapsed > 0 else None,
                "latency_ms": quantiles(self.latencies), "lateness_ms": quantiles(self.lateness)}


# ----------------------------------------------------------------------------- the benchmark
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model_dir = Path(args.model_dir).resolve()
        self.users = [str(u) for u in json.loads((self.model_dir / "users.json").read_text())]
        self.items = [str(i) for i in json.loads((self.model_dir / "items.json").read_text())]
        self.work = Path(tempfile.mkdtemp(prefix="mgrec-load-"))
        self.ids_file = self.work / "user_ids.txt"
        self.ids_file.write_text("".join(u + "\n" for u in self.users))
        self.out = Path(args.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        extra = ["--index", args.index, "--quantize", args.quantize, "--threads", str(args.threads)]
        self.server = Server(self.model_dir, self.work, extra, self.work / "server.log")
        self.results: dict[str, Any] = {}
        self.rss_samples: list[int] = []

    # ---------------------------------------------------------------- pieces
    def admin(self) -> Client:
        return Client(self.server.port, self.server.keys["admin"], timeout=600.0)

    def sample_rss(self) -> dict[str, int]:
        st = proc_status(self.server.pid)
        if "VmRSS" in st:
            self.rss_samples.append(st["VmRSS"])
        return st

    def warmup(self, connections: int) -> dict[str, Any] | None:
        if self.args.warmup <= 0:
            return None
        res = run_wrk(wrk_cmd(self.url, connections, self.args.warmup, self.ids_file, self.server.keys["read"],
                              self.args.k))
        return {"seconds": self.args.warmup, "requests": res["requests"], "rps": res["rps"],
                "errors_total": res["errors_total"]}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def scenario(self, name: str, connections: int, during: Any = None) -> dict[str, Any]:
        """One measured wrk run; ``during(wrk_started_at)`` runs in a thread alongside it and
        returns extra fields."""
        print(f"[{time.strftime('%H:%M:%S')}] {name} c={connections}: warm-up {self.args.warmup}s, "
              f"run {self.args.duration}s (load {loadavg()})", flush=True)
        warm = self.warmup(connections)
        mon = self.admin()
        before = metrics_snapshot(mon)
        use0 = proc_usage(self.server.pid)
        load0 = loadavg()
        cmd = wrk_cmd(self.url, connections, self.args.duration, self.ids_file, self.server.keys["read"], self.args.k)
        extra: dict[str, Any] = {}
        side: threading.Thread | None = None
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if during is not None:
            def target() -> None:
                try:
                    extra.update(during(t0))
                except Exception as exc:  # noqa: BLE001 - reported in the results
                    extra["side_error"] = f"{type(exc).__name__}: {exc}"
            side = threading.Thread(target=target, daemon=True)
            side.start()
        # sample the server's memory while the load runs
        while proc.poll() is None:
            self.sample_rss()
            time.sleep(0.5)
        stdout, stderr = proc.communicate()
        wall = time.perf_counter() - t0
        res = parse_wrk(stdout, stderr, proc.returncode)
        use1 = proc_usage(self.server.pid)
        after = metrics_snapshot(mon)
        # a side task still running (a reload that outlasts the window): keep the load on, in
        # further windows, until it ends, then measure one more window after it
        continuation: list[dict[str, Any]] = []
        while side is not None and side.is_alive():
            continuation.append(self._segment("during", connections, side))
        if continuation:
            continuation.append(self._segment("after", connections, None))
        if side is not None:
            side.join()
        mon.close()
        usage = usage_delta(use0, use1, res["requests"])
        res.update({
            "scenario": name, "connections": connections, "wrk_threads": max(1, min(connections, 2)),
            "wrk_command": shlex.join(cmd[:-2] + ["<read-key>", cmd[-1]]), "wall_s": round(wall, 3),
            "warmup": warm, "loadavg_before": load0, "loadavg_after": loadavg(),
            "server_cpu_s": round(usage["utime_s"] + usage["stime_s"], 3) if usage else None,
            "server_usage": usage,
            "server_cpu_ms_per_request": usage.get("cpu_ms_per_request") if usage else None,
            "server_side": server_side(before, after, RECS_ROUTE), "server_proc": self.sample_rss(),
            **extra,
        })
        if continuation:
            res["continuation"] = continuation
        lat = res["latency_ms"]
        print(f"    {res['rps']:.1f} req/s, p50 {lat['p50']} p95 {lat['p95']} p99 {lat['p99']} max {lat['max']} ms, "
              f"errors {res['errors_total']}", flush=True)
        return res

    def _segment(self, phase: str, connections: int, side: threading.Thread | None) -> dict[str, Any]:
        """One more wrk window of ``duration`` seconds (while a reload goes on, or after it)."""
        mon = self.admin()
        before = metrics_snapshot(mon)
        use0 = proc_usage(self.server.pid)
        cmd = wrk_cmd(self.url, connections, self.args.duration, self.ids_file, self.server.keys["read"], self.args.k)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None:
            self.sample_rss()
            time.sleep(0.5)
        stdout, stderr = proc.communicate()
        res = parse_wrk(stdout, stderr, proc.returncode)
        usage = usage_delta(use0, proc_usage(self.server.pid), res["requests"])
        res.update({"phase": phase, "wall_s": round(time.perf_counter() - t0, 3), "server_usage": usage,
                    "server_cpu_ms_per_request": usage.get("cpu_ms_per_request") if usage else None,
                    "side_running_at_end": side is not None and side.is_alive(),
                    "server_side": server_side(before, metrics_snapshot(mon), RECS_ROUTE),
                    "server_proc": self.sample_rss()})
        mon.close()
        lat = res["latency_ms"]
        print(f"    ({phase} reload) {res['rps']:.1f} req/s, p50 {lat['p50']} p99 {lat['p99']} max {lat['max']} ms, "
              f"errors {res['errors_total']}", flush=True)
        return res

    def reload_midway(self, t0: float) -> dict[str, Any]:
        mid = t0 + self.args.duration / 2
        time.sleep(max(0.0, mid - time.perf_counter()))
        client = self.admin()
        _status0, info0 = client.json("GET", "/v1/info")
        t_start = time.perf_counter()
        status, body = client.json("POST", "/v1/admin/reload")
        t_end = time.perf_counter()
        _status1, info1 = client.json("GET", "/v1/info")
        client.close()
        version = body.get("model_version") if isinstance(body, dict) else None
        ok = status == 200 and bool(version)
        return {"reload": {
            "status": status, "ok": ok, "response": body, "seconds": round(t_end - t_start, 3),
            "started_at_s": round(t_start - t0, 3), "finished_at_s": round(t_end - t0, 3),
            "within_window": (t_end - t0) <= self.args.duration,
            "version_before": info0.get("model_version") if isinstance(info0, dict) else None,
            "version_after": info1.get("model_version") if isinstance(info1, dict) else None,
            "reloads_after": info1.get("reloads") if isinstance(info1, dict) else None,
        }}

    # ---------------------------------------------------------------- the run
    def run(self) -> dict[str, Any]:
        a = self.args
        started = dt.datetime.now(dt.UTC).astimezone()
        uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
        load_start = loadavg()
        print(f"model {self.model_dir}: {len(self.users)} users, {len(self.items)} items; uptime: {uptime}",
              flush=True)
        self.server.start(timeout=a.ready_timeout)
        print(f"server pid {self.server.pid} ready on {self.url} in {self.server.ready_seconds}s", flush=True)
        try:
            with_admin = self.admin()
            _, info = with_admin.json("GET", "/v1/info")
            with_admin.close()
            after_start = proc_status(self.server.pid)
            scenarios: list[dict[str, Any]] = []
            wanted = set(a.scenarios)
            if "steady" in wanted:
                for c in a.connections:
                    scenarios.append(self.scenario("steady", c))
            if "reload" in wanted:
                scenarios.append(self.scenario("reload", a.mixed_connections, self.reload_midway))
            if "events" in wanted:
                writer = EventWriter(self.server.port, self.server.keys["write"], self.users, self.items,
                                     a.event_rate, lanes=a.event_lanes, seed=a.seed)
                print(f"[{time.strftime('%H:%M:%S')}] events: writer at {a.event_rate}/s", flush=True)
                mon = self.admin()
                ev_before = metrics_snapshot(mon)
                res = self._events_scenario(writer)
                ev_after = metrics_snapshot(mon)
                mon.close()
                res["writer"]["server_side"] = server_side(ev_before, ev_after, EVENTS_ROUTE)
                scenarios.append(res)
            _, info_end = self.admin().json("GET", "/v1/info")
            final = proc_status(self.server.pid)
        finally:
            code = self.server.stop()
            try:
                shutil.copyfile(self.server.log, f"{self.args.out}.server.log")
            except OSError:
                pass
        errors = sum(s["errors_total"] for s in scenarios)
        errors += sum(c["errors_total"] for s in scenarios for c in s.get("continuation", []))
        errors += sum(s.get("writer", {}).get("errors", 0) for s in scenarios)
        errors += sum(0 if s.get("reload", {}).get("ok", True) else 1 for s in scenarios)
        errors += sum(1 for s in scenarios if "side_error" in s)
        self.results = {
            "benchmark": "mgrec serve load (wrk on loopback)",
            "date": started.isoformat(timespec="seconds"),
            "command": shlex.join([sys.executable, *sys.argv]),
            "server_command": shlex.join([c if c != self.server.keys_file.as_posix() else "<keys-file>"
                                          for c in self.server.cmd]),
            "model_dir": str(self.model_dir),
            "model_info": info,
            "model_info_end": info_end,
            "n_users": len(self.users), "n_items": len(self.items),
            "settings": {"duration_s": a.duration, "warmup_s": a.warmup, "connections": a.connections,
                         "mixed_connections": a.mixed_connections, "k": a.k, "event_rate": a.event_rate,
                         "event_lanes": a.event_lanes, "index": a.index, "quantize": a.quantize,
                         "threads": a.threads, "wrk_timeout_s": 5,
                         "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
            "host": {"cpu": cpu_info(), "uptime_before": uptime, "loadavg_before": load_start,
                     "wrk": subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False).stdout.split("\n")[0]},
            "server": {"ready_seconds": self.server.ready_seconds, "after_start_kib": after_start,
                       "final_kib": final, "peak_rss_mib": round(final.get("VmHWM", 0) / 1024, 1),
                       "rss_after_start_mib": round(after_start.get("VmRSS", 0) / 1024, 1),
                       "max_sampled_rss_mib": round(max(self.rss_samples, default=0) / 1024, 1),
                       "exit_code": code},
            "scenarios": scenarios,
            "errors_total": errors,
        }
        return self.results

    def _events_scenario(self, writer: EventWriter) -> dict[str, Any]:
        a = self.args
        # the writer runs through the warm-up too, so the measured window sees it at full rate
        writer.start()
        try:
            res = self.scenario("events", a.mixed_connections)
        finally:
            writer.stop()
        res["writer"] = writer.summary()
        w = res["writer"]
        print(f"    writer: {w['achieved_rate']} events/s sent, {w['ok']} ok, {w['errors']} errors, "
              f"p50 {w['latency_ms']['p50']} p99 {w['latency_ms']['p99']} ms", flush=True)
        return res


# ----------------------------------------------------------------------------- output
def fmt(x: Any, nd: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def markdown(r: dict[str, Any]) -> str:
    info = r.get("model_info") or {}
    srv = r["server"]
    host = r["host"]
    lines = [
        f"# Load: `mgrec serve` on {info.get('dataset')} ({r['n_users']} users, {r['n_items']} items)",
        "",
        (f"- date: {r['date']}; host: {host['cpu']['model']}, {host['cpu']['affinity']} CPUs usable, "
        f"load average before: {host['loadavg_before']} (`{host['uptime_before']}`)"),
        (f"- model: {info.get('model')} version {info.get('model_version')}, index `{info.get('index')}`"
        f" (quantize `{info.get('quantize')}`, {fmt((info.get('index_bytes') or 0) / 2**20)} MiB), "
        f"server `--threads {r['settings']['threads']}`"),
        (f"- server ready in {srv['ready_seconds']} s; RSS after start {srv['rss_after_start_mib']} MiB, "
        f"peak RSS (VmHWM) {srv['peak_rss_mib']} MiB"),
        (f"- load: `wrk --timeout 5s`, `GET /v1/users/{{id}}/recommendations?k={r['settings']['k']}` with uniform "
        f"random known users, {r['settings']['duration_s']} s per row after a {r['settings']['warmup_s']} s warm-up;"
        f" latency in ms as wrk measures it (client side, loopback)"),
        f"- command: `{r['command']}`",
        f"- server: `{r['server_command']}`",
        "",
        ("| scenario | connections | req/s | p50 ms | p95 ms | p99 ms | max ms | errors | server p99 ms (hist.) "
        "| server CPU ms/req |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in r["scenarios"]:
        lat = s["latency_ms"]
        ss = s.get("server_side") or {}
        e = s["errors"]
        err = str(s["errors_total"])
        if s["errors_total"]:
            err += (f" (connect {e['connect']}, read {e['read']}, write {e['write']}, timeout {e['timeout']}, "
                    f"non-2xx {e['non2xx']})")
        lines.append(f"| {s['scenario']} | {s['connections']} | {fmt(s['rps'])} | {fmt(float(lat['p50']), 2)} | "
                     f"{fmt(float(lat['p95']), 2)} | {fmt(float(lat['p99']), 2)} | {fmt(float(lat['max']), 1)} | {err} | "
                     f"{fmt(ss.get('p99_ms'), 2)} | {fmt(s.get('server_cpu_ms_per_request'), 2)} |")
        for n, c in enumerate(s.get("continuation", []), start=1):
            cl, cs = c["latency_ms"], c.get("server_side") or {}
            label = (f"{s['scenario']} (still reloading, +{n})" if c["phase"] == "during"
                     else f"{s['scenario']} (after the swap)")
            lines.append(f"| {label} | {s['connections']} | {fmt(c['rps'])} | {fmt(float(cl['p50']), 2)} | "
                         f"{fmt(float(cl['p95']), 2)} | {fmt(float(cl['p99']), 2)} | {fmt(float(cl['max']), 1)} | "
                         f"{c['errors_total']} | {fmt(cs.get('p99_ms'), 2)} | "
                         f"{fmt(c.get('server_cpu_ms_per_request'), 2)} |")
    lines += ["", "Server process per window (CPU from /proc, all threads; context switches summed over threads):",
              "", "| scenario | connections | CPU ms/req | user s | sys s | ctx switches/req | threads |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for s in r["scenarios"]:
        for label, w in [(s["scenario"], s)] + [(f"{s['scenario']} ({c['phase']})", c) for c in s.get("continuation", [])]:
            u = w.get("server_usage") or {}
            lines.append(f"| {label} | {s['connections']} | {fmt(u.get('cpu_ms_per_request'), 2)} | "
                         f"{fmt(u.get('utime_s'), 1)} | {fmt(u.get('stime_s'), 1)} | {fmt(u.get('ctxt_per_request'), 1)} | "
                         f"{u.get('threads_end', '-')} |")
    lines.append("")
    for s in r["scenarios"]:
        if "reload" in s:
            rl = s["reload"]
            lines.append(f"- reload during `{s['scenario']}`: HTTP {rl['status']} "
                         f"({'ok' if rl['ok'] else 'FAILED'}), model version {rl['version_before']} -> "
                         f"{rl['version_after']} (answer: {rl['response']}), took {rl['seconds']} s, "
                         f"at t={rl['started_at_s']}..{rl['finished_at_s']} s of the {r['settings']['duration_s']} s "
                         f"run{'' if rl['within_window'] else ' (it outlasted the window: the load went on in the windows marked below)'}")
        if "writer" in s:
            w = s["writer"]
            lat, late = w["latency_ms"], w["lateness_ms"]
            lines.append(f"- writer during `{s['scenario']}`: target {w['target_rate']} events/s, achieved "
                         f"{w['achieved_rate']} events/s ({w['sent']} sent, {w['ok']} stored, **{w['errors']} errors**"
                         f"{' ' + json.dumps(w['errors_by_kind']) if w['errors'] else ''}), `POST /v1/events` latency "
                         f"p50 {lat['p50']} / p99 {lat['p99']} / max {lat['max']} ms; schedule lateness p99 "
                         f"{late['p99']} ms ({w['lanes']} keep-alive connections)")
        if "side_error" in s:
            lines.append(f"- `{s['scenario']}`: side task failed: {s['side_error']}")
    lines.append(f"- total errors over all scenarios (wrk socket errors, timeouts, non-2xx, writer errors, failed "
                 f"reloads): **{r['errors_total']}**")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True, help="folder written by `mgrec train`")
    p.add_argument("--out", required=True, help="results prefix: writes PREFIX.json, PREFIX.md, PREFIX.server.log")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per scenario (default 20)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of unrecorded load before each (default 3)")
    p.add_argument("--connections", type=lambda s: [int(x) for x in s.split(",") if x], default=[1, 16, 64],
                   help="steady-state concurrencies (default 1,16,64)")
    p.add_argument("--mixed-connections", type=int, default=16,
                   help="concurrency of the reload and events scenarios (default 16)")
    p.add_argument("--scenarios", type=lambda s: [x for x in s.split(",") if x], default=["steady", "reload", "events"],
                   help="which of steady,reload,events to run (default all)")
    p.add_argument("--event-rate", type=float, default=100.0, help="events per second in `events` (default 100)")
    p.add_argument("--event-lanes", type=int, default=16,
                   help="writer connections, i.e. most events in flight (default 16)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--index", default="auto", choices=["auto", "exact", "faiss", "none"])
    p.add_argument("--quantize", default="none", choices=["none", "fp16", "int8"])
    p.add_argument("--threads", type=int, default=1, help="server --threads (torch threads per request)")
    p.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for /readyz")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    bad = set(args.scenarios) - {"steady", "reload", "events"}
    if bad:
        p.error(f"unknown scenarios {sorted(bad)}")
    return args


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--render":  # PREFIX.json -> PREFIX.md again
        prefix = sys.argv[2].removesuffix(".json")
        Path(prefix + ".md").write_text(markdown(json.loads(Path(prefix + ".json").read_text())))
        print(f"wrote {prefix}.md")
        return 0
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    bench = Bench(args)
    try:
        results = bench.run()
    finally:
        shutil.rmtree(bench.work, ignore_errors=True)
    out = args.out
    Path(out + ".json").write_text(json.dumps(results, indent=2) + "\n")
    md = markdown(results)
    Path(out + ".md").write_text(md)
    print(md)
    print(f"wrote {out}.json and {out}.md")
    return 1 if results["errors_total"] else 0


if __name__ == "__main__":
    sys.exit(main())
