"""Shardable split folders (mgrec.data.shards) and the statistics the ranks combine.

The collectives are played by threads here: :class:`ThreadReduce` gives each simulated rank a
``reduce(array, op)`` that waits for the other ranks, as ``torch.distributed.all_reduce`` does,
so the very code that runs under torchrun is checked against the whole data in one process.
The real two-process run is in ``test_distributed.py``.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from worlds import small_world

from mgrec.batching import ContextBuilder
from mgrec.cli import main
from mgrec.data.dataset import FeatureTable, user_activity
from mgrec.data.scale import write_parquet_folder
from mgrec.data.shards import UserShard, load_shard, read_manifest, save_shards, user_ranges
from mgrec.data.split import make_split
from mgrec.data.synthetic import make_synthetic
from mgrec.errors import ConfigError, DataError
from mgrec.feature_arrays import item_time_raw
from mgrec.mgr import MGR
from mgrec.mgr_shards import whole_context

SMALL = {"dim": 8, "max_len": 6, "max_friends": 4, "friend_len": 3, "batch_size": 128, "epochs": 2,
         "threads": 1}


@pytest.fixture(scope="module")
def world():
    ds = make_synthetic(small_world(n_users=150, n_items=80, mean_events=8), seed=0)
    return ds, make_split(ds, "loo", seed=0)


@pytest.fixture(scope="module")
def folder(world, tmp_path_factory):
    return save_shards(tmp_path_factory.mktemp("shards") / "s", *world)


def _by_user(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[np.argsort(frame["user"].to_numpy(), kind="stable")].reset_index(drop=True)


class ThreadReduce:
    """All-reduce among ``world`` threads: each calls ``reduce(array, op)`` in the same order."""

    def __init__(self, world: int) -> None:
        self.world, self.barrier = world, threading.Barrier(world)
        self.slots: list[np.ndarray | None] = [None] * world

    def for_rank(self, rank: int):
        ops = {"sum": np.sum, "min": np.min, "max": np.max}

        def reduce(values: np.ndarray, op: str) -> np.ndarray:
            self.slots[rank] = np.asarray(values)
            self.barrier.wait()
            out = ops[op](np.stack(self.slots), axis=0).astype(np.asarray(values).dtype)
            self.barrier.wait()  # every rank has read the slots before the next call writes them
            return out

        return reduce

    def run(self, fn) -> list:
        results: list = [None] * self.world
        errors: list[BaseException] = []

        def target(r: int) -> None:
            try:
                results[r] = fn(r, self.for_rank(r))
            except BaseException as err:  # noqa: BLE001 - re-raised below
                errors.append(err)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        if errors:
            raise errors[0]
        return results


# ----------------------------------------------------------------- the folder
def test_whole_folder_reads_back_the_split(world, folder):
    ds, sp = world
    data, split = load_shard(folder)
    assert data.shard is None and data.name == ds.name and data.meta["split_protocol"] == "loo"
    assert list(data.users.ids) == list(ds.users.ids) and list(data.items.ids) == list(ds.items.ids)
    for part in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(getattr(split, part), _by_user(getattr(sp, part)))
    for mine, theirs in ((data.user_features, ds.user_features), (data.item_features, ds.item_features)):
        assert dict(mine.kinds) == dict(theirs.kinds)
        for name in mine.names:
            assert mine.frame[name].tolist() == theirs.frame[name].tolist(), name
    np.testing.assert_array_equal(data.social.src, ds.social.src)
    np.testing.assert_array_equal(data.social.dst, ds.social.dst)
    assert data.social.directed == ds.social.directed
    assert read_manifest(folder)["counts"] == {p: len(f) for p, f in sp.parts().items()}
    assert "ground_truth" not in read_manifest(folder)["meta"]  # provenance only


def test_missing_feature_cells_stay_missing(world, tmp_path):
    ds, sp = world
    frame = ds.user_features.frame.copy()
    frame.loc[0, "occupation"] = None
    frame.loc[1, "occupation"] = float("nan")  # some readers leave NaN for an empty cell
    frame.loc[2, "age"] = float("nan")
    data = dataclasses.replace(ds, user_features=FeatureTable(frame, ds.user_features.kinds))
    back = load_shard(save_shards(tmp_path / "s", data, sp))[0].user_features.frame
    assert back.loc[0, "occupation"] is None and back.loc[1, "occupation"] is None
    assert np.isnan(back.loc[2, "age"]) and back.loc[3, "occupation"] == frame.loc[3, "occupation"]


def test_user_ranges_balance_training_events():
    # 10 events: half of them belong to user 0, so rank 0 gets user 0 alone
    np.testing.assert_array_equal(user_ranges(np.array([5, 1, 1, 1, 1, 1]), 2), [0, 1, 6])
    np.testing.assert_array_equal(user_ranges(np.array([2, 2, 2, 2]), 2), [0, 2, 4])
    # every rank keeps at least one user, even when the events sit at the end
    np.testing.assert_array_equal(user_ranges(np.array([0, 0, 0, 10]), 2), [0, 3, 4])
    np.testing.assert_array_equal(user_ranges(np.array([0, 0, 0, 10]), 4), [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(user_ranges(np.array([3, 3, 3]), 1), [0, 3])


def test_two_shards_own_disjoint_users_and_load_their_friends(world, folder):
    ds, sp = world
    shards = [load_shard(folder, r, 2) for r in range(2)]
    (d0, s0), (d1, s1) = shards
    assert d0.shard.lo == 0 and d0.shard.hi == d1.shard.lo and d1.shard.hi == ds.n_users
    for data, split in shards:
        owns = data.shard.owns
        assert owns(split.valid["user"]).all() and owns(split.test["user"]).all()
        # the training part: every own event, plus the events of the own users' friends
        g = ds.social
        mine = np.zeros(ds.n_users, bool)
        mine[data.shard.lo:data.shard.hi] = True
        needed = mine.copy()
        needed[g.dst[mine[g.src]]] = True
        needed[g.src[mine[g.dst]]] = True
        want = _by_user(sp.train[needed[sp.train["user"].to_numpy()]])
        pd.testing.assert_frame_equal(split.train, want)
    own = pd.concat([s0.train[d0.shard.owns(s0.train["user"])], s1.train[d1.shard.owns(s1.train["user"])]])
    pd.testing.assert_frame_equal(own.reset_index(drop=True), _by_user(sp.train))
    assert len(s0.valid) + len(s1.valid) == len(sp.valid)


def test_with_max_friends_a_shard_loads_only_the_friends_the_model_reads(world, folder):
    ds, sp = world
    full_ctx = ContextBuilder(ds, sp.train, max_len=6, max_friends=2, friend_len=3)
    for r in range(2):
        data, split = load_shard(folder, r, 2, max_friends=2)
        own = np.arange(data.shard.lo, data.shard.hi)
        needed = np.zeros(ds.n_users + 1, bool)
        needed[own] = True
        needed[full_ctx.friends[own].ravel()] = True
        want = _by_user(sp.train[needed[sp.train["user"].to_numpy()]])
        pd.testing.assert_frame_equal(split.train, want)
        assert len(split.train) < len(load_shard(folder, r, 2)[1].train)  # fewer than every friend's


def test_the_ranks_combine_the_whole_datas_statistics(world, folder):
    """Item time features, friend lists, trained users and the time span from two shards
    (combined by reduce) equal those of the whole training split."""
    ds, sp = world
    full_ctx = ContextBuilder(ds, sp.train, max_len=6, max_friends=4, friend_len=3)
    full_raw = item_time_raw(sp.train, ds.n_items, with_time=True)

    def rank(r: int, reduce):
        data, split = load_shard(folder, r, 2, max_friends=4)
        own = split.train[data.shard.owns(split.train["user"].to_numpy())]
        whole = whole_context(data, split.train, own, reduce)
        ctx = ContextBuilder(data, split.train, max_len=6, max_friends=4, friend_len=3, whole=whole)
        return data.shard, ctx, item_time_raw(own, ds.n_items, with_time=True, reduce=reduce)

    for shard, ctx, raw in ThreadReduce(2).run(rank):
        np.testing.assert_allclose(raw, full_raw)
        assert (ctx.t_min, ctx.t_max) == (full_ctx.t_min, full_ctx.t_max)
        np.testing.assert_array_equal(ctx.trained, full_ctx.trained)
        own = slice(shard.lo, shard.hi)
        np.testing.assert_array_equal(ctx.friends[own], full_ctx.friends[own])
        # an own user's history is complete, so its batches are the whole data's
        users = np.arange(shard.lo, min(shard.hi, shard.lo + 20))
        a, b = ctx.batch(users), full_ctx.batch(users)
        for field in ("hist_items", "hist_times", "friends", "friend_items", "time"):
            np.testing.assert_array_equal(getattr(a, field).numpy(), getattr(b, field).numpy(), err_msg=field)


def test_user_activity_is_the_latest_event_or_the_count():
    frame = pd.DataFrame({"user": [0, 0, 2], "timestamp": [5, 9, 7]})
    np.testing.assert_array_equal(user_activity(frame, 4, has_time=True), [9, -1, 7, -1])
    np.testing.assert_array_equal(user_activity(frame, 4, has_time=False), [2, 0, 1, 0])


# --------------------------------------------------------------- the model
def test_one_shard_trains_the_same_model_as_the_split(world, folder):
    ds, sp = world
    data, split = load_shard(folder)
    a = MGR(SMALL, seed=0).fit(ds, sp.train, sp.valid)
    b = MGR(SMALL, seed=0).fit(data, split.train, split.valid)
    np.testing.assert_allclose(a.score(np.arange(30)), b.score(np.arange(30)), rtol=1e-5, atol=1e-5)


def test_finish_shards_refuses_a_model_fitted_on_the_whole_data(world):
    ds, sp = world
    model = MGR(SMALL, seed=0).fit(ds, sp.train, sp.valid)
    with pytest.raises(ConfigError, match="not fitted on shards"):
        model.finish_shards(ds, sp.train, sp.valid)
    with pytest.raises(ConfigError, match="mgr"):  # never fitted at all
        MGR(SMALL, seed=0).finish_shards(ds, sp.train, sp.valid)


def test_a_shard_must_match_the_process_rank(folder, world):
    data, split = load_shard(folder, 1, 2)  # this test runs as one process: rank 0 of 1
    with pytest.raises(ConfigError, match="shard 1 of 2, but this process is rank 0 of 1"):
        MGR(SMALL, seed=0).fit(data, split.train, split.valid)


def test_shard_owns_its_range():
    s = UserShard(rank=1, world_size=3, lo=4, hi=7, n_users=9)
    np.testing.assert_array_equal(s.owns(np.array([3, 4, 6, 7])), [False, True, True, False])


# ------------------------------------------------------------------ bad input
def test_bad_folders_name_the_file(folder, tmp_path):
    with pytest.raises(DataError, match="manifest.json"):
        load_shard(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in Path(folder).iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((bad / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(DataError, match="format version 1"):
        load_shard(bad)
    (bad / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "n_items"}))
    with pytest.raises(DataError, match="n_items"):
        load_shard(bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest.json"):
        load_shard(bad)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    (bad / "train.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="train.parquet"):
        load_shard(bad)
    (bad / "users.parquet").unlink()
    with pytest.raises(DataError, match="users.parquet"):
        load_shard(bad)
    (bad / "users.parquet").write_bytes((Path(folder) / "items.parquet").read_bytes())
    with pytest.raises(DataError, match="users.parquet.*rows"):
        load_shard(bad)


def test_cli_writes_and_trains_on_shards(world, tmp_path, capsys):
    data = write_parquet_folder(world[0], tmp_path / "data")
    out = tmp_path / "shards"
    assert main(["data", "split", f"folder:{data}", "--split", "loo", "--format", "shards", "--out", str(out)]) == 0
    assert read_manifest(out)["protocol"] == "loo"
    capsys.readouterr()
    assert main(["train", "--shards", str(out), "--dataset", "x", "--model", "mgr", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "drop --dataset" in err[0]
    assert main(["train", "--shards", str(tmp_path / "nothing"), "--model", "mgr", "--out", str(tmp_path / "m")]) == 2
    assert "manifest.json" in capsys.readouterr().err
    cfg = json.dumps(SMALL)
    assert main(["train", "--shards", str(out), "--model", "mgr", "--config", cfg, "--out", str(tmp_path / "a")]) == 0
    assert main(["train", "--dataset", f"folder:{data}", "--split", "loo", "--model", "mgr", "--config", cfg,
                 "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / m / "run.json").read_text()) for m in ("a", "b"))
    assert a["valid"] == b["valid"] and a["split"] == "loo" and a["config"]["shards"] == str(out)
