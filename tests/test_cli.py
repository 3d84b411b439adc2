"""The command line end to end, in-process, on a folder dataset the test writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mgrec.cli import main

INFO_KEYS = {"users", "items", "interactions", "social_links", "user_features", "item_features",
             "first_timestamp", "last_timestamp"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """60 users x 40 items in 4 taste groups, with features, friends and timestamps."""
    root = tmp_path_factory.mktemp("mydata")
    rng = np.random.default_rng(7)
    rows = ["user_id,item_id,timestamp,weight"]
    t = 1_600_000_000
    for u in range(60):
        group = u % 4
        items = rng.choice(np.arange(group * 10, group * 10 + 10), size=7, replace=False)
        extra = rng.choice(40, size=2, replace=False)
        for i in [*items, *extra]:
            t += int(rng.integers(60, 3600))
            rows.append(f"u{u},i{i},{t},1")
    (root / "interactions.csv").write_text("\n".join(rows) + "\n")
    users = ["user_id,age,occupation"] + [f"u{u},{20 + u % 30},job{u % 4}" for u in range(60)]
    (root / "users.csv").write_text("\n".join(users) + "\n")
    items = ["item_id,genres,price"] + [f"i{i},g{i // 10}|g{(i // 10 + 1) % 4},{i * 1.5}" for i in range(40)]
    (root / "items.csv").write_text("\n".join(items) + "\n")
    social = ["user_id,friend_id"] + [f"u{u},u{(u + 4) % 60}" for u in range(60)]
    (root / "social.csv").write_text("\n".join(social) + "\n")
    return root


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_data_info_contract(folder, capsys):
    assert main(["data", "info", f"folder:{folder}", "--json"]) == 0
    info = _json(capsys)
    assert INFO_KEYS <= set(info)
    assert info["users"] == 60 and info["items"] == 40 and info["interactions"] == 540
    assert info["social_links"] == 60
    assert info["user_features"] == ["age", "occupation"] and info["item_features"] == ["genres", "price"]
    assert info["first_timestamp"] < info["last_timestamp"]


def test_train_evaluate_recommend(folder, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["train", "--dataset", f"folder:{folder}", "--model", "itemknn", "--split", "random",
                 "--out", str(out), "--config", '{"k": 20}']) == 0
    capsys.readouterr()
    for name in ("run.json", "users.json", "items.json", "model/model.json",
                 "model/weights.safetensors", "split/split.json", "split/test.tsv"):
        assert (out / name).is_file(), name
    assert main(["evaluate", "--model-dir", str(out), "--json"]) == 0
    metrics = _json(capsys)
    for key in ("ndcg@10", "recall@10", "precision@10", "f1@10", "map@10", "mrr@10", "hit@10"):
        assert 0.0 <= metrics[key] <= 1.0
    # the planted groups make item-item neighbours far better than chance (~7/40 hit rate)
    assert metrics["hit@10"] > 0.5
    assert main(["recommend", "--model-dir", str(out), "--user", "u3", "--k", "5", "--json"]) == 0
    rec = _json(capsys)
    assert rec["user_id"] == "u3" and len(rec["items"]) == 5
    scores = [r["score"] for r in rec["items"]]
    assert scores == sorted(scores, reverse=True)
    train = (out / "split" / "train.tsv").read_text().splitlines()[1:]
    seen = {line.split("\t")[1] for line in train if line.split("\t")[0] == "u3"}
    assert not seen & {r["item_id"] for r in rec["items"]}


def test_same_seed_same_metrics(folder, tmp_path, capsys):
    results = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert main(["train", "--dataset", f"folder:{folder}", "--model", "bprmf", "--seed", "3",
                     "--out", str(out), "--config", '{"epochs": 5, "eval_every": 5}']) == 0
        assert main(["evaluate", "--model-dir", str(out), "--json"]) == 0
        capsys.readouterr()  # drop the train line
        assert main(["evaluate", "--model-dir", str(out), "--json"]) == 0
        results.append(_json(capsys))
    assert results[0] == results[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "info", "no-such-set"], "unknown dataset 'no-such-set'"),
        (["data", "info", "folder:/nonexistent/dir"], "/nonexistent/dir"),
        (["evaluate", "--model-dir", "/nonexistent/model"], "model folder not found"),
        (["train", "--dataset", "synthetic", "--model", "nope", "--out", "/tmp/x"], "unknown model 'nope'"),
    ],
)
def test_errors_print_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mgrec: error: ") and message in err
    assert len(err.splitlines()) == 1


def test_unknown_user_and_bad_config(folder, tmp_path, capsys):
    out = tmp_path / "pop"
    assert main(["train", "--dataset", f"folder:{folder}", "--model", "pop", "--out", str(out)]) == 0
    assert main(["recommend", "--model-dir", str(out), "--user", "nobody"]) == 2
    assert "unknown user 'nobody'" in capsys.readouterr().err
    assert main(["train", "--dataset", f"folder:{folder}", "--model", "ease", "--out", str(tmp_path / "e"),
                 "--config", '{"regg": 1}']) == 2
    assert "unknown key 'regg'" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_failed_train_keeps_existing_model(folder, tmp_path, capsys):
    out = tmp_path / "keep"
    assert main(["train", "--dataset", f"folder:{folder}", "--model", "pop", "--out", str(out)]) == 0
    before = (out / "model" / "weights.safetensors").read_bytes()
    assert main(["train", "--dataset", f"folder:{folder}", "--model", "ease", "--out", str(out),
                 "--config", '{"reg": "x"}']) == 2
    assert (out / "model" / "weights.safetensors").read_bytes() == before


def test_benchmark_writes_rows_and_table(folder, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--datasets", f"folder:{folder}", "--models", "pop,ease", "--split", "random",
                 "--seeds", "2", "--out", str(out), "--tune-budget", "2"]) == 0
    rows = json.loads(out.read_text())
    assert [(r["model"], r["seed"]) for r in rows] == [("pop", 0), ("pop", 1), ("ease", 0), ("ease", 1)]
    for row in rows:
        assert {"dataset", "split", "model", "seed", "metrics", "train_seconds", "eval_seconds",
                "peak_rss_mb"} <= set(row)
        assert {"ndcg@10", "recall@10", "precision@10", "f1@10", "map@10", "mrr@10", "hit@10"} <= set(row["metrics"])
        assert row["peak_rss_mb"] > 50
    # seed 1 reuses the config tuned on seed 0's validation split
    assert rows[3]["model_config"] == rows[2]["model_config"]
    lines = [ln for ln in out.with_suffix(".md").read_text().splitlines() if ln.startswith("| folder:")]
    assert [ln.split(" | ")[2] for ln in lines] == ["pop", "ease"]
    ndcg = [r["metrics"]["ndcg@10"] for r in rows[2:]]
    mean, std = np.mean(ndcg), np.std(ndcg, ddof=1)
    assert f"| {mean:.4f} ± {std:.4f} |" in lines[1]


def test_benchmark_runs_the_listed_seeds(folder, tmp_path, capsys):
    out = tmp_path / "some.json"
    assert main(["benchmark", "--datasets", f"folder:{folder}", "--models", "pop", "--split", "random",
                 "--seeds", "2,1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["model"], r["seed"]) for r in rows] == [("pop", 2), ("pop", 1)]
    again = tmp_path / "all.json"
    assert main(["benchmark", "--datasets", f"folder:{folder}", "--models", "pop", "--split", "random",
                 "--seeds", "3", "--out", str(again)]) == 0
    by_seed = {r["seed"]: r["metrics"] for r in json.loads(again.read_text())}
    assert all(by_seed[r["seed"]] == r["metrics"] for r in rows)  # a seed's row does not depend on the others


@pytest.mark.parametrize("seeds", ["0", "-1", "1,1", "1,-2", "a", "1,b"])
def test_benchmark_rejects_bad_seeds(folder, tmp_path, seeds, capsys):
    with pytest.raises(SystemExit) as err:
        main(["benchmark", "--datasets", f"folder:{folder}", "--models", "pop", "--seeds", seeds,
              "--out", str(tmp_path / "x.json")])
    assert err.value.code == 2
    assert "--seeds" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_markdown_table_mean_and_std():
    from mgrec.benchmark import TABLE_METRICS, markdown_table

    rows = [{"dataset": "d", "split": "random", "model": "ease", "seed": s,
             "metrics": dict.fromkeys(TABLE_METRICS, v), "train_seconds": 1.0 + s,
             "eval_seconds": 0.5, "peak_rss_mb": 300.0 + s} for s, v in enumerate((0.1, 0.2))]
    line = markdown_table(rows).splitlines()[-1]
    # mean 0.15, sample std sqrt(((0.05)^2 * 2) / 1) = 0.0707
    assert line.startswith("| d | random | ease | 2 | 0.1500 ± 0.0707 |")
    assert line.endswith("| 1.50 | 0.50 | 301 |")


@pytest.mark.realdata
def test_data_info_real(real_data, capsys):
    root = real_data("lastfm-2k").parent
    assert main(["data", "info", "lastfm-2k", "--data-root", str(root), "--json"]) == 0
    info = _json(capsys)
    assert (info["users"], info["items"], info["interactions"], info["social_links"]) == (1892, 17632, 92834, 12717)
    assert "tags" in info["item_features"] and info["first_timestamp"] is None
    assert main(["data", "info", "ml-100k", "--data-root", str(root), "--json"]) == 0
    info = _json(capsys)
    assert (info["users"], info["items"], info["interactions"]) == (943, 1682, 100000)
    assert info["user_features"] == ["age", "gender", "occupation", "zip"]


BAD_INPUTS = [
    # (files to write, expected fragments of the one-line error)
    ({}, ["interactions"]),
    ({"interactions.csv": "user_id,item_id,timestamp\nu1,i1,10\nu2,i2\n"},
     ["interactions.csv", "line 3", "expected 3 fields, found 2"]),
    ({"interactions.csv": "user_id,item_id,weight\nu1,i1,1\nu2,i2,lots\n"},
     ["interactions.csv", "line 3", "field 'weight'"]),
    ({"interactions.csv": "user_id,item_id,timestamp\nu1,i1,10\nu2,i2,nan\n"},
     ["interactions.csv", "line 3", "field 'timestamp'"]),
    ({"interactions.csv": "user_id,item_id\nu1,i1\n", "social.csv": "user_id,friend_id\nu1,ghost\n"},
     ["social.csv", "line 2", "field 'friend_id'", "unknown user 'ghost'"]),
]


@pytest.mark.parametrize("files, fragments", BAD_INPUTS)
def test_bad_folder_input_gives_one_line(files, fragments, tmp_path, capsys):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert main(["data", "info", f"folder:{tmp_path}", "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_empty_after_filtering_is_one_line(folder, tmp_path, capsys):
    assert main(["train", "--dataset", f"folder:{folder}", "--model", "pop", "--kcore", "500",
                 "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert "empty after filtering" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_benchmark_ablation_and_fusion_rows(folder, tmp_path):
    out = tmp_path / "ablate.json"
    config = json.dumps({"mgr": {"dim": 8, "epochs": 1, "max_len": 5, "batch_size": 128}})
    assert main(["benchmark", "--datasets", f"folder:{folder}", "--models", "mgr", "--seeds", "1",
                 "--no-tune", "--ablation", "--fusions", "weighted,deep", "--config", config,
                 "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    names = [r["model"] for r in rows]
    # the folder has user and item features, behaviour, friends and timestamps
    assert names == ["mgr", "mgr-weighted", "mgr-deep", "mgr-no-user", "mgr-no-item", "mgr-no-behavior",
                     "mgr-no-social", "mgr-no-time"]
    by_name = {r["model"]: r for r in rows}
    assert by_name["mgr-deep"]["model_config"]["fusion"] == "deep"
    assert "social" not in by_name["mgr-no-social"]["model_config"]["granularities"]
    assert set(by_name["mgr-no-time"]["model_config"]["granularities"]) == {"user", "item", "behavior", "social"}


@pytest.mark.parametrize(("config", "message"), [
    ('{"behavior_mode": "set"}', "config given for 'behavior_mode', which is not a model of this run (pop)"),
    ('{"ease": {"reg": 10}}', "config given for 'ease'"),
    ('{"pop": 3}', "the config of 'pop' must be a JSON object"),
])
def test_benchmark_rejects_configs_not_keyed_by_its_models(folder, tmp_path, capsys, config, message):
    """A setting given at the top level (not under a model name) was silently ignored."""
    assert main(["benchmark", "--datasets", f"folder:{folder}", "--models", "pop", "--config", config,
                 "--out", str(tmp_path / "x.json")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_benchmark_rejects_unknown_fusion(folder, tmp_path, capsys):
    assert main(["benchmark", "--datasets", f"folder:{folder}", "--models", "pop", "--fusions", "sum",
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "unknown fusion 'sum'" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["benchmark", "--models", "pop"], ["coldstart"]])
def test_long_runs_reject_an_unwritable_out_before_starting(folder, tmp_path, capsys, command):
    args = [command[0], "--datasets", f"folder:{folder}", *command[1:]]
    assert main([*args, "--out", str(tmp_path)]) == 2  # a folder, not the JSON file to write
    assert "is a folder" in capsys.readouterr().err
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main([*args, "--out", str(blocker / "rows.json")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # nothing ran, nothing written


def test_export_onnx_rejects_a_folder_as_out(tmp_path, capsys):
    assert main(["export-onnx", "--model-dir", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def _child_peak(queue) -> None:
    from mgrec.benchmark import peak_rss_mb

    queue.put(peak_rss_mb())


def test_peak_rss_of_a_spawned_run_is_its_own_not_its_parents():
    import multiprocessing as mp

    import numpy as np

    from mgrec.benchmark import peak_rss_mb

    ballast = np.ones(2**28 // 8 * 4)  # 1 GiB touched in this (the parent) process
    parent = peak_rss_mb()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_peak, args=(queue,))
    proc.start()
    child = queue.get(timeout=120)
    proc.join()
    del ballast
    assert parent >= 1024
    assert 10 < child < parent - 512, (child, parent)


def test_seed_argument_forms():
    from mgrec.cli import _seed_arg

    assert _seed_arg("3") == [0, 1, 2]
    assert _seed_arg("1,2") == [1, 2]
    assert _seed_arg("2,") == [2]  # one seed
