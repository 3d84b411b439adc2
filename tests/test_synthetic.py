"""Tests of the synthetic generator: shape, determinism, and a signal per granularity.

Signal tests compare the generated data with an ablation that switches one component off (the
world's users, items, friends and event times stay the same, since every part has its own
random stream), so each granularity is shown to matter in the data itself.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from worlds import small_world, world_name

from mgrec.config import from_dict
from mgrec.data.dataset import Dataset
from mgrec.data.registry import load_dataset, synthetic_config
from mgrec.data.synthetic import SyntheticConfig, _ragged, _rounds, make_synthetic
from mgrec.errors import ConfigError

# The generator's mechanisms are tested on a small dense world (tests/worlds.py).
SMALL = small_world(n_users=600, n_items=400, mean_events=30.0)
DAY = 86400


@pytest.fixture(scope="module")
def gen():
    """``gen(**overrides)``: the small world with some fields replaced, cached per module."""
    cache: dict[tuple, Dataset] = {}

    def make(seed: int = 0, **overrides) -> Dataset:
        key = (seed, tuple(sorted(overrides.items())))
        if key not in cache:
            cache[key] = make_synthetic(dataclasses.replace(SMALL, **overrides), seed=seed)
        return cache[key]

    return make


# ------------------------------------------------------------------------------- statistics
def _arrays(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    df = ds.interactions
    cluster = np.asarray(ds.meta["ground_truth"]["item_cluster"])
    return df["user"].to_numpy(), df["item"].to_numpy(), df["timestamp"].to_numpy(), cluster


def _cluster_profiles(ds: Dataset) -> np.ndarray:
    """Each user's share of events per content cluster, L2-normalised rows."""
    u, i, _, cl = _arrays(ds)
    m = sp.csr_matrix((np.ones(len(u)), (u, cl[i])), shape=(ds.n_users, cl.max() + 1)).toarray()
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def user_profile_ratio(ds: Dataset) -> float:
    """Mean cosine of cluster profiles: pairs with the same occupation+region / other pairs."""
    p = _cluster_profiles(ds)
    f = ds.user_features.frame
    group = (f["occupation"] + "|" + f["region"]).to_numpy()
    sim = p @ p.T
    same = group[:, None] == group[None, :]
    off = ~np.eye(len(p), dtype=bool)
    return float(sim[same & off].mean() / sim[~same].mean())


def item_cooccurrence_ratio(ds: Dataset, same: np.ndarray) -> float:
    """Mean cosine of item user-vectors: pairs marked in the boolean matrix ``same`` / the rest."""
    u, i, _, _ = _arrays(ds)
    x = sp.csr_matrix((np.ones(len(u)), (i, u)), shape=(ds.n_items, ds.n_users))
    norms = np.sqrt(np.asarray(x.sum(axis=1)).ravel()) + 1e-12
    cos = (x @ x.T).toarray() / norms[:, None] / norms[None, :]
    off = ~np.eye(ds.n_items, dtype=bool)
    return float(cos[same & off].mean() / cos[~same].mean())


def _consecutive(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(previous item, next item) of every pair of consecutive events of one user."""
    u, i, t, _ = _arrays(ds)
    order = np.lexsort((t, u))
    u, i = u[order], i[order]
    cont = u[1:] == u[:-1]
    return i[:-1][cont], i[1:][cont]


def successor_lift(ds: Dataset, *, reverse: bool = False) -> float:
    """P(next cluster = succ(previous cluster)) over the base rate of that cluster."""
    _, i, _, cl = _arrays(ds)
    succ = np.asarray(ds.meta["ground_truth"]["successor_cluster"])
    prev, nxt = _consecutive(ds)
    if reverse:
        prev, nxt = nxt, prev
    share = np.bincount(cl[i], minlength=len(succ)) / len(i)
    return float((cl[nxt] == succ[cl[prev]]).mean() / share[succ[cl[prev]]].mean())


def successor_item_rate(ds: Dataset) -> float:
    """Share of consecutive pairs where the next item is the previous item's successor."""
    succ = np.asarray(ds.meta["ground_truth"]["successor_item"])
    prev, nxt = _consecutive(ds)
    return float((nxt == succ[prev]).mean())


def friend_jaccard_ratio(ds: Dataset, seed: int = 1) -> float:
    """Mean item-set Jaccard of friends over that of random user pairs."""
    u, i, _, _ = _arrays(ds)
    x = sp.csr_matrix((np.ones(len(u)), (u, i)), shape=(ds.n_users, ds.n_items))
    x.data[:] = 1.0
    sizes = np.asarray(x.sum(axis=1)).ravel()

    def jaccard(a: np.ndarray, b: np.ndarray) -> float:
        inter = np.asarray(x[a].multiply(x[b]).sum(axis=1)).ravel()
        return float((inter / (sizes[a] + sizes[b] - inter)).mean())

    pairs = ds.social.undirected_pairs()
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, ds.n_users, (2, 20000))
    keep = a != b
    return jaccard(pairs[:, 0], pairs[:, 1]) / jaccard(a[keep], b[keep])


def friend_recent_rate(ds: Dataset, window_days: float) -> float:
    """Share of events whose item a friend consumed in the preceding ``window_days``."""
    df = ds.interactions.reset_index(names="event")
    pairs = ds.social.undirected_pairs()
    links = pd.DataFrame({"user": np.r_[pairs[:, 0], pairs[:, 1]],
                          "friend": np.r_[pairs[:, 1], pairs[:, 0]]})
    mine = df.merge(links, on="user")
    theirs = df.rename(columns={"user": "friend", "timestamp": "t_friend"})
    theirs = theirs[["friend", "item", "t_friend"]]
    hit = mine.merge(theirs, on=["friend", "item"])
    t, tf = hit["timestamp"], hit["t_friend"]
    ok = (tf < t) & (tf >= t - window_days * DAY)
    return hit.loc[ok, "event"].nunique() / len(df)


def cluster_tv(ds: Dataset, mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """Total variation distance between the cluster shares of two sets of events."""
    _, i, _, cl = _arrays(ds)
    k = cl.max() + 1
    pa = np.bincount(cl[i[mask_a]], minlength=k) / mask_a.sum()
    pb = np.bincount(cl[i[mask_b]], minlength=k) / mask_b.sum()
    return float(0.5 * np.abs(pa - pb).sum())


def daypart_tv(ds: Dataset) -> float:
    """Cluster shares: evening (18-24h) against morning (6-12h)."""
    t = _arrays(ds)[2] - SMALL.start
    hour = t % DAY // 3600
    return cluster_tv(ds, hour >= 18, (hour >= 6) & (hour < 12))


def weekend_tv(ds: Dataset) -> float:
    """Cluster shares: Saturday and Sunday against weekdays (2020-01-01 was a Wednesday)."""
    t = _arrays(ds)[2] - SMALL.start
    weekend = (t // DAY + 2) % 7 >= 5
    return cluster_tv(ds, weekend, ~weekend)


def popularity_stability(ds: Dataset) -> float:
    """Correlation of item counts in the first and last third of the span (items out from day 0)."""
    _, i, t, _ = _arrays(ds)
    frac = (t - SMALL.start) / (SMALL.span_days * DAY)
    first = np.bincount(i[frac < 1 / 3], minlength=ds.n_items)
    last = np.bincount(i[frac >= 2 / 3], minlength=ds.n_items)
    old = np.asarray(ds.meta["ground_truth"]["item_release"]) == SMALL.start
    return float(np.corrcoef(first[old], last[old])[0, 1])


def _same(labels: np.ndarray) -> np.ndarray:
    return labels[:, None] == labels[None, :]


# ---------------------------------------------------------------------------- shape and API
def test_sizes_columns_dtypes_and_info(gen):
    ds = gen()
    df = ds.interactions
    assert list(df.columns) == ["user", "item", "weight", "timestamp"]
    assert [str(df[c].dtype) for c in df.columns] == ["int64", "int64", "float32", "int64"]
    assert (ds.n_users, ds.n_items) == (600, 400)
    assert ds.users.id(0) == "u0" and ds.items.id(399) == "i399"
    assert 0.8 * 600 * 30 < len(df) < 1.2 * 600 * 30
    assert (df["weight"] == 1.0).all() and ds.meta["weight_kind"] == "implicit"
    assert df["timestamp"].is_monotonic_increasing
    assert not df.duplicated(["user", "item"]).any()  # no repeat consumption
    counts = df.groupby("user").size()
    assert len(counts) == 600
    assert counts.min() >= SMALL.min_events and counts.max() <= SMALL.max_events
    info = ds.info()
    assert info["granularities"] == ["user", "item", "behavior", "social", "time"]
    assert info["users"] == 600 and info["items"] == 400 and info["interactions"] == len(df)
    assert info["user_features"] == ["age", "gender", "occupation", "region"]
    assert info["item_features"] == ["genre", "tags", "title", "price"]
    assert info["first_timestamp"] >= 1577836800  # 2020-01-01 UTC
    assert info["last_timestamp"] < 1577836800 + 365 * DAY
    assert info["social_links"] == len(ds.social) > 600  # mean degree ~8: ~2400 links
    json.dumps(ds.meta)  # JSON-ready


def test_features_and_social_graph(gen):
    ds = gen()
    uf, itf = ds.user_features, ds.item_features
    assert dict(uf.kinds) == {"age": "numeric", "gender": "categorical",
                              "occupation": "categorical", "region": "categorical"}
    assert dict(itf.kinds) == {"genre": "categorical", "tags": "multi", "title": "text",
                               "price": "numeric"}
    f = uf.frame
    assert f["age"].between(16, 80).all() and set(f["gender"]) == {"F", "M"}
    assert f["occupation"].nunique() == 12 and f["region"].nunique() == 6
    g = itf.frame
    assert g["genre"].nunique() == 8 and (g["price"] > 0).all()
    assert all(isinstance(t, tuple) and len(t) == 3 and all(isinstance(x, str) for x in t)
               for t in g["tags"])
    assert all(isinstance(t, str) and len(t.split()) == 2 for t in g["title"])
    cluster = np.asarray(ds.meta["ground_truth"]["item_cluster"])
    # genre is a function of the content cluster; titles draw on three words per cluster
    assert (g.groupby(cluster)["genre"].nunique() == 1).all()
    words = g["title"].str.split().groupby(cluster).apply(lambda s: len(set(sum(s, []))))
    assert (words == 3).all()
    soc = ds.social
    assert not soc.directed and (soc.src < soc.dst).all() and (soc.weight == 1).all()
    assert len(soc.undirected_pairs()) == len(soc)


def test_ragged_ranges_and_rounds_by_hand():
    rows, idx = _ragged(np.array([5, 0, 9]), np.array([2, 3, 0]))
    assert rows.tolist() == [0, 0, 1, 1, 1] and idx.tolist() == [5, 6, 0, 1, 2]
    # user 0 has two events on day 0 and one on day 1, user 1 one on each day
    user = np.array([0, 0, 0, 1, 1])
    ts = SMALL.start + np.array([3600, 7200, DAY + 60, 5 * 3600, DAY + 30])
    proc, ends = _rounds(SMALL, user, ts)
    # rounds: (day 0, 1st of user) = {0, 3}; (day 0, 2nd) = {1}; (day 1, 1st) = {2, 4}
    assert proc.tolist() == [0, 3, 1, 2, 4] and ends.tolist() == [2, 3, 5]


def test_deterministic_for_a_seed(gen):
    a, b = gen(seed=3), make_synthetic(SMALL, seed=3)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.user_features.frame, b.user_features.frame)
    pd.testing.assert_frame_equal(a.item_features.frame, b.item_features.frame)
    np.testing.assert_array_equal(a.social.src, b.social.src)
    np.testing.assert_array_equal(a.social.dst, b.social.dst)
    assert a.meta == b.meta
    c = gen(seed=4)
    assert not a.interactions.equals(c.interactions)
    assert not a.item_features.frame["title"].equals(c.item_features.frame["title"])


def test_chunking_does_not_change_the_law(gen):
    """Scores held in chunks of 3 rows (memory bound) give the same events."""
    a = gen(seed=5, n_users=150, n_items=200)
    b = gen(seed=5, n_users=150, n_items=200, max_chunk_cells=600)
    pd.testing.assert_frame_equal(a.interactions[["user", "timestamp"]],
                                  b.interactions[["user", "timestamp"]])
    assert (a.interactions["item"] == b.interactions["item"]).mean() > 0.98


def test_degenerate_world_still_generates():
    cfg = small_world(n_users=20, n_items=30, n_clusters=1, social_degree=0.0,
                      mean_events=5.0, min_events=2, new_item_frac=0.0, max_chunk_cells=1)
    ds = make_synthetic(cfg, seed=0)
    assert ds.granularities == ["user", "item", "behavior", "time"]  # no friends at all
    assert ds.interactions.groupby("user").size().between(2, 29).all()
    assert not ds.interactions.duplicated(["user", "item"]).any()


def test_registry_builds_the_default_world():
    ds = load_dataset("synthetic", seed=0)
    assert (ds.n_users, ds.n_items) == (8000, 4000)
    assert 90_000 < len(ds.interactions) < 115_000  # 102,774 events at seed 0
    assert ds.meta["config"]["n_users"] == 8000 and ds.meta["config"]["successor_head"] == 1.0
    assert ds.granularities == ["user", "item", "behavior", "social", "time"]


def test_named_world_replaces_fields_of_the_default():
    ds = load_dataset("synthetic:n_users=150, n_items=90,mean_events=8,n_clusters=10,w_social=0", seed=0)
    cfg = ds.meta["config"]
    assert ds.name == "synthetic:n_users=150, n_items=90,mean_events=8,n_clusters=10,w_social=0"  # splits record it
    assert (ds.n_users, ds.n_items, cfg["n_clusters"], cfg["w_social"]) == (150, 90, 10, 0.0)
    assert cfg["successor_head"] == SyntheticConfig().successor_head  # the rest stays the default
    assert synthetic_config("synthetic") == SyntheticConfig()
    assert synthetic_config(world_name(n_users=600, n_items=400, mean_events=30.0)) == SMALL
    bad = {"synthetic:": "give KEY=NUMBER", "synthetic:n_users": "'n_users' is not KEY=NUMBER",
           "synthetic:n_users=abc": "is not KEY=NUMBER", "synthetic:=3": "is not KEY=NUMBER",
           "synthetic:n_user=3": "unknown key 'n_user'", "synthetic:n_users=2.5": "expected an integer",
           "synthetic:w_social=nan": "w_social must be float >= 0", "synthetic:n_clusters=5000": "n_clusters"}
    for name, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_dataset(name)


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown key 'n_user'"):
        from_dict(SyntheticConfig, {"n_user": 10})
    assert from_dict(SyntheticConfig, {"n_users": 10}).n_users == 10
    bad = [{"n_users": -1}, {"n_users": 2.5}, {"n_clusters": 5000}, {"w_social": float("nan")},
           {"homophily": 1.5}, {"min_events": 300}, {"new_item_frac": 0.9999}, {"dim": 0}]
    for kw in bad:
        with pytest.raises(ConfigError, match="synthetic config"):
            SyntheticConfig(**kw)
    with pytest.raises(ConfigError, match="seed"):
        make_synthetic(SMALL, seed=-1)


# ----------------------------------------------------------------- one signal per granularity
def test_user_profile_shapes_taste(gen):
    full, ablated = user_profile_ratio(gen()), user_profile_ratio(gen(profile_share=0.0))
    assert full > 1.12  # same occupation+region: more similar cluster mix than other pairs
    assert 0.95 < ablated < 1.05  # no profile in the taste: no such similarity
    assert full - ablated > 0.1


def test_item_content_predicts_co_consumption(gen):
    ds = gen()
    cluster = np.asarray(ds.meta["ground_truth"]["item_cluster"])
    genre = ds.item_features.frame["genre"].to_numpy()
    tags = ds.item_features.frame["tags"]
    vocab = {t: k for k, t in enumerate(sorted({t for row in tags for t in row}))}
    rows = np.repeat(np.arange(len(tags)), [len(r) for r in tags])
    cols = [vocab[t] for row in tags for t in row]
    m = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(tags), len(vocab)))
    share_tag = (m @ m.T).toarray() > 0
    assert item_cooccurrence_ratio(ds, _same(cluster)) > 2.0
    assert item_cooccurrence_ratio(ds, _same(genre)) > 1.3
    assert item_cooccurrence_ratio(ds, share_tag) > 1.5


def test_behaviour_order_matters(gen):
    ds, ablated = gen(), gen(w_seq_cluster=0.0, w_seq_item=0.0)
    lift = successor_lift(ds)
    assert lift > 2.0  # next cluster is the successor far above its base rate
    assert lift > 2.0 * successor_lift(ds, reverse=True)  # ... in that order only
    assert 0.75 < successor_lift(ablated) < 1.25
    assert successor_item_rate(ds) > 0.03  # vs 1/400 by chance
    assert successor_item_rate(ablated) < 0.01


def test_successor_head_puts_successions_on_the_initial_catalogue(gen):
    base = gen(new_item_frac=0.6)
    truth = base.meta["ground_truth"]
    succ, release = np.asarray(truth["successor_item"]), np.asarray(truth["item_release"])
    cluster, succ_cluster = np.asarray(truth["item_cluster"]), np.asarray(truth["successor_cluster"])
    initial = release == release.min()
    assert 0.3 < initial[succ].mean() < 0.5  # with successor_head 0 a successor is any item of its cluster
    head = gen(new_item_frac=0.6, successor_head=1.0).meta["ground_truth"]
    succ_h = np.asarray(head["successor_item"])
    assert initial[succ_h].all()  # every cluster here has initial items
    np.testing.assert_array_equal(cluster[succ_h], succ_cluster[cluster])  # still the successor cluster
    # the items, their releases and the rest of the world are unchanged
    assert head["item_release"] == truth["item_release"] and head["item_cluster"] == truth["item_cluster"]
    half = np.asarray(gen(new_item_frac=0.6, successor_head=0.5).meta["ground_truth"]["successor_item"])
    assert 0.6 < initial[half].mean() < 0.8  # about 0.5 + 0.5 * 0.4
    with pytest.raises(ConfigError, match="successor_head"):
        SyntheticConfig(successor_head=1.5)


def test_social_friends_share_items(gen):
    ds = gen()
    assert friend_jaccard_ratio(ds) > 1.4
    assert 0.9 < friend_jaccard_ratio(gen(w_social=0.0, social_mix=0.0, homophily=0.0)) < 1.1
    # friends' recent items: the boost alone multiplies "a friend just had it" events
    window = SMALL.social_window_days
    assert friend_recent_rate(ds, window) > 0.3
    assert friend_recent_rate(gen(w_social=0.0), window) < 0.2


def test_time_of_day_weekend_and_drift(gen):
    ds, flat = gen(), gen(w_daypart=0.0, w_weekend=0.0)
    assert daypart_tv(ds) > 0.2 and daypart_tv(flat) < 0.07
    assert weekend_tv(ds) > 0.1 and weekend_tv(flat) < 0.06
    hour = (ds.interactions["timestamp"].to_numpy() - SMALL.start) % DAY // 3600
    assert (hour >= 18).mean() > 2 * ((hour >= 0) & (hour < 6)).mean()  # evening peak
    steady = gen(w_pop_drift=0.0, w_taste_drift=0.0)
    assert popularity_stability(ds) < 0.7 < popularity_stability(steady)
    assert popularity_stability(steady) - popularity_stability(ds) > 0.1


def test_new_items_appear_only_after_release(gen):
    ds = gen()
    release = np.asarray(ds.meta["ground_truth"]["item_release"])
    df = ds.interactions
    assert (df["timestamp"].to_numpy() >= release[df["item"].to_numpy()]).all()
    late = np.flatnonzero(release > SMALL.start)
    assert len(late) == int(0.2 * 400)
    first_seen = df.groupby("item")["timestamp"].min()
    seen_late = first_seen.reindex(late).dropna()
    assert len(seen_late) > 0.8 * len(late)  # new items are consumed once released
    assert (seen_late.to_numpy() > SMALL.start + 0.1 * 365 * DAY).all()


def test_events_come_in_sessions(gen):
    def median_gap(ds):
        df = ds.interactions.sort_values(["user", "timestamp"], kind="stable")
        same = df["user"].to_numpy()[1:] == df["user"].to_numpy()[:-1]
        return float(np.median(np.diff(df["timestamp"].to_numpy())[same]))

    assert median_gap(gen()) < 3600  # the next event is usually in the same session
    assert median_gap(gen(session_events=1.0)) > DAY
    with pytest.raises(ConfigError, match="session_events"):
        SyntheticConfig(session_events=0.5)
