"""Synthetic worlds at scale (``synthetic-1m``, ``synthetic-3m``, ``synthetic-10m``): all five
granularities, generated in time linear in the number of events.

The built-in ``synthetic`` world (:mod:`mgrec.data.synthetic`) scores every item for every
event, which is exact but costs ``O(events x items)``. This generator keeps the same kinds of
signal with a two-stage choice, so that 10M events over 200k items take seconds:

1. **cluster**, by a Gumbel-max draw over ``K`` content clusters from the user's taste logits
   (occupation, region, age bucket, gender and a personal part: **user**), plus a day-part
   and a weekend taste per cluster at the event's own time (**time**);
2. **item** within the cluster by popularity (Zipf), drawn from an early or a late popularity
   profile with probability given by the elapsed share of the span (popularity drift,
   **time**); items released during the span are replaced before their release.

Then **behaviour**: with probability ``p_seq`` an event follows the user's previous event with
that item's successor (a fixed item of the successor cluster). **social**: with probability
``p_social`` it repeats one of a friend's five most recent items before it; friendships are
mostly within the taste community (``homophily``). **item**: genre, tags (mostly the
cluster's own) and a price follow the cluster. Events come in sessions (a few events minutes
apart), so the request time of the next event is close to the last event's.

Every part is vectorised over events (chunks of ``chunk_events`` for the ``O(events x K)``
cluster draw), so memory is ``O(events + users x K_low + items)``. A (user, item) pair is kept
once (its first event); the world over-generates by ``overdraw`` and trims to the target.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from mgrec.config import to_dict
from mgrec.data.dataset import Dataset, FeatureTable, SocialGraph
from mgrec.data.vocab import Vocabulary
from mgrec.errors import ConfigError

__all__ = ["ScaleConfig", "make_scale", "scale_config_for", "SCALE_NAME", "write_parquet_folder"]

log = logging.getLogger(__name__)

DAY = 86400
#: Dataset names ``synthetic-1m``, ``synthetic-2.5m``, ``synthetic-500k`` ...
SCALE_NAME = re.compile(r"^synthetic-(\d+(?:\.\d+)?)([km])$")
HOUR_PROFILE = np.array([2, 1, 1, 1, 1, 1, 2, 4, 5, 5, 5, 5, 6, 6, 5, 5, 6, 7, 9, 11, 12, 12, 9, 5], float)
AGE_EDGES = (25, 35, 45, 55)


@dataclass(frozen=True)
class ScaleConfig:
    """Sizes and signal strengths of a scale world.

    ``n_users``, ``n_items`` and ``n_links`` default to 10%, 2% and 50% of ``n_interactions``
    (10M events: 1M users, 200k items, 5M undirected friendships). ``w_*`` weight the cluster
    logits: taste (profile and personal), day part, weekend. ``p_seq`` and ``p_social`` are the
    shares of events that follow the previous item's successor and a friend's recent item.
    """

    n_interactions: int = 1_000_000
    n_users: int = 0
    n_items: int = 0
    n_links: int = 0
    n_clusters: int = 64
    n_genres: int = 16
    tags_per_cluster: int = 12
    tags_per_item: int = 3
    tag_purity: float = 0.8
    n_occupations: int = 20
    n_regions: int = 10
    personal_rank: int = 8
    new_item_frac: float = 0.2
    zipf: float = 0.9
    session_events: float = 4.0
    session_gap_s: float = 300.0
    homophily: float = 0.8
    span_days: int = 365
    start: int = 1577836800  # 2020-01-01 UTC
    w_profile: float = 1.5
    w_personal: float = 1.0
    w_daypart: float = 1.0
    w_weekend: float = 0.7
    p_seq: float = 0.25
    p_social: float = 0.15
    overdraw: float = 1.15
    chunk_events: int = 500_000

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"scale config: {f.name} must be a finite number >= 0, got {v!r}")
        if self.n_interactions < 1000:
            raise ConfigError("scale config: n_interactions must be at least 1000")
        if max(self.p_seq + self.p_social, self.homophily, self.tag_purity, self.new_item_frac) > 1:
            raise ConfigError("scale config: p_seq + p_social, homophily, tag_purity and new_item_frac must be <= 1")
        if min(self.n_clusters, self.n_genres, self.tags_per_cluster, self.tags_per_item, self.chunk_events,
               self.n_occupations, self.n_regions, self.personal_rank, self.span_days) < 1:
            raise ConfigError("scale config: counts (clusters, genres, tags, chunk_events, ...) must be >= 1")
        if self.overdraw < 1:
            raise ConfigError("scale config: overdraw must be >= 1")

    def sized(self) -> ScaleConfig:
        """This config with the default user, item and link counts filled in."""
        n = self.n_interactions
        return replace(self, n_users=self.n_users or max(100, n // 10),
                       n_items=self.n_items or max(self.n_clusters * 4, n // 50),
                       n_links=self.n_links or n // 2)


def scale_config_for(name: str) -> ScaleConfig | None:
    """The config of dataset ``name`` (``synthetic-10m`` ...), or ``None`` for other names."""
    m = SCALE_NAME.match(name)
    if m is None:
        return None
    n = float(m.group(1)) * (1_000 if m.group(2) == "k" else 1_000_000)
    return ScaleConfig(n_interactions=int(round(n)))


def make_scale(cfg: ScaleConfig, *, seed: int, name: str | None = None) -> Dataset:
    """Generate a scale world; the same ``cfg`` and ``seed`` give the same data.

    Returns:
        A :class:`Dataset` with user features (age, gender, occupation, region), item features
        (genre, tags, price), undirected friendships and time-ordered implicit interactions.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"scale seed must be a non-negative integer, got {seed!r}")
    cfg = cfg.sized()
    r_item, r_user, r_soc, r_time, r_pick = (np.random.default_rng(c)
                                             for c in np.random.SeedSequence(int(seed)).spawn(5))
    items = _items(cfg, r_item)
    users = _users(cfg, r_user)
    community = _argmax_taste(cfg, users)
    src, dst = _links(cfg, r_soc, community)
    ev_user, ev_ts = _schedule(cfg, r_time)
    ev_item = _choose(cfg, r_pick, items, users, ev_user, ev_ts, src, dst)
    inter = _finish(cfg, r_pick, ev_user, ev_item, ev_ts)
    user_frame = pd.DataFrame({"age": users["age"], "gender": np.array(["F", "M"], object)[users["gender"]],
                               "occupation": np.char.add("occ", users["occ"].astype(str)).astype(object),
                               "region": np.char.add("reg", users["reg"].astype(str)).astype(object)})
    item_frame = pd.DataFrame({"genre": np.char.add("g", items["genre"].astype(str)).astype(object),
                               "tags": pd.Series(list(map(tuple, np.char.add("t", items["tags"].astype(str)))),
                                                 dtype=object),
                               "price": items["price"]})
    n_u, n_i = cfg.n_users, cfg.n_items
    ds = Dataset(
        name=name or f"synthetic-{cfg.n_interactions}",
        users=Vocabulary(np.char.add("u", np.arange(n_u).astype(str)).tolist()),
        items=Vocabulary(np.char.add("i", np.arange(n_i).astype(str)).tolist()),
        interactions=inter,
        user_features=FeatureTable(user_frame, {"age": "numeric", "gender": "categorical",
                                                "occupation": "categorical", "region": "categorical"}),
        item_features=FeatureTable(item_frame, {"genre": "categorical", "tags": "multi", "price": "numeric"}),
        social=SocialGraph(src, dst, np.ones(len(src), np.float32), directed=False),
        meta={"weight_kind": "implicit", "generator": "mgrec.data.scale", "seed": int(seed),
              "config": to_dict(cfg)},
    )
    log.info("generated %r", ds)
    return ds


# ------------------------------------------------------------------ parts of the world
def _items(cfg: ScaleConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n, k = cfg.n_items, cfg.n_clusters
    cluster = rng.permutation(np.arange(n) % k)
    own = cluster[:, None] * cfg.tags_per_cluster + rng.integers(0, cfg.tags_per_cluster, (n, cfg.tags_per_item))
    other = rng.integers(0, k * cfg.tags_per_cluster, own.shape)
    tags = np.where(rng.random(own.shape) < cfg.tag_purity, own, other)
    price = np.round(np.exp(rng.normal(np.log(10.0), 0.6, k)[cluster] + 0.3 * rng.normal(size=n)), 2)
    # Zipf popularity by a random rank; the late profile re-ranks half of the items (drift)
    early = (1.0 + rng.permutation(n)) ** -cfg.zipf
    late = early * np.exp(rng.normal(0.0, 1.0, n))
    release = np.full(n, cfg.start, np.int64)
    n_new = int(cfg.new_item_frac * n)
    new = rng.choice(n, n_new, replace=False)
    release[new] = cfg.start + (rng.uniform(0.05, 0.9, n_new) * cfg.span_days * DAY).astype(np.int64)
    cycle = rng.permutation(k)
    succ_cluster = np.roll(cycle, -1)[np.argsort(cycle)]
    order = np.argsort(cluster, kind="stable")  # items grouped by cluster
    bounds = np.searchsorted(cluster[order], np.arange(k + 1))
    size = np.diff(bounds)
    target = succ_cluster[cluster]
    succ_item = order[bounds[target] + (rng.random(n) * size[target]).astype(np.int64)]
    return {"cluster": cluster, "genre": cluster % cfg.n_genres, "tags": tags, "price": price,
            "early": early, "late": late, "release": release, "succ": succ_item, "order": order,
            "bounds": bounds, "daypart": rng.normal(size=(k, 4)) * cfg.w_daypart,
            "weekend": rng.normal(size=k) * cfg.w_weekend}


def _users(cfg: ScaleConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n, k, r = cfg.n_users, cfg.n_clusters, cfg.personal_rank
    age = np.clip(np.round(rng.normal(36, 12, n)), 16, 80)
    gender = rng.integers(0, 2, n)
    occ = rng.integers(0, cfg.n_occupations, n)
    reg = rng.integers(0, cfg.n_regions, n)
    bucket = np.searchsorted(AGE_EDGES, age, side="right")
    tables = {"occ": 1.0 * rng.normal(size=(cfg.n_occupations, k)), "reg": 0.8 * rng.normal(size=(cfg.n_regions, k)),
              "age": 0.6 * rng.normal(size=(len(AGE_EDGES) + 1, k)), "gender": 0.3 * rng.normal(size=(2, k))}
    personal = rng.normal(size=(n, r)).astype(np.float32)  # low rank: O(n_users x r) memory
    proj = (rng.normal(size=(r, k)) / math.sqrt(r)).astype(np.float32)
    return {"age": age, "gender": gender, "occ": occ, "reg": reg, "bucket": bucket, "tables": tables,
            "personal": personal, "proj": proj}


def _taste(cfg: ScaleConfig, users: dict[str, np.ndarray], u: np.ndarray) -> np.ndarray:
    """``(len(u), K)`` cluster taste logits of users ``u``."""
    t = users["tables"]
    profile = t["occ"][users["occ"][u]] + t["reg"][users["reg"][u]] + t["age"][users["bucket"][u]] \
        + t["gender"][users["gender"][u]]
    return (cfg.w_profile * profile + cfg.w_personal * (users["personal"][u] @ users["proj"]) * 1.5).astype(np.float32)


def _argmax_taste(cfg: ScaleConfig, users: dict[str, np.ndarray]) -> np.ndarray:
    out = np.empty(cfg.n_users, np.int64)
    step = max(1, cfg.chunk_events)
    for a in range(0, cfg.n_users, step):
        out[a:a + step] = _taste(cfg, users, np.arange(a, min(a + step, cfg.n_users))).argmax(axis=1)
    return out


def _links(cfg: ScaleConfig, rng: np.random.Generator, community: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``n_links`` distinct undirected pairs ``a < b``, mostly inside a taste community."""
    n, want = cfg.n_users, cfg.n_links
    if want == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    members = np.argsort(community, kind="stable")
    sizes = np.bincount(community, minlength=cfg.n_clusters)
    starts = np.cumsum(sizes) - sizes
    pairs = np.zeros((0, 2), np.int64)
    for _ in range(4):  # top up after removing duplicates and self-links
        m = int((want - len(pairs)) * 1.1) + 10
        src = rng.integers(0, n, m)
        c = community[src]
        same = members[starts[c] + (rng.random(m) * sizes[c]).astype(np.int64)]
        dst = np.where(rng.random(m) < cfg.homophily, same, rng.integers(0, n, m))
        new = np.stack([np.minimum(src, dst), np.maximum(src, dst)], axis=1)
        pairs = np.unique(np.concatenate([pairs, new[new[:, 0] != new[:, 1]]]), axis=0)
        if len(pairs) >= want:
            break
    pairs = pairs[np.sort(rng.choice(len(pairs), min(want, len(pairs)), replace=False))]
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def _schedule(cfg: ScaleConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Event users and times, sorted by user then time: log-normal counts per user, events in
    sessions (start: a day after the user joins and an hour from the daily profile; then
    exponential gaps of ``session_gap_s``)."""
    n_u = cfg.n_users
    total = int(cfg.n_interactions * cfg.overdraw)
    raw = rng.lognormal(0.0, 0.8, n_u)
    counts = np.maximum(1, np.round(raw / raw.sum() * total)).astype(np.int64)
    user = np.repeat(np.arange(n_u), counts)
    n_ev = len(user)
    n_sess = np.maximum(1, np.round(counts / cfg.session_events)).astype(np.int64)
    sess_of = (rng.random(n_ev) * n_sess[user]).astype(np.int64)  # session index within the user
    sess_base = np.cumsum(n_sess) - n_sess
    sid = sess_base[user] + sess_of  # global session id
    sess_user = np.repeat(np.arange(n_u), n_sess)
    join = rng.uniform(0.0, 0.7 * cfg.span_days, n_u)[sess_user]
    day = np.floor(join + rng.random(len(sess_user)) * (cfg.span_days - join)).astype(np.int64)
    hour = rng.choice(24, size=len(sess_user), p=HOUR_PROFILE / HOUR_PROFILE.sum())
    sess_start = cfg.start + day * DAY + hour * 3600 + rng.integers(0, 3600, len(sess_user))
    order = np.argsort(sid, kind="stable")
    rank = np.empty(n_ev, np.int64)
    first = np.r_[True, np.diff(sid[order]) != 0]
    pos = np.arange(n_ev) - np.maximum.accumulate(np.where(first, np.arange(n_ev), 0))
    rank[order] = pos
    gaps = rng.exponential(cfg.session_gap_s, n_ev) + 1.0
    ts = sess_start[sid] + (rank * gaps).astype(np.int64) + rank  # strictly later within a session
    ts = np.minimum(ts, cfg.start + cfg.span_days * DAY - 1)
    order = np.lexsort((ts, user))
    return user[order], ts[order]


def _draw_items(cfg: ScaleConfig, rng: np.random.Generator, items: dict[str, np.ndarray],
                cluster: np.ndarray, frac: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """An item of each ``cluster`` by early/late popularity; unreleased draws fall back to the
    cluster's items available from the start."""
    order, bounds = items["order"], items["bounds"]
    out = np.empty(len(cluster), np.int64)
    late = rng.random(len(cluster)) < frac
    for profile, rows in (("early", ~late), ("late", late)):
        cum = np.cumsum(items[profile][order])
        lo = np.where(bounds[cluster[rows]] > 0, cum[np.maximum(bounds[cluster[rows]] - 1, 0)], 0.0)
        lo[bounds[cluster[rows]] == 0] = 0.0
        hi = cum[bounds[cluster[rows] + 1] - 1]
        pick = np.searchsorted(cum, lo + rng.random(len(lo)) * (hi - lo), side="right")
        out[rows] = order[np.minimum(pick, len(order) - 1)]
    unreleased = items["release"][out] > ts
    if unreleased.any():
        base = np.flatnonzero(items["release"] == cfg.start)
        by_c = base[np.argsort(items["cluster"][base], kind="stable")]
        b = np.searchsorted(items["cluster"][by_c], np.arange(cfg.n_clusters + 1))
        c = cluster[unreleased]
        size = b[c + 1] - b[c]
        ok = size > 0
        fix = np.flatnonzero(unreleased)[ok]
        out[fix] = by_c[b[c[ok]] + (rng.random(ok.sum()) * size[ok]).astype(np.int64)]
    return out


def _choose(cfg: ScaleConfig, rng: np.random.Generator, items: dict[str, np.ndarray],
            users: dict[str, np.ndarray], ev_user: np.ndarray, ev_ts: np.ndarray,
            src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    n_ev = len(ev_user)
    since = ev_ts - cfg.start
    part = (since % DAY) // 3600 // 6
    weekend = ((since // DAY + 2) % 7 >= 5).astype(np.float32)  # day 0 is a Wednesday
    frac = since / (cfg.span_days * DAY)
    cluster = np.empty(n_ev, np.int64)
    step = cfg.chunk_events
    for a in range(0, n_ev, step):
        s = slice(a, min(a + step, n_ev))
        logits = _taste(cfg, users, ev_user[s])
        logits += items["daypart"][:, part[s]].T + weekend[s, None] * items["weekend"][None, :]
        logits -= np.log(-np.log(rng.random(logits.shape, dtype=np.float32) + 1e-12) + 1e-12)  # Gumbel-max
        cluster[s] = logits.argmax(axis=1)
    item = _draw_items(cfg, rng, items, cluster, frac, ev_ts)
    # behaviour: runs of "follow the previous item's successor" inside a user's sequence
    follow = np.r_[False, ev_user[1:] == ev_user[:-1]] & (rng.random(n_ev) < cfg.p_seq)
    social = ~follow & (rng.random(n_ev) < cfg.p_social / max(1e-9, 1 - cfg.p_seq))
    idx = np.flatnonzero(follow)
    released = items["release"]
    while len(idx):
        nxt = items["succ"][item[idx - 1]]
        ok = released[nxt] <= ev_ts[idx]
        changed = ok & (item[idx] != nxt)
        item[idx[ok]] = nxt[ok]
        idx = idx[changed] + 1  # only the events that follow a changed one can change again
        idx = idx[(idx < n_ev)]
        idx = idx[follow[idx]]
    # social: one of a random friend's five most recent events before this one
    rows = np.flatnonzero(social)
    if len(rows) and len(src):
        a, b = np.concatenate([src, dst]), np.concatenate([dst, src])
        o = np.argsort(a, kind="stable")
        a, b = a[o], b[o]
        deg = np.bincount(a, minlength=cfg.n_users)
        first = np.cumsum(deg) - deg
        u = ev_user[rows]
        has = deg[u] > 0
        rows, u = rows[has], u[has]
        friend = b[first[u] + (rng.random(len(u)) * deg[u]).astype(np.int64)]
        user_start = np.searchsorted(ev_user, np.arange(cfg.n_users + 1))
        key = ev_user.astype(np.float64) * 1e10 + (ev_ts - cfg.start)
        before = np.searchsorted(key, friend.astype(np.float64) * 1e10 + (ev_ts[rows] - cfg.start)) - 1
        n_before = before - user_start[friend] + 1
        ok = n_before > 0
        back = (rng.random(ok.sum()) * np.minimum(5, n_before[ok])).astype(np.int64)
        item[rows[ok]] = item[before[ok] - back]
    return item


def _finish(cfg: ScaleConfig, rng: np.random.Generator, user: np.ndarray, item: np.ndarray,
            ts: np.ndarray) -> pd.DataFrame:
    """Keep each (user, item) pair's first event, trim to ``n_interactions``, sort by time."""
    key = user.astype(np.int64) * cfg.n_items + item
    _, first = np.unique(key, return_index=True)  # events are in (user, time) order
    keep = np.sort(first)
    if len(keep) > cfg.n_interactions:
        keep = np.sort(rng.choice(keep, cfg.n_interactions, replace=False))
    order = keep[np.lexsort((user[keep], ts[keep]))]
    return pd.DataFrame({"user": user[order].astype(np.int64), "item": item[order].astype(np.int64),
                         "weight": np.ones(len(order), np.float32), "timestamp": ts[order].astype(np.int64)})


def write_parquet_folder(ds: Dataset, out: str | Path, *, row_group: int = 1_000_000) -> Path:
    """Write ``ds`` as a ``folder:`` dataset of Parquet files (interactions in row groups of
    ``row_group`` rows, so a reader can stream them). Written to a temporary folder and
    renamed into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mgrec.io import atomic_dir

    out = Path(out)
    with atomic_dir(out) as tmp:
        inter = ds.interactions
        table = pa.table({"user_id": pa.array(np.asarray(ds.users.ids, dtype=object)[inter["user"].to_numpy()]),
                          "item_id": pa.array(np.asarray(ds.items.ids, dtype=object)[inter["item"].to_numpy()]),
                          "timestamp": inter["timestamp"].to_numpy(), "weight": inter["weight"].to_numpy()})
        pq.write_table(table, tmp / "interactions.parquet", row_group_size=row_group)
        if ds.user_features is not None:
            frame = ds.user_features.frame.copy()
            frame.insert(0, "user_id", ds.users.ids)
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp / "users.parquet")
        if ds.item_features is not None:
            frame = ds.item_features.frame.copy()
            for name, kind in ds.item_features.kinds.items():
                if kind == "multi":
                    frame[name] = frame[name].map(list)
            frame.insert(0, "item_id", ds.items.ids)
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp / "items.parquet")
        if ds.social is not None:
            ids = np.asarray(ds.users.ids, dtype=object)
            links = pa.table({"user_id": pa.array(ids[ds.social.src]), "friend_id": pa.array(ids[ds.social.dst])})
            pq.write_table(links, tmp / "social.parquet")
    return out
