"""The item tower (``q_v``) and the user's content taste (granularity ``item``).

:class:`ItemTower` represents item ``v`` as ``q_v = id_v + content_v``: a free id embedding
plus a projection of the item's side data (categorical labels, bags of tags/words, numeric
attributes and time statistics such as popularity and age). During training each item's id
part is dropped with probability ``id_dropout``, so the content part alone has to carry the
item, which is what ranks a brand-new item (:meth:`ItemTower.vectors_for_features`).

:class:`ItemContentEncoder` summarises what a user's history looks like in content space:
the (event-strength weighted) mean of the content vectors of the items the user touched.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from mgrec.encoders import bag_sum, bernoulli_keep, weighted_sum
from mgrec.encoders.content import ItemContentEncoder
from mgrec.sparse import sparse_product, sparse_product_csr, to_torch_csr

__all__ = ["ItemContentEncoder", "ItemTower"]

#: The item-data buffers (all carry one trailing all-zero row for the padding item).
_DATA_BUFFERS = ("item_cat", "item_num", "item_bag_idx", "item_bag_w", "item_time")


class ItemTower(nn.Module):
    """Item vectors ``q_v`` = id embedding + content projection.

    The item side data lives in buffers (set with :meth:`set_item_data`; saved in the
    ``state_dict``, whose bag width may differ from the module's on load). Row ``n_items`` of
    every table and buffer is the padding item, whose vector is exactly zero.

    Args:
        n_items: the catalogue size.
        dim: the vector size ``D``.
        cat_cardinalities: per categorical feature, the number of known labels ``V`` (codes
            ``1..V``; 0 = missing). A table of ``V + 1`` rows is made, so passing ``V + 1``
            (e.g. :meth:`EncodedFeatures.cardinality`) is also safe.
        n_numeric: the number of numeric columns (e.g. value and missing indicator pairs).
        n_bag_tokens: the number of bag tokens (codes ``1..n``; 0 = padding).
        n_time_features: the number of item time statistics (0 = none).
        id_dropout: training-time probability of dropping an item's id part.
        use_content: whether the content part is used at all (False: ids only).
        sparse_ids: the id table gets sparse gradients (rows looked up in a step only); for
            large catalogues trained with a sampled loss, inside ``shared_content(items)``.
    """

    def __init__(
        self,
        n_items: int,
        dim: int,
        *,
        cat_cardinalities: Sequence[int],
        n_numeric: int,
        n_bag_tokens: int,
        n_time_features: int = 0,
        id_dropout: float = 0.0,
        use_content: bool = True,
        sparse_ids: bool = False,
    ) -> None:
        super().__init__()
        if n_items < 1 or dim < 1:
            raise ValueError(f"n_items and dim must be positive, got {n_items}, {dim}")
        if not 0.0 <= id_dropout < 1.0:
            raise ValueError(f"id_dropout must lie in [0, 1), got {id_dropout}")
        self.n_items, self.dim = int(n_items), int(dim)
        self.id_dropout = float(id_dropout)
        self.use_content = bool(use_content)
        self.n_cat = len(cat_cardinalities)
        self.n_numeric, self.n_bag_tokens = int(n_numeric), int(n_bag_tokens)
        self.n_time_features = int(n_time_features)
        self.generator: torch.Generator | None = None
        # shared_content() state: "full" (the catalogue, encoded on first use) or "subset"
        # (the rows of a few items, looked up through _local_map), and the cached tables
        self._shared: str | None = None
        self._content_cache: torch.Tensor | None = None
        self._row_cache: torch.Tensor | None = None
        self._local_map: torch.Tensor | None = None
        self._n_local = 0
        self.id_embedding = nn.Embedding(n_items + 1, dim, padding_idx=n_items, sparse=sparse_ids)
        self.cat_embeddings = nn.ModuleList(
            nn.Embedding(int(c) + 1, dim, padding_idx=0) for c in cat_cardinalities
        ) if use_content else nn.ModuleList()
        self.bag_embedding = (nn.Embedding(self.n_bag_tokens + 1, dim, padding_idx=0)
                              if use_content and self.n_bag_tokens > 0 else None)
        self.num_proj = (nn.Linear(self.n_numeric, dim, bias=False)
                         if use_content and self.n_numeric > 0 else None)
        self.time_proj = (nn.Linear(self.n_time_features, dim, bias=False)
                          if use_content and self.n_time_features > 0 else None)
        rows = n_items + 1
        self.register_buffer("item_cat", torch.zeros(rows, self.n_cat, dtype=torch.int64))
        self.register_buffer("item_num", torch.zeros(rows, self.n_numeric))
        self.register_buffer("item_bag_idx", torch.zeros(rows, 0, dtype=torch.int64))
        self.register_buffer("item_bag_w", torch.zeros(rows, 0))
        self.register_buffer("item_time", torch.zeros(rows, self.n_time_features))
        self._bag_csr = _Derived()  # see _bag_matrices

    # ------------------------------------------------------------------ data
    def set_item_data(
        self,
        cat: torch.Tensor,
        num: torch.Tensor,
        bag_idx: torch.Tensor,
        bag_w: torch.Tensor,
        time_feats: torch.Tensor | None = None,
    ) -> None:
        """Store the side data of the ``n_items`` items (a zero padding row is appended).

        Args:
            cat: ``(N, Fc)`` int64 categorical codes (0 = missing).
            num: ``(N, Fn)`` float numeric features.
            bag_idx: ``(N, Tb)`` int64 bag token codes, padded with 0.
            bag_w: ``(N, Tb)`` float token weights (0 where padded).
            time_feats: ``(N, Ft)`` float item time statistics, or ``None`` for zeros.

        Raises:
            ValueError: for shapes that do not match the tower or codes out of range.
        """
        n = self.n_items
        if time_feats is None:
            time_feats = torch.zeros(n, self.n_time_features)
        cat, num, bag_idx, bag_w, time_feats = self._check_features(
            cat, num, bag_idx, bag_w, time_feats, n_rows=n)
        device = self.item_cat.device
        for name, value in zip(_DATA_BUFFERS, (cat, num, bag_idx, bag_w, time_feats), strict=True):
            pad = torch.zeros(1, *value.shape[1:], dtype=value.dtype)
            setattr(self, name, torch.cat([value.cpu(), pad]).to(device))

    def _check_features(
        self,
        cat: torch.Tensor,
        num: torch.Tensor,
        bag_idx: torch.Tensor,
        bag_w: torch.Tensor,
        time_feats: torch.Tensor,
        *,
        n_rows: int | None,
    ) -> tuple[torch.Tensor, ...]:
        """Validate feature tensors and cast them to int64/float32."""
        cat, bag_idx = torch.as_tensor(cat, dtype=torch.int64), torch.as_tensor(bag_idx, dtype=torch.int64)
        num, bag_w = torch.as_tensor(num, dtype=torch.float32), torch.as_tensor(bag_w, dtype=torch.float32)
        time_feats = torch.as_tensor(time_feats, dtype=torch.float32)
        n = cat.shape[0] if n_rows is None else n_rows
        expect = {"cat": (cat, self.n_cat), "num": (num, self.n_numeric),
                  "time_feats": (time_feats, self.n_time_features)}
        for name, (t, width) in expect.items():
            if t.dim() != 2 or tuple(t.shape) != (n, width):
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected ({n}, {width})")
        if bag_idx.dim() != 2 or bag_idx.shape[0] != n or bag_w.shape != bag_idx.shape:
            raise ValueError(f"bag_idx {tuple(bag_idx.shape)} and bag_w {tuple(bag_w.shape)} "
                             f"must both be ({n}, Tb)")
        for f in range(self.n_cat):
            hi = self.cat_embeddings[f].num_embeddings - 1 if self.use_content else None
            col = cat[:, f]
            if len(col) and (col.min() < 0 or (hi is not None and col.max() > hi)):
                raise ValueError(f"categorical feature {f}: codes must lie in 0..{hi}")
        if bag_idx.numel() and (bag_idx.min() < 0 or bag_idx.max() > self.n_bag_tokens):
            raise ValueError(f"bag token codes must lie in 0..{self.n_bag_tokens}")
        return cat, num, bag_idx, bag_w, time_feats

    def _load_from_state_dict(
        self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # The item data may have another bag width than this freshly built module: adopt it.
        for name in _DATA_BUFFERS:
            value = state_dict.get(prefix + name)
            mine = getattr(self, name)
            if value is not None and tuple(value.shape) != tuple(mine.shape):
                setattr(self, name, torch.zeros(value.shape, dtype=mine.dtype, device=mine.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ vectors
    def forward(
        self,
        items: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Item vectors: id embedding (dropped per occurrence while training) + content.

        Args:
            items: int64 item codes of any shape (``n_items`` = padding, a zero vector);
                ``None`` for the whole catalogue ``0..n_items-1``.
            generator: draws the id dropout (default: ``self.generator``).
            scale: optional factors of ``items``' shape multiplied into the vectors (fused
                into the lookup: cheaper than scaling the result).

        Returns:
            ``items.shape + (D,)`` float vectors (``(n_items, D)`` for ``None``).
        """
        if items is None and self._shared == "subset":
            raise RuntimeError("the whole catalogue was asked for inside shared_content(items)")
        idx = self._index(items)
        vec = self._rows(idx, self._id_keep(idx, generator), self._row_table(idx.numel()))
        return vec if scale is None else vec * scale.unsqueeze(-1).to(vec.dtype)

    def pooled(
        self,
        items: torch.Tensor,
        weights: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``sum_l weights[..., l] * self(items)[..., l, :]``: the vectors summed over the last
        axis of ``items`` (padding contributes nothing).

        Args:
            items: int64 item codes ``(..., L)``.
            weights: ``(..., L)`` factors, or ``None`` for ones.
            generator: draws the id dropout, exactly as :meth:`forward` would.

        Returns:
            ``(..., D)`` float vectors.
        """
        keep = self._id_keep(items, generator)
        table = self._row_table(items.numel())
        if table is None or items.dim() == 0 or items.shape[-1] == 0:
            return weighted_sum(self._rows(items, keep, table), weights)
        return bag_sum(table, self._row_index(items, keep, table), weights, padding_idx=table.shape[0] - 1)

    def pooled_content(self, items: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_l weights[..., l] * self.content(items)[..., l, :]``.

        Args:
            items: int64 item codes ``(..., L)``.
            weights: ``(..., L)`` factors, or ``None`` for ones.

        Returns:
            ``(..., D)`` float vectors (zeros when ``use_content`` is False).
        """
        table = self._content_table(items.numel()) if self.use_content else None
        if table is None or items.dim() == 0 or items.shape[-1] == 0:
            return weighted_sum(self.content(items), weights)
        pad = self._n_local if self._local_map is not None else self.n_items
        return bag_sum(table, self._local(items), weights, padding_idx=pad)

    def _id_keep(self, idx: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        """Per-occurrence bool "keep the id part" mask while training with id dropout, else None."""
        if not (self.training and self.id_dropout > 0.0):
            return None
        gen = generator if generator is not None else self.generator
        return bernoulli_keep(idx.shape, 1.0 - self.id_dropout, gen, idx.device)

    def _rows(self, idx: torch.Tensor, keep: torch.Tensor | None, table: torch.Tensor | None) -> torch.Tensor:
        """``idx.shape + (D,)`` vectors ``id * keep + content``; exactly zero for padding.

        With ``table`` (from :meth:`_row_table`) this is one gather: kept occurrences read
        ``id + content``, dropped ones ``content``, padding a constant zero row (so no
        gradient reaches the padding rows). Without it the few rows are encoded.
        """
        n = self.n_items
        valid = idx != n
        if table is None:
            vec = self.id_embedding(idx)
            if keep is not None:
                vec = vec * keep.unsqueeze(-1).to(vec.dtype)
            if self.use_content:
                vec = vec + self._encode_rows(idx.reshape(-1)).reshape(*idx.shape, self.dim)
            return vec * valid.unsqueeze(-1).to(vec.dtype)
        eff = self._row_index(idx, keep, table)
        return table.index_select(0, eff.reshape(-1)).reshape(*idx.shape, self.dim)

    def _row_index(self, idx: torch.Tensor, keep: torch.Tensor | None, table: torch.Tensor) -> torch.Tensor:
        """Rows of :meth:`_row_table` to read: ``idx`` if kept, ``n_items + idx`` if the id is
        dropped (the zero row without content), the last (zero) row for padding."""
        n, zero_row = self.n_items, table.shape[0] - 1
        local = self._local(idx)
        k = self._n_local if self._local_map is not None else n
        if keep is None:
            eff = local
        elif self.use_content:
            eff = torch.where(keep, local, local + k)
        else:
            eff = torch.where(keep, local, zero_row)
        return torch.where(idx != n, eff, zero_row)

    def _local(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows of the cached tables for item codes ``idx`` (the codes themselves, except
        inside ``shared_content(items)``)."""
        if self._local_map is None:
            return idx
        local = self._local_map[idx]
        if bool((local < 0).any()):
            raise IndexError("an item outside the shared_content(items) block was looked up")
        return local

    def _row_table(self, n_lookups: int) -> torch.Tensor | None:
        """``[id + content; content; 0]`` (``2 n_items + 1`` rows), or ``[id; 0]`` without
        content; ``None`` when encoding the looked-up rows one by one is cheaper (see
        :meth:`_content_table`). Inside :meth:`shared_content` it is built once."""
        if self._row_cache is not None:
            return self._row_cache
        if self._shared == "full":  # the first lookup inside shared_content(): encode once
            self._row_cache = self._full_row_table(self._content_table(n_lookups) if self.use_content else None)
            return self._row_cache
        content = self._content_table(n_lookups) if self.use_content else None
        if self.use_content and content is None:
            return None
        return self._full_row_table(content)

    def _full_row_table(self, content: torch.Tensor | None) -> torch.Tensor:
        n, ids = self.n_items, self.id_embedding.weight
        zero = ids.new_zeros(1, self.dim)
        return torch.cat([ids[:n], zero] if content is None else [ids[:n] + content[:n], content[:n], zero])

    def _content_table(self, n_lookups: int) -> torch.Tensor | None:
        """All rows' content vectors (padding included): the shared one inside
        :meth:`shared_content`, a fresh one when ``n_lookups`` exceeds the catalogue (cheaper
        to encode every item once and gather), else ``None``."""
        if self._content_cache is not None:
            return self._content_cache
        if self._shared == "full":
            self._content_cache = self._encode_rows(None)
            return self._content_cache
        return self._encode_rows(None) if n_lookups > self.n_items else None

    @property
    def _dtype(self) -> torch.dtype:
        return self.id_embedding.weight.dtype

    def content(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """The content-only part of the item vectors (zeros when ``use_content`` is False).

        Args:
            items: int64 item codes of any shape, or ``None`` for the whole catalogue.

        Returns:
            ``items.shape + (D,)`` float vectors.
        """
        idx = self._index(items)
        if not self.use_content:
            return self.id_embedding.weight.new_zeros(*idx.shape, self.dim)
        table = self._content_table(idx.numel())
        if table is not None:
            return table.index_select(0, self._local(idx).reshape(-1)).reshape(*idx.shape, self.dim)
        return self._encode_rows(idx.reshape(-1)).reshape(*idx.shape, self.dim)

    @contextmanager
    def shared_content(self, items: torch.Tensor | None = None) -> Iterator[None]:
        """Within the block, every lookup gathers from one table of item vectors computed once
        (the same values and gradients, less work when the item tower is used several times in
        one step: history, friends' items, the catalogue).

        Args:
            items: ``None``: the table covers the whole catalogue and is encoded at the first
                lookup (none: no work). Item codes of any shape: the table covers only these
                items (and padding), so a sampled-softmax step over a large catalogue encodes
                the items it touches, not all of them; looking up any other item, or the
                whole catalogue, inside the block is an error. A nested ``items`` block wins
                over an outer one; the outer state is restored on exit.
        """
        saved = (self._shared, self._content_cache, self._row_cache, self._local_map, self._n_local)
        if items is not None:
            self._enter_subset(items)
        elif self._shared is None:
            self._shared = "full"
        try:
            yield
        finally:
            self._shared, self._content_cache, self._row_cache, self._local_map, self._n_local = saved

    def _enter_subset(self, items: torch.Tensor) -> None:
        n = self.n_items
        flat = items.reshape(-1).to(self.item_cat.device)
        used = torch.zeros(n + 1, dtype=torch.bool, device=flat.device)  # O(n_items), no sort
        used[flat] = True
        used[n] = True
        uniq = used.nonzero().squeeze(1)  # ascending: padding last
        m = int(uniq.numel()) - 1
        local = torch.full((n + 1,), -1, dtype=torch.int64, device=uniq.device)
        local[uniq] = torch.arange(m + 1, device=uniq.device)
        content = self._encode_rows(uniq) if self.use_content else None  # padding row: zeros
        ids = F.embedding(uniq[:m], self.id_embedding.weight, sparse=self.id_embedding.sparse)
        zero = ids.new_zeros(1, self.dim)
        rows = torch.cat([ids, zero] if content is None else [ids + content[:m], content[:m], zero])
        self._shared, self._content_cache, self._row_cache = "subset", content, rows
        self._local_map, self._n_local = local, m

    def _encode_rows(self, rows: torch.Tensor | None) -> torch.Tensor:
        """Content vectors of the buffer rows ``rows`` (``None``: all rows, padding included)."""
        if rows is None:
            return self._encode(self.item_cat, self.item_num, self.item_bag_idx, self.item_bag_w,
                                self.item_time, catalogue_rows=...)
        if self._bags_by_product():  # the rows' bags come from the bag matrix: no gather
            bag_idx, bag_w = self.item_bag_idx[:0], self.item_bag_w[:0]
        else:
            bag_idx, bag_w = self.item_bag_idx[rows], self.item_bag_w[rows]
        return self._encode(self.item_cat[rows], self.item_num[rows], bag_idx, bag_w, self.item_time[rows],
                            catalogue_rows=rows)

    def _bags_by_product(self) -> bool:
        """Whether catalogue rows' bags are summed by a product with the bag matrix (training)
        rather than by ``embedding_bag`` over the padded bag buffers."""
        return self.bag_embedding is not None and self.item_bag_idx.shape[1] > 0 \
            and self.bag_embedding.weight.requires_grad and torch.is_grad_enabled()

    def vectors_for_features(
        self,
        cat: torch.Tensor,
        num: torch.Tensor,
        bag_idx: torch.Tensor,
        bag_w: torch.Tensor,
        time_feats: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Content-only vectors of NEW items (cold start), from their encoded side data.

        Args:
            cat: ``(n, Fc)`` int64 categorical codes (0 = missing/unknown).
            num: ``(n, Fn)`` float numeric features.
            bag_idx: ``(n, Tb)`` int64 bag token codes (0 = padding); ``bag_w`` their weights.
            bag_w: ``(n, Tb)`` float token weights.
            time_feats: ``(n, Ft)`` item time statistics, or ``None`` (zeros: the average
                item, as the statistics are standardised).

        Returns:
            ``(n, D)`` float vectors (zeros when ``use_content`` is False).
        """
        n = int(torch.as_tensor(cat).shape[0])
        if time_feats is None:
            time_feats = torch.zeros(n, self.n_time_features)
        tensors = self._check_features(cat, num, bag_idx, bag_w, time_feats, n_rows=n)
        device = self.id_embedding.weight.device
        if not self.use_content:
            return torch.zeros(n, self.dim, device=device)
        return self._encode(*(t.to(device) for t in tensors))

    def _bag_matrices(self) -> tuple[sp.csr_matrix, torch.Tensor, torch.Tensor]:
        """The catalogue's bags as a sparse CSR matrix ``S`` (rows = items with the padding row,
        columns = tokens, values = weights): the scipy matrix, then ``S`` and ``S^T`` as torch
        CSR tensors, built once per state of the buffers."""
        idx, w = self.item_bag_idx, self.item_bag_w
        key = (idx.data_ptr(), idx._version, w.data_ptr(), w._version, tuple(idx.shape), str(idx.device))
        cached = self._bag_csr.value
        if cached is None or cached[0] != key:
            codes, weights = idx.cpu().numpy(), w.detach().cpu().numpy()
            r, c = np.nonzero(codes)  # token 0 is the padding token
            bags = sp.csr_matrix((weights[r, c], (r, codes[r, c])), shape=(idx.shape[0], self.n_bag_tokens + 1))
            cached = (key, bags, to_torch_csr(bags, idx.device), to_torch_csr(bags.T, idx.device))
            self._bag_csr.value = cached
        return cached[1], cached[2], cached[3]

    def _index(self, items: torch.Tensor | None) -> torch.Tensor:
        if items is None:
            return torch.arange(self.n_items, device=self.id_embedding.weight.device)
        return items

    def _encode(
        self,
        cat: torch.Tensor,
        num: torch.Tensor,
        bag_idx: torch.Tensor,
        bag_w: torch.Tensor,
        time_feats: torch.Tensor,
        *,
        catalogue_rows: Any = None,
    ) -> torch.Tensor:
        """Content vectors ``(n, D)`` of flat feature rows.

        ``catalogue_rows``: where the rows come from: ``None`` (new items), ``...`` (the whole
        catalogue, padding row included) or a tensor of catalogue rows. While training, the
        whole catalogue's bags are summed by a product with the fixed bag matrix, a subset's
        (the items one sampled-softmax step touches) by a product with its rows of that
        matrix; neither backward pass sorts the token ids, unlike ``embedding_bag``'s.
        """
        out = self.id_embedding.weight.new_zeros(cat.shape[0], self.dim)
        for f, emb in enumerate(self.cat_embeddings):
            out = out + emb(cat[:, f])
        if catalogue_rows is not None and self._bags_by_product():
            weight = self.bag_embedding.weight
            if catalogue_rows is ...:
                out = out + sparse_product_csr(weight, *self._bag_matrices()[1:])
            else:  # a subset (the items a sampled-softmax step touches): its rows of the matrix
                rows = self._bag_matrices()[0][catalogue_rows.detach().cpu().numpy()]
                out = out + sparse_product(weight, rows)
        elif self.bag_embedding is not None and bag_idx.shape[1] > 0:
            weight = self.bag_embedding.weight
            out = out + F.embedding_bag(bag_idx, weight, mode="sum", per_sample_weights=bag_w, padding_idx=0)
        if self.num_proj is not None:
            out = out + self.num_proj(num)
        if self.time_proj is not None:
            out = out + self.time_proj(time_feats)
        return out


class _Derived:
    """A cache of values derived from a module's buffers (``value``); copies start empty, so
    a deep-copied module rebuilds it (sparse CSR tensors cannot be deep-copied)."""

    def __init__(self) -> None:
        self.value: Any = None

    def __deepcopy__(self, memo: dict[int, Any]) -> _Derived:
        return _Derived()

    def __getstate__(self) -> dict[str, Any]:
        return {"value": None}
