"""Fusion layers (hand-computed values, masking) and score explanations of the network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mgrec.encoders import (
    ItemContentEncoder,
    ItemTower,
    TimeEncoder,
    UserEncoder,
    init_module,
    masked_softmax,
)
from mgrec.encoders.base import Batch
from mgrec.errors import ConfigError
from mgrec.fusion import FUSIONS, WeightedFusion, make_fusion
from mgrec.model import MGRNet

GRANS = ["user", "behavior", "time"]


def parts_and_present() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    parts = {k: torch.randn(4, 3, generator=g) for k in GRANS}
    # row 0: all present, row 1: only user, row 2: nothing, row 3: behavior + time
    present = {"user": torch.tensor([True, True, False, False]),
               "behavior": torch.tensor([True, False, False, True]),
               "time": torch.tensor([True, False, False, True])}
    return parts, present


def seeded(name: str, dim: int = 3) -> torch.nn.Module:
    return init_module(make_fusion(name, GRANS, dim), torch.Generator().manual_seed(0)).eval()


def test_masked_softmax_zeroes_masked_entries_and_empty_rows():
    logits = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    w = masked_softmax(logits, mask)
    e = np.exp([1.0, 3.0])
    np.testing.assert_allclose(w[0].detach().numpy(), [e[0] / e.sum(), 0.0, e[1] / e.sum()], rtol=1e-6)
    assert torch.all(w[1] == 0)
    (w * torch.arange(3.0)).sum().backward()
    assert torch.isfinite(logits.grad).all() and torch.all(logits.grad[1] == 0)


def test_weighted_fusion_hand_values():
    fusion = WeightedFusion(["user", "behavior"], 2)
    parts = {"user": torch.tensor([[1.0, 2.0], [1.0, 2.0]]), "behavior": torch.tensor([[3.0, 4.0], [3.0, 4.0]])}
    present = {"user": torch.tensor([True, True]), "behavior": torch.tensor([True, False])}
    with torch.no_grad():
        fusion.logits.copy_(torch.tensor([0.0, float(np.log(3.0))]))  # weights 1/4, 3/4
        p, w = fusion(parts, present)
    torch.testing.assert_close(w, torch.tensor([[0.25, 0.75], [1.0, 0.0]]))
    torch.testing.assert_close(p, torch.tensor([[2.5, 3.5], [1.0, 2.0]]))


def test_product_fusion_hand_values():
    fusion = FUSIONS["product"](["user", "behavior", "time"], 2)
    parts = {"user": torch.tensor([[1.0, 2.0]]), "behavior": torch.tensor([[3.0, 4.0]]),
             "time": torch.tensor([[5.0, 6.0]])}
    both = {"user": torch.tensor([True]), "behavior": torch.tensor([True]), "time": torch.tensor([False])}
    p, w = fusion(parts, both)
    assert w is None
    torch.testing.assert_close(p, torch.tensor([[1 + 3 + 1 * 3, 2 + 4 + 2 * 4]], dtype=torch.float32))
    p3, _ = fusion(parts, {k: torch.tensor([True]) for k in parts})
    # sum = (9, 12); pairwise products: 1*3+1*5+3*5 = 23, 2*4+2*6+4*6 = 44
    torch.testing.assert_close(p3, torch.tensor([[32.0, 56.0]]))


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_fusion_contract(name):
    fusion = seeded(name)
    parts, present = parts_and_present()
    p, w = fusion(parts, present)
    assert p.shape == (4, 3)
    assert torch.all(p[2] == 0)  # nothing present
    # an absent part's values never matter
    noisy = dict(parts, user=torch.where(present["user"][:, None], parts["user"], torch.full((4, 3), 7.0)))
    torch.testing.assert_close(fusion(noisy, present)[0], p, rtol=0, atol=0)
    # a granularity missing from ``parts`` counts as absent
    partial = {k: v for k, v in parts.items() if k != "time"}
    no_time = dict(present, time=torch.zeros(4, dtype=torch.bool))
    torch.testing.assert_close(fusion(partial, present)[0], fusion(parts, no_time)[0])
    if name in ("weighted", "gated"):
        mask = torch.stack([present[g] for g in GRANS], dim=1)
        assert w.shape == (4, 3) and torch.all(w[~mask] == 0)
        torch.testing.assert_close(w.sum(dim=1), mask.any(dim=1).float())
        torch.testing.assert_close(p, (w.unsqueeze(-1) * torch.stack([parts[g] for g in GRANS], 1)).sum(1))
        torch.testing.assert_close(p[1], parts["user"][1])  # one present part: weight 1
    else:
        assert w is None


def test_make_fusion_rejects_unknown_names_and_granularities():
    with pytest.raises(ConfigError, match="unknown fusion"):
        make_fusion("sum", GRANS, 3)
    with pytest.raises(ValueError, match="granularities"):
        make_fusion("gated", ["user", "mood"], 3)


# ----------------------------------------------------------------- explanations
N_USERS, N_ITEMS, D = 6, 9, 4


def tiny_net(fusion: str, bias_coordinate: bool = False) -> MGRNet:
    tower = ItemTower(N_ITEMS, D, cat_cardinalities=[2], n_numeric=1, n_bag_tokens=0)
    encs = {"user": UserEncoder(N_USERS, D, cat_cardinalities=[], n_numeric=0, n_bag_tokens=0),
            "item": ItemContentEncoder(tower, D), "time": TimeEncoder(D, t_min=0.0, t_max=1e6)}
    net = MGRNet(tower, encs, make_fusion(fusion, list(encs), D), bias_coordinate=bias_coordinate)
    net.reset_parameters(torch.Generator().manual_seed(3))
    tower.set_item_data(torch.arange(N_ITEMS).remainder(3)[:, None], torch.linspace(-1, 1, N_ITEMS)[:, None],
                        torch.zeros(N_ITEMS, 0, dtype=torch.int64), torch.zeros(N_ITEMS, 0))
    if fusion == "weighted":
        with torch.no_grad():
            net.fusion.logits.copy_(torch.tensor([0.5, -0.3, 0.1]))
    return net.eval()


def tiny_batch() -> Batch:
    hist = torch.tensor([[N_ITEMS, 1, 2], [N_ITEMS, N_ITEMS, N_ITEMS], [3, 4, 5]])
    return Batch(users=torch.tensor([0, 2, N_USERS]), user_cat=torch.zeros(3, 0, dtype=torch.int64),
                 user_num=torch.zeros(3, 0), user_bag=torch.zeros(3, 0, dtype=torch.int64),
                 user_bag_w=torch.zeros(3, 0), hist_items=hist,
                 hist_times=torch.where(hist == N_ITEMS, 0.0, 5e5), hist_weights=(hist != N_ITEMS).float(),
                 friends=torch.full((3, 1), N_USERS), friend_items=torch.full((3, 1, 1), N_ITEMS),
                 time=torch.tensor([6e5, 7e5, float("nan")]))


ITEMS = torch.tensor([[0, 4, 8], [1, 2, 3], [5, 6, 7]])


def test_weighted_contributions_sum_to_the_score():
    net, batch = tiny_net("weighted"), tiny_batch()
    with torch.no_grad():
        contrib = net.contributions(batch, ITEMS)
        scores = net.score(batch).gather(1, ITEMS)
    assert list(contrib) == ["user", "item", "time"]
    total = sum(contrib.values())
    torch.testing.assert_close(total, scores, rtol=0, atol=1e-5)
    assert torch.all(contrib["item"][1] == 0)  # row 1 has no history
    assert torch.all(contrib["user"][2] == 0) and torch.all(contrib["time"][2] == 0)  # cold, no time
    # exactly w_g (v_g . q)
    with torch.no_grad():
        _, w, parts, _ = net.user_vectors(batch)
        q = net.item_tower(ITEMS)
    torch.testing.assert_close(contrib["time"], w[:, 2:3] * (q @ parts["time"][:, :, None]).squeeze(-1))


@pytest.mark.parametrize("name", ["gated", "deep", "product"])
def test_leave_one_out_contributions(name):
    net, batch = tiny_net(name), tiny_batch()
    with torch.no_grad():
        contrib = net.contributions(batch, ITEMS)
        full = net.score(batch).gather(1, ITEMS)
        for g in net.granularities:
            p_g, _, parts, present = net.user_vectors(batch, drop=frozenset({g}))
            assert not present[g].any() and torch.all(parts[g] == 0)
            without = (p_g @ net.item_vectors().T).gather(1, ITEMS)
            torch.testing.assert_close(contrib[g], full - without, rtol=0, atol=1e-6)
    assert torch.all(contrib["item"][1] == 0)  # absent granularity: no change


@pytest.mark.parametrize("name", ["weighted", "gated", "deep", "product"])
def test_bias_coordinate_makes_the_last_item_coordinate_an_item_bias(name):
    net = tiny_net(name, bias_coordinate=True)
    batch = tiny_batch()
    nothing = Batch(**{**batch.__dict__, "users": torch.tensor([0, 2, N_USERS]),
                       "hist_items": torch.full((3, 3), N_ITEMS), "hist_times": torch.zeros(3, 3),
                       "hist_weights": torch.zeros(3, 3), "time": torch.full((3,), float("nan"))}).rows(
        torch.tensor([2]))  # an unknown user without history or time: no granularity present
    with torch.no_grad():
        p, _, parts, present = net.user_vectors(batch)
        q = net.item_vectors()
        for g in parts:  # every granularity vector ends in its presence flag
            torch.testing.assert_close(parts[g][:, -1], present[g].float())
        torch.testing.assert_close(p[:, -1], torch.ones(3))  # every row has a granularity
        # the score is the dot product of the other coordinates plus the item's bias q_v[-1]
        torch.testing.assert_close(net.score(batch), p[:, :-1] @ q[:, :-1].T + q[:, -1], rtol=0, atol=1e-6)
        empty, _, _, _ = net.user_vectors(nothing)
        assert torch.all(empty == 0)
        if name == "weighted":  # still exact: each w_g (v_g . q) carries w_g b_v, and the w_g sum to 1
            contrib = net.contributions(batch, ITEMS)
            torch.testing.assert_close(sum(contrib.values()), net.score(batch).gather(1, ITEMS), rtol=0, atol=1e-5)
    # without it the last coordinate is an ordinary one
    with torch.no_grad():
        plain, _, _, _ = tiny_net(name).user_vectors(batch)
    assert not torch.allclose(plain[:, -1], torch.ones(3))
