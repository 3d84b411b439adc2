"""Losses against hand-computed values; the shared early-stopping loop."""

from __future__ import annotations

import math

import pytest
import torch

from mgrec import losses
from mgrec.errors import ConfigError
from mgrec.losses import bpr_loss, dot_softmax_loss, sampled_softmax_loss, softmax_loss
from mgrec.training import EarlyStopping, fit_epochs


def test_bpr_loss_hand_values():
    # -log sigmoid(2 - 0) = log(1 + e^-2) = 0.126928; -log sigmoid(0 - 1) = log(1 + e) = 1.313262
    got = bpr_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert float(got) == pytest.approx((0.126928 + 1.313262) / 2, abs=1e-5)
    # (B, M) negatives: row 0 compares 2 with 0 and 2
    two = bpr_loss(torch.tensor([2.0]), torch.tensor([[0.0, 2.0]]))
    assert float(two) == pytest.approx((0.126928 + math.log(2)) / 2, abs=1e-5)
    masked = bpr_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]), mask=torch.tensor([True, False]))
    assert float(masked) == pytest.approx(0.126928, abs=1e-5)


def test_softmax_loss_hand_values():
    # logits [1, 2, 3], target 0: logsumexp = 3.407606; loss = 3.407606 - 1 = 2.407606
    got = softmax_loss(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([0]))
    assert float(got) == pytest.approx(2.407606, abs=1e-5)


def test_dot_softmax_hand_values():
    # p = [1], q = [[1], [2], [3]]: logits [1, 2, 3]; target 0 -> 2.407606, target 2 -> 0.407606
    p, q = torch.tensor([[1.0], [1.0]], requires_grad=True), torch.tensor([[1.0], [2.0], [3.0]], requires_grad=True)
    got = dot_softmax_loss(p, q, torch.tensor([0, 2]))
    assert got.item() == pytest.approx((2.407606 + 0.407606) / 2, abs=1e-5)
    got.backward()
    # d/dp_b = (softmax - onehot) @ q; softmax = [0.090031, 0.244728, 0.665241], E[q] = 2.575210
    assert p.grad[:, 0].tolist() == pytest.approx([(2.575210 - 1) / 2, (2.575210 - 3) / 2], abs=1e-5)
    # d/dq_v = sum_b (softmax_bv - onehot_bv) p_b / B
    assert q.grad[:, 0].tolist() == pytest.approx([(2 * 0.090031 - 1) / 2, 0.244728, (2 * 0.665241 - 1) / 2], abs=1e-5)


@pytest.mark.parametrize("block", [1 << 19, 7])  # one block; blocks of one row (7 logits, 5 items)
def test_dot_softmax_equals_softmax_loss_in_value_and_gradients(monkeypatch, block):
    monkeypatch.setattr(losses, "BLOCK_ENTRIES", block)
    g = torch.Generator().manual_seed(0)
    p0, q0 = torch.randn(9, 4, generator=g), torch.randn(5, 4, generator=g)
    q0[3] *= 40.0  # item 3 dominates some rows: their targets' softmax underflows (logsumexp path)
    target = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3])
    grads = []
    for fn in (lambda p, q: softmax_loss(p @ q.T, target), lambda p, q: dot_softmax_loss(p, q, target)):
        p, q = p0.clone().requires_grad_(), q0.clone().requires_grad_()
        loss = fn(p, q)
        (2.5 * loss).backward()  # a non-unit upstream gradient is scaled through
        grads.append((loss.item(), p.grad, q.grad))
    assert math.isfinite(grads[1][0])
    assert grads[1][0] == pytest.approx(grads[0][0], rel=1e-5)
    assert torch.allclose(grads[1][1], grads[0][1], atol=1e-5)
    assert torch.allclose(grads[1][2], grads[0][2], atol=1e-5)


def test_dot_softmax_in_bfloat16_hand_values():
    # the hand example's inputs are exact in bfloat16, so the logits and the loss are exact;
    # the gradient products read the softmax rounded to bfloat16 (8 significant bits: 0.4%)
    p = torch.tensor([[1.0], [1.0]], requires_grad=True)
    q = torch.tensor([[1.0], [2.0], [3.0]], requires_grad=True)
    got = dot_softmax_loss(p, q, torch.tensor([0, 2]), matmul_dtype=torch.bfloat16)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx((2.407606 + 0.407606) / 2, abs=1e-5)
    got.backward()
    assert p.grad.dtype == q.grad.dtype == torch.float32
    assert p.grad[:, 0].tolist() == pytest.approx([(2.575210 - 1) / 2, (2.575210 - 3) / 2], abs=1e-2)
    assert q.grad[:, 0].tolist() == pytest.approx([(2 * 0.090031 - 1) / 2, 0.244728, (2 * 0.665241 - 1) / 2],
                                                  abs=1e-2)


@pytest.mark.parametrize("block", [1 << 19, 40])  # one block; blocks of 2 rows (20 items)
def test_dot_softmax_in_bfloat16_is_close_to_float32(monkeypatch, block):
    monkeypatch.setattr(losses, "BLOCK_ENTRIES", block)
    g = torch.Generator().manual_seed(3)
    p0, q0 = torch.randn(33, 16, generator=g), 0.5 * torch.randn(20, 16, generator=g)
    target = torch.randint(0, 20, (33,), generator=g)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        p, q = p0.clone().requires_grad_(), q0.clone().requires_grad_()
        loss = dot_softmax_loss(p, q, target, matmul_dtype=dtype)
        loss.backward()
        out[dtype] = (loss.item(), p.grad, q.grad)
    full, low = out[torch.float32], out[torch.bfloat16]
    assert low[0] == pytest.approx(full[0], rel=2e-2)
    for a, b in zip(full[1:], low[1:], strict=True):
        assert float((a - b).norm() / a.norm()) < 2e-2
    assert not torch.equal(full[1], low[1])  # it did run in bfloat16


def test_dot_softmax_rejects_other_matmul_dtypes():
    p, q = torch.randn(2, 3, requires_grad=True), torch.randn(4, 3)
    with pytest.raises(ValueError, match="matmul_dtype must be torch.float32 or torch.bfloat16"):
        dot_softmax_loss(p, q, torch.tensor([0, 1]), matmul_dtype=torch.float16)


def test_dot_softmax_without_autograd_is_softmax_loss():
    p, q, target = torch.randn(3, 2), torch.randn(4, 2), torch.tensor([0, 1, 3])
    with torch.no_grad():
        assert float(dot_softmax_loss(p, q, target)) == pytest.approx(float(softmax_loss(p @ q.T, target)))


def test_sampled_softmax_equals_full_softmax_over_the_same_items():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    got = sampled_softmax_loss(logits[:, 0], logits[:, 1:])
    assert float(got) == pytest.approx(2.407606, abs=1e-5)


def test_sampled_softmax_logq_and_accidental_hits():
    # log q: positive 0, negatives [log 2, 0] -> corrected logits [1, 2 - log 2, 3]
    pos, neg = torch.tensor([1.0]), torch.tensor([[2.0, 3.0]])
    got = sampled_softmax_loss(pos, neg, pos_log_q=torch.tensor([0.0]),
                               neg_log_q=torch.tensor([math.log(2.0), 0.0]))
    expected = math.log(math.e ** 1 + math.e ** 2 / 2 + math.e ** 3) - 1.0
    assert float(got) == pytest.approx(expected, abs=1e-5)
    # the second negative is an accidental hit: only [1, 2] remain -> log(e + e^2) - 1 = 1.313262
    hit = sampled_softmax_loss(pos, neg, accidental=torch.tensor([[False, True]]))
    assert float(hit) == pytest.approx(1.313262, abs=1e-5)
    # shared (M,) negatives broadcast over the batch
    shared = sampled_softmax_loss(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 3.0]))
    assert float(shared) == pytest.approx(2.407606, abs=1e-5)


def test_fit_epochs_restores_best_and_stops_on_patience():
    state = {"w": 0}
    scores = iter([0.1, 0.5, 0.4, 0.3, 0.2, 0.9])

    def run_epoch(epoch: int) -> float:
        state["w"] = epoch
        return 1.0 / epoch

    hist = fit_epochs(run_epoch, stopping=EarlyStopping(epochs=10, patience=3), validate=lambda: next(scores),
                      snapshot=lambda: dict(state), restore=lambda s: state.update(s))
    assert [e["epoch"] for e in hist.epochs] == [1, 2, 3, 4, 5]  # 3 evaluations without a new best
    assert hist.best_epoch == 2 and hist.best_valid == 0.5 and state["w"] == 2


def test_fit_epochs_without_validation_runs_all_epochs_and_eval_every():
    calls = []
    hist = fit_epochs(lambda e: 0.0, stopping=EarlyStopping(epochs=5, eval_every=2), validate=lambda: calls.append(1) or 0.0,
                      snapshot=dict, restore=lambda s: None)
    assert len(calls) == 3  # epochs 2, 4 and the last
    hist = fit_epochs(lambda e: 0.0, stopping=EarlyStopping(epochs=4), validate=None, snapshot=dict,
                      restore=lambda s: None)
    assert hist.best_epoch == 4 and math.isnan(hist.best_valid)
    with pytest.raises(ConfigError, match="patience must be at least 1"):
        EarlyStopping(patience=0)


def test_valid_curve_replays_the_trainers_stopping_rule():
    """bench/valid_curve.py says where a patience would have stopped a recorded curve; it must
    stop where fit_epochs does on the same scores (a tie is no new best)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "valid_curve.py"
    spec = importlib.util.spec_from_file_location("valid_curve", path)
    assert spec is not None and spec.loader is not None
    valid_curve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(valid_curve)
    curve = [0.10, 0.30, 0.25, 0.30, 0.20, 0.35, 0.31, 0.32, 0.33, 0.34, 0.40, 0.1]
    for patience in (1, 2, 3, 4, 6):
        scores = iter(curve)
        hist = fit_epochs(lambda e: 0.0, stopping=EarlyStopping(epochs=len(curve), patience=patience),
                          validate=lambda: next(scores), snapshot=dict, restore=lambda s: None)
        assert valid_curve.stop_epoch(curve, patience) == (hist.best_epoch, len(hist.epochs))
    # by hand: patience 2 stops at epoch 4 (best 2; the tie at 4 is no new best), 4 at epoch 10
    # (best 6), and 6 reaches the later best (11) and the end of the curve
    assert valid_curve.stop_epoch(curve, 2) == (2, 4)
    assert valid_curve.stop_epoch(curve, 4) == (6, 10)
    assert valid_curve.stop_epoch(curve, 6) == (11, 12)


_ALLOC_PROBE = (
    "import ctypes, sys; from mgrec.allocator import tune_malloc, MMAP_THRESHOLD; "
    "ok = tune_malloc(); assert tune_malloc() is ok; print(ok)"
)


@pytest.mark.parametrize("setting, expected", [("1", "True"), ("0", "False")])
def test_tune_malloc_follows_the_switch(setting: str, expected: str) -> None:
    import os
    import platform
    import subprocess
    import sys

    if setting == "1" and not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        pytest.skip("mallopt tuning needs glibc")
    env = {**os.environ, "MGREC_MALLOC_TUNING": setting}
    out = subprocess.run([sys.executable, "-c", _ALLOC_PROBE], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_tune_malloc_keeps_big_blocks_on_the_heap() -> None:
    """Tuned, a freed 64 MiB tensor stays in the process for the next step to reuse; with
    glibc's defaults (blocks above 32 MiB are always mmapped) it is unmapped on free."""
    import os
    import platform
    import subprocess
    import sys

    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        pytest.skip("mallopt tuning needs glibc")
    probe = (
        "import os, torch; from mgrec.allocator import tune_malloc; tune_malloc()\n"
        "def rss():\n"
        "    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') >> 20\n"
        "a = torch.ones(16 << 20); before = rss(); del a; print(before - rss())"
    )
    released = {}
    for setting in ("0", "1"):
        env = {**os.environ, "MGREC_MALLOC_TUNING": setting}
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        released[setting] = int(out.stdout.strip())  # MiB given back by the free
    assert released["0"] >= 60 and released["1"] <= 4, released
