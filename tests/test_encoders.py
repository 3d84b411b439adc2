"""Contract tests of the granularity encoders, the item tower and the assembled network.

One small hand-built batch (7 rows) exercises every kind of missing data: a row without
history, an unknown user without features, an unknown user with features, a row without
friends and a row with an unknown request time.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mgrec.encoders import (
    BehaviorEncoder,
    ItemContentEncoder,
    ItemTower,
    SocialEncoder,
    TimeEncoder,
    UserEncoder,
    init_module,
    set_generator,
    time_buckets,
)
from mgrec.encoders.base import Batch, Encoder
from mgrec.encoders.social import normalized_adjacency
from mgrec.fusion import GatedFusion
from mgrec.model import MGRNet

NU, NI, D = 25, 30, 8
B, L, F, LF = 7, 6, 3, 4
T0 = 1_600_000_000.0
LENGTHS = [0, 1, 3, 6, 6, 2, 4]  # history length per row; row 0 has none
KINDS = ["user", "item", "behavior_seq", "behavior_set", "behavior_set_cf", "social", "time"]
# row 0: no history/friends; row 2: unknown user, no features; row 6: unknown time
EXPECTED_PRESENT = {
    "user": [1, 1, 0, 1, 1, 1, 1],
    "item": [0, 1, 1, 1, 1, 1, 1],
    "behavior_seq": [0, 1, 1, 1, 1, 1, 1],
    "behavior_set": [0, 1, 1, 1, 1, 1, 1],
    "behavior_set_cf": [0, 1, 1, 1, 1, 1, 1],
    "social": [0, 1, 1, 1, 1, 1, 1],
    "time": [1, 1, 1, 1, 1, 1, 0],
}


def make_batch(seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    hist = np.full((B, L), NI)
    times = np.zeros((B, L), dtype=np.float32)
    weights = np.zeros((B, L), dtype=np.float32)
    for r, n in enumerate(LENGTHS):
        if n:
            hist[r, L - n:] = rng.choice(NI, n, replace=False)
            times[r, L - n:] = T0 + np.sort(rng.integers(0, 1_000_000, n))
            weights[r, L - n:] = rng.integers(1, 6, n)
    users = np.array([0, 1, NU, 3, 4, NU, 6])
    user_cat = rng.integers(0, 3, (B, 2))
    user_cat[2] = 0
    user_cat[5] = [2, 0]  # unknown user 5 has a profile
    user_num = rng.normal(size=(B, 2)).astype(np.float32)
    user_num[2] = [0.0, 1.0]  # value 0, missing indicator 1
    user_bag = rng.integers(0, 5, (B, 3))
    user_bag_w = rng.random((B, 3)).astype(np.float32) * (user_bag > 0)
    user_bag[2], user_bag_w[2] = 0, 0.0
    friends = rng.integers(0, NU, (B, F))
    friends[0] = NU
    friends[3, 2] = NU  # a padded friend slot
    friend_items = rng.integers(0, NI, (B, F, LF))
    friend_items[:, :, 0] = NI  # padded item slots
    friend_items[friends == NU] = NI
    time = np.full(B, T0 + 2_000_000, dtype=np.float32)
    time[6] = np.nan
    t = torch.as_tensor
    return Batch(users=t(users), user_cat=t(user_cat), user_num=t(user_num), user_bag=t(user_bag),
                 user_bag_w=t(user_bag_w), hist_items=t(hist), hist_times=t(times),
                 hist_weights=t(weights), friends=t(friends), friend_items=t(friend_items),
                 time=t(time))


def make_tower(id_dropout: float = 0.3, use_content: bool = True) -> ItemTower:
    return ItemTower(NI, D, cat_cardinalities=[3], n_numeric=2, n_bag_tokens=5,
                     n_time_features=1, id_dropout=id_dropout, use_content=use_content)


def item_data(n: int = NI, seed: int = 123) -> tuple[torch.Tensor, ...]:
    rng = np.random.default_rng(seed)
    bag = rng.integers(0, 6, (n, 3))
    return (torch.as_tensor(rng.integers(0, 4, (n, 1))), torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)),
            torch.as_tensor(bag), torch.as_tensor(rng.random((n, 3)).astype(np.float32) * (bag > 0)),
            torch.as_tensor(rng.normal(size=(n, 1)).astype(np.float32)))


def adjacency() -> sp.csr_matrix:
    rng = np.random.default_rng(5)
    src, dst = rng.integers(0, NU, 60), rng.integers(0, NU, 60)
    a = sp.csr_matrix((np.ones(60, dtype=np.float32), (src, dst)), shape=(NU, NU))
    return ((a + a.T) > 0).astype(np.float32)


def build(kind: str, seed: int = 1, *, set_data: bool = True) -> tuple[nn.Module, nn.Module]:
    """(root owning every parameter once, the encoder under test), initialised from ``seed``."""
    tower = make_tower()
    user = UserEncoder(NU, D, cat_cardinalities=[2, 3], n_numeric=2, n_bag_tokens=4,
                       id_dropout=0.2, missing_columns=[1])
    enc = {
        "user": lambda: user,
        "item": lambda: ItemContentEncoder(tower, D),
        "behavior_seq": lambda: BehaviorEncoder(tower, D, mode="sequence", max_len=8, n_heads=2),
        "behavior_set": lambda: BehaviorEncoder(tower, D, mode="set"),
        "behavior_set_cf": lambda: BehaviorEncoder(tower, D, mode="set", hist_dropout=0.5, linear=True),
        "social": lambda: SocialEncoder(user.id_embedding, tower, D, adjacency=adjacency()),
        "time": lambda: TimeEncoder(D, t_min=T0, t_max=T0 + 4_000_000, n_items=NI),
    }[kind]()
    parts = {"tower": tower, "enc": enc} if kind == "user" else {"tower": tower, "user": user, "enc": enc}
    root = nn.ModuleDict(parts)
    init_module(root, torch.Generator().manual_seed(seed))
    if set_data:
        tower.set_item_data(*item_data())
    return root.eval(), enc


def run(enc: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return enc(batch)


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_presence_and_zero_absent_rows(kind):
    _, enc = build(kind)
    assert isinstance(enc, Encoder) and enc.out_dim == D
    vec, present = run(enc, make_batch())
    assert vec.shape == (B, D) and vec.dtype == torch.float32
    assert present.dtype == torch.bool
    assert present.tolist() == [bool(x) for x in EXPECTED_PRESENT[kind]]
    assert torch.all(vec[~present] == 0)
    assert torch.all(vec[present].norm(dim=1) > 0)


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_init_is_deterministic(kind):
    (r1, e1), (r2, e2), (r3, e3) = build(kind, 7), build(kind, 7), build(kind, 8)
    s1, s2, s3 = r1.state_dict(), r2.state_dict(), r3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert any(not torch.equal(s1[k], s3[k]) for k in s1)
    batch = make_batch()
    assert torch.equal(run(e1, batch)[0], run(e2, batch)[0])
    assert not torch.equal(run(e1, batch)[0], run(e3, batch)[0])


@pytest.mark.parametrize("kind", KINDS)
def test_eval_outputs_repeat_and_training_noise_follows_the_generator(kind):
    root, enc = build(kind)
    batch = make_batch()
    assert torch.equal(run(enc, batch)[0], run(enc, batch)[0])
    root.train()
    outs = []
    for _ in range(2):
        set_generator(root, torch.Generator().manual_seed(3))
        outs.append(run(enc, batch)[0])
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("kind", KINDS)
def test_padded_values_do_not_change_the_output(kind):
    _, enc = build(kind)
    batch = make_batch()
    g = torch.Generator().manual_seed(11)
    pad_hist = batch.hist_items == NI
    pad_friend = batch.friends == NU
    noisy = replace(
        batch,
        hist_times=torch.where(pad_hist, torch.rand(B, L, generator=g) * 1e9, batch.hist_times),
        hist_weights=torch.where(pad_hist, torch.rand(B, L, generator=g) * 9, batch.hist_weights),
        friend_items=torch.where(pad_friend[..., None], torch.randint(0, NI, (B, F, LF), generator=g),
                                 batch.friend_items),
        user_bag_w=torch.where(batch.user_bag == 0, torch.rand(B, 3, generator=g), batch.user_bag_w),
    )
    torch.testing.assert_close(run(enc, noisy), run(enc, batch), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_safetensors_round_trip_gives_identical_outputs(kind, tmp_path):
    root, enc = build(kind)
    save_file(root.state_dict(), str(tmp_path / "m.safetensors"))
    fresh_root, fresh = build(kind, seed=99, set_data=False)  # other weights, no item data
    fresh_root.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    batch = make_batch()
    assert torch.equal(run(fresh, batch)[0], run(enc, batch)[0])


@pytest.mark.parametrize("kind", ["item", "behavior_seq", "behavior_set"])
def test_extra_left_padding_is_invisible(kind):
    _, enc = build(kind)
    batch = make_batch()
    wide = replace(batch,
                   hist_items=torch.cat([torch.full((B, 2), NI), batch.hist_items], dim=1),
                   hist_times=torch.cat([torch.zeros(B, 2), batch.hist_times], dim=1),
                   hist_weights=torch.cat([torch.zeros(B, 2), batch.hist_weights], dim=1))
    torch.testing.assert_close(run(enc, wide)[0], run(enc, batch)[0], rtol=0, atol=1e-5)


def test_sequence_states_are_causal():
    _, enc = build("behavior_seq")
    batch = make_batch()
    later = batch.hist_items.clone()
    later[3, -1] = (later[3, -1] + 1) % NI  # change only the latest event of row 3
    with torch.no_grad():
        before = enc.states(batch)
        after = enc.states(replace(batch, hist_items=later))
    torch.testing.assert_close(after[:, :-1], before[:, :-1], rtol=0, atol=1e-6)
    assert not torch.allclose(after[3, -1], before[3, -1])
    assert torch.all(before[0] == 0)  # no history: all positions padded


def test_history_longer_than_max_len_uses_the_latest_events():
    _, enc = build("behavior_seq")  # max_len 8
    batch = make_batch()
    old = torch.randint(0, NI, (B, 5), generator=torch.Generator().manual_seed(2))
    longer = replace(batch, hist_items=torch.cat([old, batch.hist_items], dim=1),
                     hist_times=torch.cat([torch.full((B, 5), T0), batch.hist_times], dim=1),
                     hist_weights=torch.cat([torch.ones(B, 5), batch.hist_weights], dim=1))
    trimmed = replace(longer, hist_items=longer.hist_items[:, -8:], hist_times=longer.hist_times[:, -8:],
                      hist_weights=longer.hist_weights[:, -8:])
    assert torch.equal(run(enc, longer)[0], run(enc, trimmed)[0])


# ----------------------------------------------------------------- item tower
def test_item_tower_vectors_padding_and_cold_items():
    tower = make_tower(id_dropout=0.0)
    init_module(tower, torch.Generator().manual_seed(0))
    data = item_data()
    tower.set_item_data(*data)
    tower.eval()
    with torch.no_grad():
        allv = tower()
        assert allv.shape == (NI, D)
        pad = tower(torch.tensor([NI]))
        assert torch.all(pad == 0)
        torch.testing.assert_close(allv, tower.id_embedding.weight[:NI] + tower.content())
        rows = torch.tensor([4, 9])
        cold = tower.vectors_for_features(*(t[rows] for t in data))
        torch.testing.assert_close(cold, tower.content(rows))
        no_time = tower.vectors_for_features(*(t[rows] for t in data[:4]))
        torch.testing.assert_close(no_time, cold - tower.time_proj(data[4][rows]))
    with pytest.raises(ValueError, match="expected"):
        tower.set_item_data(data[0][:3], *data[1:])
    with pytest.raises(ValueError, match="bag token"):
        tower.set_item_data(data[0], data[1], data[2] + 10, *data[3:])


def test_item_tower_id_dropout_drops_whole_ids_from_the_generator():
    tower = make_tower(id_dropout=0.5)
    init_module(tower, torch.Generator().manual_seed(0))
    tower.set_item_data(*item_data())
    tower.train()
    with torch.no_grad():
        a = tower(generator=torch.Generator().manual_seed(4))
        b = tower(generator=torch.Generator().manual_seed(4))
        content, ids = tower.content(), tower.id_embedding.weight[:NI]
    assert torch.equal(a, b)
    dropped = torch.isclose(a, content, atol=1e-6).all(dim=1)
    kept = torch.isclose(a, content + ids, atol=1e-6).all(dim=1)
    assert torch.all(dropped ^ kept)
    assert 5 <= int(dropped.sum()) <= 25  # about half of 30


def test_item_tower_without_content_is_ids_only():
    tower = make_tower(id_dropout=0.0, use_content=False)
    init_module(tower, torch.Generator().manual_seed(0))
    tower.set_item_data(*item_data())
    with torch.no_grad():
        assert torch.all(tower.content() == 0)
        assert torch.equal(tower(), tower.id_embedding.weight[:NI])
        assert torch.all(tower.vectors_for_features(*item_data(2)) == 0)
    enc = ItemContentEncoder(tower, D)
    _, present = run(enc, make_batch())
    assert not present.any()


def test_item_content_encoder_is_the_weighted_mean_of_content():
    _, enc = build("item")
    batch = make_batch()
    with torch.no_grad():
        vec, _ = enc(batch)
        row = 2  # 3 events
        items = batch.hist_items[row, -3:]
        w = batch.hist_weights[row, -3:]
        mean = (enc.tower.content(items) * w[:, None]).sum(0) / w.sum()
        torch.testing.assert_close(vec[row], enc.proj(mean), rtol=0, atol=1e-6)


# ----------------------------------------------------------------- user, time, social
def test_user_presence_rules_and_id_dropout():
    _, enc = build("user")
    batch = make_batch()
    num = batch.user_num.clone()
    num[2] = torch.tensor([0.5, 0.0])  # a real value for the unknown user 2
    assert run(enc, replace(batch, user_num=num))[1][2]
    enc.train()
    enc.id_dropout = 0.5
    enc.generator = torch.Generator().manual_seed(0)
    bare = replace(batch, user_cat=torch.zeros_like(batch.user_cat), user_num=torch.zeros_like(num),
                   user_bag_w=torch.zeros_like(batch.user_bag_w))
    vec, present = run(enc, bare)
    # the same draw: each row keeps its id with probability 1/2; unknown users never have one
    keep = torch.rand(B, generator=torch.Generator().manual_seed(0)) < 0.5
    expected = keep & (batch.users != NU)
    assert 0 < int(expected.sum()) < 5
    assert present.tolist() == expected.tolist()  # without features, only surviving ids
    torch.testing.assert_close(vec[expected], enc.id_embedding.weight[batch.users[expected]])


def test_time_buckets_hand_values():
    got = time_buckets(torch.tensor([0.0, 1.0, 3.0, 1023.0, -5.0, float("nan"), float("inf"), 1e12]))
    assert got.tolist() == [1, 2, 3, 11, 0, 0, 0, 33]


def test_time_features_hand_values():
    monday = datetime(2021, 3, 1, 13, 30, tzinfo=UTC).timestamp()  # a Monday
    saturday = datetime(2021, 3, 6, 2, 5, tzinfo=UTC).timestamp()
    enc = TimeEncoder(D, t_min=monday - 1000.0, t_max=monday + 1000.0)
    batch = replace(make_batch(), time=torch.tensor([monday, saturday, float("nan")] + [monday] * 4),
                    hist_times=torch.cat([torch.zeros(B, L - 1), torch.full((B, 1), monday - 3000.0)], 1))
    batch = replace(batch, hist_times=batch.hist_times.clone())
    batch.hist_times[1, -1] = 0.0  # row 1: no history
    f = enc.features(batch)
    assert f["hour"][:2].tolist() == [13, 2]
    assert f["weekday"][:2].tolist() == [0, 5]
    assert f["present"][:3].tolist() == [True, True, False]
    assert f["gap_bucket"][:2].tolist() == [12, 0]  # 1 + floor(log2(3001)) = 12; unknown
    assert f["drift"][0].item() == pytest.approx(0.5, abs=0.1)  # float32 time: +-128 s
    assert f["drift"][1].item() == 2.0  # clipped


def test_normalized_adjacency_hand_values():
    path = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=np.float32))
    got = normalized_adjacency(path, 3).toarray()
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(got, [[0, s, 0], [s, 0, s], [0, s, 0]], rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        normalized_adjacency(path, 4)


def test_social_multi_hop_term_reaches_friends_of_friends():
    users = nn.Embedding(4, D, padding_idx=3)  # users 0..2, row 3 = unknown
    tower = make_tower(id_dropout=0.0)
    path = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=np.float32))
    enc = SocialEncoder(users, tower, D, adjacency=path, hops=2)
    init_module(nn.ModuleDict({"u": users, "t": tower, "e": enc}), torch.Generator().manual_seed(0))
    tower.set_item_data(*item_data())
    batch = replace(make_batch(), users=torch.tensor([0, 3, 0, 0, 0, 0, 0]),
                    friends=torch.tensor([[1, 3, 3]] * B), friend_items=torch.full((B, F, LF), NI))
    vec, present = enc(batch)
    assert present.all()
    vec[0].sum().backward()
    assert users.weight.grad[2].abs().sum() > 0  # user 2 is only reachable in two hops
    # an unknown user with friends: a plain mean of the friends, no multi-hop term
    with torch.no_grad():
        expected = enc.out(users.weight[1])
        torch.testing.assert_close(enc(batch)[0][1], expected, rtol=0, atol=1e-6)


# ----------------------------------------------------------------- the assembled network
def full_net(seed: int = 0, *, with_user: bool = True) -> MGRNet:
    tower = make_tower()
    user = UserEncoder(NU, D, cat_cardinalities=[2, 3], n_numeric=2, n_bag_tokens=4)
    encs = {"item": ItemContentEncoder(tower, D), "behavior": BehaviorEncoder(tower, D, max_len=8),
            "social": SocialEncoder(user.id_embedding, tower, D, adjacency=adjacency()),
            "time": TimeEncoder(D, t_min=T0, t_max=T0 + 4_000_000)}
    if with_user:
        encs["user"] = user
    net = MGRNet(tower, encs, GatedFusion(list(encs), D))
    net.reset_parameters(torch.Generator().manual_seed(seed))
    tower.set_item_data(*item_data())
    return net.eval()


@pytest.mark.parametrize("with_user", [True, False])
def test_network_registers_shared_modules_once_and_round_trips(with_user, tmp_path):
    net = full_net(with_user=with_user)
    assert net.granularities == (["user"] if with_user else []) + ["item", "behavior", "social", "time"]
    keys = net.state_dict().keys()
    assert ("shared.user_table.weight" in keys) is not with_user
    assert not any(k.startswith("encoders.behavior.tower") for k in keys)
    save_file(net.state_dict(), str(tmp_path / "net.safetensors"))
    other = full_net(seed=5, with_user=with_user)
    other.load_state_dict(load_file(str(tmp_path / "net.safetensors")))
    batch = make_batch()
    with torch.no_grad():
        s = net.score(batch)
        assert s.shape == (B, NI)
        assert torch.equal(other.score(batch), s)


def test_network_training_step_is_deterministic_and_reaches_every_parameter():
    grads = []
    for _ in range(2):
        net = full_net()
        net.train()
        net.set_generator(torch.Generator().manual_seed(1))
        net.score(make_batch()).logsumexp(dim=1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])
    untouched = {n for n, _ in full_net().named_parameters()} - grads[0].keys()
    assert untouched == set()


def test_network_rejects_inconsistent_parts():
    tower = make_tower()
    with pytest.raises(ValueError, match="granularity"):
        MGRNet(tower, {"time": ItemContentEncoder(tower, D)}, GatedFusion(["time"], D))
    with pytest.raises(ValueError, match="does not cover"):
        MGRNet(tower, {"item": ItemContentEncoder(tower, D)}, GatedFusion(["time"], D))


def test_shared_content_table_gives_the_same_vectors_and_scores():
    net = full_net()
    batch = make_batch()
    tower = net.item_tower
    many = torch.randint(0, NI + 1, (4, NI), generator=torch.Generator().manual_seed(0))  # > n_items lookups
    with torch.no_grad():
        direct = torch.stack([tower.content(row) for row in many])  # each row alone: per-row path
        torch.testing.assert_close(tower.content(many), direct, rtol=0, atol=1e-6)
        p, _, _, _ = net.user_vectors(batch)
        plain = p @ net.item_vectors().T
        torch.testing.assert_close(net.score(batch), plain, rtol=0, atol=1e-5)
    assert tower._content_cache is None  # the table lives only inside the block


def test_subset_table_refuses_items_it_does_not_hold():
    tower = make_tower()
    init_module(tower, torch.Generator().manual_seed(0))
    tower.set_item_data(*item_data())
    with tower.shared_content(items=torch.tensor([1, 2])):
        assert tower(torch.tensor([2, 1, NI])).shape == (3, D)  # padding is always there
        with pytest.raises(RuntimeError, match="whole catalogue"):
            tower(None)
        with pytest.raises(IndexError):
            tower(torch.tensor([3]))
    assert tower._local_map is None and tower._shared is None


def _tower_reference(tower: ItemTower, items: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``id * keep + content`` gathered the plain way (zero for padding)."""
    content = tower._encode_rows(None)[items]
    return tower.id_embedding(items) * keep.unsqueeze(-1).float() + content


@pytest.mark.parametrize("shape", [(2, 6), (6, 6)])  # per-row encoding / one table of all items
@pytest.mark.parametrize("shared", [False, True, "subset"])  # subset: a table of the looked-up items only
def test_tower_lookups_match_the_plain_gather_in_values_and_gradients(shape, shared):
    from contextlib import nullcontext

    from mgrec.encoders import bernoulli_keep

    tower = make_tower(id_dropout=0.4)
    init_module(tower, torch.Generator().manual_seed(0))
    tower.set_item_data(*item_data())
    tower.train()
    items = torch.randint(0, NI + 1, shape, generator=torch.Generator().manual_seed(3))
    items[0, :2] = NI  # padding
    scale = torch.rand(shape, generator=torch.Generator().manual_seed(4))
    weights = torch.rand(shape, generator=torch.Generator().manual_seed(5))
    probe = torch.randn(*shape, D, generator=torch.Generator().manual_seed(6))

    def grads(fn):
        tower.zero_grad(set_to_none=True)
        block = tower.shared_content(items=items) if shared == "subset" else (
            tower.shared_content() if shared else nullcontext())
        with block:
            out = fn()
        (out * (probe if out.dim() == 3 else probe[:, 0])).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}

    keep = bernoulli_keep(shape, 0.6, torch.Generator().manual_seed(7), items.device)
    cases = [
        (lambda: tower(items, generator=torch.Generator().manual_seed(7), scale=scale),
         lambda: _tower_reference(tower, items, keep) * scale.unsqueeze(-1)),
        (lambda: tower.pooled(items, weights, generator=torch.Generator().manual_seed(7)),
         lambda: (_tower_reference(tower, items, keep) * weights.unsqueeze(-1)).sum(1)),
        (lambda: tower.pooled_content(items, weights),
         lambda: (tower._encode_rows(None)[items] * weights.unsqueeze(-1)).sum(1)),
    ]
    for fast, plain in cases:
        (got, g_fast), (want, g_plain) = grads(fast), grads(plain)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        assert g_fast.keys() == g_plain.keys()
        for name in g_fast:
            torch.testing.assert_close(g_fast[name], g_plain[name], rtol=0, atol=1e-5)
        if "id_embedding.weight" in g_fast:
            assert torch.all(g_fast["id_embedding.weight"][NI] == 0)  # the padding row learns nothing
    assert tower._content_cache is None and tower._row_cache is None


def test_gen_dropout_mask_and_scale_match_forward():
    from mgrec.encoders import GenDropout

    drop = GenDropout(0.25)
    x = torch.randn(5, 7)
    drop.generator = torch.Generator().manual_seed(2)
    out = drop(x)
    drop.generator = torch.Generator().manual_seed(2)
    keep = drop.keep_mask((5, 7), x.device)
    torch.testing.assert_close(out, x * drop.scale * keep, rtol=0, atol=1e-6)
    assert drop.scale == pytest.approx(4 / 3)
    assert set(keep.unique().tolist()) == {0.0, 1.0} and set(out[keep == 0].tolist()) == {0.0}
    drop.eval()
    assert drop.keep_mask((5, 7), x.device) is None and drop.scale == 1.0 and torch.equal(drop(x), x)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_gen_dropout_keeps_one_minus_p_in_every_lane_of_a_draw(p):
    from mgrec.encoders import DRAW_LEVELS, GenDropout

    drop = GenDropout(p)
    assert abs(drop.keep_prob - (1 - p)) <= 0.5 / DRAW_LEVELS and drop.scale == 1 / drop.keep_prob
    drop.generator = torch.Generator().manual_seed(0)
    keep = drop.keep_mask((1000, 1000), torch.device("cpu"))
    tol = 5 * math.sqrt(p * (1 - p) / keep.numel())
    assert float(keep.mean()) == pytest.approx(1 - p, abs=tol)
    # each 64-bit draw gives four 16-bit lanes; every lane keeps 1 - p of its elements
    lanes = keep.reshape(-1, 4).mean(dim=0)
    assert torch.allclose(lanes, torch.full_like(lanes, 1 - p), atol=2 * tol)
    # neighbouring elements are independent: P(both kept) = (1 - p)^2
    both = (keep.reshape(-1, 2).sum(dim=1) == 2).float().mean()
    assert float(both) == pytest.approx((1 - p) ** 2, abs=2 * tol)
    drop.generator = torch.Generator().manual_seed(0)
    again = drop.keep_mask((1000, 1000), torch.device("cpu"), torch.bool)
    assert again.dtype == torch.bool and torch.equal(again, keep.bool())  # same seed, same mask
    drop.generator = torch.Generator().manual_seed(1)
    assert not torch.equal(drop.keep_mask((1000, 1000), torch.device("cpu")), keep)
    assert drop.keep_mask((0, 3), torch.device("cpu")).shape == (0, 3)


def test_set_mode_hist_dropout_drops_whole_events_but_never_a_whole_row():
    _, enc = build("behavior_set_cf")
    enc.hist_drop.p = 0.9
    enc.linear.weight.data.zero_()  # only the pooled path, which sees the kept events
    batch = make_batch()
    enc.train()
    enc.in_drop.p = 0.0
    enc.ff.drop.p = enc.ff.net[2].p = 0.0
    set_generator(enc, torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, present = enc(batch)
    set_generator(enc, torch.Generator().manual_seed(3))
    with torch.no_grad():
        b, _ = enc(batch)
    torch.testing.assert_close(a, b)  # the draws come from the generator
    assert present.tolist() == [bool(x) for x in EXPECTED_PRESENT["behavior_set"]]
    assert torch.isfinite(a).all() and (a[1:].abs().sum(dim=1) > 0).all()  # no row lost everything
    enc.eval()
    with torch.no_grad():
        full, _ = enc(batch)
    assert not torch.allclose(a[3:5], full[3:5])  # long rows lost events while training


def test_set_mode_linear_path_is_the_scaled_sum_of_untied_embeddings():
    _, enc = build("behavior_set_cf")
    batch = make_batch()
    with torch.no_grad():
        with_lin, _ = enc(batch)
        weight = enc.linear.weight.data.clone()
        enc.linear.weight.data.zero_()
        without, _ = enc(batch)
    hist = batch.hist_items[:, -enc.max_len:]
    for r in range(B):
        items = hist[r][hist[r] != NI]
        expect = weight[items].sum(dim=0) / math.sqrt(max(len(items), 1)) if len(items) else torch.zeros(D)
        torch.testing.assert_close(with_lin[r] - without[r], expect, atol=1e-5, rtol=1e-5)


def test_unique_rows_inverts_exactly_and_survives_hash_collisions(monkeypatch):
    import mgrec.encoders as enc

    rows = torch.randint(0, 4, (500, 3), generator=torch.Generator().manual_seed(0))
    uniq, where = enc.unique_rows(rows)
    assert torch.equal(uniq[where], rows)
    assert len(uniq) == len(torch.unique(rows, dim=0)) == len({tuple(r) for r in rows.tolist()})
    # every row gets the same key: the exact fallback must still be right
    monkeypatch.setattr(enc, "_row_key_weights", lambda n: torch.zeros(n, dtype=torch.float64))
    uniq2, where2 = enc.unique_rows(rows)
    assert torch.equal(uniq2[where2], rows) and len(uniq2) == len(uniq)
    empty, where0 = enc.unique_rows(rows[:0])
    assert empty.shape == (0, 3) and where0.shape == (0,)
    with pytest.raises(ValueError, match="2-d"):
        enc.unique_rows(rows[0])



def test_row_key_weights_stay_on_the_cpu_under_another_default_device():
    # training runs inside ``torch.device(cuda)`` (DistContext.device_scope); the CPU generator
    # once made torch.rand raise there ("Expected a 'cuda' device type for generator"); the meta
    # device stands in for CUDA on a machine without one
    import mgrec.encoders as enc

    cpu = enc._row_key_weights(4)
    with torch.device("meta"):
        scoped = enc._row_key_weights(4)
    assert scoped.device.type == "cpu" and torch.equal(scoped, cpu)
    assert bool(((cpu >= 1) & (cpu < 2)).all())

@pytest.mark.parametrize("subset", [False, True])
def test_catalogue_bags_by_fixed_product_match_embedding_bag_in_values_and_gradients(subset):
    tower = make_tower(id_dropout=0.0)
    init_module(tower, torch.Generator().manual_seed(0))
    tower.set_item_data(*item_data())
    tower.train()
    rows = torch.tensor([3, 0, 3, NI, 7]) if subset else None
    probe = torch.randn(5 if subset else NI + 1, D, generator=torch.Generator().manual_seed(1))

    def content_and_grad(fast: bool) -> tuple[torch.Tensor, torch.Tensor]:
        tower.zero_grad(set_to_none=True)
        r = slice(None) if rows is None else rows
        args = (tower.item_cat[r], tower.item_num[r], tower.item_bag_idx[r], tower.item_bag_w[r], tower.item_time[r])
        out = tower._encode_rows(rows) if fast else tower._encode(*args)  # catalogue_rows=None: embedding_bag
        (out * probe).sum().backward()
        return out.detach(), tower.bag_embedding.weight.grad.clone()

    (got, g_fast), (want, g_plain) = content_and_grad(True), content_and_grad(False)
    assert tower._bag_csr.value is not None  # the product path ran
    import copy

    assert copy.deepcopy(tower)._bag_csr.value is None  # copies rebuild it
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(g_fast, g_plain, rtol=0, atol=1e-5)
    assert torch.all(got[-1] == 0) if not subset else torch.all(got[3] == 0)  # the padding item
    # new bags replace the cached matrix
    cat, num, bag, w, tf = item_data(seed=9)
    tower.set_item_data(cat, num, bag, w, tf)
    (got, _), (want, _) = content_and_grad(True), content_and_grad(False)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("pair_scores_max", [0, 1 << 21])  # gathered keys, (friends x rows) product
def test_social_friend_vectors_equal_the_per_row_computation(pair_scores_max, monkeypatch):
    monkeypatch.setattr("mgrec.encoders.social.PAIR_SCORES_MAX", pair_scores_max)
    root, enc = build("social")
    batch = make_batch()
    batch = replace(batch, friends=torch.cat([batch.friends[:, :1], batch.friends], 1),  # a repeated friend
                    friend_items=torch.cat([batch.friend_items[:, :1], batch.friend_items], 1))
    got, _ = run(enc, batch)
    with torch.no_grad():
        tower, table = enc.tower, enc.user_table
        counts = (batch.friend_items != NI).sum(2, keepdim=True).clamp(min=1)
        reps = table(batch.friends) + tower.pooled(batch.friend_items) / counts
        me = table(batch.users)
        logits = (enc.key(reps) @ enc.query(me).unsqueeze(-1)).squeeze(-1) / math.sqrt(D)
        from mgrec.encoders import masked_softmax
        valid = batch.friends != NU
        want = enc.out((masked_softmax(logits, valid).unsqueeze(-1) * reps).sum(1)) + enc.hop_proj(
            enc._multi_hop(batch.users))
        want = want * valid.any(1, keepdim=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("precomputed", "factored"), [(True, False), (False, False), (True, True), (False, True)])
def test_social_multi_hop_rows_and_gradients_equal_the_dense_product(precomputed, factored, monkeypatch):
    import mgrec.encoders.social as social

    if not precomputed:  # Â^hops too big to keep: rows are computed per batch
        monkeypatch.setattr(social, "REACH_MAX_NNZ", 0)
    _, enc = build("social")
    users = torch.tensor([0, 4, NU, 4, 17])
    chosen = []
    choose = social.SocialEncoder._factored_is_cheaper
    monkeypatch.setattr(social.SocialEncoder, "_factored_is_cheaper",
                        lambda self, *a: chosen.append(choose(self, *a)) or factored)
    got = enc._multi_hop(users)
    assert (enc._reach is not None) == precomputed and len(chosen) == 1
    # the cost rule: the table's product once (nnz(Â)) plus the batch's first hop, against the
    # batch's rows of Â^2 (their entries when kept, else the bound sum of friends' degrees)
    adj = enc._adj
    rows = np.array([0, 4, 4, 17])
    two_hop = (adj @ adj)[rows]
    bound = np.diff(adj.indptr)[adj[rows].indices].sum()
    assert chosen[0] == (adj.nnz + np.diff(adj.indptr)[rows].sum() < (two_hop.nnz if precomputed else bound))
    probe = torch.randn(got.shape, generator=torch.Generator().manual_seed(2))
    (got * probe).sum().backward()
    grad = enc.user_table.weight.grad.clone()
    enc.user_table.weight.grad = None
    a = torch.as_tensor(normalized_adjacency(adjacency(), NU).toarray())
    reach = a @ a  # hops = 2
    table = enc.user_table.weight
    want = torch.cat([reach, torch.zeros(NU, 1)], 1)[users.clamp(max=NU - 1)] @ table
    want = want * (users < NU).unsqueeze(1)
    (want * probe).sum().backward()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad, enc.user_table.weight.grad, rtol=0, atol=1e-5)
    assert torch.all(grad[NU] == 0)


def test_social_multi_hop_with_sparse_ids_reads_the_table_without_a_gradient():
    """Sparse id tables: the multi-hop rows are still ``Â^2 E``'s, but the table's sparse
    gradient holds only the users and friends the batch looks up, not the friends of friends
    (at scale, 60k-100k rows a step that the optimiser would otherwise update)."""
    tower = make_tower(id_dropout=0.0)
    user = UserEncoder(NU, D, cat_cardinalities=[2, 3], n_numeric=2, n_bag_tokens=4, sparse_ids=True)
    enc = SocialEncoder(user.id_embedding, tower, D, adjacency=adjacency(), hops=2)
    init_module(nn.ModuleDict({"t": tower, "u": user, "e": enc}), torch.Generator().manual_seed(0))
    tower.set_item_data(*item_data())
    batch = make_batch()
    users = batch.users
    got = enc._multi_hop(users)
    a = torch.as_tensor(normalized_adjacency(adjacency(), NU).toarray())
    want = torch.cat([a @ a, torch.zeros(NU, 1)], 1)[users.clamp(max=NU - 1)] @ user.id_embedding.weight
    torch.testing.assert_close(got, want * (users < NU).unsqueeze(1), rtol=0, atol=1e-5)
    assert not got.requires_grad

    vec, _ = enc(batch)
    vec.sum().backward()
    grad = user.id_embedding.weight.grad
    assert grad.is_sparse
    looked_up = set(users.tolist()) | set(batch.friends.flatten().tolist())
    two_hop = set(np.flatnonzero((a @ a)[users[users < NU]].sum(0).numpy()).tolist())
    assert two_hop - looked_up  # friends of friends the old gather sent gradient to
    assert set(grad.coalesce().indices()[0].tolist()) <= looked_up
    assert enc.hop_proj.weight.grad.abs().sum() > 0  # the term itself still learns


def test_sparse_product_scipy_and_torch_paths_agree_with_the_dense_product():
    """CPU float32 weights go through scipy, the rest through torch CSR tensors: both give
    the dense product's values and ``S^T @ grad`` as the weight's gradient."""
    import numpy as np
    import scipy.sparse as sp

    from mgrec.sparse import sparse_product

    m = sp.random(7, 11, density=0.3, format="csr", random_state=np.random.default_rng(3), dtype=np.float32)
    dense = torch.from_numpy(m.toarray())
    g = torch.randn(7, 5, generator=torch.Generator().manual_seed(1))
    for dtype in (torch.float32, torch.float64):  # float64: the torch CSR path
        w = torch.randn(11, 5, dtype=dtype, generator=torch.Generator().manual_seed(0), requires_grad=True)
        out = sparse_product(w, m)
        (out * g.to(dtype)).sum().backward()
        ref_w = w.detach().clone().requires_grad_()
        ref = dense.to(dtype) @ ref_w
        (ref * g.to(dtype)).sum().backward()
        assert out.dtype == dtype and out.shape == (7, 5)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(w.grad, ref_w.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weighted", ["none", "constant", "learned"])
def test_bag_sum_matches_embedding_bag_in_values_and_gradients(weighted):
    """Training with constant weights goes through a sparse product, learned weights through
    embedding_bag: both equal embedding_bag's sums and gradients, padding skipped."""
    import torch.nn.functional as F

    from mgrec.encoders import bag_sum

    gen = torch.Generator().manual_seed(0)
    table = torch.randn(9, 4, generator=gen, requires_grad=True)
    index = torch.randint(0, 9, (2, 3, 5), generator=gen)
    index[0, 0, :2] = 8  # padding
    index[1, 2] = 8  # a bag of padding only
    weights = None if weighted == "none" else torch.rand(2, 3, 5, generator=gen, requires_grad=weighted == "learned")
    g = torch.randn(2, 3, 4, generator=gen)
    out = bag_sum(table, index, weights, padding_idx=8)
    (out * g).sum().backward()
    grads = [table.grad.clone()] + ([weights.grad.clone()] if weighted == "learned" else [])
    table.grad = None
    if weighted == "learned":
        weights.grad = None
    psw = None if weights is None else weights.reshape(6, 5)
    ref = F.embedding_bag(index.reshape(6, 5), table, mode="sum", per_sample_weights=psw, padding_idx=8).reshape(2, 3, 4)
    (ref * g).sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grads[0], table.grad)
    assert torch.equal(out[1, 2], torch.zeros(4)) and torch.equal(grads[0][8], torch.zeros(4))
    if weighted == "learned":
        torch.testing.assert_close(grads[1], weights.grad)
