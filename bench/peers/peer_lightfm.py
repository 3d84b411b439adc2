"""LightFM 1.17 WARP on an exported split; runs in ``.peers/lightfm``.

Users and items are each represented by an identity column plus their side features (mgrec's
encoding of the dataset's features: one-hot categoricals, bags of tags and title words,
standardised numbers), rows scaled to unit L1 norm as LightFM's own ``Dataset`` does. A
dataset without user (or item) features gets the identity alone on that side. A small grid over
``no_components`` is searched on validation NDCG@10, each configuration checked at several
epoch counts (``fit_partial`` goes on from the last checkpoint). ``total_seconds`` covers the
whole grid. Usage::

    .peers/lightfm/bin/python bench/peers/peer_lightfm.py --model warp --work W --out O
"""

from __future__ import annotations

import time

import numpy as np
import peer_common as pc
import scipy.sparse as sp

COMPONENTS = [64, 128]
CHECKPOINTS = [10, 20, 40, 70, 100]


def with_identity(features: sp.csr_matrix | None, n: int) -> sp.csr_matrix:
    """``[I | features]`` with rows scaled to unit L1 norm."""
    blocks = [sp.identity(n, dtype=np.float32, format="csr")]
    if features is not None:
        blocks.append(features.astype(np.float32))
    full = sp.hstack(blocks, format="csr", dtype=np.float32)
    norms = np.asarray(abs(full).sum(axis=1)).ravel()
    return sp.diags(1.0 / np.maximum(norms, 1e-12)).astype(np.float32) @ full


def scorer(model, user_feats: sp.csr_matrix, item_feats: sp.csr_matrix):  # noqa: ANN001, ANN201
    """Scores of every item for a batch of users: ``p_u . q_i + b_i`` (the user bias does not
    change a user's ranking)."""
    _, users_emb = model.get_user_representations(user_feats)
    item_bias, items_emb = model.get_item_representations(item_feats)
    return lambda users: users_emb[users] @ items_emb.T + item_bias


def train_config(components: int, parts: dict, feats: tuple, seed: int, threads: int, out) -> dict:  # noqa: ANN001
    """Train one ``no_components`` up to the last checkpoint; return its best checkpoint (its
    test lists go to ``out``)."""
    from lightfm import LightFM

    model = LightFM(no_components=components, loss="warp", random_state=seed)
    train = parts["train"].tocoo()
    done, epoch_times, best = 0, [], {"ndcg": -1.0}
    for stop in CHECKPOINTS:
        t0 = time.perf_counter()
        model.fit_partial(train, user_features=feats[0], item_features=feats[1], epochs=stop - done,
                          num_threads=threads)
        epoch_times += [(time.perf_counter() - t0) / (stop - done)] * (stop - done)
        done = stop
        score = scorer(model, *feats)
        ndcg = pc.valid_ndcg(score, parts)
        if ndcg > best["ndcg"]:
            best = {"ndcg": ndcg, "epochs": stop, "epoch_seconds": float(np.mean(epoch_times))}
            pc.write_topn(out, score, parts)  # the best checkpoint so far ranks the test users
    return best


def main() -> None:
    args = pc.base_parser(__doc__).parse_args()
    pc.set_threads(args.threads)
    if args.model != "warp":
        raise SystemExit(f"unknown lightfm model {args.model!r}; only 'warp' is run")
    parts = pc.load_parts(args.work)
    n_users, n_items = parts["train"].shape
    user_raw, item_raw = pc.load_features(args.work, "user"), pc.load_features(args.work, "item")
    feats = (with_identity(user_raw, n_users), with_identity(item_raw, n_items))
    clock = pc.Clock()
    trials, best = [], None
    for components in COMPONENTS:
        result = train_config(components, parts, feats, args.seed, args.threads, args.out / f"c{components}")
        trials.append({"no_components": components, "epochs": result["epochs"],
                       "valid_ndcg@10": round(result["ndcg"], 6)})
        print(f"warp c={components}: best valid ndcg@10 {result['ndcg']:.4f} at {result['epochs']} epochs", flush=True)
        if best is None or result["ndcg"] > best["ndcg"]:
            best, best_components = result, components
    total = clock.seconds()
    for name in ("topn.npy", "users.npy"):
        (args.out / f"c{best_components}" / name).replace(args.out / name)
    pc.write_result(args.out, {
        "library": "lightfm", "model": "warp", "epoch_seconds": round(best["epoch_seconds"], 4),
        "epochs": best["epochs"], "total_seconds": total, "valid_ndcg@10": round(best["ndcg"], 6),
        "hyperparameters": {"loss": "warp", "no_components": best_components, "epochs": best["epochs"],
                            "learning_rate": 0.05, "user_features": user_raw is not None,
                            "item_features": item_raw is not None},
        "grid": {"no_components": COMPONENTS, "epochs (checkpoints)": CHECKPOINTS}, "trials": trials,
        "features": {"user_columns": int(feats[0].shape[1]), "item_columns": int(feats[1].shape[1])},
    })


if __name__ == "__main__":
    main()
