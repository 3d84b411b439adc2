"""ONNX export of the fused model's scoring path: onnxruntime gives PyTorch's top-k (known
and new users, any batch size), the file is written atomically, other models are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from worlds import small_world

from mgrec.baselines.pop import Pop
from mgrec.data.split import make_split
from mgrec.data.synthetic import make_synthetic
from mgrec.encoders.base import Batch
from mgrec.errors import ConfigError
from mgrec.mgr import MGR
from mgrec.onnx_export import BATCH_INPUTS, check_onnx, export_onnx

ort = pytest.importorskip("onnxruntime")

TINY = {"dim": 16, "max_len": 8, "max_friends": 4, "friend_len": 3, "batch_size": 256, "lr": 3e-3, "epochs": 1,
        "social_items": "none"}  # the part is tested on its own below


@pytest.fixture(scope="module")
def data():
    ds = make_synthetic(small_world(n_users=120, n_items=80, mean_events=10), seed=0)
    return ds, make_split(ds, "loo", seed=0)


@pytest.fixture(scope="module")
def model(data):
    ds, split = data
    return MGR(TINY, seed=0).fit(ds, split.train, split.valid)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "mgr.onnx"
    export_onnx(model, path, k=10, dynamo=True)
    return path


def _session(path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_onnxruntime_top_k_equals_pytorch(model, exported):
    assert model.granularities_ == ["user", "item", "behavior", "social", "time"]
    users = np.arange(model.n_users_)
    report = check_onnx(model, exported, users, k=10)
    assert report["users"] == model.n_users_ and report["k"] == 10
    assert report["top_k_agreement"] == 1.0 and report["top_k_set_agreement"] == 1.0
    assert report["max_abs_score_diff"] < 1e-4 and report["max_abs_top_score_diff"] < 1e-4
    sess = _session(exported)
    assert [i.name for i in sess.get_inputs()] == list(BATCH_INPUTS)
    assert [o.name for o in sess.get_outputs()] == ["scores", "top_items", "top_scores"]
    assert all(isinstance(i.shape[0], str) for i in sess.get_inputs())  # dynamic batch dimension


def test_one_row_and_new_user_batches(model, exported):
    sess = _session(exported)
    ctx = model.context_
    for batch in (ctx.batch(np.array([7])), ctx.cold_batch([3, 4, 5], features={"occupation": "student"},
                                                            friends=[1, 2], time=1.6e9)):
        assert isinstance(batch, Batch)
        scores, top_items, top_scores = sess.run(None, {n: getattr(batch, n).numpy() for n in BATCH_INPUTS})
        with torch.no_grad():
            ref = (model.net_.user_vectors(batch)[0] @ model._item_matrix().T).numpy()
        assert scores.shape == (1, model.n_items_) and top_items.shape == (1, 10)
        np.testing.assert_allclose(scores, ref, atol=1e-4)
        np.testing.assert_array_equal(top_items[0], np.argsort(-ref[0], kind="stable")[:10])
        np.testing.assert_allclose(top_scores[0], np.sort(ref[0])[::-1][:10], atol=1e-4)


def test_failed_export_leaves_no_partial_file(model, tmp_path, monkeypatch):
    path = tmp_path / "mgr.onnx"
    path.write_bytes(b"previous model")

    def broken(*args, **kwargs):
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(torch.export, "export", broken)
    with pytest.raises(RuntimeError, match="exporter broke"):
        export_onnx(model, path, dynamo=True)
    assert path.read_bytes() == b"previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["mgr.onnx"]
    # the write itself failing (after the bytes exist) removes its temporary file
    monkeypatch.setattr("mgrec.onnx_export._export_bytes", lambda *a, **kw: b"x" * 1000)

    def no_rename(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("mgrec.io.os.replace", no_rename)
    with pytest.raises(OSError, match="disk full"):
        export_onnx(model, path)
    assert path.read_bytes() == b"previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["mgr.onnx"]


def test_other_models_and_bad_arguments_are_refused(data, model, exported, tmp_path):
    ds, split = data
    pop = Pop({}, seed=0).fit(ds, split.train, split.valid)
    with pytest.raises(ConfigError, match="'mgr' only, not 'pop'"):
        export_onnx(pop, tmp_path / "pop.onnx")
    with pytest.raises(ConfigError, match="'mgr' only"):
        check_onnx(pop, exported, np.arange(3))
    with pytest.raises(ConfigError, match="not fitted"):
        export_onnx(MGR(TINY), tmp_path / "unfitted.onnx")
    with pytest.raises(ConfigError, match="k must"):
        export_onnx(model, tmp_path / "k0.onnx", k=0)
    with pytest.raises(ConfigError, match="k = 10"):
        check_onnx(model, exported, np.arange(3), k=20)
    assert not any(tmp_path.iterdir())


def test_the_profile_prior_is_in_the_graph(data, tmp_path):
    """Users 0..5 have no history and no friends: the graph ranks them by the prior, as PyTorch does."""
    import dataclasses

    from mgrec.data.dataset import SocialGraph

    ds, split = data
    lone = np.arange(6)
    s = ds.social
    keep = ~(np.isin(s.src, lone) | np.isin(s.dst, lone))
    ds = dataclasses.replace(ds, social=SocialGraph(s.src[keep], s.dst[keep], s.weight[keep], s.directed))
    model = MGR({**TINY, "prior_min_users": 3}, seed=0).fit(ds, split.train[~split.train["user"].isin(lone)],
                                                            split.valid)
    assert model.prior_ is not None and model._prior_users(np.arange(8)).tolist() == [True] * 6 + [False] * 2
    path = tmp_path / "prior.onnx"
    export_onnx(model, path, k=10, dynamo=True)
    report = check_onnx(model, path, np.arange(20), k=10)
    assert report["top_k_agreement"] == 1.0 and report["max_abs_score_diff"] < 1e-4
    # a new user described by a profile alone: the prior's ranking, through the same graph
    profile = ds.user_features.frame.iloc[7].to_dict()
    batch = model.context_.cold_batch([], None, profile, [], None)
    out = _session(path).run(["top_items"], {n: getattr(batch, n).numpy() for n in BATCH_INPUTS})[0]
    np.testing.assert_array_equal(out[0], model.recommend_context([], features=profile, k=10)[0])


def test_the_friends_items_part_is_in_the_graph(model, tmp_path):
    from mgrec.social_items import SocialItemsPart

    model.social_items_ = SocialItemsPart(0.5)
    try:
        path = tmp_path / "social.onnx"
        export_onnx(model, path, k=10, dynamo=True)
        report = check_onnx(model, path, np.arange(model.n_users_), k=10)
        assert report["top_k_agreement"] == 1.0 and report["max_abs_score_diff"] < 1e-4
        batch = model.context_.cold_batch([3], None, None, [1, 2], 1.6e9)
        out = _session(path).run(["scores"], {n: getattr(batch, n).numpy() for n in BATCH_INPUTS})[0]
        with torch.no_grad():
            ref = (model.net_.user_vectors(batch)[0] @ model._item_matrix().T).numpy()
        ref = ref + model.social_items_.scores(batch.friend_items.numpy(), model.context_.n_items, model.n_items_)
        np.testing.assert_allclose(out, ref, atol=1e-4)
        assert not np.allclose(out, ref - model.social_items_.scores(
            batch.friend_items.numpy(), model.context_.n_items, model.n_items_))
    finally:
        model.social_items_ = None
