"""Top (or bottom) Hessian eigenpairs.

Power iteration with deflation, and Lanczos with full re-orthogonalisation and thick restarts. Both
take any operator with ``dim``, ``dtype``, ``device``, ``matvec`` and an ``hvps`` counter
(``HessianOperator``, or a dense-matrix stand-in in tests).

Convergence is judged by the true relative residual ‖Hv − λv‖ / |λ| of every returned pair,
computed with real HVPs (which are counted), never by the change of λ between iterations.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from flatness.core.progress import progress_bar
from flatness.hessian.reductions import dot, norm, normalize, project_out, row_dots

_TINY = 1e-30


@dataclass
class EigenResult:
    """Eigenpairs and how they were found. ``eigenvectors`` is k×d (rows are unit vectors)."""

    eigenvalues: list[float]
    eigenvectors: torch.Tensor
    residuals: list[float]
    hvps: int
    seconds: float
    converged: bool
    method: str
    which: str = "largest"
    tol: float = 0.0
    negative: list[bool] = field(default_factory=list)

    def summary(self) -> dict:
        """The JSON-safe part (no vectors)."""
        return {
            "method": self.method,
            "which": self.which,
            "eigenvalues": list(self.eigenvalues),
            "residuals": list(self.residuals),
            "negative": list(self.negative),
            "hvps": self.hvps,
            "seconds": self.seconds,
            "tol": self.tol,
            "converged": self.converged,
        }


def _check(op, k: int, tol: float, max_iter: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > op.dim:
        raise ValueError(f"k={k} exceeds the number of parameters ({op.dim})")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")


def _random_unit(op, gen: torch.Generator, against: torch.Tensor | None = None) -> torch.Tensor:
    v = torch.randn(op.dim, generator=gen, dtype=torch.float64).to(device=op.device, dtype=op.dtype)
    if against is not None and against.shape[0]:
        for _ in range(2):
            v = project_out(v, against)
    return normalize(v)


def _relres(hv: torch.Tensor, lam: float, v: torch.Tensor) -> float:
    return norm(hv - lam * v) / max(abs(lam), _TINY)


def _ritz_pairs(op, S: torch.Tensor, Q: torch.Tensor, HQ: torch.Tensor | None, m: int, count: int):
    """(eigenvalues, unit vectors, true relative residuals) of the first ``count`` Ritz pairs.

    The pairs are of the basis Q[:m] (S: eigenvectors of the projected matrix). H·y comes from the
    stored products HQ when they are kept (no HVP), else from ``count`` fresh HVPs.
    """
    Sk = S[:, :count].T.to(dtype=op.dtype, device=op.device)
    V = Sk @ Q[:m]
    norms = torch.tensor([norm(v) for v in V], dtype=V.dtype, device=V.device)[:, None]
    V = V / norms
    HV = list((Sk @ HQ[:m]) / norms) if HQ is not None else [op.matvec(v) for v in V]
    lams = [dot(v, hv) for v, hv in zip(V, HV)]
    return lams, V, [_relres(hv, lam, v) for hv, lam, v in zip(HV, lams, V)]


def power_iteration(
    op, k: int = 1, tol: float = 1e-4, max_iter: int = 1000, seed: int = 0, progress: bool = False
) -> EigenResult:
    """The k eigenvalues of largest |λ| by power iteration with deflation.

    Each eigenvector is iterated v ← Hv/‖Hv‖, orthogonalised against the vectors found before at every
    iteration, until ‖Hv − λv‖/|λ| ≤ tol with λ = vᵀHv (the residual of the last product, which is a
    true HVP), or ``max_iter`` products *per eigenvalue*. Power iteration finds the largest |λ|, which
    may be negative: ``negative`` flags those. Convergence is linear in |λ_{j+1}/λ_j|, so close
    eigenvalues need many products; ``lanczos`` is the fast method.

    Examples:
        >>> import torch, torch.nn as nn, torch.nn.functional as F
        >>> x, t = torch.diag(torch.tensor([1.0, 2.0, 3.0])), torch.zeros(3, 1)
        >>> model = nn.Linear(3, 1, bias=False)  # mean squared error: H = 2/n xᵀx = diag(2/3, 8/3, 6)
        >>> from flatness import HessianOperator, power_iteration
        >>> result = power_iteration(HessianOperator(model, (x, t), loss_fn=F.mse_loss), k=1)
        >>> round(result.eigenvalues[0], 4), result.negative
        (6.0, [False])
    """
    _check(op, k, tol, max_iter)
    start, hvps0 = time.perf_counter(), op.hvps
    gen = torch.Generator().manual_seed(int(seed))
    found = torch.zeros(0, op.dim, dtype=op.dtype, device=op.device)
    products = []  # the true H v of each found vector's last iterate
    with progress_bar(progress, k * max_iter, f"power iteration (top {k})", unit="hvp") as bar:
        for _j in range(k):
            v = _random_unit(op, gen, found)
            hv = None
            for it in range(max_iter):
                hv = op.matvec(v)
                bar.update(1)
                done = it + 1  # products spent on this vector; the bar skips the rest when it stops early
                lam = dot(v, hv)
                w = hv
                for _ in range(2):  # deflation: stay orthogonal to the eigenvectors already found
                    w = project_out(w, found)
                # converged when the residual *within the deflated space* is small; the coupling to the
                # vectors found before is removed by the Rayleigh-Ritz step below
                if norm(w - lam * v) <= tol * max(abs(lam), _TINY):
                    break
                length = norm(w)
                if not math.isfinite(length) or length <= 0:
                    break  # H v = 0 on the complement: v is an eigenvector with λ = 0
                v = w / length
            bar.update(max_iter - done)
            found = torch.cat([found, v[None]], 0)
            products.append(hv)
    # Rayleigh-Ritz on span(found) with the true products already computed (no further HVPs): this
    # removes the error each deflated vector inherits from the ones before it.
    HV = torch.stack(products)
    M = torch.stack([row_dots(found, hv) for hv in HV], 1).cpu()  # M[i, j] = found_i · H found_j
    theta, S = torch.linalg.eigh((M + M.T) / 2)
    order = torch.argsort(theta.abs(), descending=True)
    theta, S = theta[order], S[:, order].to(dtype=op.dtype, device=op.device)
    V, HV = S.T @ found, S.T @ HV
    values = [float(t) for t in theta]
    residuals = [_relres(hv, lam, v) for hv, lam, v in zip(HV, values, V)]
    converged = all(r <= tol for r in residuals)
    return EigenResult(
        values,
        V,
        residuals,
        op.hvps - hvps0,
        time.perf_counter() - start,
        converged,
        "power",
        "largest-magnitude",
        tol,
        [lam < 0 for lam in values],
    )


class KrylovBasis:
    """The orthonormal Krylov basis of Lanczos, row by row, with the projected matrix T = Qᵀ H Q.

    Holds at most ``size`` vectors (thick restarts keep it there) and, when ``store``, the product
    H q_j of every basis vector, so that Ritz vectors' true residuals cost no further HVP.
    """

    def __init__(self, op, size: int, store: bool):
        self.op = op
        self.size = size
        self.Q = torch.empty(size, op.dim, dtype=op.dtype, device=op.device)
        self.HQ = torch.empty(size, op.dim, dtype=op.dtype, device=op.device) if store else None
        self.T = torch.zeros(size, size, dtype=torch.float64)
        self.m = 0

    def extend(self, q: torch.Tensor) -> tuple:
        """Add q (one HVP); returns (the new residual w, its norm β) after full re-orthogonalisation."""
        m, Q, T = self.m, self.Q, self.T
        Q[m] = q
        w = self.op.matvec(q)
        if self.HQ is not None:
            self.HQ[m] = w
        h = row_dots(Q[: m + 1], w)
        w = w - Q[: m + 1].T @ h.to(w.dtype)
        h2 = row_dots(Q[: m + 1], w)  # second pass of Gram-Schmidt (full re-orthogonalisation)
        w = w - Q[: m + 1].T @ h2.to(w.dtype)
        h = (h + h2).cpu()
        T[m, : m + 1] = h
        T[: m + 1, m] = h
        T[m, m] = h[m]
        self.m = m + 1
        return w, norm(w)

    def ritz(self, sign: float) -> tuple:
        """Eigenpairs (θ, S) of T, best first (largest θ for sign +1, smallest for −1)."""
        theta, S = torch.linalg.eigh(self.T[: self.m, : self.m])
        order = torch.argsort(sign * theta, descending=True)
        return theta[order], S[:, order]

    def thick_restart(self, theta: torch.Tensor, S: torch.Tensor, keep: int, q: torch.Tensor) -> torch.Tensor:
        """Keep the ``keep`` best Ritz vectors as the new basis; returns q made orthogonal to them."""
        op, m = self.op, self.m
        Sp = S[:, :keep].T.to(dtype=op.dtype, device=op.device)
        self.Q[:keep] = Sp @ self.Q[:m]
        if self.HQ is not None:
            self.HQ[:keep] = Sp @ self.HQ[:m]
        self.T.zero_()
        self.T[:keep, :keep] = torch.diag(theta[:keep])
        self.m = keep
        # re-orthonormalise the kept vectors against rounding drift (and their products alike)
        Qp, R = torch.linalg.qr(self.Q[:keep].T)
        self.Q[:keep] = Qp.T
        if self.HQ is not None:
            self.HQ[:keep] = torch.linalg.solve_triangular(R.T, self.HQ[:keep], upper=False)
        return normalize(project_out(q, self.Q[:keep]))

    def ritz_pairs(self, S: torch.Tensor, k: int) -> tuple:
        """The k best Ritz pairs with their true residuals (``_ritz_pairs``)."""
        return _ritz_pairs(self.op, S, self.Q, self.HQ, self.m, k)


class _BestPairs:
    """The best Ritz pairs checked so far with true HVPs, and whether checking still pays.

    ``estimate_tol`` is the bound the cheap residual estimates must reach before the next true check;
    it is tightened when the estimates prove optimistic (rounding in low precision). ``stalled`` counts
    the failed checks in a row without a 2x better true residual: the rounding floor of the HVPs.
    """

    def __init__(self, tol: float):
        self.pairs = None  # (eigenvalues, unit vectors, true relative residuals)
        self.stalled = 0
        self.estimate_tol = tol

    def offer(self, pairs: tuple) -> None:
        """Keep ``pairs`` if their worst true residual is no worse than the best so far."""
        improved = self.pairs is None or max(pairs[2]) <= 0.5 * max(self.pairs[2])
        self.stalled = 0 if improved else self.stalled + 1
        if self.pairs is None or max(pairs[2]) <= max(self.pairs[2]):
            self.pairs = pairs


def _check_lanczos(op, k: int, which: str, tol: float, max_iter: int, check: str) -> None:
    if which not in ("largest", "smallest"):
        raise ValueError(f"which must be 'largest' or 'smallest', got {which!r}")
    if check not in ("auto", "stored", "hvp"):
        raise ValueError(f"check must be auto, stored or hvp, got {check!r}")
    _check(op, k, tol, max_iter)


def _empty_basis(op, k: int, max_basis: int | None, check: str) -> KrylovBasis:
    """The Krylov basis of ``lanczos``, empty: its size, and whether it stores the products H q_j."""
    if max_basis is None:
        max_basis = max(3 * k + 30, 60)
    max_basis = int(min(max(max_basis, k + 2), op.dim))
    store = check == "stored" or (check == "auto" and max_basis * op.dim <= 2**28)
    return KrylovBasis(op, max_basis, store)


# lanczos keeps scipy's eigsh-like keyword options (9 with the operator): it is public API
# (``flatness.lanczos``), called by keyword through ``top_eigen(**options)``, by the eigen directions and by users.
def lanczos(
    op,
    k: int = 1,
    which: str = "largest",
    tol: float = 1e-4,
    max_iter: int = 1000,
    seed: int = 0,
    max_basis: int | None = None,
    check: str = "auto",
    progress: bool = False,
) -> EigenResult:
    """The k algebraically largest (or smallest) eigenpairs by Lanczos with full re-orthogonalisation.

    The Krylov basis grows one HVP at a time (every new vector orthogonalised against the whole basis,
    twice); the Ritz residual estimates β·|s_m| are checked each step. When they are all ≤ tol the k
    Ritz vectors are formed and their *true* residuals computed (k HVPs, counted); if any is above tol
    the space is extended further. When the basis reaches ``max_basis`` vectors it is thick-restarted
    from the best Ritz vectors (so memory stays max_basis × d). ``max_iter`` bounds the total HVPs.

    Args:
        op: the operator (``HessianOperator`` or anything with ``matvec``, ``dim``, ``dtype``,
            ``device``, ``hvps``).
        k: how many eigenpairs.
        which: ``"largest"`` or ``"smallest"`` (algebraically).
        tol: relative residual ‖Hv − λv‖ / |λ| every pair must reach.
        max_iter: the most HVPs in all.
        seed: seed of the starting vector.
        max_basis: basis size before a thick restart (default max(3k + 30, 60)).
        check: how true residuals are computed: ``"stored"`` keeps H q_j of every basis vector
            (twice the memory, no further HVP), ``"hvp"`` applies H to each Ritz vector afresh,
            ``"auto"`` stores while the products take at most 2^28 numbers (1 GiB in float32).
        progress: show a progress bar.

    Returns:
        ``EigenResult`` with eigenvalues sorted descending for ``largest``, ascending for ``smallest``.

    Examples:
        >>> import torch, torch.nn as nn, torch.nn.functional as F
        >>> x, t = torch.diag(torch.tensor([1.0, 2.0, 3.0])), torch.zeros(3, 1)
        >>> model = nn.Linear(3, 1, bias=False)  # mean squared error: H = 2/n xᵀx = diag(2/3, 8/3, 6)
        >>> from flatness import HessianOperator, lanczos
        >>> result = lanczos(HessianOperator(model, (x, t), loss_fn=F.mse_loss), k=2)
        >>> [round(value, 4) for value in result.eigenvalues], result.converged
        ([6.0, 2.6667], True)
    """
    _check_lanczos(op, k, which, tol, max_iter, check)
    start, hvps0 = time.perf_counter(), op.hvps
    basis = _empty_basis(op, k, max_basis, check)
    gen = torch.Generator().manual_seed(int(seed))
    sign = 1.0 if which == "largest" else -1.0
    q = _random_unit(op, gen)
    best = _BestPairs(tol)
    converged = False
    with progress_bar(progress, max_iter, f"lanczos ({which} {k})", unit="hvp") as bar:
        while op.hvps - hvps0 < max_iter:
            w, beta = basis.extend(q)
            bar.update(1)
            m = basis.m
            theta, S = basis.ritz(sign)
            kk = min(k, m)
            est = [beta * abs(float(S[m - 1, i])) / max(abs(float(theta[i])), _TINY) for i in range(kk)]
            exhausted = beta <= 1e-12 * max(1.0, float(theta.abs().max()))
            if kk == k and (max(est) <= best.estimate_tol or exhausted or m == op.dim):
                # candidate: form the Ritz vectors and check them with true HVPs
                candidate = basis.ritz_pairs(S, k)
                if basis.HQ is None:  # the check cost k fresh HVPs
                    bar.update(k)
                best.offer(candidate)
                if max(candidate[2]) <= tol:
                    converged = True
                    break
                if best.stalled >= 3:
                    break  # the true residual no longer falls (rounding floor of the HVPs): report, not converged
                best.estimate_tol *= 0.1
            if op.hvps - hvps0 >= max_iter or m == op.dim:
                break  # budget spent, or the whole space spanned (Ritz pairs as good as rounding allows)
            if exhausted:
                # invariant subspace found: start a new Krylov sequence (its coupling is computed on adding)
                q = _random_unit(op, gen, basis.Q[:m])
                continue
            q = w / beta
            if m == basis.size:
                q = basis.thick_restart(theta, S, min(basis.size - 1, max(k + 1, basis.size // 2)), q)
    if not converged and basis.m > 0:  # budget ran out (or rounding floor): report the current Ritz pairs
        best.offer(basis.ritz_pairs(S, min(k, basis.m)))
    info = {"hvps": op.hvps - hvps0, "seconds": time.perf_counter() - start, "converged": converged}
    return _sorted_result(best.pairs, sign, which, tol, info)


def _sorted_result(pairs: tuple, sign: float, which: str, tol: float, info: dict) -> EigenResult:
    """The Ritz pairs as an ``EigenResult``, best first; ``info`` holds hvps, seconds and converged."""
    lams, V, res = pairs
    order = sorted(range(len(lams)), key=lambda i: -sign * lams[i])
    return EigenResult(
        [lams[i] for i in order],
        V[order],
        [res[i] for i in order],
        info["hvps"],
        info["seconds"],
        info["converged"],
        "lanczos",
        which,
        tol,
        [lams[i] < 0 for i in order],
    )


def top_eigen(op, k: int = 1, method: str = "lanczos", **options) -> EigenResult:
    """Dispatch to ``lanczos`` (largest) or ``power_iteration`` by name."""
    if method == "lanczos":
        return lanczos(op, k, **options)
    if method == "power":
        options.pop("which", None)
        return power_iteration(op, k, **options)
    raise ValueError(f"unknown eigen method {method!r}; use lanczos or power")
