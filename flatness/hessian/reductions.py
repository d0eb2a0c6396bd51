"""Dot products and norms of parameter-sized vectors that stay accurate in float32.

Why: the spectral routines work with vectors of d = millions of entries. On a CPU, torch's float32
``v.norm()`` of a PreActResNet-18-sized vector (d = 11.2M) was off by 3.6e-4 relative and a float32
``Q @ w`` by 3.5e-5, while the HVPs themselves agree with float64 to 1e-6. Those reductions, not the
HVPs, put a floor near 1e-3 under every float32 Lanczos residual and Rayleigh quotient. Here the
float32 products are summed in blocks of ``BLOCK`` entries (each block one BLAS call, whose own
rounding is then small) and the block sums are added in float64: ~1e-8 relative, for about 1.2x
the time of one plain ``Q @ w`` (benchmarks/README.md, "hessian"). float64 input takes the plain path.
"""

from __future__ import annotations

import math

import torch

BLOCK = 16384
# GPU BLAS reduces each dot product as a tree, whose rounding grows only with log(length), while
# every block costs a kernel launch: blocks of 2^20 keep the launches to ~11 for a ResNet-18.
CUDA_BLOCK = 1 << 20


def block_size(device: torch.device) -> int:
    """Entries per float32 block on ``device`` (larger on CUDA, whose BLAS reduces as a tree)."""
    return CUDA_BLOCK if torch.device(device).type == "cuda" else BLOCK


def row_dots(rows: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``rows @ v`` (rows: m×d, v: d) as float64, accumulated blockwise; on ``rows``' device."""
    if rows.dim() != 2 or v.dim() != 1 or rows.shape[1] != v.shape[0]:
        raise ValueError(f"row_dots needs m×d rows and a d-vector, got {tuple(rows.shape)} and {tuple(v.shape)}")
    d = v.shape[0]
    block = block_size(rows.device)
    if rows.dtype == torch.float64 or d <= block:
        return (rows @ v).double()
    out = torch.zeros(rows.shape[0], dtype=torch.float64, device=rows.device)
    for start in range(0, d, block):
        out += (rows[:, start : start + block] @ v[start : start + block]).double()
    return out


def project_out(v: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Return v − basisᵀ (basis v): v without its components along the (orthonormal) rows of ``basis``."""
    if basis.shape[0] == 0:
        return v
    return v - basis.T @ row_dots(basis, v).to(v.dtype)


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """aᵀb as a Python float, accumulated accurately (``row_dots``)."""
    return float(row_dots(a[None], b)[0])


def norm(v: torch.Tensor) -> float:
    """‖v‖₂ as a Python float, accumulated accurately."""
    return math.sqrt(max(dot(v, v), 0.0))


def normalize(v: torch.Tensor) -> torch.Tensor:
    """The unit vector v / ‖v‖₂."""
    return v / norm(v)
