"""Encoding side features (a :class:`~mgrec.data.dataset.FeatureTable`) into arrays for models.

Per feature kind:

* ``categorical`` -> ``int64`` codes; **0 is reserved for missing or unknown** labels, known
  labels are ``1 .. V`` (most frequent first).
* ``multi`` -> a ``float32`` CSR matrix ``(n_rows, V)`` of label counts, **L1-normalised per
  row** (each non-empty row sums to 1, so ``row @ embeddings`` is the weighted mean of the
  label embeddings, and a label listed twice weighs twice as much). An empty row is missing.
* ``text`` -> lower-cased ``\\w+`` tokens of at least :data:`MIN_TOKEN_LEN` characters, then
  encoded like ``multi`` (an L1-normalised bag of words).
* ``numeric`` -> ``float32`` standardised values ``(x - mean) / std``; a missing (NaN or
  infinite) value becomes 0 (the mean) and its ``missing`` indicator 1.0. A constant column
  gets ``std = 1``. Each numeric feature also gets a **bucket code**: its quantile bin among
  up to :data:`NUMERIC_BINS` bins cut at the fit rows' quantiles (``1 .. len(edges) + 1``,
  0 = missing), so a model can learn an effect that is not linear in the value (age, say)
  with an embedding per bin, as it does for a categorical feature. A column with fewer than
  two distinct values has no cut points and no bucket code.

Vocabularies, means and standard deviations are fitted on the rows ``fit_on`` (e.g. the
training entities) and kept in a :class:`FeatureEncoder`, which re-applies the same encoding
to new rows (cold-start entities) and saves as JSON (no pickle).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mgrec.data.dataset import FEATURE_KINDS, FeatureTable
from mgrec.errors import DataError

__all__ = ["encode_features", "FeatureSpec", "FeatureEncoder", "EncodedFeatures", "MIN_TOKEN_LEN", "NUMERIC_BINS"]

log = logging.getLogger(__name__)

#: Text tokens shorter than this are dropped ("a", "i", single digits).
MIN_TOKEN_LEN = 2
_TOKEN = r"\w+"
#: The most quantile buckets of a numeric feature.
NUMERIC_BINS = 8
_STATE_VERSION = 2
#: States this code reads: version 1 has no bucket edges (its numeric features get no bucket code).
_READABLE_VERSIONS = (1, 2)


@dataclass(frozen=True)
class FeatureSpec:
    """The fitted encoding of one feature.

    Args:
        name: the column name.
        kind: one of :data:`~mgrec.data.dataset.FEATURE_KINDS`.
        vocab: categorical labels (code = position + 1) or bag tokens (column = position).
        mean: numeric mean on the fit rows.
        std: numeric standard deviation on the fit rows (1.0 when it is 0 or undefined).
        edges: numeric bucket cut points, increasing (value ``x`` falls in bucket
            ``1 + #{e <= x}``); empty: no bucket code.
    """

    name: str
    kind: str
    vocab: tuple[str, ...] = ()
    mean: float = 0.0
    std: float = 1.0
    edges: tuple[float, ...] = ()

    @property
    def n_buckets(self) -> int:
        """Bucket codes of a numeric feature (``len(edges) + 1``; 0 without edges)."""
        return len(self.edges) + 1 if self.edges else 0


def encode_features(
    table: FeatureTable,
    *,
    fit_on: np.ndarray | None = None,
    max_vocab: int = 50_000,
    min_count: int = 1,
) -> EncodedFeatures:
    """Fit an encoder on ``table`` (rows ``fit_on``) and encode every row of it.

    Args:
        table: the features, one row per entity code.
        fit_on: rows to fit vocabularies and statistics on, as integer row indices or a
            boolean mask of length ``len(table)``; ``None`` uses all rows.
        max_vocab: keep at most this many labels/tokens per feature (the most frequent;
            ties broken alphabetically).
        min_count: drop labels/tokens found in fewer than this many fit rows (a token repeated
            within one row counts once).

    Returns:
        The encoded arrays together with the fitted :class:`FeatureEncoder`.
    """
    enc = FeatureEncoder.fit(table, fit_on=fit_on, max_vocab=max_vocab, min_count=min_count)
    return enc.transform(table)


@dataclass(frozen=True)
class FeatureEncoder:
    """Fitted parameters of every feature, in table column order."""

    specs: tuple[FeatureSpec, ...]

    @classmethod
    def fit(
        cls,
        table: FeatureTable,
        *,
        fit_on: np.ndarray | None = None,
        max_vocab: int = 50_000,
        min_count: int = 1,
    ) -> FeatureEncoder:
        """Fit vocabularies, means and stds; see :func:`encode_features` for the arguments."""
        if max_vocab < 1 or min_count < 1:
            raise ValueError(f"max_vocab and min_count must be >= 1, got {max_vocab}, {min_count}")
        mask = _fit_mask(fit_on, len(table))
        specs = tuple(_fit_one(name, kind, table.frame[name], mask, max_vocab, min_count)
                      for name, kind in table.kinds.items())
        log.debug("fitted feature encoder on %d rows: %s", int(mask.sum()),
                  ", ".join(f"{s.name}:{s.kind}({len(s.vocab)})" for s in specs))
        return cls(specs)

    @property
    def kinds(self) -> dict[str, str]:
        return {s.name: s.kind for s in self.specs}

    def spec(self, name: str) -> FeatureSpec:
        """The spec of feature ``name`` (``KeyError`` if there is none)."""
        for s in self.specs:
            if s.name == name:
                return s
        raise KeyError(f"no feature {name!r}")

    def transform(self, table: FeatureTable) -> EncodedFeatures:
        """Encode ``table`` with the fitted parameters; unseen labels and tokens map to missing.

        Raises:
            DataError: when ``table`` lacks a fitted feature or holds it as another kind.
        """
        for s in self.specs:
            if s.name not in table.kinds:
                has = ", ".join(table.names)
                raise DataError(f"feature table lacks the column (has: {has})", field=s.name)
            if table.kinds[s.name] != s.kind:
                raise DataError(f"feature is {table.kinds[s.name]}, but the encoder was fitted "
                                f"on {s.kind}", field=s.name)
        n = len(table)
        cats: dict[str, np.ndarray] = {}
        bags: dict[str, sp.csr_matrix] = {}
        nums: dict[str, np.ndarray] = {}
        miss: dict[str, np.ndarray] = {}
        buckets: dict[str, np.ndarray] = {}
        for s in self.specs:
            col = table.frame[s.name]
            if s.kind == "numeric":
                vals = _floats(col, s.name)
                absent = ~np.isfinite(vals)
                z = np.where(absent, 0.0, (np.where(absent, s.mean, vals) - s.mean) / s.std)
                nums[s.name], miss[s.name] = z.astype(np.float32), absent.astype(np.float32)
                if s.edges:
                    code = 1 + np.searchsorted(np.asarray(s.edges), np.where(absent, 0.0, vals), side="right")
                    buckets[s.name] = np.where(absent, 0, code).astype(np.int64)
            elif s.kind == "categorical":
                codes = pd.Index(s.vocab, dtype=object).get_indexer(_labels(col)) + 1
                cats[s.name] = codes.astype(np.int64)
            else:
                rows, toks = _tokens(col, s.kind)
                cols = pd.Index(s.vocab, dtype=object).get_indexer(toks)
                bags[s.name] = _bag(rows, cols, n, len(s.vocab))
        return EncodedFeatures(self, n, cats, bags, nums, miss, buckets)

    def to_state(self) -> dict[str, Any]:
        """A JSON-ready description of the encoder."""
        features = [{"name": s.name, "kind": s.kind, "vocab": list(s.vocab), "mean": s.mean,
                     "std": s.std, "edges": list(s.edges)} for s in self.specs]
        return {"version": _STATE_VERSION, "features": features}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> FeatureEncoder:
        """Rebuild an encoder from :meth:`to_state` output.

        Raises:
            DataError: for a state that is not in this format.
        """
        if not isinstance(state, Mapping) or state.get("version") not in _READABLE_VERSIONS:
            raise DataError(f"feature encoder state: expected version {_STATE_VERSION}")
        specs = []
        for n, item in enumerate(state.get("features", [])):
            try:
                vocab = tuple(str(v) for v in item["vocab"])
                raw_edges = item.get("edges", [])
                if not isinstance(raw_edges, list):
                    raise TypeError(f"edges must be a list, got {type(raw_edges).__name__}")
                edges = tuple(float(e) for e in raw_edges)
                spec = FeatureSpec(str(item["name"]), str(item["kind"]), vocab,
                                   float(item["mean"]), float(item["std"]), edges)
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                raise DataError(f"feature encoder state: bad feature #{n} ({err})") from None
            if list(edges) != sorted(set(edges)) or not all(map(math.isfinite, edges)):
                raise DataError(f"feature encoder state: bucket edges of feature #{n} are not finite and "
                                "strictly increasing", field=spec.name)
            if spec.kind not in FEATURE_KINDS:
                raise DataError(f"feature encoder state: unknown kind {spec.kind!r}",
                                field=spec.name)
            specs.append(spec)
        return cls(tuple(specs))


@dataclass(frozen=True, eq=False)
class EncodedFeatures:
    """Encoded arrays of one feature table plus the encoder that made them.

    Args:
        encoder: the fitted parameters.
        n_rows: the number of encoded rows.
        categorical: name -> ``int64`` codes ``(n_rows,)``, 0 = missing or unknown.
        bags: name -> ``float32`` CSR ``(n_rows, vocab)``, rows L1-normalised (``multi``, ``text``).
        numeric: name -> ``float32`` standardised values ``(n_rows,)``, 0 where missing.
        missing: name -> ``float32`` indicator ``(n_rows,)``, 1.0 where the value was missing.
        buckets: name -> ``int64`` quantile-bucket codes ``(n_rows,)`` of each numeric feature
            with edges, 0 where missing.
    """

    encoder: FeatureEncoder
    n_rows: int
    categorical: Mapping[str, np.ndarray]
    bags: Mapping[str, sp.csr_matrix]
    numeric: Mapping[str, np.ndarray]
    missing: Mapping[str, np.ndarray]
    buckets: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def transform(self, table: FeatureTable) -> EncodedFeatures:
        """Encode new rows (e.g. cold-start entities) with the same parameters."""
        return self.encoder.transform(table)

    def cardinality(self, name: str) -> int:
        """Embedding rows: ``len(vocab) + 1`` for categorical (0 = missing), the bucket codes
        plus one for numeric, else ``len(vocab)``."""
        s = self.encoder.spec(name)
        if s.kind == "numeric":
            return s.n_buckets + 1
        return len(s.vocab) + 1 if s.kind == "categorical" else len(s.vocab)

    def code_columns(self) -> list[str]:
        """The features with integer codes, in encoder order: every categorical feature and
        each numeric feature with bucket edges (its bucket code)."""
        return [s.name for s in self.encoder.specs
                if s.kind == "categorical" or (s.kind == "numeric" and s.name in self.buckets)]

    def codes(self, name: str) -> np.ndarray:
        """``int64`` codes of a :meth:`code_columns` feature (0 = missing or unknown)."""
        return self.categorical[name] if name in self.categorical else self.buckets[name]

    def numeric_matrix(self) -> np.ndarray:
        """``float32`` ``(n_rows, 2 * n_numeric)``: value and missing indicator per feature."""
        names = [s.name for s in self.encoder.specs if s.kind == "numeric"]
        cols = [a for n in names for a in (self.numeric[n], self.missing[n])]
        return np.stack(cols, axis=1) if cols else np.zeros((self.n_rows, 0), dtype=np.float32)

    def to_csr(self) -> sp.csr_matrix:
        """All features side by side as one ``float32`` CSR matrix; see :meth:`column_names`.

        Categorical features become one-hot blocks without a column for missing, bags keep
        their weights, numeric features give a value and a missing-indicator column.
        """
        blocks = []
        for s in self.encoder.specs:
            if s.kind == "categorical":
                codes = self.categorical[s.name]
                rows = np.flatnonzero(codes > 0)
                one_hot = _bag(rows, codes[rows] - 1, self.n_rows, len(s.vocab), normalise=False)
                blocks.append(one_hot)
            elif s.kind == "numeric":
                pair = np.stack([self.numeric[s.name], self.missing[s.name]], axis=1)
                blocks.append(sp.csr_matrix(pair))
            else:
                blocks.append(self.bags[s.name])
        if not blocks:
            return sp.csr_matrix((self.n_rows, 0), dtype=np.float32)
        return sp.hstack(blocks, format="csr", dtype=np.float32)

    def column_names(self) -> list[str]:
        """:meth:`to_csr` column names: ``name=label``, ``name:token``, ``name``,
        ``name?missing``."""
        out: list[str] = []
        for s in self.encoder.specs:
            if s.kind == "categorical":
                out += [f"{s.name}={v}" for v in s.vocab]
            elif s.kind == "numeric":
                out += [s.name, f"{s.name}?missing"]
            else:
                out += [f"{s.name}:{v}" for v in s.vocab]
        return out

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """A JSON-ready dict (encoder, row count) and a flat dict of numpy arrays (safetensors)."""
        arrays: dict[str, np.ndarray] = {}
        for s in self.encoder.specs:
            if s.kind == "categorical":
                arrays[f"cat:{s.name}"] = self.categorical[s.name]
            elif s.kind == "numeric":
                arrays[f"num:{s.name}"] = self.numeric[s.name]
                arrays[f"miss:{s.name}"] = self.missing[s.name]
                if s.name in self.buckets:
                    arrays[f"bucket:{s.name}"] = self.buckets[s.name]
            else:
                m = self.bags[s.name]
                arrays[f"bag_data:{s.name}"] = m.data.astype(np.float32)
                arrays[f"bag_indices:{s.name}"] = m.indices.astype(np.int64)
                arrays[f"bag_indptr:{s.name}"] = m.indptr.astype(np.int64)
        return {"encoder": self.encoder.to_state(), "n_rows": self.n_rows}, arrays

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
    ) -> EncodedFeatures:
        """Rebuild from :meth:`to_state` output.

        Raises:
            DataError: when the state or an array is missing or malformed.
        """
        enc = FeatureEncoder.from_state(state.get("encoder", {}))
        n = int(state.get("n_rows", -1))
        cats, bags, nums, miss, buckets = {}, {}, {}, {}, {}
        try:
            for s in enc.specs:
                if s.kind == "categorical":
                    cats[s.name] = np.asarray(arrays[f"cat:{s.name}"], dtype=np.int64)
                elif s.kind == "numeric":
                    nums[s.name] = np.asarray(arrays[f"num:{s.name}"], dtype=np.float32)
                    miss[s.name] = np.asarray(arrays[f"miss:{s.name}"], dtype=np.float32)
                    if s.edges:
                        buckets[s.name] = np.asarray(arrays[f"bucket:{s.name}"], dtype=np.int64)
                else:
                    parts = tuple(np.asarray(arrays[f"bag_{p}:{s.name}"])
                                  for p in ("data", "indices", "indptr"))
                    bags[s.name] = sp.csr_matrix(parts, shape=(n, len(s.vocab)), dtype=np.float32)
        except KeyError as err:
            raise DataError(f"encoded features: array {err.args[0]!r} is missing") from None
        except ValueError as err:
            raise DataError(f"encoded features: bad bag arrays ({err})") from None
        for name, arr in [*cats.items(), *nums.items(), *miss.items(), *buckets.items()]:
            if arr.shape != (n,):
                raise DataError(f"encoded features: shape {arr.shape}, expected ({n},)", field=name)
        return cls(enc, n, cats, bags, nums, miss, buckets)


# ----------------------------------------------------------------- helpers
def _fit_one(
    name: str, kind: str, col: pd.Series, mask: np.ndarray, max_vocab: int, min_count: int
) -> FeatureSpec:
    """Fit one feature on the rows ``mask``."""
    if kind == "numeric":
        vals = _floats(col, name)[mask]
        vals = vals[np.isfinite(vals)]
        mean = float(vals.mean()) if len(vals) else 0.0
        std = float(vals.std()) if len(vals) else 1.0
        std = std if std > 0 and math.isfinite(std) else 1.0
        return FeatureSpec(name, kind, mean=mean, std=std, edges=_bucket_edges(vals))
    if kind == "categorical":
        labels = _labels(col)[mask]
        tokens = pd.Series(labels[pd.notna(labels)], dtype=object)
    else:
        rows, toks = _tokens(col, kind)
        keep = mask[rows]
        tokens = pd.Series(toks[keep], dtype=object)
        # min_count is a row count (a token repeated within a row counts once), as min_df is
        pairs = pd.DataFrame({"row": rows[keep], "tok": toks[keep]}).drop_duplicates()
        in_rows = pd.Series(pairs["tok"].to_numpy(), dtype=object).value_counts()
        return FeatureSpec(name, kind, vocab=_top(tokens, max_vocab, min_count, in_rows))
    return FeatureSpec(name, kind, vocab=_top(tokens, max_vocab, min_count))


def _bucket_edges(vals: np.ndarray) -> tuple[float, ...]:
    """Cut points at the interior quantiles of the finite ``vals`` (at most
    :data:`NUMERIC_BINS` buckets; ties merge buckets), each strictly above the minimum so no
    bucket is empty on the fit rows; none for fewer than two distinct values."""
    if len(vals) == 0:
        return ()
    cuts = np.quantile(vals, np.linspace(0.0, 1.0, NUMERIC_BINS + 1)[1:-1], method="higher")
    return tuple(float(c) for c in np.unique(cuts) if c > vals.min())


def _fit_mask(fit_on: np.ndarray | None, n: int) -> np.ndarray:
    if fit_on is None:
        return np.ones(n, dtype=bool)
    arr = np.asarray(fit_on)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"fit_on mask has shape {arr.shape}, expected ({n},)")
        return arr
    idx = arr.astype(np.int64).ravel()
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"fit_on rows must lie in 0..{n - 1}")
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return mask


def _floats(col: pd.Series, name: str) -> np.ndarray:
    try:
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        raise DataError("numeric feature holds values that are not numbers", field=name) from None


def _labels(col: pd.Series) -> np.ndarray:
    """Categorical cells as an object array of ``str``, ``None`` where missing."""
    absent = col.isna().to_numpy()
    pairs = zip(col.tolist(), absent.tolist(), strict=True)
    return np.array([None if a else str(v) for v, a in pairs], dtype=object)


def _tokens(col: pd.Series, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(row, token) pairs of a ``multi`` or ``text`` column, in row order."""
    if kind == "text":
        seqs = col.astype(object).where(col.notna(), "").astype(str).str.lower().str.findall(_TOKEN)
    else:
        seqs = pd.Series([tuple(v) if isinstance(v, (tuple, list)) else (v,) if isinstance(v, str)
                          else () for v in col.tolist()], dtype=object)
    flat = seqs.explode().dropna()
    toks = flat.astype(str).to_numpy(dtype=object)
    rows = np.arange(len(col))[flat.index.to_numpy()] if len(flat) else np.zeros(0, dtype=np.int64)
    if kind == "text" and len(toks):
        keep = (flat.str.len() >= MIN_TOKEN_LEN).to_numpy()
        rows, toks = rows[keep], toks[keep]
    return rows.astype(np.int64), toks


def _top(tokens: pd.Series, max_vocab: int, min_count: int, in_rows: pd.Series | None = None) -> tuple[str, ...]:
    """The most frequent tokens, by count descending then token, among those with at least
    ``min_count`` rows (``in_rows``: rows per token; default: the counts themselves)."""
    counts = tokens.value_counts()
    support = counts if in_rows is None else in_rows.reindex(counts.index)
    counts = counts[(support >= min_count).to_numpy()]
    pairs = zip(counts.index.astype(str), counts.to_numpy().tolist(), strict=True)
    ranked = sorted(pairs, key=lambda kv: (-kv[1], kv[0]))
    return tuple(tok for tok, _ in ranked[:max_vocab])


def _bag(
    rows: np.ndarray, cols: np.ndarray, n: int, width: int, *, normalise: bool = True
) -> sp.csr_matrix:
    """CSR of counts of ``(row, col)`` pairs (``col < 0`` skipped), optionally L1-normalised."""
    keep = cols >= 0
    rows, cols = rows[keep], cols[keep]
    ones = np.ones(len(rows), dtype=np.float32)
    m = sp.csr_matrix((ones, (rows, cols)), shape=(n, width), dtype=np.float32)
    m.sum_duplicates()
    m.sort_indices()
    if normalise and m.nnz:
        sums = np.asarray(m.sum(axis=1), dtype=np.float32).ravel()
        m.data /= np.repeat(sums, np.diff(m.indptr))
    return m
