"""The side-by-side peer benchmark's own parts (bench/peers), without any peer installed.

Exporters on a small synthetic dataset (RecBole atomic files, matrices, features), the
top-N-lists-to-metrics wrapper against hand-computed values, and the peer-side ranking helpers.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from mgrec.data.dataset import Dataset, to_csr
from mgrec.data.split import Split, make_split
from mgrec.data.synthetic import make_synthetic
from mgrec.data.vocab import Vocabulary

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "peers"))

import export  # noqa: E402
import peer_common  # noqa: E402
import run_peers  # noqa: E402
from worlds import small_world


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Dataset, Split]:
    data = make_synthetic(small_world(n_users=120, n_items=80, mean_events=12.0), seed=3)
    split = make_split(data, "temporal", seed=0)
    work = tmp_path_factory.mktemp("work")
    export.export_all(work, data, split)
    return work, data, split


def read_inter(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def test_recbole_inter_files_hold_each_part_with_typed_header(exported: tuple[Path, Dataset, Split]) -> None:
    work, data, split = exported
    for part, frame in split.parts().items():
        table = read_inter(work / "recbole" / "inter" / f"inter.{part}.inter")
        assert list(table.columns) == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
        assert len(table) == len(frame) > 0
        # tokens are codes: they map back to the split's rows and, through the vocabularies,
        # to the raw ids Split.save wrote
        assert table["user_id:token"].astype(int).tolist() == frame["user"].tolist()
        assert table["item_id:token"].astype(int).tolist() == frame["item"].tolist()
        raw = pd.read_csv(work / "split" / f"{part}.tsv", sep="\t", dtype=str)
        assert data.users.lookup(table["user_id:token"].astype(int).to_numpy()).tolist() == raw["user_id"].tolist()
        assert data.items.lookup(table["item_id:token"].astype(int).to_numpy()).tolist() == raw["item_id"].tolist()
        assert table["timestamp:float"].astype(int).tolist() == frame["timestamp"].tolist()


def test_recbole_sequences_follow_time_order(exported: tuple[Path, Dataset, Split]) -> None:
    work, _, split = exported
    train = read_inter(work / "recbole" / "seq" / "seq.train.inter")
    assert list(train.columns) == ["user_id:token", "item_id_list:token_seq", "item_id:token"]
    per_user = split.train.groupby("user").size()
    assert len(train) == int((per_user - 1).sum())
    user = int(per_user.idxmax())
    events = split.train[split.train["user"] == user].sort_values("timestamp", kind="stable")["item"].tolist()
    rows = train[train["user_id:token"] == str(user)]
    assert rows["item_id:token"].astype(int).tolist() == events[1:]
    last = rows.iloc[-1]["item_id_list:token_seq"].split(" ")
    assert [int(t) for t in last] == events[:-1][-export.SEQ_LEN:]
    # test rows: history = train + valid; rows without any history are left out
    test = read_inter(work / "recbole" / "seq" / "seq.test.inter")
    known = set(split.train["user"]) | set(split.valid["user"])
    assert len(test) == int(split.test["user"].isin(known).sum())
    history = np.load(work / "recbole" / "history.npz")
    assert history["indptr"][-1] == len(split.train) + len(split.valid)


def test_matrices_and_features(exported: tuple[Path, Dataset, Split]) -> None:
    work, data, split = exported
    for part, frame in split.parts().items():
        m = sp.load_npz(work / f"{part}.npz")
        assert m.shape == (data.n_users, data.n_items)
        assert m.nnz == len(frame[["user", "item"]].drop_duplicates())
    users = sp.load_npz(work / "user_features.npz")
    items = sp.load_npz(work / "item_features.npz")
    assert users.shape[0] == data.n_users and items.shape[0] == data.n_items
    assert users.shape[1] > 0 and items.shape[1] > 0


def tiny() -> tuple[Dataset, Split]:
    """2 users, 6 items. u0: train {0}, valid {5}, test {2, 3}; u1: train {1}, test {4}."""
    frame = pd.DataFrame({"user": [0, 1, 0, 0, 0, 1], "item": [0, 1, 5, 2, 3, 4],
                          "weight": np.ones(6, np.float32)})
    data = Dataset("tiny", Vocabulary(["a", "b"]), Vocabulary([f"i{k}" for k in range(6)]), frame)
    parts = [frame.iloc[idx].reset_index(drop=True) for idx in ([0, 1], [2], [3, 4, 5])]
    return data, Split(*parts, "random", 0, (0.8, 0.1, 0.1))


NDCG_U0 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))  # hits at ranks 1 and 3 of 2 relevant


def test_lists_score_as_computed_by_hand() -> None:
    data, split = tiny()
    lists = np.array([[2, 4, 3, -1], [3, 2, 4, -1]])  # u1's only test item at rank 3
    out = run_peers.score_lists(lists, np.array([0, 1]), data, split)
    assert out["ndcg@10"] == pytest.approx((NDCG_U0 + 0.5) / 2, abs=1e-6)
    assert out["recall@10"] == pytest.approx(1.0)
    assert out["mrr@10"] == pytest.approx((1 + 1 / 3) / 2, abs=1e-6)
    assert out["n_users"] == 2


def test_lists_miss_and_excluded_items() -> None:
    data, split = tiny()
    # u0 lists its valid item 5 first: mgrec's test-time exclusion drops it, as the peers do
    # themselves; u1 misses, and a user without a list counts as a miss too
    out = run_peers.score_lists(np.array([[5, 2, 4, 3]]), np.array([0]), data, split)
    assert out["ndcg@10"] == pytest.approx(NDCG_U0 / 2, abs=1e-6)
    assert out["recall@10"] == pytest.approx(0.5)
    assert out["hit@10"] == pytest.approx(0.5)


def test_peer_side_ranking_and_ndcg_match_mgrec() -> None:
    data, split = tiny()
    parts = {p: to_csr(f, data.n_users, data.n_items) for p, f in split.parts().items()}
    scores = np.array([[9, 0, 8, 6, 7, 10], [0, 9, 1, 5, 2, 0]], dtype=np.float32)
    top = peer_common.top_items(scores, peer_common.test_exclusion(parts), 10)
    assert top.tolist() == [[2, 4, 3, 1, -1, -1], [3, 4, 2, 0, 5, -1]]  # ties: lower code first
    ndcg = peer_common.ndcg_at_k(top, parts["test"], np.array([0, 1]))
    mgrec = run_peers.score_lists(top, np.array([0, 1]), data, split)["ndcg@10"]
    assert ndcg == pytest.approx(mgrec, abs=1e-6)  # score_lists rounds to 6 decimals
    assert ndcg == pytest.approx((NDCG_U0 + 1 / math.log2(3)) / 2, abs=1e-9)


def test_peer_selection_and_marks() -> None:
    assert run_peers.parse_peers("implicit,recbole:ease") == [("recbole", "ease"), ("implicit", "als"),
                                                              ("implicit", "bpr")]
    with pytest.raises(SystemExit, match="unknown peer"):
        run_peers.parse_peers("recbole:nope")
    assert run_peers.parse_caps("recbole:sasrec=2") == {("recbole", "sasrec"): 2}

    def row(lib: str, model: str, ndcg: float, epoch: float) -> dict:
        return {"library": lib, "model": model, "metrics": {"ndcg@10": ndcg, "recall@10": 0.1},
                "epoch_seconds": epoch, "epochs": 3, "total_seconds": 9.0, "peak_rss_mb": 100.0}

    lines = run_peers.split_table([row("recbole", "lightgcn", 0.30, 1.0), row("mgrec", "mgr", 0.32, 4.0),
                                   row("recbole", "ease", 0.33, 2.0)])
    mgr, gcn, ease = lines[2], lines[3], lines[4]
    assert "| mgrec | mgr |" in mgr and "3x LightGCN" in mgr
    assert "| 4.00 | 1.07 |" in gcn and "not ahead" not in gcn
    assert "| 2.00 | 0.97 |" in ease and "mgr not ahead" in ease
