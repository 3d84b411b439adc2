"""``mgrec export-onnx`` and ``mgrec serve`` argument errors, through the command line."""

from __future__ import annotations

import json

import pytest
from serving_helpers import train_model_dir

from mgrec.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_model_dir(tmp_path_factory.mktemp("cli") / "m", epochs=1)


def test_export_onnx_writes_a_graph_that_agrees_with_torch(model_dir, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export-onnx", "--model-dir", str(model_dir), "--out", str(out), "--check-users", "32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert out.stat().st_size > 0 and report["onnx"] == str(out)
    check = report["check"]
    assert check["users"] == 32 and check["top_k_agreement"] == 1.0 and check["max_abs_score_diff"] < 1e-4


def test_export_onnx_and_serve_errors(model_dir, tmp_path, capsys):
    assert main(["export-onnx", "--model-dir", str(tmp_path / "none"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "model folder not found" in capsys.readouterr().err
    assert main(["export-onnx", "--model-dir", str(model_dir), "--out", str(tmp_path / "x.onnx"), "--k", "0"]) == 2
    assert not (tmp_path / "x.onnx").exists()
    assert main(["serve", "--model-dir", str(model_dir), "--threads", "0", "--no-auth",
                 "--store", f"sqlite:///{tmp_path / 'e.db'}"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err
    assert main(["serve", "--model-dir", str(model_dir), "--no-auth", "--store", "mysql://x/y"]) == 2
    assert "mysql" in capsys.readouterr().err
