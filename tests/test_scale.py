"""The scale worlds (mgrec.data.scale) and the streamed Parquet reader (mgrec.data.parquet_stream)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mgrec.data.folder import load_folder
from mgrec.data.parquet_stream import stream_parquet
from mgrec.data.registry import load_dataset
from mgrec.data.scale import ScaleConfig, make_scale, scale_config_for, write_parquet_folder
from mgrec.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def world():
    return make_scale(ScaleConfig(n_interactions=20_000, chunk_events=3_000), seed=3)


def test_sizes_granularities_and_order(world) -> None:
    inter = world.interactions
    # each (user, item) pair is kept once: on this small catalogue (400 items) the over-draw
    # does not make up for all repeats; at 1M+ events the target is met exactly
    assert 16_000 <= len(inter) <= 20_000
    assert (world.n_users, world.n_items, len(world.social)) == (2_000, 400, 10_000)
    assert world.granularities == ["user", "item", "behavior", "social", "time"]
    assert (np.diff(inter["timestamp"].to_numpy()) >= 0).all()
    assert not inter.duplicated(["user", "item"]).any()
    pairs = np.stack([world.social.src, world.social.dst], axis=1)
    assert (pairs[:, 0] < pairs[:, 1]).all() and len(np.unique(pairs, axis=0)) == len(pairs)


def test_same_seed_same_world_and_a_new_seed_a_new_one(world) -> None:
    again = make_scale(ScaleConfig(n_interactions=20_000, chunk_events=3_000), seed=3)
    pd.testing.assert_frame_equal(world.interactions, again.interactions)
    other = make_scale(ScaleConfig(n_interactions=20_000, chunk_events=3_000), seed=4)
    assert not world.interactions["item"].equals(other.interactions["item"])


def test_the_world_carries_each_signal(world) -> None:
    cfg = ScaleConfig(**{k: v for k, v in world.meta["config"].items()})
    inter = world.interactions.sort_values(["user", "timestamp"], kind="stable")
    u, i, t = (inter[c].to_numpy() for c in ("user", "item", "timestamp"))
    same = u[1:] == u[:-1]
    # sessions: most next events of a user come within the hour
    assert np.median((t[1:] - t[:-1])[same]) < 3600
    # item content: genre follows the hidden cluster, so a user's events concentrate on few genres
    genre = world.item_features.frame["genre"].to_numpy()[i]
    share = pd.Series(genre).groupby(u).agg(lambda g: g.value_counts(normalize=True).iloc[0]).mean()
    assert share > 2.0 / cfg.n_genres
    # new items are never used before their release (a late item's first event is late)
    first = inter.groupby("item")["timestamp"].min()
    assert first.max() > cfg.start + 30 * 86400


def test_scale_names_and_bad_configs() -> None:
    assert scale_config_for("synthetic-10m").n_interactions == 10_000_000
    assert scale_config_for("synthetic-2.5k").n_interactions == 2_500
    assert scale_config_for("ml-100k") is None
    with pytest.raises(ConfigError, match="synthetic-1m"):
        load_dataset("synthetic-lots")
    with pytest.raises(ConfigError, match="p_seq"):
        ScaleConfig(p_seq=0.7, p_social=0.5)
    with pytest.raises(ConfigError, match="n_interactions"):
        ScaleConfig(n_interactions=10)
    with pytest.raises(ConfigError, match="seed"):
        make_scale(ScaleConfig(n_interactions=1000), seed=-1)


def test_parquet_folder_round_trip_streams_in_batches(world, tmp_path: Path, monkeypatch) -> None:
    import mgrec.data.parquet_stream as ps

    out = write_parquet_folder(world, tmp_path / "w", row_group=4_000)
    monkeypatch.setattr(ps, "BATCH_ROWS", 3_000)  # several batches: codes must agree across them
    back = load_folder(out)
    ids = lambda vocab, codes: np.asarray(vocab.ids, dtype=object)[codes]  # noqa: E731
    a, b = world.interactions, back.interactions
    assert (ids(world.users, a["user"]) == ids(back.users, b["user"])).all()
    assert (ids(world.items, a["item"]) == ids(back.items, b["item"])).all()
    assert (a["timestamp"].to_numpy() == b["timestamp"].to_numpy()).all()
    assert back.item_features.kinds == {"genre": "categorical", "tags": "multi", "price": "numeric"}
    assert len(back.social) == len(world.social)


def test_streamed_reader_names_the_row_and_field(tmp_path: Path) -> None:
    path = tmp_path / "interactions.parquet"
    n = 2_500
    frame = pd.DataFrame({"user_id": np.arange(n) % 7, "item_id": [f"i{k}" for k in range(n)],
                          "weight": np.ones(n)})
    frame.loc[2_200, "weight"] = np.nan
    frame.to_parquet(path)
    with pytest.raises(DataError) as err:
        stream_parquet(path, ids=("user_id", "item_id"), numbers=("weight",), required=("user_id",),
                       batch_rows=1_000)
    assert str(err.value) == f"{path}, field 'weight': data row 2201: missing value"
    frame["weight"] = 1.0
    frame["item_id"] = frame["item_id"].astype(object)
    frame.loc[1_500, "item_id"] = None
    frame.to_parquet(path)
    with pytest.raises(DataError, match="field 'item_id': data row 1501: missing value"):
        stream_parquet(path, ids=("user_id", "item_id"), numbers=("weight",), required=("user_id",),
                       batch_rows=1_000)
    frame.loc[1_500, "item_id"] = "x"
    frame["extra"] = 1
    frame.to_parquet(path)
    with pytest.raises(DataError, match="unknown column 'extra'"):
        stream_parquet(path, ids=("user_id", "item_id"), numbers=("weight",), required=("user_id",))
    path.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="cannot read parquet file"):
        stream_parquet(path, ids=("user_id",), numbers=(), required=("user_id",))


def test_streamed_social_names_an_unknown_user(tmp_path: Path) -> None:
    pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"]}).to_parquet(tmp_path / "interactions.parquet")
    pd.DataFrame({"user_id": ["a", "b", "a"], "friend_id": ["b", "a", "zed"]}).to_parquet(
        tmp_path / "social.parquet")
    with pytest.raises(DataError) as err:
        load_folder(tmp_path)
    assert str(err.value) == (f"{tmp_path / 'social.parquet'}, field 'friend_id': data row 3: "
                              "unknown user 'zed' (in neither the interactions nor the users file)")
