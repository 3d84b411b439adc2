"""The serving engine: a loaded model folder, live events, and atomic reloads.

:class:`Engine` holds one :class:`Snapshot` at a time: the model read from a folder written by
``mgrec train``, its id maps, its item index, and the stored events applied on top of its
training data. Every request reads ``engine.snapshot`` once and works on that object, so a
reload (:meth:`Engine.reload`) that swaps in a new snapshot never shows a request a
half-loaded model, and a model that fails to load leaves the old one serving.

Events (:meth:`Engine.add_events`) are first committed to the event store (durable; concurrent
calls share one transaction, a group commit), then applied to the current snapshot through
:meth:`~mgrec.recommender.Recommender.observe`: the fused model's behaviour, social and time
encoders read them on the next request, without retraining. Events of users the model does
not know are kept per user and served through the cold-start path. A new snapshot replays
the store's events that its model was not trained on (those after the ``store_seq`` recorded
by ``mgrec train --from-store``).

All recommendation paths go through the model's ``recommend()`` contract (or
``recommend_context()`` for users the model has never seen).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mgrec.errors import ConfigError, DataError, MgrecError
from mgrec.experiment import LoadedRun, load_run
from mgrec.io import sha256_file
from mgrec.store import Event, EventStore, validate_events

__all__ = ["Engine", "Snapshot", "NotFound", "Recommendation"]

log = logging.getLogger("mgrec.server")

#: At most this many events go into one transaction of the group commit.
GROUP_COMMIT_MAX = 10_000


class NotFound(MgrecError):
    """An id the model and the event store do not know (HTTP 404)."""

    def __init__(self, message: str, field: str) -> None:
        self.message, self.field = message, field
        super().__init__(f"field '{field}': {message}")


@dataclass
class Recommendation:
    """One response: ranked item ids, scores and optional per-granularity contributions."""

    items: list[str]
    scores: list[float]
    contributions: list[dict[str, float]] | None = None
    ignored: dict[str, list[str]] = field(default_factory=dict)
    fallback: str | None = None


@dataclass
class Snapshot:
    """One loaded model with everything a request needs; replaced whole on reload."""

    run: LoadedRun
    version: str
    path: Path
    user_code: dict[str, int]
    item_code: dict[str, int]
    item_ids: np.ndarray
    applied_seq: int
    loaded_at: float
    live: dict[str, list[tuple[str, float, float]]] = field(default_factory=dict)
    vectors: np.ndarray | None = None
    item_norms: np.ndarray | None = None
    index_kind: str = "none"
    index_bytes: int = 0

    @property
    def model(self) -> Any:
        return self.run.model

    @property
    def can_explain(self) -> bool:
        return hasattr(self.model, "explain")

    @property
    def can_cold_start(self) -> bool:
        return hasattr(self.model, "recommend_context")


def _model_version(path: Path) -> str:
    """The first 12 hex digits of the weights' SHA-256 (checked when the model loaded): the
    same files always give the same version."""
    meta = json.loads((path / "model" / "model.json").read_text(encoding="utf-8"))
    return str(meta.get("weights_sha256") or sha256_file(path / "model" / "weights.safetensors"))[:12]


class Engine:
    """A model folder served with live events.

    Args:
        model_dir: folder written by ``mgrec train``.
        store: the durable event store.
        index: ``"auto"`` (exact below 100k items, a faiss inverted file above), ``"exact"``,
            ``"faiss-ivf"``, ``"faiss-hnsw"`` (``"faiss"``) or ``"none"`` (full scores through
            ``score()``); dot-product models only.
        quantize: ``"none"``, ``"fp16"`` or ``"int8"`` item vectors in the index.
    """

    def __init__(self, model_dir: str | Path, store: EventStore, *, index: str = "auto",
                 quantize: str = "none") -> None:
        if index not in ("auto", "exact", "faiss", "faiss-hnsw", "faiss-ivf", "none"):
            raise ConfigError(f"index must be auto, exact, faiss-ivf, faiss-hnsw or none, got {index!r}")
        self.model_dir = Path(model_dir)
        self.store = store
        self.index_kind, self.quantize = index, quantize
        self._write_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self.reloads = 0
        self.snapshot: Snapshot = self._load(self.model_dir)
        with self._write_lock:
            self._replay(self.snapshot)
        self._pending: queue.Queue[tuple[list[Event], Future[dict[str, Any]]] | None] = queue.Queue()
        self._committer = threading.Thread(target=self._commit_loop, name="mgrec-commit", daemon=True)
        self._committer.start()

    # ------------------------------------------------------------------- loading
    def _load(self, path: Path) -> Snapshot:
        t0 = time.perf_counter()
        run = load_run(path)
        version = _model_version(path)
        model = run.model
        users, items = run.users.ids, run.items.ids
        snap = Snapshot(
            run=run, version=version, path=path,
            user_code={str(u): n for n, u in enumerate(users)},
            item_code={str(i): n for n, i in enumerate(items)},
            item_ids=np.asarray(items, dtype=object), applied_seq=int(run.record.get("store_seq", 0)),
            loaded_at=time.time(),
        )
        vectors = self._vectors(model)
        if vectors is not None:
            snap.vectors = vectors
            norms = np.linalg.norm(vectors, axis=1)
            snap.item_norms = np.where(norms > 0, norms, 1.0).astype(np.float32)
            if self.index_kind != "none":
                from mgrec.retrieval import build_index

                idx = build_index(vectors, self.index_kind, quantize=self.quantize)
                model.use_index(idx)
                snap.index_kind, snap.index_bytes = idx.kind, int(idx.memory_bytes())
        log.info("loaded model %s (%s, %d users, %d items, index %s) in %.2fs", version,
                 run.record.get("model"), len(users), len(items), snap.index_kind, time.perf_counter() - t0)
        return snap

    @staticmethod
    def _vectors(model: Any) -> np.ndarray | None:
        try:
            return np.ascontiguousarray(model.item_vectors(), dtype=np.float32)
        except ConfigError:
            return None

    def reload(self, path: str | Path | None = None) -> str:
        """Load ``path`` (default: the current folder) and swap it in atomically.

        Returns:
            The new model version.

        Raises:
            MgrecError: when the folder cannot be loaded; the old model keeps serving.
        """
        with self._reload_lock:
            new = self._load(Path(path) if path is not None else self.model_dir)
            with self._write_lock:
                self._replay(new)
                self.snapshot = new
                self.model_dir = new.path
                self.reloads += 1
        return new.version

    # -------------------------------------------------------------------- events
    def add_events(self, events: Sequence[Event], timeout: float | None = 60.0) -> dict[str, Any]:
        """Store ``events`` durably, then apply them to the serving model.

        Concurrent calls are committed together (group commit): one committer thread takes
        every batch waiting, writes them in one transaction (one flush to disk), applies them,
        and then answers each caller. A missing timestamp becomes the time the server
        received the event.

        Returns:
            ``{"stored", "applied", "unknown_items", "last_seq"}``.

        Raises:
            DataError: for a bad event (nothing of this call is stored).
        """
        return self.submit_events(events).result(timeout)

    def submit_events(self, events: Sequence[Event]) -> Future[dict[str, Any]]:
        """:meth:`add_events` without waiting: the future holds the answer once committed.

        Raises:
            DataError: for a bad event, at once (nothing of this call is queued).
        """
        now = time.time()
        events = [e if e.timestamp is not None else Event(e.user_id, e.item_id, now, e.weight) for e in events]
        validate_events(events)  # a bad call must not fail the others committed with it
        done: Future[dict[str, Any]] = Future()
        if not events:
            done.set_result({"stored": 0, "applied": 0, "unknown_items": [], "last_seq": self.store.last_seq()})
        else:
            self._pending.put((events, done))
        return done

    def _commit_loop(self) -> None:
        while True:
            first = self._pending.get()
            if first is None:
                return
            group = [first]
            n = len(first[0])
            while n < GROUP_COMMIT_MAX:
                try:
                    nxt = self._pending.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._pending.put(None)
                    break
                group.append(nxt)
                n += len(nxt[0])
            events = [e for evs, _ in group for e in evs]
            try:
                with self._write_lock:
                    seqs = np.asarray(self.store.add(events), dtype=np.int64)
                    applied, unknown = self._apply(
                        self.snapshot, seqs, [e.user_id for e in events], [e.item_id for e in events],
                        np.array([e.timestamp for e in events], np.float64),
                        np.array([e.weight for e in events], np.float32))
            except BaseException as err:  # the store refused or failed: every caller hears it
                for _, fut in group:
                    fut.set_exception(err)
                continue
            start = 0
            for evs, fut in group:
                part = slice(start, start + len(evs))
                start += len(evs)
                mine = {e.item_id for e in evs}
                fut.set_result({"stored": len(evs), "applied": int(applied[part].sum()),
                                "unknown_items": sorted(mine & unknown), "last_seq": int(seqs[part][-1])})

    def close(self) -> None:
        """Stop the committer thread (after the calls already queued)."""
        if self._committer.is_alive():
            self._pending.put(None)
            self._committer.join(timeout=30)

    def _replay(self, snap: Snapshot) -> None:
        frame = self.store.frame(since=snap.applied_seq)
        if len(frame):
            applied, _ = self._apply(snap, frame["seq"].to_numpy(np.int64), frame["user_id"].tolist(),
                                     frame["item_id"].tolist(), frame["timestamp"].to_numpy(np.float64),
                                     frame["weight"].to_numpy(np.float32))
            log.info("replayed %d stored events (%d applied to known users and items)", len(frame), applied.sum())

    def _apply(self, snap: Snapshot, seqs: np.ndarray, users: list[str], items: list[str], ts: np.ndarray,
               w: np.ndarray) -> tuple[np.ndarray, set[str]]:
        """Apply stored events to ``snap``.

        Returns:
            ``(applied, unknown)``: per event whether the model took it (known user and item),
            and the item ids the model does not know (stored only).
        """
        u = np.array([snap.user_code.get(x, -1) for x in users], dtype=np.int64)
        i = np.array([snap.item_code.get(x, -1) for x in items], dtype=np.int64)
        known = (u >= 0) & (i >= 0)
        if known.any():
            snap.model.observe(u[known], i[known], ts[known], w[known])
        for row in np.flatnonzero((u < 0) & (i >= 0)):
            snap.live.setdefault(users[row], []).append((items[row], float(ts[row]), float(w[row])))
        if len(seqs):
            snap.applied_seq = max(snap.applied_seq, int(seqs.max()))
        return known, {items[r] for r in np.flatnonzero(i < 0)}

    # ------------------------------------------------------------ recommendations
    def recommend_user(self, user_id: str, k: int = 10, *, exclude_seen: bool = True,
                       explain: bool = False) -> tuple[Recommendation, Snapshot]:
        """Top-``k`` for a user the model knows, or one with stored events only.

        Raises:
            NotFound: for a user neither the model nor the store knows.
        """
        snap = self.snapshot
        code = snap.user_code.get(user_id)
        if code is None:
            live = snap.live.get(user_id)
            if not live:
                raise NotFound(f"unknown user {user_id!r}", "user_id")
            rec = self._cold(snap, [e[0] for e in live], [e[1] for e in live], None, None, None, k,
                             explain, exclude_seen)
            return rec, snap
        items, scores = snap.model.recommend(code, k=k, filter_seen=exclude_seen)
        keep = items >= 0
        items, scores = items[keep], scores[keep]
        contributions = None
        if explain:
            contributions = self._explain(snap, lambda it: snap.model.explain(np.array([code]), it[None]), items)
        return Recommendation(snap.item_ids[items].tolist(), scores.astype(float).tolist(), contributions), snap

    def recommend_context(self, history: Sequence[tuple[str, float | None]], features: Mapping[str, Any] | None,
                          friends: Sequence[str] | None, time_: float | None, k: int, *,
                          explain: bool = False, exclude_seen: bool = True) -> tuple[Recommendation, Snapshot]:
        """Top-``k`` for a user described by the request (cold start)."""
        snap = self.snapshot
        times = [t for _, t in history]
        if any(t is None for t in times):
            times = None if all(t is None for t in times) else [time_ if t is None else t for t in times]
            if times is not None and any(t is None for t in times):
                raise DataError("give a timestamp for every history item, or for none", field="history")
        rec = self._cold(snap, [i for i, _ in history], times, features, friends, time_, k, explain, exclude_seen)
        return rec, snap

    def _cold(self, snap: Snapshot, items: list[str], times: list[float] | None, features: Any,
              friends: Sequence[str] | None, time_: float | None, k: int, explain: bool,
              exclude_seen: bool) -> Recommendation:
        ignored: dict[str, list[str]] = {}
        keep = [n for n, i in enumerate(items) if i in snap.item_code]
        if len(keep) < len(items):
            ignored["history"] = sorted({i for i in items if i not in snap.item_code})
        codes = [snap.item_code[items[n]] for n in keep]
        times = None if times is None else [times[n] for n in keep]
        fr = [f for f in friends or [] if f in snap.user_code]
        if friends and len(fr) < len(friends):
            ignored["friends"] = sorted({f for f in friends if f not in snap.user_code})
        model = snap.model
        if not snap.can_cold_start:
            if features:
                ignored["features"] = sorted(features)
            pop = model._popularity().copy()
            if exclude_seen and codes:
                pop[codes] = -np.inf
            idx = np.argsort(-pop, kind="stable")[:k]
            idx = idx[np.isfinite(pop[idx])]
            return Recommendation(snap.item_ids[idx].tolist(), pop[idx].astype(float).tolist(), None,
                                  ignored, fallback="popularity")
        ctx = dict(history_times=times, features=features, friends=[snap.user_code[f] for f in fr], time=time_)
        out, scores = model.recommend_context(codes, k=k, filter_seen=exclude_seen, **ctx)
        keep_mask = out >= 0
        out, scores = out[keep_mask], scores[keep_mask]
        contributions = None
        if explain:
            contributions = self._explain(snap, lambda it: model.explain_context(codes, it, **ctx), out)
        return Recommendation(snap.item_ids[out].tolist(), scores.astype(float).tolist(), contributions, ignored)

    @staticmethod
    def _explain(snap: Snapshot, fn: Any, items: np.ndarray) -> list[dict[str, float]]:
        if not snap.can_explain:
            raise ConfigError(f"model {snap.run.record.get('model')} has no per-granularity explanations")
        base = getattr(snap.model, "base_items_", snap.model.n_items_)
        parts = fn(np.where(items < base, items, 0)) if len(items) else {}
        return [{g: (float(v[0, n]) if items[n] < base else 0.0) for g, v in parts.items()} for n in range(len(items))]

    def similar(self, item_id: str, k: int = 10) -> tuple[Recommendation, Snapshot]:
        """Items most like ``item_id``: cosine of item vectors (dot-product models), else of
        the items' user columns in the interaction matrix."""
        snap = self.snapshot
        code = snap.item_code.get(item_id)
        if code is None:
            raise NotFound(f"unknown item {item_id!r}", "item_id")
        model = snap.model
        if snap.vectors is not None and snap.item_norms is not None:
            vec = snap.vectors
            sims = (vec @ vec[code]) / (snap.item_norms * snap.item_norms[code])
        else:
            seen = model.seen_.tocsc()
            col = seen[:, code]
            co = np.asarray((seen.T @ col).todense()).ravel()
            norms = np.sqrt(np.asarray(seen.sum(axis=0)).ravel())
            sims = co / np.maximum(norms * max(norms[code], 1e-12), 1e-12)
        sims = sims.astype(np.float32)
        sims[code] = -np.inf
        k = min(k, len(sims) - 1)
        idx = np.argpartition(-sims, k)[:k] if k < len(sims) else np.arange(len(sims))
        idx = idx[np.lexsort((idx, -sims[idx]))]
        return Recommendation(snap.item_ids[idx].tolist(), sims[idx].astype(float).tolist()), snap

    # --------------------------------------------------------------- page helpers
    def user_info(self, user_id: str, limit: int = 50) -> dict[str, Any]:
        """A user's latest events (training and live) and friends, for the web page."""
        snap = self.snapshot
        code = snap.user_code.get(user_id)
        model = snap.model
        history: list[dict[str, Any]] = []
        friends: list[str] = []
        if code is not None:
            ctx = getattr(model, "context_", None)
            if ctx is not None:
                items, times, weights = ctx.history(code)
                has_time = ctx.has_time
                history = [{"item_id": str(snap.item_ids[i]), "timestamp": float(t) if has_time else None,
                            "weight": float(w)} for i, t, w in zip(items, times, weights)]
                friends = [snap.run.users.id(f) for f in ctx.friends[code] if f < ctx.n_users]
            elif model.seen_ is not None:
                row = model.seen_[code].indices
                history = [{"item_id": str(snap.item_ids[i]), "timestamp": None, "weight": 1.0} for i in row]
        elif user_id in snap.live:
            history = [{"item_id": i, "timestamp": t, "weight": w} for i, t, w in snap.live[user_id]]
        else:
            raise NotFound(f"unknown user {user_id!r}", "user_id")
        return {"user_id": user_id, "known": code is not None, "n_events": len(history),
                "history": history[-limit:][::-1], "friends": friends}

    def list_ids(self, kind: str, prefix: str = "", limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """Ids of users or items in code order (users with live events only come last)."""
        snap = self.snapshot
        ids = list(snap.user_code) + [u for u in snap.live if u not in snap.user_code] if kind == "users" \
            else list(snap.item_code)
        if prefix:
            ids = [i for i in ids if i.startswith(prefix)]
        return {"total": len(ids), "ids": ids[offset:offset + limit]}

    def info(self) -> dict[str, Any]:
        snap = self.snapshot
        return {"model_version": snap.version, "model": snap.run.record.get("model"),
                "dataset": snap.run.record.get("dataset"), "users": len(snap.user_code),
                "items": len(snap.item_code), "index": snap.index_kind, "index_bytes": snap.index_bytes,
                "quantize": self.quantize, "applied_seq": snap.applied_seq, "loaded_at": snap.loaded_at,
                "reloads": self.reloads, "explain": snap.can_explain, "cold_start": snap.can_cold_start,
                "store": self.store.url}
