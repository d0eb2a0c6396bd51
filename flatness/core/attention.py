"""Attention that can be differentiated twice: the one scope every second-order computation runs in.

PyTorch's fused ``scaled_dot_product_attention`` kernels (flash, memory-efficient, cuDNN, and the CPU
flash kernel) have no derivative of their backward, so a Hessian-vector product through any model
that uses them (``nn.TransformerEncoder``, ``nn.MultiheadAttention``, Hugging Face models on their
default ``"sdpa"`` attention) fails with "derivative for ..._backward is not implemented". The math
backend computes the same function from matmuls and a softmax, which autograd differentiates to any
order, so ``exact_attention`` selects it for the duration of a second-order computation only (HVPs,
hence Lanczos, power iteration, trace, density and eigen-direction surfaces). First-order work
(training, evaluation, random-direction surfaces, sharpness ascents) keeps the fast kernels.

The same scope turns off the native "fast path" of ``nn.TransformerEncoder``/``nn.MultiheadAttention``
in eval mode (``torch._transformer_encoder_layer_fwd``), which has no double backward either. PyTorch
already skips it whenever a parameter requires grad and grad mode is on, which is the case inside an
HVP; turning it off here keeps that true for a frozen block or a functional call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


@contextlib.contextmanager
def exact_attention() -> Iterator[None]:
    """Inside the block, attention runs on the math SDPA backend and the fused encoder fast path is off."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


__all__ = ["exact_attention"]
