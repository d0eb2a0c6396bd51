"""The Hessian of the mean probe loss as a linear operator: the one object every spectral routine uses.

``HessianOperator(model, data, loss_fn=None)`` is H = ∇²L(θ) with L the mean loss over *all* examples of
``data`` (any form ``as_probe_data`` accepts; docs/metrics.md): batch HVPs are summed with weights
n_b / n, so uneven batches give the exact full-data Hessian. Vectors are flat, in ``named_parameters`` order
of the (optionally restricted) trainable parameters, in the parameters' dtype and device. The model is
put in eval mode for each product and its mode is restored after; memory is one batch's graph at a time.

Two ways to compute a product:

* ``"double-backward"`` (default): ∇(gᵀv) with g = ∇L built with ``create_graph=True``. When the probe
  data are a single batch the gradient graph is built once and kept (``cache_graph``), so each further
  product is one backward pass through it.
* ``"forward-over-reverse"``: ``torch.func.jvp(torch.func.grad(loss))`` through ``functional_call``.

Both are exact and agree to rounding; the choice is only speed (see benchmarks/README.md, "hessian").

Every product runs inside ``flatness.core.attention.exact_attention`` (PyTorch's math attention backend),
so models with ``scaled_dot_product_attention`` (transformers) have exact HVPs with no user code. A
``torch.compile``d model is measured through its original module, a float16/bfloat16 model on a float32
copy (``flatness.core.measured.second_order_model``; the copy is ``op.model``, and ``op.note`` says so).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
from torch.func import functional_call, grad, jvp

from flatness.core.attention import exact_attention
from flatness.core.evaluation import eval_mode, probe_for
from flatness.core.losses import LossFn, check_loss_value, resolve_loss
from flatness.core.measured import second_order_model
from flatness.core.params import flatten, named_trainable, select_params, unflatten
from flatness.data.batches import OutputFn, call_model, model_output

BACKENDS = ("double-backward", "forward-over-reverse")
DEFAULT_BACKEND = "double-backward"


def _call_args(inputs: Any):
    """(args, kwargs) of ``functional_call`` for one batch's inputs, as ``forward`` would pass them."""
    if isinstance(inputs, dict):
        return (), inputs
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), None
    return (inputs,), None


class HessianOperator:
    """H = ∇²L(θ) over all probe data (restricted to ``params`` when given), applied by ``matvec``.

    Attributes: ``dim`` (d), ``dtype``, ``device``, ``names`` (parameter names in vector order),
    ``shapes``, ``hvps`` (how many full-data products were computed; reset it freely).

    Examples:
        >>> import torch, torch.nn as nn, torch.nn.functional as F
        >>> x, t = torch.diag(torch.tensor([1.0, 2.0, 3.0])), torch.zeros(3, 1)
        >>> model = nn.Linear(3, 1, bias=False)  # mean squared error: H = 2/n xᵀx = diag(2/3, 8/3, 6)
        >>> from flatness import HessianOperator
        >>> op = HessianOperator(model, (x, t), loss_fn=F.mse_loss)
        >>> op.dim
        3
        >>> torch.allclose(op.matvec(torch.ones(3)), torch.tensor([2 / 3, 8 / 3, 6.0]))
        True
        >>> torch.allclose(op.to_dense(), torch.diag(torch.tensor([2 / 3, 8 / 3, 6.0])))
        True
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        loss_fn: LossFn | str | None = None,
        params: str | Iterable[str] | None = None,
        backend: str = DEFAULT_BACKEND,
        cache_graph: bool | None = None,
        output_fn: OutputFn | None = None,
    ):
        """The operator of ``model``'s mean loss over ``data``.

        Args:
            model: any ``nn.Module``; put in eval mode for each product, its modes restored after.
            data: any form ``flatness.data.convert.as_probe_data`` accepts (a DataLoader, a list of
                batches, an ``(x, y)`` pair, a Dataset, a ``ProbeData``); read once, kept.
            loss_fn: ``loss_fn(outputs, targets)`` -> the batch's mean loss, or a loss name
                (``flatness.core.losses.LOSS_NAMES``); cross-entropy by default.
            params: the trainable parameters to restrict to: shell globs such as ``"layer4.*"``
                (``flatness.core.params.select_params``; a string is one pattern, or several
                separated by commas), default all of them.
            backend: ``"double-backward"`` or ``"forward-over-reverse"``.
            cache_graph: keep a single batch's gradient graph between products (default: when
                there is one batch and the backend is double-backward).
            output_fn: what of the model's output the loss sees (``flatness.data.batches.model_output``).
        """
        if backend not in BACKENDS:
            raise ValueError(f"unknown HVP backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.loss_fn = resolve_loss(loss_fn)
        model, self.note = second_order_model(model)
        pairs = named_trainable(model, None if params is None else select_params(model, params))
        if not pairs:
            raise ValueError("no trainable parameters to take the Hessian over")
        data = probe_for(model, data)
        self.model = model
        self.data = data
        self.output_fn = output_fn
        self.backend = backend
        self.names: list[str] = [n for n, _ in pairs]
        self.params: list[nn.Parameter] = [p for _, p in pairs]
        self.shapes = [tuple(p.shape) for p in self.params]
        self.dim = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.hvps = 0
        single = len(data) == 1 and backend == "double-backward"
        self.cache_graph = single if cache_graph is None else bool(cache_graph)
        self._cached = None  # (params' versions, inputs, gradient tensors with graph)

    # ------------------------------------------------------------------ helpers
    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        """A flat vector of d entries as tensors shaped like the parameters (on their device/dtype)."""
        if v.dim() != 1 or v.numel() != self.dim:
            raise ValueError(f"expected a vector of {self.dim} entries, got shape {tuple(v.shape)}")
        return unflatten(v.to(device=self.device, dtype=self.dtype), self.params)

    def _join(self, tensors) -> torch.Tensor:
        # a parameter the loss does not reach has no second derivative: its rows of H are zero
        return flatten([t if t is not None else torch.zeros_like(p) for t, p in zip(tensors, self.params)])

    def _loss(self, outputs, y) -> torch.Tensor:
        return check_loss_value(self.loss_fn(model_output(outputs, self.output_fn), y), self.loss_fn)

    def _batch_grads(self, x, y):
        loss = self._loss(call_model(self.model, x), y)
        return torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)

    # ------------------------------------------------------------------ products
    def _hvp_double_backward(self, vs: list[torch.Tensor]) -> torch.Tensor:
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for w, (x, y) in zip(self.data.weights(), self.data):
            if self.cache_graph:
                versions = tuple(p._version for p in self.params)
                if self._cached is None or self._cached[0] != versions or self._cached[1] is not x:
                    self._cached = None
                    self._cached = (versions, x, self._batch_grads(x, y))
                grads = self._cached[2]
            else:
                grads = self._batch_grads(x, y)
            pairs = [(g, v) for g, v in zip(grads, vs) if g is not None and g.requires_grad]
            if not pairs:
                continue  # the loss is linear in these parameters on this batch: H = 0
            dot = sum((g * v).sum() for g, v in pairs)
            hv = torch.autograd.grad(dot, self.params, retain_graph=self.cache_graph, allow_unused=True)
            out.add_(self._join(hv), alpha=w)
        return out

    def _hvp_forward_over_reverse(self, vs: list[torch.Tensor]) -> torch.Tensor:
        primals = {n: p.detach() for n, p in zip(self.names, self.params)}
        tangents = dict(zip(self.names, vs))
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for w, (x, y) in zip(self.data.weights(), self.data):
            args, kwargs = _call_args(x)

            def loss_of(p, args=args, kwargs=kwargs, y=y):
                return self._loss(functional_call(self.model, p, args, kwargs, strict=False), y)

            _, hv = jvp(grad(loss_of), (primals,), (tangents,))
            out.add_(flatten([hv[n] for n in self.names]), alpha=w)
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector v (d entries); counts one HVP.

        Args:
            v: a 1-D tensor of ``dim`` entries.

        Returns:
            H v, a 1-D tensor in the parameters' dtype and device.
        """
        vs = self.split(v)
        with eval_mode(self.model), exact_attention():
            if self.backend == "double-backward":
                out = self._hvp_double_backward(vs)
            else:
                out = self._hvp_forward_over_reverse(vs)
        # Under torchrun each rank holds a shard of the probe batches (ProbeData.shard): add the
        # other ranks' weighted parts, so every rank gets the full-data product.
        self.data.reduce_sum_(out)
        self.hvps += 1
        return out

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        if v.dim() == 2:
            return torch.stack([self.matvec(c) for c in v.T], dim=1)
        return self.matvec(v)

    def release(self) -> None:
        """Drop a cached gradient graph (frees its memory)."""
        self._cached = None

    def to_dense(self) -> torch.Tensor:
        """The d×d matrix, one HVP per column: for tiny models (tests) only."""
        if self.dim > 20000:
            raise ValueError(f"refusing to build a dense {self.dim}x{self.dim} Hessian")
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(e) for e in eye], dim=1)

    def __repr__(self) -> str:
        return (
            f"HessianOperator(dim={self.dim}, params={len(self.names)} tensors, backend={self.backend!r}, "
            f"batches={len(self.data)}, n={self.data.n}, dtype={self.dtype}, device={self.device})"
        )


def flat_to_named(op: HessianOperator, v: torch.Tensor) -> dict[str, torch.Tensor]:
    """A flat vector of ``op`` as {parameter name: tensor}."""
    return dict(zip(op.names, op.split(v)))
