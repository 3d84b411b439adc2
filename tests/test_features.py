"""Tests of feature encoding, with values worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from mgrec.data.dataset import FeatureTable
from mgrec.data.features import EncodedFeatures, FeatureEncoder, encode_features
from mgrec.errors import DataError

KINDS = {"gender": "categorical", "age": "numeric", "tags": "multi", "bio": "text",
         "const": "numeric"}


def table() -> FeatureTable:
    frame = pd.DataFrame({
        "gender": pd.Series(["F", "M", None, "F", "X"], dtype=object),
        "age": [10.0, 20.0, np.nan, 30.0, 100.0],
        "tags": pd.Series([("a", "b", "a"), ("b",), (), ("c",), ("a", "z")], dtype=object),
        "bio": pd.Series(["The cat sat", "a Cat! cat", None, "dog 7 x", "unseen words"],
                         dtype=object),
        "const": [5.0, 5.0, 5.0, 5.0, 5.0],
    })
    return FeatureTable(frame, KINDS)


FIT = np.array([0, 1, 2, 3])  # row 4 plays a cold-start entity


def test_categorical_codes_reserve_zero() -> None:
    enc = encode_features(table(), fit_on=FIT)
    # fit counts F:2, M:1 -> F=1, M=2; None -> 0; "X" (row 4, not fitted) -> 0
    assert enc.encoder.spec("gender").vocab == ("F", "M")
    assert enc.categorical["gender"].tolist() == [1, 2, 0, 1, 0]
    assert enc.categorical["gender"].dtype == np.int64
    assert enc.cardinality("gender") == 3


def test_numeric_standardised_on_fit_rows() -> None:
    enc = encode_features(table(), fit_on=FIT)
    std = math.sqrt(200.0 / 3.0)  # population std of 10, 20, 30 (NaN ignored); mean 20
    spec = enc.encoder.spec("age")
    assert spec.mean == pytest.approx(20.0) and spec.std == pytest.approx(std)
    expected = [-10 / std, 0.0, 0.0, 10 / std, 80 / std]
    np.testing.assert_allclose(enc.numeric["age"], expected, rtol=1e-6)
    assert enc.numeric["age"].dtype == np.float32
    assert enc.missing["age"].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert enc.encoder.spec("const").std == 1.0  # constant column: std 0 -> 1
    assert enc.numeric["const"].tolist() == [0.0] * 5
    mat = enc.numeric_matrix()
    assert mat.shape == (5, 4) and mat[2].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_multi_bag_l1_counts() -> None:
    enc = encode_features(table(), fit_on=FIT)
    assert enc.encoder.spec("tags").vocab == ("a", "b", "c")  # a:2, b:2, c:1
    dense = enc.bags["tags"].toarray()
    expected = [[2 / 3, 1 / 3, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1], [1, 0, 0]]
    np.testing.assert_allclose(dense, expected, rtol=1e-6)
    assert enc.bags["tags"].dtype == np.float32


def test_vocab_caps() -> None:
    capped = encode_features(table(), fit_on=FIT, max_vocab=2)
    assert capped.encoder.spec("tags").vocab == ("a", "b")
    assert capped.bags["tags"].toarray()[3].tolist() == [0.0, 0.0]  # "c" cut: row is missing
    assert capped.encoder.spec("bio").vocab == ("cat", "dog")
    rare = encode_features(table(), fit_on=FIT, min_count=2)
    assert rare.encoder.spec("tags").vocab == ("b",)  # "a" twice, but in one row only
    assert rare.encoder.spec("bio").vocab == ("cat",)  # rows 0 and 1
    assert rare.encoder.spec("gender").vocab == ("F",)
    assert rare.categorical["gender"].tolist() == [1, 0, 0, 1, 0]


def test_text_tokens() -> None:
    enc = encode_features(table(), fit_on=FIT)
    # tokens: the cat sat | cat cat ("a" too short) | - | dog ("7", "x" too short)
    assert enc.encoder.spec("bio").vocab == ("cat", "dog", "sat", "the")
    np.testing.assert_allclose(
        enc.bags["bio"].toarray(),
        [[1 / 3, 0, 1 / 3, 1 / 3], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]],
        rtol=1e-6,
    )


def test_fit_on_mask_equals_indices_and_default_is_all_rows() -> None:
    mask = np.array([True, True, True, True, False])
    a = encode_features(table(), fit_on=FIT)
    b = encode_features(table(), fit_on=mask)
    assert a.encoder == b.encoder
    full = encode_features(table())
    assert full.encoder.spec("gender").vocab == ("F", "M", "X")
    assert full.encoder.spec("age").mean == pytest.approx(40.0)
    with pytest.raises(ValueError, match="fit_on"):
        encode_features(table(), fit_on=np.array([7]))


def test_transform_new_rows() -> None:
    enc = encode_features(table(), fit_on=FIT)
    new = FeatureTable(
        pd.DataFrame({
            "gender": pd.Series(["M", "Q"], dtype=object),
            "age": [np.nan, 25.0],
            "tags": pd.Series([("c", "c", "b", "new"), ()], dtype=object),
            "bio": pd.Series(["DOG dog cat", ""], dtype=object),
            "const": [1.0, np.nan],
            "extra": pd.Series(["ignored", None], dtype=object),
        }),
        {**KINDS, "extra": "categorical"},
    )
    out = enc.transform(new)
    assert out.n_rows == 2
    assert out.categorical["gender"].tolist() == [2, 0]  # unknown "Q" -> 0
    np.testing.assert_allclose(out.numeric["age"], [0.0, 5 / math.sqrt(200 / 3)], rtol=1e-6)
    assert out.missing["age"].tolist() == [1.0, 0.0]
    tags = out.bags["tags"].toarray()  # "new" is unknown: c, c, b count
    np.testing.assert_allclose(tags, [[0, 1 / 3, 2 / 3], [0, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(out.bags["bio"].toarray()[0], [1 / 3, 2 / 3, 0, 0], rtol=1e-6)
    assert out.numeric["const"].tolist() == [-4.0, 0.0]  # (1 - 5) / 1


def test_transform_checks_columns() -> None:
    enc = encode_features(table(), fit_on=FIT)
    frame = table().frame.drop(columns=["age"])
    with pytest.raises(DataError, match="field 'age': feature table lacks the column"):
        enc.transform(FeatureTable(frame, {k: v for k, v in KINDS.items() if k != "age"}))
    frame = table().frame.assign(gender=pd.Series([("x",)] * 5, dtype=object))
    msg = "field 'gender': feature is multi, but the encoder was fitted on categorical"
    with pytest.raises(DataError, match=msg):
        enc.transform(FeatureTable(frame, {**KINDS, "gender": "multi"}))


def test_to_csr_layout() -> None:
    enc = encode_features(table(), fit_on=FIT)
    names = enc.column_names()
    assert names == ["gender=F", "gender=M", "age", "age?missing", "tags:a", "tags:b", "tags:c",
                     "bio:cat", "bio:dog", "bio:sat", "bio:the", "const", "const?missing"]
    m = enc.to_csr()
    assert m.shape == (5, len(names)) and m.dtype == np.float32
    row2 = dict(zip(names, m.toarray()[2].tolist(), strict=True))
    assert row2["age?missing"] == 1.0 and row2["gender=F"] == 0.0 and row2["gender=M"] == 0.0


def test_state_round_trip_json_and_safetensors(tmp_path) -> None:
    st = pytest.importorskip("safetensors.numpy")
    enc = encode_features(table(), fit_on=FIT)
    state, arrays = enc.to_state()
    text = json.dumps(state)
    st.save_file(arrays, str(tmp_path / "f.safetensors"))
    loaded = st.load_file(str(tmp_path / "f.safetensors"))
    back = EncodedFeatures.from_state(json.loads(text), loaded)
    assert back.encoder == enc.encoder
    assert (back.to_csr() != enc.to_csr()).nnz == 0
    assert back.categorical["gender"].tolist() == [1, 2, 0, 1, 0]
    enc2 = FeatureEncoder.from_state(json.loads(json.dumps(enc.encoder.to_state())))
    assert enc2 == enc.encoder
    with pytest.raises(DataError, match="array 'num:age' is missing"):
        EncodedFeatures.from_state(state, {k: v for k, v in arrays.items() if k != "num:age"})
    with pytest.raises(DataError, match="expected version 2"):
        FeatureEncoder.from_state({"version": 99})
    assert back.buckets["age"].tolist() == [1, 2, 0, 3, 3]
    with pytest.raises(DataError, match="array 'bucket:age' is missing"):
        EncodedFeatures.from_state(state, {k: v for k, v in arrays.items() if k != "bucket:age"})


def test_numeric_bucket_codes_by_hand() -> None:
    enc = encode_features(table(), fit_on=FIT)
    # fit values 10, 20, 30: the 1/8 .. 7/8 quantiles (next higher value) are 20 x4, 30 x3
    spec = enc.encoder.spec("age")
    assert spec.edges == (20.0, 30.0) and spec.n_buckets == 3
    # 10 -> bucket 1, 20 -> 2, NaN -> 0 (missing), 30 and the unfitted 100 -> 3
    assert enc.buckets["age"].tolist() == [1, 2, 0, 3, 3] and enc.buckets["age"].dtype == np.int64
    assert enc.cardinality("age") == 4
    # a constant column has no cut point and no bucket code
    assert enc.encoder.spec("const").edges == () and "const" not in enc.buckets
    assert enc.code_columns() == ["gender", "age"]
    assert enc.codes("age") is enc.buckets["age"] and enc.codes("gender") is enc.categorical["gender"]
    # new rows are bucketed with the fitted edges
    new = FeatureTable(pd.DataFrame({"gender": pd.Series(["M"], dtype=object), "age": [25.0],
                                     "tags": pd.Series([()], dtype=object), "bio": pd.Series([None], dtype=object),
                                     "const": [1.0]}), KINDS)
    assert enc.transform(new).buckets["age"].tolist() == [2]


def test_bucket_edges_at_most_numeric_bins() -> None:
    from mgrec.data.features import NUMERIC_BINS

    frame = pd.DataFrame({"x": np.arange(1000, dtype=float)})
    enc = encode_features(FeatureTable(frame, {"x": "numeric"}))
    edges = enc.encoder.spec("x").edges
    assert len(edges) == NUMERIC_BINS - 1
    # equal-frequency buckets: 1000 distinct values, 125 per bucket
    assert np.bincount(enc.buckets["x"]).tolist() == [0] + [125] * NUMERIC_BINS


def test_version_1_state_loads_without_buckets() -> None:
    state = {"version": 1, "features": [{"name": "age", "kind": "numeric", "vocab": [], "mean": 20.0,
                                         "std": 10.0}]}
    enc = FeatureEncoder.from_state(state)
    assert enc.spec("age").edges == ()
    out = enc.transform(FeatureTable(pd.DataFrame({"age": [30.0]}), {"age": "numeric"}))
    assert out.buckets == {} and out.code_columns() == [] and out.numeric["age"].tolist() == [1.0]


@pytest.mark.parametrize("edges", [[3.0, 2.0], [1.0, 1.0], [float("inf")], "12"])
def test_bad_bucket_edges_are_rejected(edges) -> None:
    state = {"version": 2, "features": [{"name": "age", "kind": "numeric", "vocab": [], "mean": 0.0,
                                         "std": 1.0, "edges": edges}]}
    with pytest.raises(DataError, match="bucket edges|bad feature"):
        FeatureEncoder.from_state(state)


def test_empty_table() -> None:
    empty = FeatureTable(pd.DataFrame({"g": pd.Series([], dtype=object)}), {"g": "categorical"})
    enc = encode_features(empty)
    assert enc.n_rows == 0 and enc.categorical["g"].shape == (0,) and enc.to_csr().shape == (0, 0)
