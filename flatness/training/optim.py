"""Drop-in sharpness-aware optimizers: ``AMP`` (adversarial model perturbation) and ``SAM``.

Both wrap a base optimizer (SGD by default) and need a closure, exactly as torch's own
``LBFGS`` does::

    opt = AMP(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
              epsilon=0.5, inner_lr=1.0, inner_iter=1)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)      # the loss at θ (the one to log)
    opt.perturbation_norm         # ‖δ‖ of that step (L2 over all parameters), a 0-d tensor on the device

Definitions: ``docs/metrics.md``. One AMP step costs ``1 + inner_iter`` forward-backward passes
(the first inner step reuses the gradient at θ), one SAM step costs 2.

Design notes
------------
* The wrapper and its base optimizer share one ``param_groups`` list and one ``state``: an lr
  scheduler attached to the wrapper drives the base step, and ``state_dict``/``load_state_dict``
  round-trip everything needed to resume (momentum buffers, lr, ε, ...).
* Gradient-norm clipping (``grad_clip=c``) is applied by the optimizer to the gradient the *base
  step* uses (∇L(θ+δ)), never to the gradients that build δ, which stay the plain batch gradients
  docs/metrics.md asks for. A training loop must therefore not clip inside the closure. (The published
  AMP code clips inside its closure, so its inner steps see clipped gradients too; with the
  paper's threshold of 50 this almost never triggers.)
* ``grad_reduce(grads)`` (default None) is called on the list of gradients that define δ — the
  gradient at θ and those of the inner (AMP) passes — right after their backward, so a distributed
  run can all-reduce them (e.g. with DDP's ``no_sync`` on those passes). The final gradient that
  the base step uses is reduced the usual way by the training loop / DDP.
* BatchNorm running statistics are updated by every forward pass in train mode, as in the
  published code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from flatness.core.errors import FlatnessError

BALLS = ("tensor", "global")


def _check_positive(name: str, value: float) -> None:
    try:
        ok = float(value) > 0 and math.isfinite(float(value))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise FlatnessError(f"{name} must be a positive number, got {value!r}")


class _Wrapper(torch.optim.Optimizer):
    """Shared machinery: the base optimizer, shared groups/state, closures, clipping, reduction."""

    def __init__(self, params, base_optimizer, defaults, grad_clip, grad_reduce, base_kwargs):
        if grad_clip is not None:
            _check_positive("grad_clip", grad_clip)
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise FlatnessError("base_optimizer must be a torch.optim.Optimizer class, e.g. torch.optim.SGD")
        if grad_reduce is not None and not callable(grad_reduce):
            raise FlatnessError("grad_reduce must be a callable taking a list of gradients, or None")
        super().__init__(params, dict(defaults, **base_kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self._link()
        self.grad_clip = grad_clip
        self.grad_reduce = grad_reduce
        # ‖δ‖ of the last step, L2 over all parameters; a tensor, so that reading it costs no host sync
        # (the training loop averages it over an epoch into metrics.jsonl's perturbation_norm).
        self.perturbation_norm: torch.Tensor | None = None

    def _link(self) -> None:
        """One list of groups, one state: the wrapper's and the base optimizer's are the same objects."""
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults.update(self.base_optimizer.defaults)

    def state_dict(self):
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self._link()

    # ----------------------------------------------------------------- helpers
    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    @staticmethod
    def _call(closure: Callable):
        with torch.enable_grad():
            return closure()

    def _reduce(self, params: Sequence[torch.Tensor]) -> None:
        if self.grad_reduce is not None:
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                self.grad_reduce(grads)

    def _base_step(self) -> None:
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self._params(), self.grad_clip)
        self.base_optimizer.step()

    @staticmethod
    def _need_closure(closure, name):
        if closure is None:
            raise FlatnessError(f"{name}.step needs a closure (zero grads, forward, backward, return loss)")


class AMP(_Wrapper):
    """Adversarial model perturbation (Zheng et al., CVPR 2021) around any base optimizer.

    epsilon: radius of the perturbation ball; inner_lr: step size of the inner ascent;
    inner_iter: number of inner ascent steps; ball: ``"tensor"`` (each parameter tensor clipped to
    its own L2 ball of radius ε, as the published code) or ``"global"`` (one L2 ball over all
    parameters of all groups; ε of the first group). ``epsilon`` and ``inner_lr`` are per group.
    Remaining keyword arguments (lr, momentum, nesterov, weight_decay, ...) go to the base optimizer.

    Examples:
        >>> import torch, torch.nn as nn, torch.nn.functional as F
        >>> from flatness import AMP
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(3, 2)
        >>> x, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
        >>> opt = AMP(model.parameters(), lr=0.1, momentum=0.9, epsilon=0.5, inner_lr=1.0)
        >>> def closure():  # called 1 + inner_iter times per step: at θ, then at the perturbed weights
        ...     opt.zero_grad()
        ...     loss = F.cross_entropy(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> first = opt.step(closure).item()  # the loss at θ, before the step
        >>> for _ in range(30):
        ...     _ = opt.step(closure)
        >>> F.cross_entropy(model(x), y).item() < first
        True
    """

    def __init__(
        self,
        params,
        base_optimizer=torch.optim.SGD,
        epsilon: float = 0.5,
        inner_lr: float = 1.0,
        inner_iter: int = 1,
        ball: str = "tensor",
        grad_clip: float | None = None,
        grad_reduce: Callable | None = None,
        **base_kwargs,
    ):
        _check_positive("epsilon", epsilon)
        _check_positive("inner_lr", inner_lr)
        if isinstance(inner_iter, bool) or not isinstance(inner_iter, int) or inner_iter < 1:
            raise FlatnessError(f"inner_iter must be an integer >= 1, got {inner_iter!r}")
        if ball not in BALLS:
            raise FlatnessError(f"ball must be one of {', '.join(BALLS)}, got {ball!r}")
        defaults = dict(epsilon=float(epsilon), inner_lr=float(inner_lr), inner_iter=int(inner_iter), ball=ball)
        super().__init__(params, base_optimizer, defaults, grad_clip, grad_reduce, base_kwargs)

    def _project(self, deltas: list[list[torch.Tensor]]) -> None:
        """Π in place: per-tensor or global L2 clip, with tensor ops only (no host syncs)."""
        if self.param_groups[0]["ball"] == "global":
            flat = [d for group in deltas for d in group]
            if not flat:
                return
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(flat)))
            scale = (self.param_groups[0]["epsilon"] / norm).clamp(max=1.0)
            torch._foreach_mul_(flat, scale)
        else:
            for group, group_deltas in zip(self.param_groups, deltas):
                if not group_deltas:
                    continue
                scales = (group["epsilon"] / torch.stack(torch._foreach_norm(group_deltas))).clamp(max=1.0)
                torch._foreach_mul_(group_deltas, list(scales.unbind()))

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        """One AMP step: ``inner_iter`` ascent steps on the perturbation, then the base step there.

        Args:
            closure: recomputes the loss and its gradients (required: it is called 1 + inner_iter times).

        Returns:
            The loss at θ (the first closure call), for logging.
        """
        self._need_closure(closure, "AMP")
        loss = self._call(closure)  # g0 = ∇L(θ); the loss to log
        params = self._params()
        self._reduce(params)
        groups = [[p for p in g["params"] if p.requires_grad] for g in self.param_groups]
        if not params:
            return loss
        origin = torch._foreach_mul(params, 1.0)  # a copy of θ, in one call
        deltas: list[list[torch.Tensor]] = []
        for k in range(self.param_groups[0]["inner_iter"]):
            if k > 0:  # ∇L(θ+δ) at the current δ (k = 0 reuses g0, the gradient at δ = 0)
                self._call(closure)
                self._reduce(params)
            for i, (group, ps) in enumerate(zip(self.param_groups, groups)):
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in ps]
                if k == 0:
                    deltas.append(torch._foreach_mul(grads, group["inner_lr"]) if ps else [])
                elif ps:
                    torch._foreach_add_(deltas[i], grads, alpha=group["inner_lr"])
            self._project(deltas)
            flat = [d for ds in deltas for d in ds]
            torch._foreach_copy_(params, origin)
            torch._foreach_add_(params, flat)  # θ + δ
        self._call(closure)  # ∇L(θ+δ): the gradient of the base step
        self.perturbation_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(flat)))
        torch._foreach_copy_(params, origin)
        self._base_step()
        return loss


class SAM(_Wrapper):
    """Sharpness-aware minimisation (Foret et al. 2021).

    Ascend to δ = ρ g/‖g‖ (adaptive: ρ T²g/‖Tg‖, T = diag(|θ|), Kwon et al. 2021), then take the base
    step with ∇L(θ+δ).
    ``rho`` and ``adaptive`` are per group; the gradient norm is over all groups.

    Examples:
        >>> import torch, torch.nn as nn, torch.nn.functional as F
        >>> from flatness import SAM
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(3, 2)
        >>> x, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
        >>> opt = SAM(model.parameters(), lr=0.1, rho=0.05)
        >>> def closure():  # called twice per step: at θ and at θ + ρ g / ‖g‖
        ...     opt.zero_grad()
        ...     loss = F.cross_entropy(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> first = opt.step(closure).item()
        >>> for _ in range(30):
        ...     _ = opt.step(closure)
        >>> F.cross_entropy(model(x), y).item() < first
        True
    """

    def __init__(
        self,
        params,
        base_optimizer=torch.optim.SGD,
        rho: float = 0.05,
        adaptive: bool = False,
        grad_clip: float | None = None,
        grad_reduce: Callable | None = None,
        **base_kwargs,
    ):
        _check_positive("rho", rho)
        defaults = dict(rho=float(rho), adaptive=bool(adaptive))
        super().__init__(params, base_optimizer, defaults, grad_clip, grad_reduce, base_kwargs)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        """One SAM step: the ascent to θ + δ, the gradient there, then the base step from θ.

        Args:
            closure: recomputes the loss and its gradients (required: it is called twice).

        Returns:
            The loss at θ (the first closure call), for logging.
        """
        self._need_closure(closure, "SAM")
        loss = self._call(closure)
        params = self._params()
        self._reduce(params)
        groups = [[p for p in g["params"] if p.requires_grad and p.grad is not None] for g in self.param_groups]
        flat = [p for ps in groups for p in ps]
        if not flat:
            return loss
        scaled = []  # T g per group (T = |θ| when adaptive, else identity)
        for group, ps in zip(self.param_groups, groups):
            grads = [p.grad for p in ps]
            scaled.append(torch._foreach_mul(grads, torch._foreach_abs(ps)) if group["adaptive"] and ps else grads)
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([t for ts in scaled for t in ts])))
        origin = torch._foreach_mul(flat, 1.0)
        deltas = []
        for group, ps, ts in zip(self.param_groups, groups, scaled):
            if not ps:
                continue
            scale = group["rho"] / (norm + 1e-12)
            delta = torch._foreach_mul(ts, scale)  # ρ T g / ‖T g‖
            if group["adaptive"]:
                torch._foreach_mul_(delta, torch._foreach_abs(ps))  # ρ T² g / ‖T g‖
            torch._foreach_add_(ps, delta)
            deltas += delta
        self.perturbation_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(deltas)))
        self._call(closure)
        torch._foreach_copy_(flat, origin)
        self._base_step()
        return loss
