"""Hessian spectrum of the probe loss: one operator, and the routines that use it.

* ``HessianOperator(model, data, loss_fn=None, params=None, backend=...)``: H·v, ``.dim``,
  ``.hvps``, ``.to_dense()``; any model, data in any form ``as_probe_data`` accepts.
* ``lanczos`` / ``power_iteration`` -> ``EigenResult``; ``top_eigen(op, k, method)``.
* ``hutchinson`` / ``hutchpp`` / ``estimate_trace`` -> ``TraceResult``.
* ``slq`` -> ``DensityResult``; ``density_on_grid``, ``default_grid``.
"""

from flatness.hessian.density import DensityResult, default_grid, density_on_grid, lanczos_tridiagonal, slq
from flatness.hessian.eigen import EigenResult, lanczos, power_iteration, top_eigen
from flatness.hessian.operator import BACKENDS, DEFAULT_BACKEND, HessianOperator, flat_to_named
from flatness.hessian.trace import TraceResult, estimate_trace, hutchinson, hutchpp

__all__ = [
    "HessianOperator",
    "BACKENDS",
    "DEFAULT_BACKEND",
    "flat_to_named",
    "EigenResult",
    "lanczos",
    "power_iteration",
    "top_eigen",
    "TraceResult",
    "hutchinson",
    "hutchpp",
    "estimate_trace",
    "DensityResult",
    "slq",
    "lanczos_tridiagonal",
    "density_on_grid",
    "default_grid",
]
