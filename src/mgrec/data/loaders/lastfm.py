"""HetRec 2011 Last.fm 2K loader (``lastfm-2k``).

Users listen to artists (the items); the weight of an interaction is the play count and
there are no interaction timestamps. Friendships are mutual and listed in both directions.
Tag assignments become the item feature ``tags``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mgrec.data.dataset import Dataset, FeatureTable, SocialGraph
from mgrec.data.loaders._common import bags, feature_frame, int_vocab, scatter
from mgrec.data.readers import file_line, parse_floats, parse_ints, read_table
from mgrec.errors import DataError

__all__ = ["load_lastfm2k"]

logger = logging.getLogger(__name__)


def load_lastfm2k(folder: Path) -> Dataset:
    """Load HetRec 2011 Last.fm 2K.

    Files (tab-separated, with headers): ``user_artists.dat`` (interactions; weight = play
    count), ``user_friends.dat`` (mutual friendships, each listed in both directions, loaded
    as one undirected link per pair), ``artists.dat`` (item feature ``name``, text),
    ``tags.dat`` (Latin-1) with ``user_taggedartists.dat`` (item feature ``tags``: tag names,
    a tag repeated once per assignment).

    The item vocabulary is the artists of ``user_artists.dat``; tag rows of other artists (and
    rows whose tag name is empty) are dropped and counted in ``meta["tag_rows_dropped"]``. The user vocabulary is the
    users of ``user_artists.dat`` together with those of ``user_friends.dat``.

    Args:
        folder: the ``lastfm-2k`` folder.

    Returns:
        The dataset (1,892 users, 17,632 artists, 92,834 interactions and 12,717 friendships
        for the HetRec release).

    Raises:
        DataError: a missing file, malformed content, or a tag id missing from ``tags.dat``.
    """
    folder = Path(folder)
    ua_path = folder / "user_artists.dat"
    ua = _read(ua_path, ["userID", "artistID", "weight"])
    if len(ua) == 0:
        raise DataError("no interactions", file=ua_path)
    ua_users = parse_ints(ua, "userID", ua_path)
    ua_items = parse_ints(ua, "artistID", ua_path)
    plays = parse_floats(ua, "weight", ua_path)

    uf_path = folder / "user_friends.dat"
    uf = _read(uf_path, ["userID", "friendID"])
    f_src = parse_ints(uf, "userID", uf_path)
    f_dst = parse_ints(uf, "friendID", uf_path)

    users, u_uniq = int_vocab(ua_users, f_src, f_dst)
    items, i_uniq = int_vocab(ua_items)
    interactions = pd.DataFrame({
        "user": np.searchsorted(u_uniq, ua_users).astype(np.int64),
        "item": np.searchsorted(i_uniq, ua_items).astype(np.int64),
        "weight": plays.astype(np.float32),
    })
    social, social_meta = _friendships(np.searchsorted(u_uniq, f_src), np.searchsorted(u_uniq, f_dst))

    names, names_dropped = _artist_names(folder / "artists.dat", i_uniq)
    tags, tags_dropped = _artist_tags(folder / "tags.dat", folder / "user_taggedartists.dat", i_uniq)
    item_features = FeatureTable(feature_frame({"name": names, "tags": tags}), {"name": "text", "tags": "multi"})
    if tags_dropped:
        logger.info("%s: dropped %d tag rows of artists nobody listened to (or with empty tags)",
                       folder / "user_taggedartists.dat", tags_dropped)
    return Dataset(
        name="lastfm-2k", users=users, items=items, interactions=interactions,
        item_features=item_features, social=social,
        meta={
            "weight_kind": "play_count",
            "source_files": ["user_artists.dat", "user_friends.dat", "artists.dat", "tags.dat",
                             "user_taggedartists.dat"],
            "tag_rows_dropped": tags_dropped,
            "artists_without_interactions": names_dropped,
            **social_meta,
        },
    )


def _read(path: Path, columns: Sequence[str], *, encoding: str = "utf-8") -> pd.DataFrame:
    """A tab-separated file with a header that must hold ``columns``."""
    frame = read_table(path, sep="\t", header=True, encoding=encoding)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"header lacks the column(s) {missing}", file=path, line=1, field=missing[0])
    return frame


def _check_unique(ids: np.ndarray, frame: pd.DataFrame, path: Path, field: str) -> None:
    """Raise a DataError at the first repeated id of a one-row-per-entity file."""
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise DataError(f"duplicate id {ids[row]}", file=path, line=file_line(frame, row), field=field)


def _friendships(src: np.ndarray, dst: np.ndarray) -> tuple[SocialGraph, dict[str, int]]:
    """One undirected link per friend pair (``a < b``), plus counts for ``meta``."""
    self_loops = int((src == dst).sum())
    pairs = SocialGraph(src, dst, np.ones(len(src), np.float32), directed=False).undirected_pairs()
    # a pair listed in one direction only appears once among the (sorted) directed rows
    keep = src != dst
    directed = np.unique(np.stack([src[keep], dst[keep]], 1), axis=0) if keep.any() else np.zeros((0, 2))
    one_way = 2 * len(pairs) - len(directed)
    if self_loops or one_way:
        logger.warning("user_friends.dat: %d self-links dropped, %d pairs listed in one direction only",
                       self_loops, one_way)
    graph = SocialGraph(pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64),
                        np.ones(len(pairs), np.float32), directed=False)
    return graph, {"friend_rows": int(len(src)), "friend_self_links_dropped": self_loops,
                   "friend_pairs_one_direction": int(one_way)}


def _artist_names(path: Path, i_uniq: np.ndarray) -> tuple[np.ndarray, int]:
    """Artist names aligned with the item codes, and how many listed artists are not items."""
    frame = _read(path, ["id", "name"])
    ids = parse_ints(frame, "id", path)
    _check_unique(ids, frame, path, "id")
    pos = np.searchsorted(i_uniq, ids).clip(0, max(len(i_uniq) - 1, 0))
    known = i_uniq[pos] == ids
    text = frame["name"].fillna("").str.strip()
    text = text.where(text != "", None).to_numpy(dtype=object)
    return scatter(pos[known], text[known], len(i_uniq)), int((~known).sum())


def _artist_tags(tags_path: Path, assign_path: Path, i_uniq: np.ndarray) -> tuple[np.ndarray, int]:
    """Per item code, the sorted bag of tag names; and the number of dropped tag rows."""
    tf = _read(tags_path, ["tagID", "tagValue"], encoding="latin-1")
    tag_ids = parse_ints(tf, "tagID", tags_path)
    _check_unique(tag_ids, tf, tags_path, "tagID")
    tag_names = tf["tagValue"].astype(object).map(lambda s: s.strip() if isinstance(s, str) else "")
    order = np.argsort(tag_ids, kind="stable")
    tag_ids, tag_names = tag_ids[order], tag_names.to_numpy(dtype=object)[order]

    ta = _read(assign_path, ["userID", "artistID", "tagID", "day", "month", "year"])
    artists = parse_ints(ta, "artistID", assign_path)
    tids = parse_ints(ta, "tagID", assign_path)
    tpos = np.searchsorted(tag_ids, tids).clip(0, max(len(tag_ids) - 1, 0))
    unknown = (tag_ids[tpos] != tids) if len(tag_ids) else np.ones(len(tids), bool)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise DataError(f"tag id {tids[row]} is not in {tags_path.name}", file=assign_path,
                        line=file_line(ta, row), field="tagID")
    apos = np.searchsorted(i_uniq, artists).clip(0, max(len(i_uniq) - 1, 0))
    known = (i_uniq[apos] == artists) & (tag_names[tpos] != "")
    return bags(apos[known], tag_names[tpos[known]], len(i_uniq)), int((~known).sum())
