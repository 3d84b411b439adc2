"""Tests of the folder:PATH loader: formats, inference, schema overrides and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mgrec.data.folder import infer_kind, load_folder
from mgrec.data.registry import load_dataset
from mgrec.errors import ConfigError, DataError


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def full(tmp_path: Path) -> Path:
    write(tmp_path, "interactions.csv",
          "user_id,item_id,timestamp,weight\n"
          "u2,i1,2020-01-01,5\n"
          "u1,i2,1577836801,3.5\n"
          "u2,i2,2020-01-01T01:00:00+01:00,4\n")
    write(tmp_path, "users.csv", "user_id,age,zip\nu1,20,55105\nu9,,02139\n")
    write(tmp_path, "items.tsv",
          "item_id\tgenres\tyear\ttitle\n"
          "i1\tDrama|Comedy|Drama\t1999\tA long title with quite a few words in it\n"
          "i3\tHorror\t\tAnother long title that also has many words\n")
    write(tmp_path, "social.csv", "user_id,friend_id,weight\nu1,u9,0.5\nu2,u1,2\n")
    return tmp_path


def test_full_folder_values(full: Path) -> None:
    ds = load_folder(full)
    assert ds.name == f"folder:{full}"
    assert ds.users.to_list() == ["u1", "u2", "u9"]  # union of interactions and users.csv
    assert ds.items.to_list() == ["i1", "i2", "i3"]
    inter = ds.interactions
    assert inter["user"].tolist() == [1, 0, 1]
    assert inter["item"].tolist() == [0, 1, 1]
    assert inter["weight"].dtype == np.float32
    assert inter["weight"].tolist() == [5.0, 3.5, 4.0]
    # 2020-01-01T00:00:00Z = 1577836800; +01:00 offset one hour later is the same instant
    assert inter["timestamp"].dtype == np.int64
    assert inter["timestamp"].tolist() == [1577836800, 1577836801, 1577836800]
    uf, itf = ds.user_features, ds.item_features
    assert dict(uf.kinds) == {"age": "numeric", "zip": "numeric"}
    np.testing.assert_array_equal(uf.frame["age"], [20.0, np.nan, np.nan])
    assert dict(itf.kinds) == {"genres": "multi", "year": "numeric", "title": "text"}
    assert itf.frame["genres"].tolist() == [("Drama", "Comedy", "Drama"), (), ("Horror",)]
    assert itf.frame["title"][1] is None
    assert ds.social.src.tolist() == [0, 1] and ds.social.dst.tolist() == [2, 0]
    assert ds.social.weight.tolist() == [0.5, 2.0]
    assert ds.granularities == ["user", "item", "behavior", "social", "time"]
    assert ds.meta["source_files"] == ["interactions.csv", "users.csv", "items.tsv", "social.csv"]
    assert ds.meta["weight_kind"] == "weight"


def test_minimal_folder_defaults_weight_and_no_time(tmp_path: Path) -> None:
    write(tmp_path, "interactions.tsv", "user_id\titem_id\n3\t10\n12\t2\n3\t2\n")
    ds = load_folder(tmp_path)
    assert ds.users.to_list() == ["3", "12"]  # numeric-aware sort
    assert ds.items.to_list() == ["2", "10"]
    assert ds.interactions["weight"].tolist() == [1.0, 1.0, 1.0]
    assert not ds.has_time and ds.social is None and ds.user_features is None
    assert ds.meta["weight_kind"] == "implicit"


def test_schema_json_and_overrides(full: Path) -> None:
    (full / "schema.json").write_text(json.dumps({"users": {"zip": "categorical"},
                                                  "items": {"year": "categorical"}}))
    ds = load_folder(full)
    assert ds.user_features.kinds["zip"] == "categorical"
    assert ds.user_features.frame["zip"].tolist() == ["55105", None, "02139"]  # leading 0 kept
    assert ds.item_features.kinds["year"] == "categorical"
    ds2 = load_folder(full, overrides={"items": {"year": "numeric", "genres": "categorical"}})
    assert ds2.item_features.kinds["year"] == "numeric"  # argument wins over schema.json
    assert ds2.item_features.frame["genres"][0] == "Drama|Comedy|Drama"
    assert ds2.user_features.kinds["zip"] == "categorical"  # schema.json still applies


def test_load_dataset_folder_prefix(full: Path) -> None:
    ds = load_dataset(f"folder:{full}")
    assert len(ds.interactions) == 3 and ds.n_users == 3


def test_parquet_parts_and_row_numbers(tmp_path: Path) -> None:
    pd.DataFrame({
        "user_id": [7, 8],
        "item_id": ["a", "b"],
        "timestamp": pd.to_datetime(["2020-01-01 00:00:10", "1970-01-01 00:01:00"]),
        "weight": [1.5, 2.0],
    }).to_parquet(tmp_path / "interactions.parquet")
    items = pd.DataFrame({"item_id": ["a", "b"], "tags": [["x", "y"], []], "price": [1.0, np.nan]})
    items.to_parquet(tmp_path / "items.parquet")
    ds = load_folder(tmp_path)
    assert ds.users.to_list() == ["7", "8"]
    assert ds.interactions["timestamp"].tolist() == [1577836810, 60]
    assert ds.item_features.kinds == {"tags": "multi", "price": "numeric"}
    assert ds.item_features.frame["tags"].tolist() == [("x", "y"), ()]
    bad = pd.DataFrame({"user_id": ["1", "2"], "item_id": ["a", "b"], "weight": ["1", "oops"]})
    bad.to_parquet(tmp_path / "interactions.parquet")
    with pytest.raises(DataError) as err:
        load_folder(tmp_path)
    where = f"{tmp_path / 'interactions.parquet'}, field 'weight'"
    assert str(err.value) == f"{where}: data row 2: not a number: 'oops'"


@pytest.mark.parametrize(
    ("cells", "kind"),
    [
        (["1", "2.5", "", "-3e2"], "numeric"),
        (["a|b", "c", "d", "e|f|g"], "multi"),
        (["a short one", "b", "c", "d|e"] + ["x"] * 6, "multi"),  # 1 in 10 is enough
        (["a|b"] + ["x"] * 10, "categorical"),  # 1 in 11 is not
        (["The quick brown fox jumps over the dog", "Another sentence of some length"], "text"),
        (["M", "F", None, "M"], "categorical"),
        (["", "NA", None], "categorical"),
        (["1", "inf"], "categorical"),
    ],
)
def test_infer_kind(cells: list, kind: str) -> None:
    assert infer_kind(pd.Series(cells, dtype=object)) == kind


# ------------------------------------------------------------------ bad input
def _err(folder: Path) -> str:
    with pytest.raises(DataError) as err:
        load_folder(folder)
    return str(err.value)


def test_missing_folder_and_interactions_file(tmp_path: Path) -> None:
    assert _err(tmp_path / "nope") == f"{tmp_path / 'nope'}: dataset folder not found"
    msg = _err(tmp_path)
    assert msg == (f"{tmp_path}: no interactions file; expected one of interactions.csv, "
                   "interactions.tsv, interactions.parquet")


def test_two_interactions_files(tmp_path: Path) -> None:
    write(tmp_path, "interactions.csv", "user_id,item_id\n1,2\n")
    write(tmp_path, "interactions.tsv", "user_id\titem_id\n1\t2\n")
    assert "more than one interactions file (interactions.csv, interactions.tsv)" in _err(tmp_path)


def test_missing_and_unknown_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "interactions.csv", "user_id,item\n1,2\n")
    assert _err(tmp_path) == (f"{path}, line 1, field 'item_id': "
                              "missing column 'item_id' (found: user_id, item)")
    write(tmp_path, "interactions.csv", "user_id,item_id,rating\n1,2,5\n")
    assert _err(tmp_path).startswith(f"{path}, line 1, field 'rating': unknown column 'rating'")
    write(tmp_path, "interactions.csv", "user_id,item_id\n1,2\n")
    users = write(tmp_path, "users.csv", "uid,age\n1,3\n")
    assert _err(tmp_path) == (f"{users}, line 1, field 'user_id': "
                              "missing column 'user_id' (found: uid, age)")


def test_wrong_column_count(tmp_path: Path) -> None:
    path = write(tmp_path, "interactions.csv", "user_id,item_id,weight\n1,2,3\n1,2\n4,5,6\n")
    assert _err(tmp_path) == f"{path}, line 3: expected 3 fields, found 2"


def test_bad_weight_and_missing_id(tmp_path: Path) -> None:
    path = write(tmp_path, "interactions.csv", "user_id,item_id,weight\n1,2,3\n1,3,x4\n")
    assert _err(tmp_path) == f"{path}, line 3, field 'weight': not a number: 'x4'"
    write(tmp_path, "interactions.csv", "user_id,item_id,weight\n1,2,3\n1,3,\n")
    assert _err(tmp_path) == f"{path}, line 3, field 'weight': missing value"
    write(tmp_path, "interactions.csv", "user_id,item_id\n1,2\n ,3\n")
    assert _err(tmp_path) == f"{path}, line 3, field 'user_id': missing value"


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("nan", "missing value"),
        ("", "missing value"),
        ("yesterday", "not unix seconds or an ISO-8601 date/time: 'yesterday'"),
        ("2020-13-45", "not unix seconds or an ISO-8601 date/time: '2020-13-45'"),
    ],
)
def test_bad_timestamp(tmp_path: Path, cell: str, message: str) -> None:
    text = f"user_id,item_id,timestamp\n1,2,100\n1,3,2020-01-01\n1,4,{cell}\n"
    path = write(tmp_path, "interactions.csv", text)
    assert _err(tmp_path) == f"{path}, line 4, field 'timestamp': {message}"


def test_empty_interactions(tmp_path: Path) -> None:
    path = write(tmp_path, "interactions.csv", "user_id,item_id\n")
    assert _err(tmp_path) == f"{path}: no interactions: the file has a header but no rows"
    write(tmp_path, "interactions.csv", "")
    assert _err(tmp_path) == f"{path}: file is empty"


def test_duplicate_user_rows(tmp_path: Path) -> None:
    write(tmp_path, "interactions.csv", "user_id,item_id\n1,2\n")
    path = write(tmp_path, "users.csv", "user_id,age\n1,20\n2,30\n1,40\n")
    assert _err(tmp_path) == (f"{path}, line 4, field 'user_id': "
                              "duplicate user_id '1' (first at line 2)")


def test_unknown_user_in_social(tmp_path: Path) -> None:
    write(tmp_path, "interactions.csv", "user_id,item_id\n1,2\n3,2\n")
    write(tmp_path, "users.csv", "user_id,age\n5,20\n")
    path = write(tmp_path, "social.csv", "user_id,friend_id\n1,5\n3,1\n1,x9\n")
    assert _err(tmp_path) == (f"{path}, line 4, field 'friend_id': unknown user 'x9' "
                              "(in neither the interactions nor the users file)")


def test_numeric_override_on_text_cells(tmp_path: Path) -> None:
    write(tmp_path, "interactions.csv", "user_id,item_id\n1,2\n")
    path = write(tmp_path, "items.csv", "item_id,year\n2,1999\n3,about 2001\n")
    with pytest.raises(DataError) as err:
        load_folder(tmp_path, overrides={"items": {"year": "numeric"}})
    assert str(err.value) == f"{path}, line 3, field 'year': not a number: 'about 2001'"


@pytest.mark.parametrize(
    ("schema", "field", "message"),
    [
        ({"movies": {"x": "multi"}}, "movies", "unknown key 'movies'; use 'users' or 'items'"),
        ({"items": {"genres": "tags"}}, "items.genres",
         "unknown kind 'tags'; use one of categorical, multi, numeric, text"),
        ({"items": {"genre": "multi"}}, "items.genre",
         "items.tsv has no feature column 'genre' (features: genres, year, title)"),
        ({"items": ["genres"]}, "items", "expected an object mapping column names to kinds"),
    ],
)
def test_bad_schema_json(full: Path, schema: object, field: str, message: str) -> None:
    path = write(full, "schema.json", json.dumps(schema))
    assert _err(full) == f"{path}, field '{field}': {message}"


def test_schema_json_invalid_and_without_file(tmp_path: Path) -> None:
    write(tmp_path, "interactions.csv", "user_id,item_id\n1,2\n")
    path = write(tmp_path, "schema.json", '{\n  "items": {"a": "multi",}\n}')
    assert _err(tmp_path).startswith(f"{path}, line 2: not valid JSON")
    write(tmp_path, "schema.json", '{"users": {"zip": "categorical"}}')
    assert _err(tmp_path) == (f"{path}, field 'users': "
                              "names columns of 'users', but the folder has no users file")


def test_bad_overrides_argument(full: Path) -> None:
    with pytest.raises(ConfigError, match="key 'items.year': unknown kind 'number'"):
        load_folder(full, overrides={"items": {"year": "number"}})
    with pytest.raises(ConfigError, match="key 'social'"):
        load_folder(full, overrides={"social": {}})


def test_parquet_duplicate_and_bad_timestamp_rows(tmp_path: Path) -> None:
    inter = tmp_path / "interactions.parquet"
    pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"],
                  "timestamp": ["2020-01-01", "soon"]}).to_parquet(inter)
    assert _err(tmp_path) == (f"{inter}, field 'timestamp': "
                              "data row 2: not unix seconds or an ISO-8601 date/time: 'soon'")
    pd.DataFrame({"user_id": ["a"], "item_id": ["x"]}).to_parquet(tmp_path / "interactions.parquet")
    users = pd.DataFrame({"user_id": ["a", "b", "a"], "age": [1, 2, 3]})
    users.to_parquet(tmp_path / "users.parquet")
    assert _err(tmp_path) == (f"{tmp_path / 'users.parquet'}, field 'user_id': "
                              "data row 3: duplicate user_id 'a' (first at data row 1)")


def test_millisecond_timestamps_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "interactions.csv", "user_id,item_id,timestamp\n1,2,1577836800000\n")
    with caplog.at_level("WARNING", logger="mgrec.data.folder"):
        ds = load_folder(tmp_path)
    assert ds.interactions["timestamp"].tolist() == [1577836800000]
    assert "look like milliseconds" in caplog.text


def test_real_ml100k_as_a_folder(real_data, tmp_path: Path) -> None:
    root = real_data("ml-100k")
    names = ["user_id", "item_id", "weight", "timestamp"]
    ratings = pd.read_csv(root / "u.data", sep="\t", names=names)
    ratings.to_csv(tmp_path / "interactions.tsv", sep="\t", index=False)
    names = ["user_id", "age", "gender", "occupation", "zip"]
    users = pd.read_csv(root / "u.user", sep="|", names=names, dtype=str)
    users.to_csv(tmp_path / "users.csv", index=False)
    ds = load_folder(tmp_path)
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == (943, 1682, 100_000)
    assert ds.info()["first_timestamp"] == 874724710 and ds.info()["last_timestamp"] == 893286638
    assert float(ds.interactions["weight"].sum()) == float(ratings["weight"].sum())
    # some zip codes hold letters (e.g. Canadian codes), so the column stays categorical
    assert dict(ds.user_features.kinds) == {"age": "numeric", "gender": "categorical",
                                            "occupation": "categorical", "zip": "categorical"}
    assert ds.user_features.frame["gender"][ds.users.code("1")] == "M"
