"""The real-data loaders on tiny hand-written files: parsing, and errors for bad input."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from mgrec.data.loaders.epinions_ciao import check_trust_id_space, load_ciao, load_epinions
from mgrec.data.loaders.gowalla import load_gowalla
from mgrec.data.loaders.lastfm import load_lastfm2k
from mgrec.data.loaders.movielens import load_ml100k, load_ml1m, load_ml_latest_small
from mgrec.errors import DataError

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
          "Thriller", "War", "Western"]


def _flags(*on: int) -> str:
    return "|".join("1" if k in on else "0" for k in range(19))


# ----------------------------------------------------------------------------- ml-100k
@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    (tmp_path / "u.data").write_text("10\t1\t3\t100\n2\t2\t5\t50\n10\t2\t1\t300\n")
    (tmp_path / "u.user").write_text("2|31|F|writer|T8H1N\n10|24|M|technician|85711\n")
    (tmp_path / "u.genre").write_text("".join(f"{g}|{k}\n" for k, g in enumerate(GENRES)) + "\n")
    (tmp_path / "u.item").write_bytes(
        f"1|Caf\xe9 (1995)|01-Jan-1995||http://x|{_flags(1, 5)}\n"
        f"2|unknown||||{_flags(0)}\n".encode("latin-1")
    )
    return tmp_path


def test_ml100k_parses(ml100k: Path) -> None:
    ds = load_ml100k(ml100k)
    assert ds.users.ids.tolist() == ["2", "10"]  # numeric order, not "10" < "2"
    assert ds.items.ids.tolist() == ["1", "2"]
    inter = ds.interactions
    assert inter["user"].tolist() == [1, 0, 1] and inter["item"].tolist() == [0, 1, 1]
    assert inter["weight"].tolist() == [3.0, 5.0, 1.0] and inter["timestamp"].tolist() == [100, 50, 300]
    assert ds.info()["first_timestamp"] == 50 and ds.info()["last_timestamp"] == 300
    users = ds.user_features
    assert users.names == ["age", "gender", "occupation", "zip"]
    assert users.frame.iloc[0].tolist() == [31.0, "F", "writer", "T8H1N"]
    items = ds.item_features.frame
    assert items.loc[0, "title"] == "Caf\xe9 (1995)"
    assert items.loc[0, "genres"] == ("Action", "Comedy") and items.loc[1, "genres"] == ("unknown",)
    assert items.loc[0, "release_year"] == 1995.0 and math.isnan(items.loc[1, "release_year"])
    assert ds.item_features.kinds == {"title": "text", "genres": "multi", "release_year": "numeric"}
    assert ds.meta["weight_kind"] == "rating"


def test_ml100k_rating_only_user_has_missing_features(ml100k: Path) -> None:
    with (ml100k / "u.data").open("a") as fh:
        fh.write("7\t1\t4\t200\n")
    ds = load_ml100k(ml100k)
    assert ds.users.ids.tolist() == ["2", "7", "10"]
    row = ds.user_features.frame.iloc[1]
    assert math.isnan(row["age"]) and row["gender"] is None and row["zip"] is None


def test_ml100k_missing_file_names_it(ml100k: Path) -> None:
    (ml100k / "u.user").unlink()
    with pytest.raises(DataError, match=r"u\.user.*not found") as err:
        load_ml100k(ml100k)
    assert err.value.file is not None and err.value.file.endswith("u.user")


def test_ml100k_wrong_column_count_names_line(ml100k: Path) -> None:
    (ml100k / "u.data").write_text("10\t1\t3\t100\n2\t2\t5\t50\n10\t2\t1\n")
    with pytest.raises(DataError) as err:
        load_ml100k(ml100k)
    assert err.value.file.endswith("u.data") and err.value.line == 3
    assert "expected 4 fields, found 3" in str(err.value)


def test_ml100k_non_numeric_id_names_field(ml100k: Path) -> None:
    (ml100k / "u.data").write_text("10\t1\t3\t100\n2\tx12\t5\t50\n")
    with pytest.raises(DataError, match="x12") as err:
        load_ml100k(ml100k)
    assert (err.value.line, err.value.field) == (2, "item_id")
    assert str(err.value).startswith(str(ml100k / "u.data") + ", line 2, field 'item_id'")


@pytest.mark.parametrize("stamp", ["", "nan"])
def test_ml100k_missing_timestamp_names_field(ml100k: Path, stamp: str) -> None:
    (ml100k / "u.data").write_text(f"10\t1\t3\t100\n2\t2\t5\t{stamp}\n")
    with pytest.raises(DataError) as err:
        load_ml100k(ml100k)
    assert (err.value.line, err.value.field) == (2, "timestamp")


def test_ml100k_bad_genre_flag(ml100k: Path) -> None:
    (ml100k / "u.item").write_text(f"1|A (1995)|01-Jan-1995||u|{_flags(1)}\n2|B|||u|{_flags(0)}\n".replace(
        "1|A (1995)|01-Jan-1995||u|0|1", "1|A (1995)|01-Jan-1995||u|0|2"))
    with pytest.raises(DataError, match="0 or 1") as err:
        load_ml100k(ml100k)
    assert (err.value.line, err.value.field) == (1, "Action")


# ------------------------------------------------------------------------------ ml-1m
@pytest.fixture
def ml1m(tmp_path: Path) -> Path:
    (tmp_path / "ratings.dat").write_text("1::20::5::978300760\n6::10::3::978302109\n1::10::4::978301968\n")
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n6::M::56::16::70072\n9::M::25::0::55117\n")
    (tmp_path / "movies.dat").write_bytes(
        "10::Heat (1995)::Action|Crime|Thriller\n20::Am\xe9lie (2001)::Comedy|Romance\n".encode("latin-1")
    )
    return tmp_path


def test_ml1m_parses(ml1m: Path) -> None:
    ds = load_ml1m(ml1m)
    assert ds.users.ids.tolist() == ["1", "6", "9"] and ds.items.ids.tolist() == ["10", "20"]
    assert ds.interactions["user"].tolist() == [0, 1, 0] and ds.interactions["item"].tolist() == [1, 0, 0]
    users = ds.user_features.frame
    assert users["age"].tolist() == ["Under 18", "56+", "25-34"]
    assert users["occupation"].tolist() == ["K-12 student", "self-employed", "other"]
    assert users["zip"].tolist() == ["48067", "70072", "55117"]
    items = ds.item_features.frame
    assert items["genres"].tolist() == [("Action", "Crime", "Thriller"), ("Comedy", "Romance")]
    assert items["year"].tolist() == [1995.0, 2001.0] and items.loc[1, "title"] == "Am\xe9lie (2001)"


def test_ml1m_unknown_occupation_code(ml1m: Path) -> None:
    (ml1m / "users.dat").write_text("1::F::1::10::48067\n6::M::56::21::70072\n")
    with pytest.raises(DataError, match="21") as err:
        load_ml1m(ml1m)
    assert (err.value.line, err.value.field) == (2, "occupation")


def test_ml1m_missing_ratings(ml1m: Path) -> None:
    (ml1m / "ratings.dat").unlink()
    with pytest.raises(DataError, match=r"ratings\.dat"):
        load_ml1m(ml1m)


# ------------------------------------------------------------------- ml-latest-small
@pytest.fixture
def mlsmall(tmp_path: Path) -> Path:
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,5,4.5,964982703\n3,7,0.5,964981247\n")
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n5,"American President, The (1995)",Comedy|Drama|Romance\n'
        "7,Cosmos,(no genres listed)\n"
    )
    (tmp_path / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n1,5,Funny,1\n3,5, funny ,2\n3,5,politics,3\n1,99,orphan,4\n"
    )
    return tmp_path


def test_ml_latest_small_parses(mlsmall: Path) -> None:
    ds = load_ml_latest_small(mlsmall)
    assert ds.interactions["weight"].tolist() == [4.5, 0.5]
    items = ds.item_features.frame
    assert items.loc[0, "title"] == "American President, The (1995)" and items.loc[0, "year"] == 1995.0
    assert items.loc[0, "genres"] == ("Comedy", "Drama", "Romance")
    assert items.loc[1, "genres"] == () and math.isnan(items.loc[1, "year"])
    assert items.loc[0, "tags"] == ("funny", "funny", "politics") and items.loc[1, "tags"] == ()
    assert ds.meta["tag_rows_dropped"] == 1 and ds.n_items == 2


def test_ml_latest_small_bad_rating(mlsmall: Path) -> None:
    (mlsmall / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,5,4.5,9\n1,7,good,9\n")
    with pytest.raises(DataError, match="good") as err:
        load_ml_latest_small(mlsmall)
    assert (err.value.line, err.value.field) == (3, "rating")


def test_ml_latest_small_missing_column(mlsmall: Path) -> None:
    (mlsmall / "movies.csv").write_text("movieId,name,genres\n5,X,Drama\n")
    with pytest.raises(DataError, match="title") as err:
        load_ml_latest_small(mlsmall)
    assert err.value.file.endswith("movies.csv") and err.value.line == 1


# --------------------------------------------------------------------------- lastfm-2k
@pytest.fixture
def lastfm(tmp_path: Path) -> Path:
    (tmp_path / "user_artists.dat").write_text("userID\tartistID\tweight\n2\t51\t13883\n2\t52\t7\n4\t51\t100\n")
    (tmp_path / "user_friends.dat").write_text("userID\tfriendID\n2\t4\n4\t2\n4\t9\n9\t4\n")
    (tmp_path / "artists.dat").write_text(
        "id\tname\turl\tpictureURL\n51\tDuran \"Duran\"\tu\tp\n52\tMadonna\tu\tp\n60\tNobody\tu\tp\n"
    )
    (tmp_path / "tags.dat").write_bytes("tagID\ttagValue\n1\tpop\n2\tcaf\xe9 rock\n".encode("latin-1"))
    (tmp_path / "user_taggedartists.dat").write_text(
        "userID\tartistID\ttagID\tday\tmonth\tyear\n"
        "2\t51\t1\t1\t4\t2009\n4\t51\t1\t1\t5\t2009\n2\t51\t2\t1\t4\t2009\n2\t60\t1\t1\t4\t2009\n"
    )
    return tmp_path


def test_lastfm_parses(lastfm: Path) -> None:
    ds = load_lastfm2k(lastfm)
    assert ds.users.ids.tolist() == ["2", "4", "9"] and ds.items.ids.tolist() == ["51", "52"]
    assert ds.interactions["weight"].tolist() == [13883.0, 7.0, 100.0] and not ds.has_time
    assert ds.info()["social_links"] == 2 and not ds.social.directed
    assert sorted(map(tuple, ds.social.undirected_pairs().tolist())) == [(0, 1), (1, 2)]
    items = ds.item_features.frame
    assert items["name"].tolist() == ['Duran "Duran"', "Madonna"]
    assert items.loc[0, "tags"] == ("caf\xe9 rock", "pop", "pop") and items.loc[1, "tags"] == ()
    assert ds.meta["tag_rows_dropped"] == 1 and ds.meta["weight_kind"] == "play_count"


def test_lastfm_bad_play_count(lastfm: Path) -> None:
    (lastfm / "user_artists.dat").write_text("userID\tartistID\tweight\n2\t51\t13883\n2\t52\tlots\n")
    with pytest.raises(DataError, match="lots") as err:
        load_lastfm2k(lastfm)
    assert (err.value.line, err.value.field) == (3, "weight")


# ------------------------------------------------------------------------ ciao/epinions
def _write_ciao(root: Path, rating: np.ndarray, trust: np.ndarray, *, trust_var: str = "trustnetwork") -> Path:
    (root / "ciao_with_rating_timestamp").mkdir(parents=True, exist_ok=True)
    (root / "ciao").mkdir(exist_ok=True)
    scipy.io.savemat(root / "ciao_with_rating_timestamp" / "rating_with_timestamp.mat", {"rating": rating})
    scipy.io.savemat(root / "ciao" / "trustnetwork.mat", {trust_var: trust})
    return root


# userid, productid, categoryid, rating, helpfulness, timestamp
CIAO_ROWS = np.array(
    [[1, 100, 3, 5, 4, 1000], [2, 100, 3, 4, 4, 2000], [2, 100, 7, 2, 1, 3000],
     [3, 200, 7, 0, 2, 500], [3, 200, 3, 1, 2, 600], [4, 300, 9, 3, 3, 700]], dtype=np.int32)


def test_ciao_parses(tmp_path: Path) -> None:
    trust = np.array([[1, 2], [2, 1], [3, 4], [1, 3]], dtype=np.uint16)
    _write_ciao(tmp_path, CIAO_ROWS, trust)
    (tmp_path / "catalog_ciao.txt").write_bytes(b"3 DVDs\r\n7 Books\r\n")
    ds = load_ciao(tmp_path)
    info = ds.info()
    assert (info["users"], info["items"], info["interactions"]) == (4, 3, 6)
    assert (info["first_timestamp"], info["last_timestamp"]) == (500, 3000)
    assert ds.interactions["weight"].tolist() == [5.0, 4.0, 2.0, 0.0, 1.0, 3.0]
    assert ds.social.directed and len(ds.social) == 4 and info["social_links"] == 3
    # item 100: category 3 twice, 7 once; item 200: tie 3/7 -> smallest id; 300: no catalog name
    assert ds.item_features.frame["category"].tolist() == ["DVDs", "DVDs", "9"]


def test_ciao_rejects_foreign_trust_ids(tmp_path: Path) -> None:
    trust = np.array([[500, 501], [502, 503], [1, 504]], dtype=np.uint16)
    _write_ciao(tmp_path, CIAO_ROWS, trust)
    with pytest.raises(DataError, match="different") as err:
        load_ciao(tmp_path)
    assert err.value.file.endswith("trustnetwork.mat")


def test_ciao_rejects_the_trust_variable(tmp_path: Path) -> None:
    _write_ciao(tmp_path, CIAO_ROWS, np.array([[1, 2]], dtype=np.uint16), trust_var="trust")
    with pytest.raises(DataError, match="trustnetwork.mat"):
        load_ciao(tmp_path)


def test_trust_prefix_signature() -> None:
    raters = np.arange(1, 101)
    check_trust_id_space(np.array([[1, 90], [50, 7]]), raters, file="t.mat")  # spread out: fine
    with pytest.raises(DataError, match="1..30"):
        check_trust_id_space(np.array([[1, 30], [5, 7]]), raters, file="t.mat")


def test_ciao_nan_timestamp_names_field(tmp_path: Path) -> None:
    rows = CIAO_ROWS.astype(np.float64)
    rows[2, 5] = np.nan
    _write_ciao(tmp_path, rows, np.array([[1, 2]], dtype=np.uint16))
    with pytest.raises(DataError, match="row 3") as err:
        load_ciao(tmp_path)
    assert err.value.field == "timestamp"


def test_ciao_missing_and_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"rating_with_timestamp\.mat.*not found"):
        load_ciao(tmp_path)
    _write_ciao(tmp_path, CIAO_ROWS[:, :5], np.array([[1, 2]], dtype=np.uint16))
    with pytest.raises(DataError, match="expected 6 columns"):
        load_ciao(tmp_path)
    (tmp_path / "ciao_with_rating_timestamp" / "rating_with_timestamp.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="cannot read"):
        load_ciao(tmp_path)


def test_epinions_drops_bad_trust(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rating = np.array([[1, 10, 2, 5], [2, 11, 2, 4], [3, 10, 4, 1], [3, 12, 4, 3]], dtype=np.int32)
    trust = np.array([[1, 2], [2, 2], [1, 9], [2, 3], [1, 2], [3, 1]], dtype=np.uint16)
    scipy.io.savemat(tmp_path / "rating.mat", {"rating": rating})
    scipy.io.savemat(tmp_path / "trustnetwork.mat", {"trustnetwork": trust})
    with caplog.at_level(logging.WARNING):
        ds = load_epinions(tmp_path)
    assert "self-links" in caplog.text
    assert not ds.has_time and ds.n_users == 3 and ds.n_items == 3
    assert list(zip(ds.social.src.tolist(), ds.social.dst.tolist())) == [(0, 1), (1, 2), (2, 0)]
    m = ds.meta
    assert (m["trust_self_links_dropped"], m["trust_unknown_user_links_dropped"]) == (1, 1)
    assert (m["trust_unknown_users"], m["trust_duplicates_dropped"]) == (1, 1)
    assert ds.info()["social_links"] == 3
    assert ds.item_features.frame["category"].tolist() == ["2", "2", "4"]


# ----------------------------------------------------------------------------- gowalla
def test_gowalla_parses(tmp_path: Path) -> None:
    (tmp_path / "train.reconstructed.txt").write_text("0 5 7\n1 7\n2\n")
    (tmp_path / "test.txt").write_text("0 9\n1 5 0\n")
    ds = load_gowalla(tmp_path)
    assert ds.users.ids.tolist() == ["0", "1", "2"] and ds.items.ids.tolist() == ["0", "5", "7", "9"]
    assert ds.interactions["user"].tolist() == [0, 0, 1, 0, 1, 1]
    assert ds.interactions["item"].tolist() == [1, 2, 2, 3, 1, 0]
    assert ds.meta["test_mask"].tolist() == [False, False, False, True, True, True]
    assert ds.meta["source_files"] == ["train.reconstructed.txt", "test.txt"]
    (tmp_path / "train.txt").write_text("0 5\n")  # the original file wins when present
    assert len(load_gowalla(tmp_path).interactions) == 4


def test_gowalla_bad_item_names_line(tmp_path: Path) -> None:
    (tmp_path / "train.reconstructed.txt").write_text("0 5 7\n1 7 x\n")
    (tmp_path / "test.txt").write_text("0 9\n")
    with pytest.raises(DataError, match="'x'") as err:
        load_gowalla(tmp_path)
    assert (err.value.line, err.value.field) == (2, "item")
    (tmp_path / "test.txt").unlink()
    (tmp_path / "train.reconstructed.txt").write_text("0 5\n")
    with pytest.raises(DataError, match=r"test\.txt"):
        load_gowalla(tmp_path)
