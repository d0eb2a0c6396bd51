"""CUDA fast-path benchmark: PreActResNet-18 training throughput on CIFAR-10-shaped data.

Measures images/s of one optimizer step for ERM (SGD), AMP (inner_iter 1) and SAM, in fp32 and in
bf16 autocast + channels_last, and the time of a 51x51 loss surface. Data are random tensors of
CIFAR-10's shape kept on the device (no download). Usage::

    python benchmarks/gpu.py                      # on a GPU machine
    python benchmarks/gpu.py --device cpu --steps 2 --batch 16 --grid 3 --surface-samples 64   # smoke run

Prints one table; record the card's name (printed) with the figures in benchmarks/README.md.
"""

import argparse
import contextlib
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from flatness.core.devices import resolve_device  # noqa: E402
from flatness.models.registry import build_from_spec, model_spec  # noqa: E402
from flatness.training.optim import AMP, SAM  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_optimizer(method, params):
    common = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    if method == "erm":
        return torch.optim.SGD(params, **common)
    if method == "amp":
        return AMP(params, epsilon=0.5, inner_lr=1.0, inner_iter=1, **common)
    return SAM(params, rho=0.05, **common)


def train_throughput(method, fast, device, batch, steps, warmup):
    torch.manual_seed(0)
    model = build_from_spec(model_spec("preactresnet18", 3, 32, 10)).to(device).train()
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if fast:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = make_optimizer(method, model.parameters())
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if fast else contextlib.nullcontext()

    def closure():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    def step():
        if method == "erm":
            closure()
            opt.step()
        else:
            opt.step(closure)

    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def surface_time(device, grid, samples, fast):
    """Seconds for a grid x grid random filter-normalised surface on `samples` CIFAR-shaped images."""
    from flatness.data.probe_data import ProbeData
    from flatness.formats.checkpoint import save_checkpoint
    from flatness.landscape.compute import compute_surface

    spec = model_spec("preactresnet18", 3, 32, 10)
    model = build_from_spec(spec)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "m.pt")
        save_checkpoint(ckpt, model, model_spec=spec, config={"dataset": "cifar10"}, epoch=0)
        g = torch.Generator().manual_seed(0)
        data = ProbeData.from_tensors(
            torch.randn(samples, 3, 32, 32, generator=g).to(device),
            torch.randint(0, 10, (samples,), generator=g).to(device),
            batch_size=min(samples, 1000),
        )
        summary = compute_surface(
            ckpt,
            os.path.join(tmp, "s.h5"),
            x=(-1, 1, grid),
            y=(-1, 1, grid),
            device=str(device),
            progress=False,
            data={"train": data},
            precision="bf16" if fast else "fp32",
        )
        return summary["seconds"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--grid", type=int, default=51)
    parser.add_argument("--surface-samples", type=int, default=10000)
    parser.add_argument("--skip-surface", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {name}; torch {torch.__version__}; batch {args.batch}, {args.steps} timed steps")
    print(f"{'method':8} {'fp32 img/s':>12} {'bf16+cl img/s':>14} {'speed-up':>9}")
    base = {}
    for method in ("erm", "amp", "sam"):
        fp32 = train_throughput(method, False, device, args.batch, args.steps, args.warmup)
        fast = train_throughput(method, True, device, args.batch, args.steps, args.warmup)
        base[method] = fp32
        print(f"{method:8} {fp32:12.1f} {fast:14.1f} {fast / fp32:8.2f}x")
    print(f"AMP cost vs ERM (fp32): {base['erm'] / base['amp']:.2f}x  (ideal 2.00x for inner_iter=1)")
    if not args.skip_surface:
        for fast in (False, True):
            seconds = surface_time(device, args.grid, args.surface_samples, fast)
            label = "bf16 autocast" if fast else "fp32"
            print(f"{args.grid}x{args.grid} surface on {args.surface_samples} images ({label}): {seconds:.1f} s")


if __name__ == "__main__":
    main()
