"""The cold-start benchmark (:mod:`mgrec.coldstart`) on small synthetic data."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from worlds import small_world

from mgrec.cli import main
from mgrec.coldstart import TABLE_METRICS, check_frac, cold_users, draw_held_out, new_items, run_coldstart
from mgrec.data.split import make_split
from mgrec.data.synthetic import make_synthetic
from mgrec.errors import ConfigError

SMALL = {"dim": 16, "max_len": 10, "max_friends": 5, "friend_len": 3, "batch_size": 256, "lr": 3e-3,
         "threads": 1}
#: enough epochs for mgr to learn tastes from profiles, friends and content (about 4 s a fit)
TRAINED = {**SMALL, "epochs": 30}


@pytest.fixture(scope="module")
def data():
    return make_synthetic(small_world(n_users=300, n_items=200, mean_events=15), seed=0)


@pytest.fixture(scope="module", params=[0, 1])
def runs(request, data):
    """Both protocols, fitted once per seed."""
    seed = request.param
    split = make_split(data, "random", seed=seed)
    return (split, cold_users(data, split, seed=seed, frac=0.2, model_config=TRAINED),
            new_items(data, split, seed=seed, frac=0.2, model_config=TRAINED))


def _metrics(rows, protocol, model):
    (row,) = [r for r in rows if r["protocol"] == protocol and r["model"] == model]
    return row["metrics"]


def test_rows_hold_finite_metrics(runs, data):
    split, cold, new = runs
    rows = cold.rows + new.rows
    assert {(r["protocol"], r["model"]) for r in rows} == {
        ("cold_users", "mgr"), ("cold_users", "pop"), ("cold_users_3_items", "mgr"),
        ("cold_users_3_items", "pop"), ("new_items", "mgr"), ("new_items", "random")}
    for row in rows:
        assert set(row["metrics"]) == set(TABLE_METRICS)
        assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in row["metrics"].values())
        assert row["n_users"] > 0 and row["dataset"] == "synthetic"
    n_users, n_items = split.train["user"].nunique(), data.interactions["item"].nunique()
    assert all(r["n_users_held_out"] == len(cold.held_out) == round(0.2 * n_users) for r in cold.rows)
    assert all(r["n_items_held_out"] == len(new.held_out) == round(0.2 * n_items) for r in new.rows)
    json.dumps(rows)  # JSON-ready


def test_mgr_beats_pop_and_random(runs):
    _, cold, new = runs
    for protocol in ("cold_users", "cold_users_3_items"):
        assert _metrics(cold.rows, protocol, "mgr")["ndcg@10"] > _metrics(cold.rows, protocol, "pop")["ndcg@10"]
    assert _metrics(cold.rows, "cold_users", "mgr")["ndcg@10"] > _metrics(cold.rows, "cold_users", "pop")["ndcg@10"] + 0.05
    assert _metrics(new.rows, "new_items", "mgr")["ndcg@10"] > _metrics(new.rows, "new_items", "random")["ndcg@10"] + 0.1


def test_held_out_data_never_reaches_the_model(runs, data):
    split, cold, new = runs
    counts = np.diff(cold.model.context_.indptr)
    assert (counts[cold.held_out] == 0).all() and counts.sum() == len(cold.train)
    assert not np.isin(cold.train["user"], cold.held_out).any()
    assert len(cold.train) == int((~np.isin(split.train["user"], cold.held_out)).sum())
    # new items are not even in the model's catalogue; its training rows are the rest of train
    assert new.model.n_items_ == data.n_items - len(new.held_out)
    assert set(data.items.lookup(new.held_out)).isdisjoint(new.model.item_ids_)
    assert len(new.train) == int((~np.isin(split.train["item"], new.held_out)).sum())
    assert np.diff(new.model.context_.indptr).sum() == len(new.train)


def test_bad_frac_and_missing_item_features(data, tmp_path):
    for bad in (0, -0.1, 0.6, "x"):
        with pytest.raises(ConfigError, match="frac"):
            check_frac(bad)
    with pytest.raises(ConfigError, match="frac"):
        run_coldstart(["synthetic"], seeds=1, out=tmp_path / "c.json", frac=0.9)
    with pytest.raises(ConfigError, match="seeds"):
        run_coldstart(["synthetic"], seeds=0, out=tmp_path / "c.json")
    draw = draw_held_out(np.arange(10), 0.5, np.random.default_rng(0))
    assert len(draw) == 5 and (np.diff(draw) > 0).all()
    plain = dataclasses.replace(data, item_features=None)
    with pytest.raises(ConfigError, match="'synthetic' has no item features"):
        new_items(plain, make_split(plain, "random", seed=0), seed=0, model_config=SMALL)


def _folder(root: Path, *, items: bool = True) -> Path:
    """40 users x 30 items in 3 taste groups, with profiles, friends, times and item genres."""
    rng = np.random.default_rng(3)
    rows, t = ["user_id,item_id,timestamp,weight"], 1_600_000_000
    for u in range(40):
        for i in rng.choice(np.arange(u % 3 * 10, u % 3 * 10 + 10), size=7, replace=False):
            t += int(rng.integers(60, 3600))
            rows.append(f"u{u},i{i},{t},1")
    root.mkdir()
    (root / "interactions.csv").write_text("\n".join(rows) + "\n")
    (root / "users.csv").write_text("\n".join(["user_id,job"] + [f"u{u},job{u % 3}" for u in range(40)]) + "\n")
    (root / "social.csv").write_text("\n".join(["user_id,friend_id"] + [f"u{u},u{(u + 3) % 40}" for u in range(40)]))
    if items:
        (root / "items.csv").write_text("\n".join(["item_id,genre"] + [f"i{i},g{i // 10}" for i in range(30)]) + "\n")
    return root


def test_cli_writes_json_and_markdown(tmp_path, capsys):
    name = f"folder:{_folder(tmp_path / 'data')}"
    out = tmp_path / "bench" / "cold.json"
    config = json.dumps({**SMALL, "epochs": 2})
    assert main(["coldstart", "--datasets", name, "--seeds", "2", "--out", str(out), "--frac", "0.2",
                 "--config", config]) == 0
    assert "wrote" in capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert len(rows) == 2 * 6 and {r["seed"] for r in rows} == {0, 1}
    assert all(r["dataset"] == name for r in rows)
    table = out.with_suffix(".md").read_text()
    assert table.startswith("<!-- cold start, frac 0.2") and "| new_items | random | 2 |" in table
    assert table.count("\n") == 3 + 6  # comment, header, rule, one line per (protocol, model)


@pytest.mark.parametrize("flags", [["--frac", "0.9"], ["--seeds", "0"], ["--config", '{"dimm": 3}']])
def test_cli_bad_flags_print_one_error_line(tmp_path, capsys, flags):
    name = f"folder:{_folder(tmp_path / 'data')}"
    assert main(["coldstart", "--datasets", name, "--out", str(tmp_path / "c.json"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mgrec: error: ") and "\n" not in err
    assert not (tmp_path / "c.json").exists()


def test_cli_dataset_without_item_features(tmp_path, capsys):
    name = f"folder:{_folder(tmp_path / 'data', items=False)}"
    assert main(["coldstart", "--datasets", name, "--out", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mgrec: error: ") and name in err and "no item features" in err
