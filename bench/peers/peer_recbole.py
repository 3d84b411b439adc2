"""RecBole 1.2.1 (BPR, LightGCN, SASRec, EASE, MultiVAE, and Pop as a floor) on an exported split; runs in
``.peers/recbole`` with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``.

RecBole reads our exact split through its pre-split benchmark files (``benchmark_filename:
[train, valid, test]``: no filtering, no re-split, ids remapped over the three files together).
Every model keeps RecBole's default hyperparameters; validation picks the epoch by NDCG@10
with full ranking and RecBole's early stopping (``stopping_step`` 10), epochs capped by
``--max-epochs``. SASRec trains with the CE loss (``train_neg_sample_args: None``) on the
sequences written by :mod:`export` (each training event predicted from the user's earlier
training events in time order).

After training, the best epoch's checkpoint is reloaded and ``full_sort_predict`` scores every
item for each test user (SASRec: from the user's last 50 train and valid items in time order);
train and valid items are dropped and the top 100 are written. Usage::

    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 .peers/recbole/bin/python bench/peers/peer_recbole.py \\
        --model lightgcn --work W --out O
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import peer_common as pc

MODELS = {"bpr": "BPR", "lightgcn": "LightGCN", "sasrec": "SASRec", "ease": "EASE", "multivae": "MultiVAE",
          "pop": "Pop"}
SEQUENTIAL = {"sasrec"}


def recbole_config(args) -> dict:  # noqa: ANN001
    """The settings we give RecBole; everything else is its default."""
    config = {
        "data_path": str((args.work / "recbole").resolve()),
        "benchmark_filename": ["train", "valid", "test"],
        "load_col": None,
        "eval_args": {"group_by": "user", "order": "RO", "split": {"RS": [0.8, 0.1, 0.1]}, "mode": "full"},
        "metrics": ["Recall", "NDCG"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "epochs": args.max_epochs,
        "stopping_step": 10,
        "seed": args.seed,
        "reproducibility": True,
        "use_gpu": False,
        "show_progress": False,
        "checkpoint_dir": str((args.out / "saved").resolve()),
        "save_dataset": False,
        "save_dataloaders": False,
        "log_wandb": False,
        "worker": 0,
    }
    if args.model in SEQUENTIAL:
        # item_id_list shares item_id's vocabulary (RecBole sets this only for its own augmentation)
        # RecBole insists on time order for sequential models (the files are already cut: no effect)
        config.update({"loss_type": "CE", "train_neg_sample_args": None, "alias_of_item_id": ["item_id_list"]})
        config["eval_args"] = {**config["eval_args"], "order": "TO"}
    return config


def timed_epochs(trainer) -> list[float]:  # noqa: ANN001
    """Wrap ``trainer._train_epoch`` so that each training pass (no validation) is timed."""
    times: list[float] = []
    train_epoch = trainer._train_epoch

    def timed(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        t0 = time.perf_counter()
        out = train_epoch(*a, **kw)
        times.append(time.perf_counter() - t0)
        return out

    trainer._train_epoch = timed
    return times


def load_best(model, trainer) -> None:  # noqa: ANN001
    """Reload the checkpoint of the best validation epoch (as RecBole's ``evaluate`` does)."""
    import torch

    checkpoint = torch.load(trainer.saved_model_file, map_location="cpu")
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    for cache in ("restore_user_e", "restore_item_e"):  # LightGCN caches the last epoch's embeddings
        if hasattr(model, cache):
            setattr(model, cache, None)
    model.eval()


def general_scorer(model, dataset, n_items: int):  # noqa: ANN001, ANN201
    """``(B, n_items)`` scores in mgrec's item codes for a batch of mgrec user codes."""
    import torch
    from recbole.data.interaction import Interaction

    user_ids = dataset.field2token_id[dataset.uid_field]
    item_codes = item_code_map(dataset, n_items)

    def score(users: np.ndarray) -> np.ndarray:
        uid = torch.tensor([user_ids[str(u)] for u in users], dtype=torch.long)
        with torch.no_grad():
            s = model.full_sort_predict(Interaction({dataset.uid_field: uid})).view(len(users), -1).numpy()
        return in_mgrec_codes(s, item_codes)

    return score


def sequential_scorer(model, dataset, n_items: int, history: dict, max_len: int):  # noqa: ANN001, ANN201
    """Like :func:`general_scorer` for SASRec: each user's history of train and valid items."""
    import torch
    from recbole.data.interaction import Interaction

    item_ids = dataset.field2token_id[dataset.iid_field]
    item_codes = item_code_map(dataset, n_items)
    indptr, items = history["indptr"], history["items"]

    def score(users: np.ndarray) -> np.ndarray:
        seq = np.zeros((len(users), max_len), dtype=np.int64)
        length = np.ones(len(users), dtype=np.int64)  # an empty history reads as one padding item
        for row, u in enumerate(users):
            last = items[indptr[u]:indptr[u + 1]][-max_len:]
            seq[row, :len(last)] = [item_ids[str(i)] for i in last]
            length[row] = max(1, len(last))
        batch = Interaction({model.ITEM_SEQ: torch.from_numpy(seq), model.ITEM_SEQ_LEN: torch.from_numpy(length)})
        with torch.no_grad():
            s = model.full_sort_predict(batch).numpy()
        return in_mgrec_codes(s, item_codes)

    return score


def item_code_map(dataset, n_items: int) -> np.ndarray:  # noqa: ANN001
    """RecBole's internal id of each mgrec item code (tokens are the codes); -1 for an item
    RecBole never saw (e.g. SASRec's files leave out events without history)."""
    token_ids = dataset.field2token_id[dataset.iid_field]
    return np.array([token_ids.get(str(c), -1) for c in range(n_items)], dtype=np.int64)


def in_mgrec_codes(scores: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """``(B, n_items)`` scores in mgrec's item order; items RecBole does not know get ``-inf``."""
    known = item_ids >= 0
    out = np.full((scores.shape[0], len(item_ids)), -np.inf, dtype=np.float32)
    out[:, known] = scores[:, item_ids[known]]
    return out


def main() -> None:
    args = pc.base_parser(__doc__).parse_args()
    pc.set_threads(args.threads)
    if args.model not in MODELS:
        raise SystemExit(f"unknown RecBole model {args.model!r}; choose from {sorted(MODELS)}")
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import ModelType, get_model, get_trainer, init_seed

    if not hasattr(np, "float"):  # RecBole's metric code still uses the removed aliases
        np.float = np.float64  # type: ignore[attr-defined]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    parts = pc.load_parts(args.work)
    n_items = parts["train"].shape[1]
    sequential = args.model in SEQUENTIAL
    config = Config(model=MODELS[args.model], dataset="seq" if sequential else "inter",
                    config_dict=recbole_config(args))
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    clock = pc.Clock()
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    build_seconds = clock.seconds()
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    epochs = timed_epochs(trainer)
    best_valid, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    total = clock.seconds()
    load_best(model, trainer)
    if sequential:
        history = dict(np.load(args.work / "recbole" / "history.npz"))
        score = sequential_scorer(model, dataset, n_items, history, config["MAX_ITEM_LIST_LENGTH"])
    else:
        score = general_scorer(model, dataset, n_items)
    pc.write_topn(args.out, score, parts)
    closed_form = config["MODEL_TYPE"] == ModelType.TRADITIONAL  # EASE: the fit happens in __init__
    epoch_seconds = (build_seconds + sum(epochs)) / len(epochs) if closed_form else float(np.mean(epochs))
    hyper = {k: config[k] for k in model_defaults(MODELS[args.model])}
    hyper.update({k: config[k] for k in ("learning_rate", "train_batch_size", "epochs", "stopping_step",
                                         "valid_metric", "train_neg_sample_args") if k in config})
    pc.write_result(args.out, {
        "library": "recbole", "model": args.model, "epoch_seconds": round(epoch_seconds, 4),
        "epochs": len(epochs), "best_epoch": best_epoch(trainer, len(epochs)), "total_seconds": total,
        "build_seconds": build_seconds, "valid_ndcg@10": round(float(best_valid), 6),
        "hyperparameters": jsonable(hyper),
        "closed_form": closed_form,
    })


def best_epoch(trainer, epochs_run: int) -> int:  # noqa: ANN001
    """The 1-based epoch whose checkpoint was kept: RecBole validates every epoch and counts
    in ``cur_step`` the epochs since the best one."""
    return epochs_run - int(trainer.cur_step)


def model_defaults(name: str) -> list[str]:
    """The hyperparameter names of RecBole's own config file for model ``name``."""
    import recbole
    import yaml

    path = Path(recbole.__file__).parent / "properties" / "model" / f"{name}.yaml"
    return list(yaml.safe_load(path.read_text(encoding="utf-8")) or {})


def jsonable(values: dict) -> dict:
    """Config values as plain JSON (enums and numpy scalars to strings and floats)."""
    out = {}
    for k, v in values.items():
        out[k] = v if isinstance(v, (int, float, str, bool, list, dict, type(None))) else str(v)
    return out


if __name__ == "__main__":
    main()
