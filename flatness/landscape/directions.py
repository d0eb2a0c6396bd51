"""Directions in weight space for loss surfaces (docs/metrics.md, "Loss surfaces").

A *direction* is a ``dict`` name -> tensor over (part of) the model's state, keyed like
``model.state_dict()``:

- random (``random_direction`` / ``random_directions``): one tensor per trainable parameter;
  Gaussian from the routine's own ``torch.Generator`` (drawn on the CPU, so a seed gives the same
  direction on every device), then normalised. ``norm="filter"`` rescales every slice ``d[k]`` along
  dim 0 (a conv output channel, a Linear row) to ``‖θ[k]‖``; ``"layer"`` the whole tensor to ``‖θ‖``;
  ``"none"`` leaves it. Tensors with one dimension or fewer (biases, BatchNorm affine) are zeroed with
  ``ignore="biasbn"`` (the default) or copied from θ with ``ignore="none"``, as loss-landscape does.
- eigen (``eigen_directions``): the top Hessian eigenvectors (unit vectors) over the trainable
  parameters, from ``flatness.hessian`` (Lanczos).
- interp (``interp_direction``): θ_B − θ_A over the parameters *and* the floating-point buffers
  (BatchNorm running statistics), so that the point 0 is checkpoint A and 1 is checkpoint B exactly;
  ``num_batches_tracked`` (an integer counter) is left out.
- pca (``pca_directions``): the first two principal components of a run's trajectory (snapshots minus
  the final weights), with the explained variance ratios and the trajectory's coordinates.

Only ``eigen`` directions, and ``pca`` ones, are unit vectors; a surface's coordinates are always the
coefficients a, b of θ + a·x + b·y.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from flatness.core.errors import FlatnessError
from flatness.core.params import named_trainable, unflatten
from flatness.formats.checkpoint import LAST, check_state_finite, list_snapshots, read_checkpoint
from flatness.hessian.eigen import lanczos
from flatness.hessian.operator import HessianOperator
from flatness.models.registry import build_from_spec

Direction = dict[str, torch.Tensor]

NORMS = ("filter", "layer", "none")
IGNORES = ("biasbn", "none")
EPS = 1e-10  # loss-landscape's guard against a zero-norm slice


# --------------------------------------------------------------------------- small vector algebra


def dot(a: Direction, b: Direction) -> float:
    """⟨a, b⟩ over the names both have (float64 accumulation)."""
    total = 0.0
    for name, t in a.items():
        if name in b:
            total += float(torch.sum(t.double() * b[name].double()))
    return total


def norm(d: Direction) -> float:
    """‖d‖₂ over all its tensors (float64 accumulation)."""
    return math.sqrt(max(dot(d, d), 0.0))


def orthogonalize(y: Direction, x: Direction, keep_norm: bool = True) -> Direction:
    """Y minus its projection on x (Gram–Schmidt); with ``keep_norm`` rescaled to y's old length."""
    xx = dot(x, x)
    if xx == 0.0:
        return {k: v.clone() for k, v in y.items()}
    coef = dot(y, x) / xx
    before = norm(y)
    out = {k: (v - coef * x[k].to(v.dtype)) if k in x else v.clone() for k, v in y.items()}
    if keep_norm:
        after = norm(out)
        if after > 0.0:
            out = {k: v * (before / after) for k, v in out.items()}
    return out


# --------------------------------------------------------------------------- random (Li et al. 2018)


def _check_norm_ignore(norm_name: str, ignore: str) -> None:
    if norm_name not in NORMS:
        raise FlatnessError(f"unknown direction normalisation {norm_name!r}; choose one of: {', '.join(NORMS)}")
    if ignore not in IGNORES:
        raise FlatnessError(f"unknown --ignore {ignore!r}; choose one of: {', '.join(IGNORES)}")


def normalize_direction_(
    d: Direction, theta: dict[str, torch.Tensor], norm_name: str = "filter", ignore: str = "biasbn"
) -> Direction:
    """Normalise ``d`` in place against the weights ``theta`` (see the module doc)."""
    _check_norm_ignore(norm_name, ignore)
    for name, t in d.items():
        w = theta[name].detach().to(t.dtype)
        if t.dim() <= 1:
            if ignore == "biasbn":
                t.zero_()
            else:
                t.copy_(w)
        elif norm_name == "filter":
            # every slice along dim 0 (conv output channel / Linear row) gets the norm of its weights
            flat_d = t.reshape(t.shape[0], -1)
            flat_w = w.reshape(w.shape[0], -1)
            scale = flat_w.norm(dim=1) / (flat_d.norm(dim=1) + EPS)
            t.mul_(scale.view(-1, *([1] * (t.dim() - 1))))
        elif norm_name == "layer":
            t.mul_(w.norm() / (t.norm() + EPS))
    return d


def random_directions(
    model: nn.Module,
    count: int = 1,
    norm: str = "filter",
    ignore: str = "biasbn",
    seed: int = 0,
    orthogonal: bool = False,
) -> list[Direction]:
    """``count`` (1 or 2) normalised Gaussian directions over the trainable parameters.

    All are drawn from one generator seeded with ``seed``, so the first equals
    ``random_direction(model, norm, ignore, seed)``. With ``orthogonal`` the second is made
    orthogonal to the first (after normalisation; its overall length is kept, so its filter norms
    then hold only approximately).
    """
    _check_norm_ignore(norm, ignore)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    params = named_trainable(model)
    theta = {n: p.detach() for n, p in params}
    out = []
    for _ in range(count):
        d = {}
        for name, p in params:
            draw = torch.randn(tuple(p.shape), generator=generator, dtype=torch.float32)
            d[name] = draw.to(device=p.device, dtype=p.dtype)
        out.append(normalize_direction_(d, theta, norm, ignore))
    if orthogonal and count >= 2:
        out[1] = orthogonalize(out[1], out[0])
    return out


def random_direction(model: nn.Module, norm: str = "filter", ignore: str = "biasbn", seed: int = 0) -> Direction:
    """One normalised Gaussian direction over the trainable parameters (see the module doc)."""
    return random_directions(model, 1, norm=norm, ignore=ignore, seed=seed)[0]


# --------------------------------------------------------------------------- Hessian eigenvectors


@dataclass
class EigenDirections:
    """Top Hessian eigenvectors as directions, their eigenvalues and the Lanczos settings."""

    directions: list[Direction]
    eigenvalues: list[float]
    info: dict[str, Any] = field(default_factory=dict)


# Seven parameters: the Hessian's (model, data, loss_fn, output_fn) and Lanczos's (k, seed, tol, max_iter).
def eigen_directions(
    model: nn.Module,
    data,
    k: int = 2,
    seed: int = 0,
    tol: float = 1e-4,
    max_iter: int = 100,
    loss_fn=None,
    output_fn=None,
) -> EigenDirections:
    """The top-``k`` Hessian eigenvectors of the loss over ``data`` (Lanczos), as unit directions.

    ``loss_fn`` and ``output_fn`` are those of ``flatness.hessian.HessianOperator`` (cross-entropy and
    the model's tensor / first element / ``logits`` by default).
    """
    op = HessianOperator(model, data, loss_fn, output_fn=output_fn)
    result = lanczos(op, k, which="largest", tol=tol, max_iter=max_iter, seed=seed)
    vectors = torch.as_tensor(result.eigenvectors)
    if vectors.dim() == 1:
        vectors = vectors.unsqueeze(0)
    params = named_trainable(model)
    total = sum(p.numel() for _, p in params)
    if vectors.shape[-1] != total:
        raise RuntimeError(f"eigenvectors have {vectors.shape[-1]} entries, the model has {total} parameters")
    directions = []
    for row in vectors[:k]:
        row = row.detach().to(dtype=torch.float32)
        parts = unflatten(row, [p for _, p in params])
        directions.append(
            {
                name: part.to(device=p.device, dtype=p.dtype).clone()
                for (name, p), part in zip(params, parts, strict=True)
            }
        )
    eigenvalues = [float(v) for v in torch.as_tensor(result.eigenvalues).reshape(-1)[:k]]
    return EigenDirections(directions, eigenvalues, {"tol": tol, "max_iter": max_iter, "seed": seed})


# --------------------------------------------------------------------------- interpolation A -> B


def interp_state_names(model: nn.Module) -> list[str]:
    """The state entries an interpolation moves: parameters and floating-point buffers."""
    return [k for k, v in model.state_dict().items() if v.is_floating_point() and not k.endswith("num_batches_tracked")]


def interp_direction(model_a: nn.Module, state_b: dict[str, torch.Tensor]) -> Direction:
    """θ_B − θ_A over parameters and BatchNorm buffers (``num_batches_tracked`` excluded).

    ``state_b`` is checkpoint B's ``model_state``; a different architecture is a FlatnessError.
    """
    state_a = model_a.state_dict()
    keys_a = set(state_a)
    keys_b = set(state_b)
    if keys_a != keys_b:
        only_a = sorted(keys_a - keys_b)
        only_b = sorted(keys_b - keys_a)
        example = f"'{only_a[0]}' only in A" if only_a else f"'{only_b[0]}' only in B"
        raise FlatnessError(f"cannot interpolate between different architectures ({example})")
    d = {}
    for name in interp_state_names(model_a):
        a, b = state_a[name], state_b[name]
        if tuple(a.shape) != tuple(b.shape):
            raise FlatnessError(
                f"cannot interpolate between different architectures: '{name}' is "
                f"{tuple(a.shape)} in A and {tuple(b.shape)} in B"
            )
        d[name] = b.detach().to(device=a.device, dtype=a.dtype) - a.detach()
    return d


# --------------------------------------------------------------------------- PCA of a trajectory


@dataclass
class PCADirections:
    """The first two principal components of a trajectory as directions, with what the plots show."""

    directions: list[Direction]  # pc1, pc2 (unit vectors over the trainable parameters)
    explained_variance_ratio: list[float]  # of pc1, pc2
    coordinates: np.ndarray  # (snapshots, 2): each snapshot minus the final weights, projected
    epochs: list[int]
    reference: str  # the final weights' file (the surface centre should be it)
    snapshot_paths: list[str]


def pca_directions(run_dir: str) -> PCADirections:
    """PCA of a training trajectory, by SVD.

    The snapshots ``epoch-NNN.pt`` minus the final weights (the run's ``last.pt``, or the last
    snapshot when there is none), centred as scikit-learn's PCA does. The coordinates are the
    *uncentred* differences projected on pc1, pc2, so the final weights sit at (0, 0), the centre
    of a surface computed around them.
    """
    if not os.path.isdir(run_dir):
        raise FlatnessError(f"pca directions need a run folder with epoch-NNN.pt snapshots; {run_dir} is not a folder")
    snapshots = list_snapshots(run_dir)
    if len(snapshots) < 3:
        raise FlatnessError(
            f"{run_dir} has {len(snapshots)} trajectory snapshot(s) (epoch-NNN.pt); PCA needs at "
            "least 3 (train with --save-every)"
        )
    last = os.path.join(run_dir, LAST)
    reference = last if os.path.isfile(last) else snapshots[-1][1]
    final = read_checkpoint(reference)
    spec = final["model_spec"]
    model = build_from_spec(spec)
    names = [n for n, _ in named_trainable(model)]
    shapes = {n: tuple(p.shape) for n, p in named_trainable(model)}

    def flat(payload, path):
        state = payload["model_state"]
        check_state_finite(state, path)
        if payload["model_spec"] != spec or any(n not in state or tuple(state[n].shape) != shapes[n] for n in names):
            raise FlatnessError(f"{path} holds another model than {reference}; a trajectory must be one run")
        return torch.cat([state[n].reshape(-1).double() for n in names])

    centre = flat(final, reference)
    rows = [flat(read_checkpoint(path), path) - centre for _, path in snapshots]
    matrix = torch.stack(rows)  # (snapshots, d), float64
    centred = matrix - matrix.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    total = float((s**2).sum())
    if total == 0.0:
        raise FlatnessError(f"the snapshots in {run_dir} are all identical; there is no trajectory to analyse")
    components = []
    for i in range(2):
        if i < vh.shape[0] and float(s[i]) > 0.0:
            v = vh[i].clone()
            if float(v[v.abs().argmax()]) < 0:  # a fixed sign: the largest entry is positive
                v = -v
        else:  # the trajectory spans one dimension: any unit vector orthogonal to pc1 will do
            generator = torch.Generator().manual_seed(0)
            v = torch.randn(matrix.shape[1], generator=generator, dtype=torch.float64)
            v -= (v @ components[0]) * components[0]
            v /= v.norm()
        components.append(v)
    ratios = [float(s[i] ** 2) / total if i < s.shape[0] else 0.0 for i in range(2)]
    coordinates = (matrix @ torch.stack(components).T).numpy()
    like = [p for _, p in named_trainable(model)]
    directions = [
        {n: part.float().clone() for n, part in zip(names, unflatten(v, like), strict=True)} for v in components
    ]
    return PCADirections(
        directions, ratios, coordinates, [e for e, _ in snapshots], reference, [p for _, p in snapshots]
    )


# --------------------------------------------------------------------------- directions given by the caller


def as_directions(model: nn.Module, given: Any, count: int) -> list[Direction]:
    """Directions a caller passed explicitly, as dicts state name -> tensor.

    Args:
        model: the model the directions move.
        given: one direction or a list/tuple of them; each a dict state name -> tensor (shaped like
            the model's entry) or a flat tensor over the trainable parameters in ``named_parameters``
            order (the flat vector of ``flatness.core.params``).
        count: how many the surface needs (1 for 1D, 2 for 2D).

    Returns:
        ``count`` dicts.
    """
    items = list(given) if isinstance(given, (list, tuple)) else [given]
    if len(items) != count:
        raise FlatnessError(f"a {count}D surface needs {count} direction(s), got {len(items)}")
    params = named_trainable(model)
    total = sum(p.numel() for _, p in params)
    out = []
    for d in items:
        if isinstance(d, torch.Tensor):
            if d.dim() != 1 or d.numel() != total:
                raise FlatnessError(
                    f"a flat direction must be a 1-D tensor of {total} entries (the trainable "
                    f"parameters), got shape {tuple(d.shape)}"
                )
            parts = unflatten(d.detach(), [p for _, p in params])
            d = {name: part for (name, _), part in zip(params, parts, strict=True)}
        elif not isinstance(d, dict):
            raise FlatnessError(f"a direction must be a dict name -> tensor or a flat tensor, got {type(d).__name__}")
        out.append(dict(d))
    return out
