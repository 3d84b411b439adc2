"""Sparse-matrix helpers shared by the models: scipy CSR to torch CSR, and a product with a
constant sparse matrix that is differentiable in the dense operand."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["sparse_product", "sparse_product_csr", "to_torch_csr"]


def to_torch_csr(matrix: sp.spmatrix, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A scipy sparse matrix as a torch sparse CSR tensor.

    Args:
        matrix: the matrix (int32 indices are kept when they fit, which is faster).
        device: where the tensor lives (default: the CPU).
        dtype: the values' type.

    Returns:
        A torch ``sparse_csr`` tensor of the same shape and values.
    """
    m = sp.csr_matrix(matrix, dtype=np.float32)
    index = np.int32 if m.nnz < 2**31 - 1 and max(m.shape) < 2**31 - 1 else np.int64
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(index)),
            torch.from_numpy(m.indices.astype(index)),
            torch.from_numpy(np.ascontiguousarray(m.data, dtype=np.float32)).to(dtype),
            size=m.shape,
            check_invariants=False,
            device=device,
        )


class _SparseProduct(torch.autograd.Function):
    """``S @ W`` for a constant sparse ``S`` given with its transpose; the gradient reaches ``W``
    only, as ``S^T @ grad`` (no sort, no dense ``S``)."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, matrix: torch.Tensor, transposed: torch.Tensor) -> torch.Tensor:
        ctx.transposed = transposed
        return matrix @ weight

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return ctx.transposed @ grad, None, None


class _ScipyProduct(torch.autograd.Function):
    """``S @ W`` computed by scipy for a CPU ``float32`` ``W``: the product and its backward
    pass ``S^T @ grad`` write straight into their outputs (torch's MKL path for a CSR tensor
    zero-fills its output and copies it back, which costs more than the product itself when
    ``S`` is a few hundred rows of a large matrix)."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, matrix: sp.csr_matrix) -> torch.Tensor:
        ctx.matrix = matrix
        return torch.from_numpy(np.asarray(matrix @ weight.detach().numpy(), dtype=np.float32))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        g = grad.detach().to(torch.float32).contiguous().numpy()
        return torch.from_numpy(np.asarray(ctx.matrix.T @ g, dtype=np.float32)), None


def sparse_product(weight: torch.Tensor, matrix: sp.spmatrix) -> torch.Tensor:
    """``matrix @ weight`` for a scipy sparse ``matrix`` that takes no gradient, differentiable in
    the dense ``weight`` (the backward pass is one more sparse product, with ``matrix.T``).

    On the CPU with a ``float32`` weight, scipy computes both products; elsewhere (CUDA, other
    dtypes, tracing for export) torch's CSR tensors do."""
    if weight.device.type == "cpu" and weight.dtype == torch.float32 and not torch.jit.is_tracing() \
            and not torch.compiler.is_compiling():
        return _ScipyProduct.apply(weight, sp.csr_matrix(matrix, dtype=np.float32))
    return sparse_product_csr(weight, to_torch_csr(matrix, weight.device, weight.dtype),
                              to_torch_csr(matrix.T, weight.device, weight.dtype))


def sparse_product_csr(weight: torch.Tensor, matrix: torch.Tensor, transposed: torch.Tensor) -> torch.Tensor:
    """:func:`sparse_product` with ``matrix`` and ``matrix.T`` already as torch CSR tensors (to
    reuse them across calls)."""
    return _SparseProduct.apply(weight, matrix, transposed)
