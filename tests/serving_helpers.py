"""A real ``mgrec serve`` process on a loopback port, and a small trained model folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from worlds import small_world

KEYS = {"read": "read-key-0123456789abcdef", "write": "write-key-0123456789abcdef",
        "admin": "admin-key-0123456789abcdef"}


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


def write_keys(path: Path) -> Path:
    path.write_text("# role:key\n" + "\n".join(f"{r}:{k}" for r, k in KEYS.items()) + "\n")
    return path


def train_model_dir(out: Path, *, fusion: str = "weighted", seed: int = 0, epochs: int = 2) -> Path:
    """A small fused model on synthetic data (with time and friends), saved as ``mgrec train`` does."""
    from mgrec.data.split import make_split
    from mgrec.data.synthetic import make_synthetic
    from mgrec.experiment import ExperimentConfig, TrainedRun, save_run
    from mgrec.mgr import MGR

    ds = make_synthetic(small_world(n_users=300, n_items=200, mean_events=15), seed=0)
    split = make_split(ds, "loo", seed=0)
    model = MGR({"dim": 16, "max_len": 10, "max_friends": 5, "friend_len": 3, "batch_size": 256,
                 "lr": 3e-3, "epochs": epochs, "fusion": fusion}, seed=seed).fit(ds, split.train, split.valid)
    cfg = ExperimentConfig(dataset="synthetic", model="mgr", split="loo", seed=seed)
    save_run(TrainedRun(model, ds, split, {"dataset": "synthetic", "model": "mgr", "split": "loo"}), cfg, out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m mgrec serve ...`` in a subprocess; its output goes to ``log``."""

    def __init__(self, model_dir: Path, store: str, keys_file: Path | None, log: Path, *extra: str) -> None:
        self.model_dir, self.store, self.keys_file, self.log = model_dir, store, keys_file, log
        self.extra = list(extra)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> Server:
        cmd = [sys.executable, "-m", "mgrec", "serve", "--model-dir", str(self.model_dir), "--port", str(self.port),
               "--store", self.store, *self.extra]
        if self.keys_file is not None:
            cmd += ["--api-keys-file", str(self.keys_file)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("MGREC_API_KEYS", None)
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None
