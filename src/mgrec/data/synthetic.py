"""The built-in synthetic dataset: a simulated world whose ground truth uses all five granularities.

Each event of user ``u`` at time ``t`` picks one unseen, released item by a softmax over

``w_taste <u_t, v_i> + w_pop (b_i + w_pop_drift d_i (2 f_t - 1)) + w_daypart P[c_i, part(t)]
+ w_weekend W[c_i] weekend(t) - w_price s_u z_i + w_seq_cluster [c_i = succ(c_prev)]
+ w_seq_item [i = next(prev)] + w_social [a friend consumed i in the last social_window_days]``

**user**: taste ``u`` mixes embeddings of occupation, region, age bucket and gender (share
``profile_share``) with noise; the young are price sensitive (``s_u``). **item**: ``v_i`` follows
the content cluster ``c_i`` and the tags, as do genre, title words and price. **behaviour**:
successor clusters and items make order matter. **social**: friends mostly share a taste
community (``homophily``), mix tastes (``social_mix``) and boost each other's recent items.
**time**: day-part and weekend tastes, popularity drift (``f_t``: elapsed share of the span), taste
drift ``u_t = u + w_taste_drift f_t e_u``, items released during the span (``new_item_frac``).
Every event has weight 1.0 (implicit feedback, ``meta["weight_kind"] == "implicit"``).

Simulation: event times come first, then time-ordered rounds of one event per user, scored in
blocks of ``max_chunk_cells`` cells: memory ``O(max_chunk_cells + (n_users + n_items) * dim +
n_events)``, never ``O(n_users * n_items)`` (100k users x 50k items is feasible, if slow). Each
part has its own child of ``SeedSequence(seed)``: changing a weight keeps the rest of the world.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mgrec.config import to_dict
from mgrec.data.dataset import Dataset, FeatureTable, SocialGraph
from mgrec.data.vocab import Vocabulary
from mgrec.errors import ConfigError

__all__ = ["SyntheticConfig", "make_synthetic"]

log = logging.getLogger(__name__)

DAY = 86400
#: relative activity by hour of day (UTC): quiet nights, an evening peak.
HOUR_PROFILE = np.array([2, 1, 1, 1, 1, 1, 2, 4, 5, 5, 5, 5, 6, 6, 5, 5, 6, 7, 9, 11, 12, 12, 9, 5])
OCCUPATIONS = ("student", "engineer", "artist", "teacher", "doctor", "clerk", "sales", "lawyer",
               "writer", "farmer", "retired", "scientist", "nurse", "chef", "driver", "manager")
REGIONS = ("north", "south", "east", "west", "central", "coast", "mountain", "islands")
GENRES = ("drama", "comedy", "action", "documentary", "music", "sports", "news", "kids", "horror")
AGE_EDGES = (25, 35, 45, 55)
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"] + ["el", "ar", "on", "is"]


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes, structure and score weights of the synthetic world (defaults: ~103k events, ~5 s).

    The defaults are the world in which each of the five granularities carries signal the others
    do not (docs/benchmarks.md, "Ablation on the synthetic dataset"): short histories, 70% of the
    catalogue released during the span and known by its content, successions on the initial
    items, profile-driven taste, weak homophily with a strong friends' boost, and strong day-part,
    price and drift terms. Events per user are log-normal (mean ``mean_events``, log-sd
    ``events_sigma``), clipped: the defaults give a heavy tail (median 6 events, a tenth of the
    users 2, a tenth 29 or more). About 11% of the events are the previous item's successor item
    and 16% fall in its successor cluster. Cluster
    ``c`` has genre ``c % n_genres``, ``tags_per_cluster`` tags and three title words; an item's tag
    is its cluster's with probability ``tag_purity``. An item's successor item is a random item of
    its successor cluster; with probability ``successor_head``, one of the items released at the
    start (so that successions live on the older, denser part of the catalogue while the items
    released later are known by their content). Boosted: each friend's last ``social_recent``
    items within ``social_window_days``. ``start``: unix seconds (UTC); users join in the first 70%
    of the span. Events come in sessions of ``session_events`` on average (1 = every event on
    its own), starting at an hour drawn from the daily profile, ``session_gap_minutes`` apart
    on average. ``w_*``: score weights (module docstring); ``window_hours`` and ``max_chunk_cells``
    tune speed and memory. Every number must be finite and >= 0.
    """

    n_users: int = 8000
    n_items: int = 4000
    mean_events: float = 13.0
    events_sigma: float = 1.2
    min_events: int = 2
    max_events: int = 200
    dim: int = 16
    n_clusters: int = 60
    n_genres: int = 8
    tags_per_cluster: int = 4
    tags_per_item: int = 3
    tag_purity: float = 1.0
    item_noise: float = 0.15
    new_item_frac: float = 0.7
    n_occupations: int = 12
    n_regions: int = 6
    profile_share: float = 1.0
    social_degree: float = 8.0
    homophily: float = 0.6
    social_mix: float = 0.2
    social_window_days: float = 90.0
    social_recent: int = 5
    start: int = 1577836800  # 2020-01-01 00:00:00 UTC, a Wednesday
    span_days: int = 365
    w_taste: float = 6.0
    w_pop: float = 0.5
    w_pop_drift: float = 3.0
    w_taste_drift: float = 1.0
    w_daypart: float = 2.0
    w_weekend: float = 1.0
    w_price: float = 1.5
    w_seq_cluster: float = 3.0
    w_seq_item: float = 5.0
    w_social: float = 3.0
    successor_head: float = 1.0
    session_events: float = 4.0
    session_gap_minutes: float = 5.0
    window_hours: float = 24.0
    max_chunk_cells: int = 4_000_000

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            ok = isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            ok = ok or (f.type == "float" and isinstance(v, float) and math.isfinite(v))
            if not ok or v < 0:
                raise ConfigError(f"synthetic config: {f.name} must be {f.type} >= 0, got {v!r}")
        counts = (self.n_users, self.n_genres, self.n_occupations, self.n_regions, self.dim,
                  self.tags_per_cluster, self.tags_per_item, self.social_recent,
                  self.max_chunk_cells, self.span_days, self.min_events, self.n_clusters)
        for ok, message in [
            (self.n_clusters <= self.n_items, "n_clusters must be <= n_items"),
            (min(counts) >= 1, "n_users, dim, span_days, min_events, n_clusters, n_genres, "
             "n_occupations, n_regions, tags_*, social_recent, max_chunk_cells must be >= 1"),
            (self.min_events <= self.max_events and min(self.mean_events, self.window_hours) > 0,
             "need min_events <= max_events, mean_events > 0 and window_hours > 0"),
            (self.session_events >= 1, "session_events must be >= 1"),
            (max(self.homophily, self.tag_purity, self.profile_share, self.social_mix, self.successor_head) <= 1,
             "homophily, tag_purity, profile_share, social_mix and successor_head must be <= 1"),
            (self.n_items - int(self.new_item_frac * self.n_items) > self.min_events,
             "too few items released at the start (n_items, new_item_frac) for min_events"),
        ]:
            if not ok:
                raise ConfigError(f"synthetic config: {message}")


@dataclass(frozen=True, eq=False)
class _Items:
    """Item side of the world: features, hidden structure and per-item score columns."""

    frame: pd.DataFrame
    centroids: np.ndarray  # (n_clusters, dim) unit cluster directions
    cluster: np.ndarray  # (n_items,) content cluster
    terms: np.ndarray  # (dim + 8, n_items) weighted item factors of the state-free terms
    succ_cluster: np.ndarray  # (n_clusters,) successor cluster
    succ_item: np.ndarray  # (n_items,) successor item
    release: np.ndarray  # (n_items,) release time, unix seconds


def make_synthetic(cfg: SyntheticConfig, *, seed: int, name: str = "synthetic") -> Dataset:
    """Generate the synthetic dataset; the same ``cfg`` and ``seed`` give identical data.

    Args:
        cfg: the world's sizes and weights.
        seed: non-negative integer seed (one child generator per part of the world).
        name: the dataset's name (the registry passes ``synthetic:KEY=VALUE,...`` for a changed world).

    Returns:
        A :class:`Dataset` named ``name`` with user features (age, gender, occupation,
        region), item features (genre, tags, title, price), undirected friendships and time-ordered
        interactions (weight 1.0); ``meta["ground_truth"]`` holds the weights and hidden structure.

    Raises:
        ConfigError: for a negative or non-integer seed.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"synthetic seed must be a non-negative integer, got {seed!r}")
    w = _latent_world(cfg, seed)
    items, user_frame, taste, drift, sens, community, social, adj = (
        w.items, w.user_frame, w.taste, w.drift, w.sens, w.community, w.social, w.adj)
    ev_user, ev_ts = _make_schedule(cfg, w.r_time)
    ev_item = _simulate(cfg, w.r_sim, items, taste, drift, sens, adj, ev_user, ev_ts)

    order = np.lexsort((ev_user, ev_ts))
    inter = pd.DataFrame({"user": ev_user[order].astype(np.int64), "item": ev_item[order],
                          "weight": np.ones(len(order), np.float32), "timestamp": ev_ts[order]})
    truth = {
        "weights": {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name.startswith("w_")},
        "item_cluster": items.cluster.tolist(), "successor_cluster": items.succ_cluster.tolist(),
        "successor_item": items.succ_item.tolist(), "item_release": items.release.tolist(),
        "user_community": community.tolist(),
    }
    cat = "categorical"
    user_kinds = {"age": "numeric", "gender": cat, "occupation": cat, "region": cat}
    item_kinds = {"genre": cat, "tags": "multi", "title": "text", "price": "numeric"}
    ds = Dataset(
        name=name,
        users=Vocabulary(f"u{k}" for k in range(cfg.n_users)),
        items=Vocabulary(f"i{k}" for k in range(cfg.n_items)),
        interactions=inter, social=social,
        user_features=FeatureTable(user_frame, user_kinds),
        item_features=FeatureTable(items.frame, item_kinds),
        meta={"weight_kind": "implicit", "generator": "mgrec.data.synthetic", "seed": int(seed),
              "config": to_dict(cfg), "ground_truth": truth},
    )
    log.info("generated %r", ds)
    return ds


@dataclass(frozen=True, eq=False)
class _World:
    """The hidden side of a world: items, users' tastes (after social mixing), friendships,
    and the generators of the schedule and the simulation (not yet drawn from)."""

    items: _Items
    user_frame: pd.DataFrame
    taste: np.ndarray  # (n_users, dim) unit tastes, friends mixed in
    drift: np.ndarray  # (n_users, dim) taste drift directions
    sens: np.ndarray  # (n_users,) price sensitivity
    community: np.ndarray  # (n_users,) taste community
    social: SocialGraph
    adj: sp.csr_matrix
    r_time: np.random.Generator
    r_sim: np.random.Generator


def _latent_world(cfg: SyntheticConfig, seed: int) -> _World:
    """Everything :func:`make_synthetic` draws before the events (the same draws)."""
    children = np.random.SeedSequence(int(seed)).spawn(5)
    r_user, r_item, r_soc, r_time, r_sim = (np.random.default_rng(c) for c in children)
    items = _make_items(cfg, r_item)
    user_frame, taste, drift, sens = _make_users(cfg, r_user, items.centroids)
    community = np.argmax(taste @ items.centroids.T, axis=1)
    social = _make_social(cfg, r_soc, community)
    adj = social.adjacency(cfg.n_users)
    deg = np.asarray(adj.sum(axis=1)).ravel()
    friends_taste = (adj @ taste) / np.maximum(deg, 1)[:, None]
    mixed = (1 - cfg.social_mix) * taste + cfg.social_mix * friends_taste
    taste = _unit(np.where(deg[:, None] > 0, mixed, taste))
    return _World(items, user_frame, taste, drift, sens, community, social, adj, r_time, r_sim)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _labels(names: tuple[str, ...], n: int, prefix: str) -> np.ndarray:
    return np.array([names[k] if k < len(names) else f"{prefix}{k}" for k in range(n)], object)


def _words(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct made-up words of two or three syllables."""
    out: dict[str, None] = {}
    while len(out) < n:
        out.setdefault("".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4)))), None)
    return list(out)


def _head_successors(succ_item: np.ndarray, u_pick: np.ndarray, chosen: np.ndarray, cluster: np.ndarray,
                     target: np.ndarray, initial: np.ndarray) -> np.ndarray:
    """``succ_item`` with the ``chosen`` items' successors drawn again (by ``u_pick``) among the
    items of their successor cluster (``target``) that are ``initial`` (released at the
    start); a cluster without such items keeps the first draw."""
    n_c = int(cluster.max()) + 1 if len(cluster) else 0
    pool = np.flatnonzero(initial)
    pool = pool[np.argsort(cluster[pool], kind="stable")]
    sizes = np.bincount(cluster[pool], minlength=n_c)
    first = np.searchsorted(cluster[pool], np.arange(n_c))
    redraw = chosen & (sizes[target] > 0)
    out = succ_item.copy()
    out[redraw] = pool[first[target[redraw]] + (u_pick[redraw] * sizes[target[redraw]]).astype(np.int64)]
    return out


def _make_items(cfg: SyntheticConfig, rng: np.random.Generator) -> _Items:
    """Content clusters, item features and latents, popularity, successors and releases."""
    n, n_c, d, per = cfg.n_items, cfg.n_clusters, cfg.dim, cfg.tags_per_cluster
    centroids = _unit(rng.normal(size=(n_c, d)))
    cluster = rng.permutation(np.arange(n) % n_c)  # balanced cluster sizes
    n_tags = n_c * per
    tag_emb = _unit(centroids[np.arange(n_tags) // per] + 0.5 * _unit(rng.normal(size=(n_tags, d))))
    slots = np.argsort(rng.random((n, per)), axis=1)[:, np.arange(cfg.tags_per_item) % per]
    own = cluster[:, None] * per + slots  # own-cluster tags, without repeats when possible
    other = rng.integers(0, n_tags, own.shape)
    tags = np.where(rng.random(own.shape) < cfg.tag_purity, own, other)
    noise = cfg.item_noise * _unit(rng.normal(size=(n, d)))
    latent = _unit(centroids[cluster] + tag_emb[tags].mean(axis=1) + noise)
    words = _words(rng, n_tags + 3 * n_c)
    tag_words, title_words = np.array(words[:n_tags], dtype=object), words[n_tags:]
    first = rng.integers(0, 3, n)  # two distinct title words out of the cluster's three
    second = (first + rng.integers(1, 3, n)) % 3
    titles = [f"{title_words[3 * c + a].title()} {title_words[3 * c + b].title()}"
              for c, a, b in zip(cluster.tolist(), first.tolist(), second.tolist())]
    log_price = rng.normal(np.log(10.0), 0.6, n_c)[cluster] + 0.3 * rng.normal(size=n)
    cycle = rng.permutation(n_c)  # successors: one random cycle through all clusters
    succ_cluster = np.roll(cycle, -1)[np.argsort(cycle)]
    by_cluster = np.argsort(cluster, kind="stable")
    starts = np.searchsorted(cluster[by_cluster], np.arange(n_c))
    target = succ_cluster[cluster]
    u_pick = rng.random(n)
    succ_item = by_cluster[starts[target] + (u_pick * np.bincount(cluster, minlength=n_c)[target]).astype(np.int64)]
    n_new = int(cfg.new_item_frac * n)
    release = np.full(n, cfg.start, np.int64)
    late = cfg.start + (rng.uniform(0.1, 0.9, n_new) * cfg.span_days * DAY).astype(np.int64)
    release[rng.choice(n, n_new, replace=False)] = late
    if cfg.successor_head > 0:  # a coin per item only for shares below 1: other worlds stay as they were
        chosen = rng.random(n) < cfg.successor_head if cfg.successor_head < 1 else np.ones(n, dtype=bool)
        succ_item = _head_successors(succ_item, u_pick, chosen, cluster, target, release == cfg.start)
    frame = pd.DataFrame({"genre": _labels(GENRES, cfg.n_genres, "genre")[cluster % cfg.n_genres],
                          "tags": pd.Series([tuple(tag_words[r]) for r in tags], dtype=object),
                          "title": pd.Series(titles, dtype=object),
                          "price": np.round(np.exp(log_price), 2)})
    daypart = rng.normal(size=(n_c, 4))
    z_price = (log_price - log_price.mean()) / max(float(log_price.std()), 1e-9)
    # an event's state-free scores: its coefficient row (see _static_scores) times these
    terms = np.column_stack([
        cfg.w_taste * latent,
        cfg.w_pop * rng.normal(size=n),  # popularity b_i
        cfg.w_pop * cfg.w_pop_drift * rng.normal(size=n),  # popularity drift d_i
        cfg.w_daypart * (daypart - daypart.mean(axis=1, keepdims=True))[cluster],
        cfg.w_weekend * rng.normal(size=n_c)[cluster],
        -cfg.w_price * z_price,
    ]).T.astype(np.float32, order="C")
    return _Items(frame, centroids, cluster, terms, succ_cluster, succ_item, release)


def _make_users(
    cfg: SyntheticConfig, rng: np.random.Generator, centroids: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """User profiles, the unit taste each implies (plus noise), taste drift, price sensitivity."""
    n = cfg.n_users
    age = np.clip(np.round(rng.normal(36, 12, n)), 16, 80)
    gender = rng.integers(0, 2, n)
    occ = rng.integers(0, cfg.n_occupations, n)
    reg = rng.integers(0, cfg.n_regions, n)
    bucket = np.searchsorted(AGE_EDGES, age, side="right")

    def emb(k: int) -> np.ndarray:  # k profile values, each aimed at a sparse mix of clusters
        return _unit(rng.dirichlet(np.full(len(centroids), 0.3), k) @ centroids)

    profile = 1.5 * emb(cfg.n_occupations)[occ] + 1.2 * emb(cfg.n_regions)[reg]
    profile += 0.7 * emb(len(AGE_EDGES) + 1)[bucket] + 0.3 * emb(2)[gender]
    noise = _unit(rng.normal(size=(n, cfg.dim)))
    share = cfg.profile_share
    taste = _unit(np.sqrt(share) * _unit(profile) + np.sqrt(1 - share) * noise)
    frame = pd.DataFrame({"age": age, "gender": np.array(["F", "M"], dtype=object)[gender],
                          "occupation": _labels(OCCUPATIONS, cfg.n_occupations, "occupation")[occ],
                          "region": _labels(REGIONS, cfg.n_regions, "region")[reg]})
    return frame, taste, _unit(rng.normal(size=taste.shape)), np.clip((45 - age) / 15, -1.0, 2.0)


def _make_social(
    cfg: SyntheticConfig, rng: np.random.Generator, community: np.ndarray
) -> SocialGraph:
    """Undirected friendships as pairs ``a < b``, mostly within the same taste community."""
    n = cfg.n_users
    src = np.repeat(np.arange(n), rng.poisson(cfg.social_degree / 2, n))
    members = np.argsort(community, kind="stable")
    starts = np.searchsorted(community[members], community[src])
    sizes = np.bincount(community, minlength=community.max() + 1)[community[src]]
    same = members[starts + (rng.random(len(src)) * sizes).astype(np.int64)]
    dst = np.where(rng.random(len(src)) < cfg.homophily, same, rng.integers(0, n, len(src)))
    pairs = np.stack([np.minimum(src, dst), np.maximum(src, dst)], axis=1)
    pairs = np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0).reshape(-1, 2).astype(np.int64)
    return SocialGraph(pairs[:, 0], pairs[:, 1], np.ones(len(pairs), np.float32), directed=False)


def _make_schedule(cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Event users and timestamps, sorted by user then time; counts leave an unseen item at t0.

    A user's events fall into ``round(count / session_events)`` sessions; a session starts on
    a day after the user joins, at an hour from :data:`HOUR_PROFILE`, and its events follow
    one another by exponential gaps of ``session_gap_minutes``."""
    hi = min(cfg.max_events, cfg.n_items - int(cfg.new_item_frac * cfg.n_items) - 1)
    mu = np.log(cfg.mean_events) - cfg.events_sigma**2 / 2
    counts = np.clip(np.round(rng.lognormal(mu, cfg.events_sigma, cfg.n_users)), cfg.min_events, hi)
    counts = counts.astype(np.int64)
    user = np.repeat(np.arange(cfg.n_users), counts)
    n_sess = np.maximum(1, np.round(counts / cfg.session_events)).astype(np.int64)
    sess_user = np.repeat(np.arange(cfg.n_users), n_sess)
    join = rng.uniform(0, 0.7 * cfg.span_days, cfg.n_users)[sess_user]
    day = np.floor(join + rng.random(len(sess_user)) * (cfg.span_days - join)).astype(np.int64)
    hour = rng.choice(24, size=len(sess_user), p=HOUR_PROFILE / HOUR_PROFILE.sum())
    sess_start = cfg.start + day * DAY + hour * 3600 + rng.integers(0, 3600, len(sess_user))
    # each event joins one of its user's sessions; its rank in the session sets its offset
    sid = (np.cumsum(n_sess) - n_sess)[user] + (rng.random(len(user)) * n_sess[user]).astype(np.int64)
    by_sid = np.argsort(sid, kind="stable")
    first = np.r_[True, np.diff(sid[by_sid]) != 0]
    rank = np.empty(len(user), np.int64)
    rank[by_sid] = np.arange(len(user)) - np.maximum.accumulate(np.where(first, np.arange(len(user)), 0))
    gap = rng.exponential(cfg.session_gap_minutes * 60.0, len(user)).astype(np.int64) + 1
    ts = np.minimum(sess_start[sid] + rank * gap, cfg.start + cfg.span_days * DAY - 1)
    order = np.lexsort((ts, user))
    return user[order], ts[order]


def _ragged(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row ids and flat indices of the ranges ``[starts[r], starts[r] + lengths[r])``."""
    rows = np.repeat(np.arange(len(starts)), lengths)
    offsets = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return rows, np.repeat(starts, lengths) + offsets


def _rounds(cfg: SyntheticConfig, user: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Processing order of events (sorted by user, time); ends of its rounds of distinct users."""
    n_ev = len(user)
    window = (ts - cfg.start) // max(1, int(cfg.window_hours * 3600))
    new_group = np.r_[True, (np.diff(user) != 0) | (np.diff(window) != 0)]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n_ev), 0))
    key = window * (n_ev + 1) + (np.arange(n_ev) - group_start)
    proc = np.argsort(key, kind="stable")
    return proc, np.r_[np.flatnonzero(np.diff(key[proc])) + 1, n_ev]


#: The state-free score terms, in :func:`_static_scores`' order (``drop`` names them).
STATIC_TERMS = ("taste", "taste_drift", "popularity", "pop_drift", "daypart", "weekend", "price")


def _static_scores(cfg: SyntheticConfig, terms: np.ndarray, taste: np.ndarray, drift: np.ndarray,
                   sens: np.ndarray, u: np.ndarray, t: np.ndarray, drop: frozenset[str] = frozenset()) -> np.ndarray:
    """The state-free part of the scores of events ``(u, t)``: one matrix product; the terms
    in ``drop`` (of :data:`STATIC_TERMS`) are left out (for oracle ablations)."""
    since = t - cfg.start
    frac = since / (cfg.span_days * DAY)
    keep = {name: float(name not in drop) for name in STATIC_TERMS}
    coef = np.column_stack([
        keep["taste"] * taste[u] + (keep["taste_drift"] * cfg.w_taste_drift * frac)[:, None] * drift[u],
        np.full(len(u), keep["popularity"]), keep["pop_drift"] * (2 * frac - 1),
        keep["daypart"] * np.eye(4)[since % DAY // 3600 // 6],
        keep["weekend"] * ((since // DAY + 2) % 7 >= 5),  # weekend; day 0 is a Wednesday
        keep["price"] * sens[u],
    ]).astype(np.float32)
    return coef @ terms


def _simulate(
    cfg: SyntheticConfig, rng: np.random.Generator, items: _Items, taste: np.ndarray,
    drift: np.ndarray, sens: np.ndarray, adj: sp.csr_matrix, ev_user: np.ndarray, ev_ts: np.ndarray,
) -> np.ndarray:
    """The item of every event (sorted by user, time): state-free scores per block of events, then
    per piece of a round the state terms (previous item, friends' items); state moves per round."""
    n_friends = np.diff(adj.indptr)
    by_cluster = np.argsort(items.cluster, kind="stable")
    c_size = np.bincount(items.cluster, minlength=cfg.n_clusters)
    c_start = np.cumsum(c_size) - c_size
    user_start = np.searchsorted(ev_user, np.arange(cfg.n_users))
    late = np.flatnonzero(items.release > cfg.start)
    out, last = np.full(len(ev_user), -1, np.int64), np.full(cfg.n_users, -1, np.int64)
    rec_item = np.full((cfg.n_users, cfg.social_recent), -1, np.int64)
    rec_ts = np.zeros_like(rec_item)  # each user's last items and their times: a ring buffer
    social_window = int(cfg.social_window_days * DAY)
    chunk = max(1, cfg.max_chunk_cells // cfg.n_items)
    proc, round_ends = _rounds(cfg, ev_user, ev_ts)
    cuts = np.union1d(round_ends, np.arange(0, len(proc), chunk)).tolist()
    ends, first = set(round_ends.tolist()), 0
    for a, b in zip(cuts[:-1], cuts[1:]):
        if a % chunk == 0:
            blk = proc[a:a + chunk]
            static = _static_scores(cfg, items.terms, taste, drift, sens, ev_user[blk], ev_ts[blk])
        ev = proc[a:b]
        u, t, prev = ev_user[ev], ev_ts[ev], last[ev_user[ev]]
        s = static[a % chunk:a % chunk + len(ev)]  # a view: each row is used once
        has = np.flatnonzero(prev >= 0)
        target = items.succ_cluster[items.cluster[prev[has]]]
        rows, idx = _ragged(c_start[target], c_size[target])
        s[has[rows], by_cluster[idx]] += cfg.w_seq_cluster
        s[has, items.succ_item[prev[has]]] += cfg.w_seq_item
        rows, idx = _ragged(adj.indptr[u], n_friends[u])  # friends' items of [t - w, t)
        r_item, r_ts, r_t = rec_item[adj.indices[idx]], rec_ts[adj.indices[idx]], t[rows, None]
        ok = (r_item >= 0) & (r_ts < r_t) & (r_ts >= r_t - social_window)
        s[np.broadcast_to(rows[:, None], ok.shape)[ok], r_item[ok]] += cfg.w_social
        s[:, late] = np.where(items.release[late][None, :] > t[:, None], -np.inf, s[:, late])
        seen_rows, seen_idx = _ragged(user_start[u], ev - user_start[u])
        s[seen_rows, out[seen_idx]] = -np.inf
        s -= s.max(axis=1, keepdims=True)
        cdf = np.cumsum(np.exp(s), axis=1, dtype=np.float64)
        draw = rng.random(len(ev)) * cdf[:, -1]
        out[ev] = np.argmax(cdf > draw[:, None], axis=1)  # first item with cdf > draw
        if b in ends:  # the round is complete: update the state its events leave
            done, first = proc[first:b], b
            u = ev_user[done]
            last[u] = out[done]
            slot = np.argmin(rec_ts[u], axis=1)  # the oldest (or an empty) slot
            rec_item[u, slot], rec_ts[u, slot] = out[done], ev_ts[done]
    return out
