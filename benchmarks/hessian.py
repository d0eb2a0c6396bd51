"""Hessian benchmark: flatness.hessian against PyHessian (Yao et al. 2020) on the same model and data.

    python benchmarks/hessian.py --setup            # pip-installs pyhessian==0.1 into .bench/pyhessian
    python benchmarks/hessian.py [--models convnet,preactresnet18] [--fake-samples 64] [--threads 1]

PyHessian is not a project dependency: ``--setup`` installs it with ``pip --target`` into the
git-ignored ``.bench/`` (its code is not vendored). Both tools get the same model (eval mode),
the same probe batches and the same number of threads; their HVPs are the same double-backward
products, so time differences come from the number of HVPs and the algorithms around them.

Reported per model: time, HVPs, relative eigenvalue error against a tight reference (our Lanczos in
float64 at tol 1e-8) and the true relative residual ‖Hv − λv‖/|λ| of each returned vector (computed
afterwards, not charged to either tool); for the trace: estimate, standard error, HVPs, time.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BENCH = os.path.join(ROOT, ".bench")
PYHESSIAN_DIR = os.path.join(BENCH, "pyhessian")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def setup() -> None:
    os.makedirs(BENCH, exist_ok=True)
    subprocess.check_call(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", PYHESSIAN_DIR, "pyhessian==0.1"]
    )


def import_pyhessian():
    if not os.path.isdir(os.path.join(PYHESSIAN_DIR, "pyhessian")):
        raise SystemExit("pyhessian is not installed: run `python benchmarks/hessian.py --setup` first")
    sys.path.insert(0, PYHESSIAN_DIR)
    from pyhessian import hessian  # noqa: E402

    return hessian


def make_case(name: str, fake_samples: int, stale_bn: bool = False):
    """(model, ProbeData, description): the same objects are handed to both tools."""
    from flatness.data.probe_data import ProbeData, load_probe_data
    from flatness.formats.checkpoint import load_checkpoint
    from flatness.models.registry import build_model

    if name == "convnet":
        path = os.path.join(BENCH, "convnet.pt")
        if not os.path.exists(path):
            from conftest import quick_digits_checkpoint

            quick_digits_checkpoint(path, steps=200)
        model, _ = load_checkpoint(path)
        data = load_probe_data("digits", "train", 1000, 500)
        return model, data, "convnet (digits checkpoint, 200 SGD steps), 1000 digits train images, batches of 500"
    if name == "preactresnet18":
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        model = build_model("preactresnet18", 3, 32, 10)
        x = torch.randn(fake_samples, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (fake_samples,), generator=g)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(5):  # a few steps so BatchNorm statistics and weights are not at init
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        model.eval()
        data = ProbeData.from_tensors(x, y, min(fake_samples, 64))
        bn_note = "BN statistics as left by the 5 steps"
        if not stale_bn:
            # After 5 steps the running statistics are still mostly their initial values (momentum 0.1),
            # so eval mode scales activations by numbers no trained checkpoint has; the float32 HVP of
            # that net is off by 0.5% while a trained net's is off by ~1e-6. Re-estimating them on the
            # probe data gives what long training gives: statistics that match the data.
            from flatness.landscape.weights import recalibrate_bn

            recalibrate_bn(model, data.batches)
            bn_note = "BN statistics re-estimated on the probe images"
        return (
            model,
            data,
            (
                f"preactresnet18 (5 SGD steps; {bn_note}), {fake_samples} fake 32x32 images, "
                f"batches of {min(fake_samples, 64)}"
            ),
        )
    raise SystemExit(f"unknown model {name}")


def residuals(op, values, vectors):
    """True relative residuals, the arithmetic around the HVP in float64 (a float32 norm of d = 11M
    entries is itself off by ~1e-4, which would blur the very figure being measured)."""
    out = []
    for lam, v in zip(values, vectors):
        v = (v.double() / v.double().norm()).to(op.dtype)
        hv = op.matvec(v).double()
        out.append(float((hv - lam * v.double()).norm()) / abs(lam))
    return out


def run_pyhessian(hessian_cls, model, data, top_n=None, trace=False, tol=1e-4, max_iter=100):
    model = copy.deepcopy(model)
    h = hessian_cls(model, torch.nn.functional.cross_entropy, dataloader=list(data.batches), cuda=False)
    count = [0]
    original = h.dataloader_hv_product

    def counted(v):
        count[0] += 1
        return original(v)

    h.dataloader_hv_product = counted
    start = time.perf_counter()
    if trace:
        vhv = h.trace(maxIter=100, tol=1e-3)
        seconds = time.perf_counter() - start
        t = torch.tensor(vhv, dtype=torch.float64)
        se = float(t.std() / math.sqrt(len(vhv))) if len(vhv) > 1 else float("nan")
        return {"estimate": float(t.mean()), "stderr": se, "hvps": count[0], "seconds": seconds}
    values, vectors = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=top_n)
    seconds = time.perf_counter() - start
    flat = torch.stack([torch.cat([t.reshape(-1) for t in v]) for v in vectors])
    return {"values": values, "vectors": flat, "hvps": count[0], "seconds": seconds}


def fmt_err(values, ref):
    return max(abs(v - r) / abs(r) for v, r in zip(values, ref))


def bench_model(name, hessian_cls, fake_samples, args):
    from flatness.hessian import HessianOperator, hutchinson, hutchpp, lanczos, power_iteration

    model, data, desc = make_case(name, fake_samples, args.stale_bn)
    print(f"\n## {name}: {desc}")
    op = HessianOperator(model, data)
    print(f"d = {op.dim} parameters, {len(data)} batches, threads = {torch.get_num_threads()}")
    v = torch.randn(op.dim)
    op.matvec(v)
    t = time.perf_counter()
    for _ in range(3):
        op.matvec(v)
    hvp_s = (time.perf_counter() - t) / 3
    print(f"one full-data HVP: {hvp_s * 1000:.0f} ms", flush=True)

    # reference: float64 Lanczos to 1e-8
    ref_model = copy.deepcopy(model).double()
    from flatness.data.probe_data import ProbeData

    ref_data = ProbeData([(x.double(), y) for x, y in data.batches])
    t = time.perf_counter()
    ref = lanczos(HessianOperator(ref_model, ref_data), k=5, tol=args.ref_tol, max_iter=600, seed=123)
    print(
        f"reference (float64 Lanczos, tol {args.ref_tol:g}): {ref.hvps} HVPs, {time.perf_counter() - t:.1f} s, "
        f"converged={ref.converged}, max residual {max(ref.residuals):.1e}"
    )
    print("reference top-5: " + ", ".join(f"{x:.6g}" for x in ref.eigenvalues))
    rv = ref.eigenvalues
    rows = []

    def add(label, values, vectors, hvps, seconds, k):
        res = residuals(op, values[:k], vectors[:k])
        err = fmt_err(values[:k], rv[:k])
        rows.append((label, k, seconds, hvps, err, max(res)))
        print(
            f"  done: {label}, k={k}: {seconds:.1f} s, {hvps} HVPs, error {err:.1e}, residual {max(res):.1e}",
            flush=True,
        )

    for k in (1, 5):
        ph = run_pyhessian(hessian_cls, model, data, top_n=k, tol=1e-4, max_iter=args.pyhessian_max_iter)
        add(
            f"PyHessian power (tol 1e-4, maxIter {args.pyhessian_max_iter})",
            ph["values"],
            ph["vectors"],
            ph["hvps"],
            ph["seconds"],
            k,
        )
        tol = 1e-4 if k == 1 else 1e-3
        op.hvps = 0
        ours = lanczos(op, k=k, tol=tol, seed=0)
        add(f"ours lanczos (residual tol {tol:g})", ours.eigenvalues, ours.eigenvectors, ours.hvps, ours.seconds, k)
        if k == 1 or args.power5:
            ours_p = power_iteration(op, k=k, tol=tol, seed=0, max_iter=args.power_max_iter)
            add(
                f"ours power (residual tol {tol:g}, max {args.power_max_iter}/eig)",
                ours_p.eigenvalues,
                ours_p.eigenvectors,
                ours_p.hvps,
                ours_p.seconds,
                k,
            )
        if k == 5:
            ours = lanczos(op, k=k, tol=1e-4, seed=0)
            add("ours lanczos (residual tol 1e-4)", ours.eigenvalues, ours.eigenvectors, ours.hvps, ours.seconds, k)

    print("\n| method | k | seconds | HVPs | max rel. eigenvalue error | max true residual |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, k, s, h, e, r in rows:
        print(f"| {label} | {k} | {s:.1f} | {h} | {e:.1e} | {r:.1e} |")

    if args.skip_trace:
        return
    ph = run_pyhessian(hessian_cls, model, data, trace=True)
    n = ph["hvps"]
    ours_h = hutchinson(op, samples=n, seed=0)
    ours_pp = hutchpp(op, samples=max(n, 6), seed=0)
    ours_pp3 = hutchpp(op, samples=max(n // 3, 6), seed=0)
    print("\n| trace | estimate | stderr | HVPs | seconds |")
    print("| --- | --- | --- | --- | --- |")
    print(
        "| PyHessian Hutchinson (maxIter 100, tol 1e-3) "
        f"| {ph['estimate']:.5g} | {ph['stderr']:.2g} | {n} | {ph['seconds']:.1f} |"
    )
    for r in (ours_h, ours_pp, ours_pp3):
        print(f"| ours {r.method} | {r.estimate:.5g} | {r.stderr:.2g} | {r.hvps} | {r.seconds:.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", action="store_true", help="install pyhessian into .bench/pyhessian and exit")
    parser.add_argument("--models", default="convnet,preactresnet18")
    parser.add_argument("--fake-samples", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ref-tol", type=float, default=1e-8, help="residual tolerance of the float64 reference")
    parser.add_argument("--pyhessian-max-iter", type=int, default=100)
    parser.add_argument("--power-max-iter", type=int, default=300)
    parser.add_argument("--power5", action="store_true", help="also run our power iteration for the top-5")
    parser.add_argument(
        "--stale-bn",
        action="store_true",
        help="preactresnet18: keep the BN running statistics of the 5 training steps (an "
        "ill-conditioned net whose float32 HVPs are off by 0.5%%; the earlier figures)",
    )
    parser.add_argument("--skip-trace", action="store_true")
    args = parser.parse_args()
    if args.setup:
        setup()
        return
    torch.set_num_threads(args.threads)
    from flatness.core.cpu_memory import retain_freed_memory

    # what `flatness probe` does on a CPU; set for the whole process, so PyHessian gains from it too
    print(f"glibc keeps freed memory (flatness.core.cpu_memory) for both tools: {retain_freed_memory()}")
    hessian_cls = import_pyhessian()
    print(f"torch {torch.__version__}, load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for name in args.models.split(","):
        bench_model(name.strip(), hessian_cls, args.fake_samples, args)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
