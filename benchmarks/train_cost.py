"""Time per optimizer step of ERM, AMP (inner_iter 1 and 2) and SAM.

    .venv/bin/python benchmarks/train_cost.py [--repeats 15] [--threads 2] [--skip-resnet]

Setups: the default convnet on digits (batch 32, the training default) and PreActResNet18 on fake
32x32x3 batches (batch 16; CPU-sized). Warm-up steps are excluded; methods are interleaved step by
step so that load from other processes hits them alike; each figure is the median over repeats,
both of wall time and of this process's CPU time (which excludes time spent waiting for the CPU on
a shared machine; the goal is checked on CPU time).
Goal: AMP step <= 1.05 x (1 + inner_iter) x ERM step (AMP costs 1 + inner_iter forward-backward
passes; the first inner step reuses the gradient at θ).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
import torch.nn.functional as F

from flatness.data.datasets import dataset_info, get_dataset
from flatness.models.registry import build_model
from flatness.training.optim import AMP, SAM

METHODS = ("erm", "amp-1", "amp-2", "sam")


def make_optimizer(method, params):
    base = dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    if method == "erm":
        return torch.optim.SGD(params, **base)
    if method.startswith("amp"):
        return AMP(params, epsilon=0.5, inner_lr=1.0, inner_iter=int(method.split("-")[1]), **base)
    return SAM(params, rho=0.05, **base)


def loss_closure(model, opt, x, y):
    """One forward and backward pass on (x, y), the closure an AMP/SAM step calls.

    Args:
        model: the trained module.
        opt: its optimiser (gradients are zeroed first).
        x: the batch inputs.
        y: the batch labels.

    Returns:
        The batch's mean cross-entropy loss.
    """
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss


def bench(name, build, batches, repeats, warmup=2):
    runs = {}
    for method in METHODS:
        torch.manual_seed(0)
        model = build()
        model.train()
        runs[method] = (model, make_optimizer(method, model.parameters()))
    times = {m: [] for m in METHODS}
    cpu = {m: [] for m in METHODS}
    for r in range(warmup + repeats):
        x, y = batches[r % len(batches)]
        for method in METHODS:
            model, opt = runs[method]
            # Bound, not captured: each closure must use this round's model, optimiser and batch.
            closure = functools.partial(loss_closure, model, opt, x, y)

            began, began_cpu = time.perf_counter(), time.process_time()
            if method == "erm":
                closure()
                opt.step()
            else:
                opt.step(closure)
            elapsed, elapsed_cpu = time.perf_counter() - began, time.process_time() - began_cpu
            if r >= warmup:
                times[method].append(elapsed)
                cpu[method].append(elapsed_cpu)
    erm = statistics.median(times["erm"])
    erm_cpu = statistics.median(cpu["erm"])
    print(f"\n{name}: median of {repeats} steps (warm-up {warmup} excluded)")
    print(f"{'method':8s} {'wall ms':>9s} {'x ERM':>7s} {'CPU ms':>9s} {'x ERM':>7s}  goal (on CPU time)")
    for method in METHODS:
        med, med_cpu = statistics.median(times[method]), statistics.median(cpu[method])
        ratio = med_cpu / erm_cpu
        if method.startswith("amp"):
            k = int(method.split("-")[1])
            bound = 1.05 * (1 + k)
            goal = f"<= {bound:.2f}  {'ok' if ratio <= bound else 'MISSED'}"
        elif method == "sam":
            goal = f"(2 passes; <= {1.05 * 2:.2f} {'ok' if ratio <= 2.1 else 'over'})"
        else:
            goal = ""
        print(f"{method:8s} {1000 * med:9.2f} {med / erm:7.2f} {1000 * med_cpu:9.2f} {ratio:7.2f}  {goal}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")

    info = dataset_info("digits")
    data = get_dataset("digits", "train")
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(8):
        idx = torch.randint(0, len(data), (32,), generator=g)
        batches.append((data.images[idx], data.labels[idx]))
    bench(
        "convnet / digits, batch 32",
        lambda: build_model("convnet", info.in_channels, info.image_size, info.num_classes),
        batches,
        args.repeats,
    )

    if not args.skip_resnet:
        fake = [(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(3)]
        bench(
            "preactresnet18 / fake 32x32x3, batch 16",
            lambda: build_model("preactresnet18", 3, 32, 10),
            fake,
            max(3, args.repeats // 3),
        )


if __name__ == "__main__":
    main()
