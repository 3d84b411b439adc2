"""Start the service: engine, app, uvicorn, and an optional watcher of the model folder."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mgrec.errors import ConfigError, MgrecError

__all__ = ["ServeConfig", "build_app", "serve", "FolderWatcher"]

log = logging.getLogger("mgrec.server")


@dataclass
class ServeConfig:
    """What ``mgrec serve`` takes.

    Attributes:
        model_dir: folder written by ``mgrec train``.
        host: interface to bind (loopback by default).
        port: TCP port.
        store: event store URL (``sqlite:///PATH`` or ``postgresql://...``); default
            ``sqlite:///<model_dir>/../<name>.events.db``, beside the model folder so that a
            retrained folder keeps its events.
        api_keys_file: ``<role>:<key>`` lines; ``MGREC_API_KEYS`` adds more.
        no_auth: serve without keys (refused unless the host is loopback).
        watch: reload when the model folder changes on disk.
        watch_interval: seconds between checks of the folder.
        index: ``auto``, ``exact``, ``faiss-ivf``, ``faiss-hnsw`` (``faiss``) or ``none``.
        quantize: ``none``, ``fp16`` or ``int8`` item vectors.
        threads: torch threads per request (1 suits many concurrent small requests).
    """

    model_dir: str
    host: str = "127.0.0.1"
    port: int = 8000
    store: str | None = None
    api_keys_file: str | None = None
    no_auth: bool = False
    watch: bool = False
    watch_interval: float = 1.0
    index: str = "auto"
    quantize: str = "none"
    threads: int = 1


def default_store_url(model_dir: str | Path) -> str:
    path = Path(model_dir).resolve()
    return f"sqlite:///{path.parent / (path.name + '.events.db')}"


def build_app(cfg: ServeConfig) -> tuple[Any, Any]:
    """``(app, engine)`` for ``cfg``; raises :class:`MgrecError` on bad settings."""
    import torch

    from mgrec.server.app import create_app
    from mgrec.server.auth import load_api_keys
    from mgrec.server.engine import Engine
    from mgrec.store import open_store

    if cfg.threads < 1:
        raise ConfigError("--threads must be at least 1")
    torch.set_num_threads(cfg.threads)
    keys = None
    if not cfg.no_auth:
        keys = load_api_keys(cfg.api_keys_file)
        if not len(keys):
            raise ConfigError("no API keys: pass --api-keys-file or set MGREC_API_KEYS "
                              "('<role>:<key>', role read, write or admin); --no-auth serves without keys "
                              "on loopback only")
    elif cfg.host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"--no-auth is only allowed on loopback, not on {cfg.host}")
    store = open_store(cfg.store or default_store_url(cfg.model_dir))
    try:
        engine = Engine(cfg.model_dir, store, index=cfg.index, quantize=cfg.quantize)
    except BaseException:
        store.close()
        raise
    return create_app(engine, keys), engine


class FolderWatcher(threading.Thread):
    """Reload the engine when its model folder is replaced or rewritten.

    ``mgrec train --out`` swaps the whole folder in by a rename, so the folder's identity
    (inode) and the weights' modification time are checked. A folder that fails to load is
    logged and skipped; the old model keeps serving until a good one appears.
    """

    def __init__(self, engine: Any, interval: float = 1.0, on_reload: Any = None) -> None:
        super().__init__(name="mgrec-watch", daemon=True)
        self.engine, self.interval, self.on_reload = engine, interval, on_reload
        self._stop = threading.Event()
        self._last = self._stamp()

    def _stamp(self) -> tuple[int, ...] | None:
        path = Path(self.engine.model_dir)
        try:
            d, w = os.stat(path), os.stat(path / "model" / "weights.safetensors")
            r = os.stat(path / "run.json")
        except OSError:
            return None
        return (d.st_ino, w.st_ino, w.st_mtime_ns, w.st_size, r.st_mtime_ns)

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            stamp = self._stamp()
            if stamp is None or stamp == self._last:
                continue
            self._last = stamp
            try:
                version = self.engine.reload()
                log.info("model folder changed: now serving %s", version)
                if self.on_reload is not None:
                    self.on_reload(True)
            except MgrecError as err:
                log.warning("model folder changed but does not load (the old model keeps serving): %s", err)
                if self.on_reload is not None:
                    self.on_reload(False)

    def stop(self) -> None:
        self._stop.set()


def serve(cfg: ServeConfig) -> None:
    """Run the server until interrupted."""
    import uvicorn

    app, engine = build_app(cfg)
    watcher = None
    if cfg.watch:
        metrics = app.state.metrics

        def counted(ok: bool) -> None:
            metrics.reloads.labels("ok" if ok else "failed").inc()
            snap = engine.snapshot
            metrics.set_model(snap.version, str(snap.run.record.get("model")))

        watcher = FolderWatcher(engine, cfg.watch_interval, counted)
        watcher.start()
    info = engine.info()
    log.info("serving %s model %s on http://%s:%d (store %s, auth %s)", info["model"], info["model_version"],
             cfg.host, cfg.port, info["store"], "off" if cfg.no_auth else "on")
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", access_log=False)
    finally:
        if watcher is not None:
            watcher.stop()
        engine.close()
        engine.store.close()
