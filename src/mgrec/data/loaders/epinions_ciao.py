"""Ciao and Epinions loaders (Tang, Gao, Liu; MATLAB ``.mat`` releases).

Both datasets pair a rating matrix (``userid, productid, categoryid, rating, ...``) with a
directed trust network (``truster, trustee``). The authors published several releases whose
user ids are **not** in the same id space; pairing the wrong files silently produces a
meaningless social graph. :func:`check_trust_id_space` rejects the known mismatches.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io

from mgrec.data.dataset import Dataset, FeatureTable, SocialGraph
from mgrec.data.loaders._common import feature_frame, int_vocab
from mgrec.data.readers import read_table, require_file
from mgrec.errors import DataError

__all__ = ["load_ciao", "load_epinions", "check_trust_id_space"]

logger = logging.getLogger(__name__)

CIAO_RATINGS = Path("ciao_with_rating_timestamp") / "rating_with_timestamp.mat"
CIAO_TRUST = Path("ciao") / "trustnetwork.mat"
_CIAO_COLUMNS = ("userid", "productid", "categoryid", "rating", "helpfulness", "timestamp")
_EPINIONS_COLUMNS = ("userid", "productid", "categoryid", "rating")


def load_ciao(folder: Path) -> Dataset:
    """Load Ciao, pair (A) of the data README.

    Ratings: ``ciao_with_rating_timestamp/rating_with_timestamp.mat`` (variable ``rating``:
    userid, productid, categoryid, rating, helpfulness, unix seconds); every row is kept as
    given (duplicates are left to preprocessing); weight = rating, with timestamps.
    Trust: ``ciao/trustnetwork.mat`` (variable ``trustnetwork``), directed.
    Item feature ``category``: each product's most frequent category (ties: the smallest
    id), named from ``catalog_ciao.txt`` when that file is present.

    Never pair the ratings with ``ciao_with_rating_timestamp/trust.mat``: that file (variable
    ``trust``, 57,544 edges) uses the 2,378-user id space of the authors' txt release, not the
    7,375-user space of the ``.mat`` ratings; only 1,763 of its edges exist in the real
    network. A trust file holding the variable ``trust``, or whose ids fail
    :func:`check_trust_id_space`, is rejected with a :class:`DataError`.

    Args:
        folder: the ``ciao`` folder.

    Returns:
        The dataset (7,375 users, 105,114 items, 284,086 ratings, 111,781 directed trust
        edges forming 85,205 distinct user pairs).

    Raises:
        DataError: missing or unreadable files, malformed values, or a foreign trust file.
    """
    folder = Path(folder)
    notes = ["pair (A): rating_with_timestamp.mat with ciao/trustnetwork.mat (never trust.mat)",
             "helpfulness column ignored; duplicate ratings kept as given"]
    return _load_tang(
        "ciao", folder, folder / CIAO_RATINGS, _CIAO_COLUMNS, folder / CIAO_TRUST,
        folder / "catalog_ciao.txt", notes,
    )


def load_epinions(folder: Path) -> Dataset:
    """Load Epinions (the release without timestamps).

    Ratings: ``rating.mat`` (variable ``rating``: userid, productid, categoryid, rating; a
    fifth helpfulness column is accepted and ignored); weight = rating, no timestamps.
    Trust: ``trustnetwork.mat``, directed. Self-links, links naming users who never rated
    and repeated edges are dropped; the counts are in ``meta`` and logged as a warning.
    Item feature ``category`` as for :func:`load_ciao`, named from ``catalog_epinion.txt``.

    Args:
        folder: the ``epinions`` folder.

    Returns:
        The dataset (22,164 users, 296,277 items, 922,267 ratings).

    Raises:
        DataError: missing or unreadable files, malformed values, or a foreign trust file.
    """
    folder = Path(folder)
    notes = ["no timestamps in this release; duplicate ratings kept as given"]
    return _load_tang(
        "epinions", folder, folder / "rating.mat", _EPINIONS_COLUMNS, folder / "trustnetwork.mat",
        folder / "catalog_epinion.txt", notes,
    )


def check_trust_id_space(trust: np.ndarray, rating_users: np.ndarray, *, file: Path | str) -> None:
    """Reject a trust edge list whose user ids are not those of the ratings.

    Two signatures of a foreign id space raise: most distinct trust users never rated; or
    every trust id lies in a prefix ``1..m`` covering less than half of the rating id range
    while the trust users cover less than half of the raters (Ciao's ``trust.mat`` against
    the ``.mat`` ratings: ids <= 2,378 against <= 7,375, 32 % of raters).

    Args:
        trust: ``(E, 2)`` raw user ids.
        rating_users: sorted distinct raw user ids of the ratings.
        file: the trust file, for the message.

    Raises:
        DataError: when the ids look like another id space.
    """
    if len(trust) == 0 or len(rating_users) == 0:
        return
    t_users = np.unique(trust)
    outside = ~np.isin(t_users, rating_users)
    hint = "the trust file and the ratings come from different releases (different user id spaces)"
    if outside.mean() > 0.5:
        raise DataError(f"{int(outside.sum())} of {len(t_users)} trust users never rated; {hint}", file=file)
    covered = np.isin(rating_users, t_users).mean()
    span_t = float(t_users.max() - rating_users.min() + 1)
    span_r = float(rating_users.max() - rating_users.min() + 1)
    if span_t < 0.5 * span_r and covered < 0.5:
        raise DataError(
            f"trust ids all lie in {int(t_users.min())}..{int(t_users.max())} while rating ids reach "
            f"{int(rating_users.max())}, and only {covered:.1%} of raters have a trust link; {hint}",
            file=file,
        )


# ----------------------------------------------------------------------------- shared
def _load_tang(
    name: str, folder: Path, rating_path: Path, columns: tuple[str, ...], trust_path: Path,
    catalog: Path, notes: list[str],
) -> Dataset:
    """Ratings ``.mat`` + trust ``.mat`` (+ optional category catalog) -> Dataset."""
    ratings = _read_mat(rating_path, "rating", columns)
    users_raw, items_raw = ratings["userid"], ratings["productid"]
    users, u_uniq = int_vocab(users_raw)
    items, i_uniq = int_vocab(items_raw)
    trust = _read_trust(trust_path)
    check_trust_id_space(trust, u_uniq, file=trust_path)
    social, social_meta = _trust_graph(trust, u_uniq, trust_path)

    frame = pd.DataFrame({
        "user": np.searchsorted(u_uniq, users_raw).astype(np.int64),
        "item": np.searchsorted(i_uniq, items_raw).astype(np.int64),
        "weight": ratings["rating"].astype(np.float32),
    })
    if "timestamp" in ratings:
        frame["timestamp"] = ratings["timestamp"].astype(np.int64)
    names = _read_catalog(catalog) if catalog.is_file() else {}
    category = _item_categories(frame["item"].to_numpy(), ratings["categoryid"], len(i_uniq), names)
    files = [str(rating_path.relative_to(folder)), str(trust_path.relative_to(folder))]
    if names:
        files.append(str(catalog.relative_to(folder)))
    return Dataset(
        name=name,
        users=users,
        items=items,
        interactions=frame,
        item_features=FeatureTable(feature_frame({"category": category}), {"category": "categorical"}),
        social=social,
        meta={"weight_kind": "rating", "source_files": files, "social_kind": "trust", "notes": notes,
              **social_meta},
    )


def _load_mat(path: Path, variable: str) -> np.ndarray:
    """The 2-D matrix ``variable`` of a MATLAB file; every failure is a DataError naming the file."""
    require_file(path)
    try:
        content = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises many types for a corrupt file
        raise DataError(f"cannot read MATLAB file ({type(err).__name__}: {err})", file=path) from None
    if variable not in content:
        found = sorted(k for k in content if not k.startswith("__"))
        raise DataError(f"no variable {variable!r} (found {found})", file=path, field=variable)
    arr = np.asarray(content[variable])
    if arr.ndim != 2:
        raise DataError(f"expected a 2-D matrix, found shape {arr.shape}", file=path, field=variable)
    return arr


def _as_ints(arr: np.ndarray, path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Columns of a numeric matrix as ``int64``; a NaN or fraction raises naming row and field."""
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"expected a numeric matrix, found {arr.dtype}", file=path)
    out: dict[str, np.ndarray] = {}
    for j, col in enumerate(names):
        values = arr[:, j]
        if np.issubdtype(values.dtype, np.floating):
            bad = ~np.isfinite(values) | (values != np.round(values))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                what = "missing value" if not np.isfinite(values[row]) else f"not an integer: {values[row]!r}"
                raise DataError(f"row {row + 1}: {what}", file=path, field=col)
        out[col] = values.astype(np.int64)
    return out


def _read_mat(path: Path, variable: str, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Named integer columns of a rating matrix (one extra trailing column is tolerated
    unless the layout ends with a timestamp)."""
    arr = _load_mat(path, variable)
    need = len(columns)
    allowed = {need, need + 1} if "timestamp" not in columns else {need}
    if arr.shape[1] not in allowed or arr.shape[0] == 0:
        raise DataError(
            f"expected {need} columns ({', '.join(columns)}) and at least one row, found shape {arr.shape}",
            file=path, field=variable,
        )
    return _as_ints(arr[:, :need], path, columns)


def _read_trust(path: Path) -> np.ndarray:
    """``(E, 2)`` raw truster/trustee ids of the variable ``trustnetwork``."""
    require_file(path)
    try:
        keys = {k for k, _, _ in scipy.io.whosmat(path)}
    except Exception as err:
        raise DataError(f"cannot read MATLAB file ({type(err).__name__}: {err})", file=path) from None
    if "trustnetwork" not in keys and "trust" in keys:
        raise DataError(
            "this is a 'trust' matrix (like ciao_with_rating_timestamp/trust.mat), whose user ids belong "
            "to the 2,378-user txt release, not to the .mat ratings; use ciao/trustnetwork.mat",
            file=path, field="trust",
        )
    arr = _load_mat(path, "trustnetwork")
    if arr.shape[1] != 2:
        raise DataError(f"expected 2 columns (truster, trustee), found shape {arr.shape}", file=path,
                        field="trustnetwork")
    cols = _as_ints(arr, path, ("truster", "trustee"))
    return np.stack([cols["truster"], cols["trustee"]], axis=1)


def _trust_graph(trust: np.ndarray, u_uniq: np.ndarray, path: Path) -> tuple[SocialGraph, dict[str, int]]:
    """Directed trust edges in user codes, after dropping self-links, unknown users and repeats."""
    self_loop = trust[:, 0] == trust[:, 1]
    known = np.isin(trust[:, 0], u_uniq) & np.isin(trust[:, 1], u_uniq)
    keep = ~self_loop & known
    kept = trust[keep]
    _, first = np.unique(kept, axis=0, return_index=True) if len(kept) else (None, np.zeros(0, np.int64))
    first = np.sort(first)
    stats = {
        "trust_rows": int(len(trust)),
        "trust_self_links_dropped": int(self_loop.sum()),
        "trust_unknown_user_links_dropped": int((~self_loop & ~known).sum()),
        "trust_unknown_users": int(len(np.setdiff1d(np.unique(trust[~known]), u_uniq))),
        "trust_duplicates_dropped": int(len(kept) - len(first)),
    }
    if len(first) < len(trust):
        logger.warning(
            "%s: dropped %d self-links, %d links to %d users who never rated, %d repeated links",
            path, stats["trust_self_links_dropped"], stats["trust_unknown_user_links_dropped"],
            stats["trust_unknown_users"], stats["trust_duplicates_dropped"],
        )
    kept = kept[first]
    graph = SocialGraph(
        np.searchsorted(u_uniq, kept[:, 0]).astype(np.int64),
        np.searchsorted(u_uniq, kept[:, 1]).astype(np.int64),
        np.ones(len(kept), np.float32),
        directed=True,
    )
    return graph, stats


def _read_catalog(path: Path) -> dict[int, str]:
    """``category id -> name`` from a catalog file of lines ``<id> <name>``."""
    frame = read_table(path, sep="\t", names=["line"], encoding="latin-1")
    text = frame["line"].astype(object).map(lambda s: s.strip() if isinstance(s, str) else "")
    parts = text.str.split(" ", n=1)
    out: dict[int, str] = {}
    for k, (line_no, tokens) in enumerate(zip(frame["_line"].tolist(), parts.tolist(), strict=True)):
        if len(tokens) != 2 or not tokens[0].isdigit() or not tokens[1].strip():
            raise DataError(f"expected '<id> <name>', found {text.iloc[k]!r}", file=path, line=line_no,
                            field="category")
        out[int(tokens[0])] = tokens[1].strip()
    return out


def _item_categories(items: np.ndarray, cats: np.ndarray, n_items: int, names: dict[int, str]) -> np.ndarray:
    """Each item's most frequent category (ties: the smallest id), as a name or the id string."""
    counts = pd.DataFrame({"item": items, "cat": cats}).value_counts().rename("n").reset_index()
    best = counts.sort_values(["item", "n", "cat"], ascending=[True, False, True], kind="stable")
    best = best.drop_duplicates("item")
    out = np.full(n_items, None, dtype=object)
    labels = [names.get(c, str(c)) for c in best["cat"].astype(np.int64).tolist()]
    out[best["item"].to_numpy()] = np.asarray(labels, dtype=object)
    return out
