"""The loaders on the real datasets: exact counts from shared/data/README.md."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from mgrec.data.loaders.epinions_ciao import load_ciao, load_epinions
from mgrec.data.loaders.gowalla import load_gowalla
from mgrec.data.loaders.lastfm import load_lastfm2k
from mgrec.data.loaders.movielens import load_ml100k, load_ml1m, load_ml_latest_small
from mgrec.data.registry import load_dataset
from mgrec.errors import DataError

pytestmark = pytest.mark.realdata


def test_ml100k(real_data):
    root = real_data("ml-100k")
    start = time.perf_counter()
    ds = load_ml100k(root)
    assert time.perf_counter() - start < 2.0
    info = ds.info()
    assert (info["users"], info["items"], info["interactions"]) == (943, 1682, 100000)
    assert info["user_features"] == ["age", "gender", "occupation", "zip"]
    assert info["item_features"] == ["title", "genres", "release_year"]
    assert (info["first_timestamp"], info["last_timestamp"]) == (874724710, 893286638)
    assert info["social_links"] == 0
    assert info["granularities"] == ["user", "item", "behavior", "time"]
    assert len(ds.meta["genres"]) == 19
    # first line of u.data: 196 242 3 881250949
    row = ds.interactions.iloc[0]
    assert ds.users.id(row["user"]) == "196" and ds.items.id(row["item"]) == "242"
    assert row["weight"] == 3.0 and row["timestamp"] == 881250949
    users = ds.user_features.frame
    assert users.iloc[ds.users.code("1")].tolist() == [24.0, "M", "technician", "85711"]
    items = ds.item_features.frame
    toy = items.iloc[ds.items.code("1")]
    assert toy["title"] == "Toy Story (1995)" and toy["release_year"] == 1995.0
    assert toy["genres"] == ("Animation", "Children's", "Comedy")
    assert np.isnan(items.iloc[ds.items.code("267")]["release_year"])  # the 'unknown' movie
    assert set().union(*items["genres"]) == set(ds.meta["genres"])


def test_ml1m_with_written_ratings(real_data, tmp_path):
    root = real_data("ml-1m")
    for name in ("users.dat", "movies.dat"):
        shutil.copy(root / name, tmp_path / name)
    with pytest.raises(DataError, match="ratings.dat"):
        load_ml1m(tmp_path)
    (tmp_path / "ratings.dat").write_text(
        "1::1193::5::978300760\n1::661::3::978302109\n6040::3952::4::956703932\n"
    )
    ds = load_ml1m(tmp_path)
    info = ds.info()
    assert (info["users"], info["items"], info["interactions"]) == (6040, 3883, 3)
    assert info["user_features"] == ["gender", "age", "occupation", "zip"]
    assert info["item_features"] == ["title", "genres", "year"]
    assert (info["first_timestamp"], info["last_timestamp"]) == (956703932, 978302109)
    # users.dat line 1: 1::F::1::10::48067
    assert ds.user_features.frame.iloc[ds.users.code("1")].tolist() == ["F", "Under 18", "K-12 student", "48067"]
    toy = ds.item_features.frame.iloc[ds.items.code("1")]
    assert toy["genres"] == ("Animation", "Children's", "Comedy") and toy["year"] == 1995.0
    assert ds.interactions["weight"].tolist() == [5.0, 3.0, 4.0]


def test_ml_latest_small(real_data):
    ds = load_ml_latest_small(real_data("ml-latest-small"))
    info = ds.info()
    assert (info["users"], info["items"], info["interactions"]) == (610, 9742, 100836)
    assert info["item_features"] == ["title", "genres", "year", "tags"]
    assert info["user_features"] == []
    assert set(np.unique(ds.interactions["weight"])) == {x / 2 for x in range(1, 11)}
    items = ds.item_features.frame
    assert (items["genres"].map(len) == 0).sum() == 34  # "(no genres listed)"
    assert items["tags"].map(len).sum() == 3683
    assert items.iloc[ds.items.code("1")]["tags"] == ("fun", "pixar", "pixar")
    assert ds.meta["tag_rows_dropped"] == 0


def test_lastfm2k(real_data):
    ds = load_lastfm2k(real_data("lastfm-2k"))
    info = ds.info()
    assert (info["users"], info["items"], info["interactions"]) == (1892, 17632, 92834)
    assert info["social_links"] == 12717
    assert info["item_features"] == ["name", "tags"]
    assert not ds.has_time and not ds.social.directed
    assert ds.meta["weight_kind"] == "play_count"
    assert ds.meta["tag_rows_dropped"] == 1538
    assert ds.meta["friend_rows"] == 25434 and ds.meta["friend_pairs_one_direction"] == 0
    # 186,479 assignments minus the 1,538 of artists without listeners
    assert ds.item_features.frame["tags"].map(len).sum() == 186479 - 1538
    assert ds.item_features.frame.iloc[ds.items.code("1")]["name"] == "MALICE MIZER"
    first = ds.interactions.iloc[0]  # user_artists.dat line 2: 2 51 13883
    assert (ds.users.id(first["user"]), ds.items.id(first["item"]), first["weight"]) == ("2", "51", 13883.0)


def test_ciao(real_data):
    ds = load_ciao(real_data("ciao"))
    info = ds.info()
    assert (info["users"], info["items"], info["interactions"]) == (7375, 105114, 284086)
    assert info["social_links"] == 85205
    assert len(ds.social) == 111781 and ds.social.directed
    assert info["item_features"] == ["category"]
    assert (info["first_timestamp"], info["last_timestamp"]) == (959670000, 1302591600)
    cats = ds.item_features.frame["category"]
    assert cats.nunique() == 28 and cats.notna().all() and "DVDs" in set(cats)
    assert (ds.interactions["weight"] == 0).sum() == 34


def test_ciao_rejects_the_txt_release_trust(real_data, tmp_path):
    root = real_data("ciao")
    (tmp_path / "ciao_with_rating_timestamp").mkdir()
    (tmp_path / "ciao").mkdir()
    shutil.copy(root / "ciao_with_rating_timestamp" / "rating_with_timestamp.mat",
                tmp_path / "ciao_with_rating_timestamp" / "rating_with_timestamp.mat")
    shutil.copy(root / "ciao_with_rating_timestamp" / "trust.mat", tmp_path / "ciao" / "trustnetwork.mat")
    with pytest.raises(DataError, match="2,378"):
        load_ciao(tmp_path)


def test_epinions(real_data):
    root = real_data("epinions")
    start = time.perf_counter()
    ds = load_epinions(root)
    assert time.perf_counter() - start < 10.0
    info = ds.info()
    assert (info["users"], info["items"], info["interactions"]) == (22164, 296277, 922267)
    assert not ds.has_time
    m = ds.meta
    assert (m["trust_rows"], m["trust_self_links_dropped"], m["trust_unknown_users"]) == (355754, 224, 1)
    assert m["trust_unknown_user_links_dropped"] == 96 and m["trust_duplicates_dropped"] == 27
    assert len(ds.social) == 355754 - 224 - 96 - 27
    # 287,032 distinct undirected pairs in the file, 63 of them with the user who never rated
    assert info["social_links"] == 286969
    assert ds.item_features.frame["category"].nunique() == 27


def test_gowalla(real_data):
    ds = load_gowalla(real_data("gowalla-lightgcn"))
    info = ds.info()
    assert (info["users"], info["items"], info["interactions"]) == (29858, 40981, 1027370)
    mask = ds.meta["test_mask"]
    assert mask.dtype == bool and mask.sum() == 217242 and not mask[:810128].any()
    assert ds.meta["weight_kind"] == "implicit" and not ds.has_time
    assert (ds.interactions["weight"] == 1.0).all()


def test_registry_reads_real_folder(real_data):
    root: Path = real_data("ml-100k")
    ds = load_dataset("ml-100k", root=root.parent)
    assert ds.name == "ml-100k" and ds.n_users == 943
