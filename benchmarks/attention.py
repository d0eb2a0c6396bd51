"""Attention benchmark: Hessian-vector products through transformers, flatness vs PyHessian vs torch.func.

    python benchmarks/attention.py [--repeat 5] [--threads 1] [--models encoder,bert]

Two models, float32, 32 token sequences of length 32 (a quarter of them padded), 4 classes:

* ``encoder``: embedding, a 2-layer ``nn.TransformerEncoder`` (d=64, 4 heads, feed-forward 128) with a
  key padding mask, masked mean pooling, a linear head (``scaled_dot_product_attention`` inside);
* ``bert``: Hugging Face ``BertForSequenceClassification`` from a tiny config (hidden 64, 2 layers,
  4 heads, intermediate 128; nothing downloaded) on its default "sdpa" attention, fed a dict batch.

Per model, all on the same model (eval mode) and batch:

* the gradient (one forward and backward of the mean cross-entropy) with the fast attention kernels,
  and under the math backend: what the math backend costs first-order work, which flatness does not
  make pay it;
* flatness's HVP (``HessianOperator.matvec``; both backends), which runs under the math backend by
  itself; the double-backward backend keeps a single batch's gradient graph between products, so its
  first product (which builds the graph) and the later ones are timed apart;
* a hand-written ``torch.func`` HVP (``jvp`` over ``grad`` through ``functional_call``) under the math
  backend: the floor a user could write;
* PyHessian 0.1 (``pip install pyhessian``) as a user would call it: it fails on the fused kernel
  (the error is printed); and then inside the user's own ``sdpa_kernel(SDPBackend.MATH)`` scope,
  where its eigenvalue of largest magnitude (power iteration, 30 products at most, tol 1e-3) is
  compared with flatness's (Lanczos at tol 1e-6, largest and smallest).

Printed: seconds per product, HVP / gradient ratios, and the agreement of the products (max relative
difference of Hv between flatness, torch.func and float64).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import flatness  # noqa: E402

N, SEQ, VOCAB, CLASSES, D = 32, 32, 100, 4, 64


class Encoder(nn.Module):
    """A 2-layer nn.TransformerEncoder classifier on token ids with a padding mask."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D, padding_idx=0)
        layer = nn.TransformerEncoderLayer(D, 4, dim_feedforward=128, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(D, CLASSES)

    def forward(self, input_ids, attention_mask):
        keep = attention_mask.bool()
        h = self.encoder(self.emb(input_ids), src_key_padding_mask=~keep)
        w = keep.unsqueeze(-1).to(h.dtype)
        return self.head((h * w).sum(1) / w.sum(1))


def bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=D,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=SEQ,
        type_vocab_size=1,
        num_labels=CLASSES,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (N, SEQ), generator=g)
    mask = torch.ones(N, SEQ, dtype=torch.long)
    mask[::4, SEQ // 2 :] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}, torch.randint(0, CLASSES, (N,), generator=g)


class IdsOnly(nn.Module):
    """What PyHessian can call (``model(inputs)``): the ids tensor in, the class scores out."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        out = self.model(input_ids=ids, attention_mask=(ids != 0).long())
        return out if isinstance(out, torch.Tensor) else out.logits


def timed(fn, repeat):
    """The fastest of ``repeat`` calls in seconds (after one warm-up call), and the last result.

    The fastest, not the median: on a shared machine other jobs only ever add time, so the minimum is
    the best estimate of the cost itself.
    """
    result = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def gradient_fn(model, inputs, y, math):
    params = [p for p in model.parameters() if p.requires_grad]

    def run():
        with sdpa_kernel(SDPBackend.MATH) if math else contextlib.nullcontext():
            logits = flatness.data.batches.forward(model, inputs)
            return torch.autograd.grad(F.cross_entropy(logits, y), params)

    return run


def torch_func_hvp(model, inputs, y, v_named):
    primals = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def loss(p):
        out = functional_call(model, p, (), inputs)
        return F.cross_entropy(out if isinstance(out, torch.Tensor) else out.logits, y)

    def run():
        with sdpa_kernel(SDPBackend.MATH):
            return jvp(grad(loss), (primals,), (v_named,))[1]

    return run


def pyhessian_rows(model, inputs, y, ours_top):
    try:
        from pyhessian import hessian
    except ImportError:
        print("  PyHessian: not installed (pip install pyhessian)")
        return
    wrapped = IdsOnly(copy.deepcopy(model)).eval()
    try:
        hessian(wrapped, F.cross_entropy, data=(inputs["input_ids"], y), cuda=False).eigenvalues(top_n=1)
        print("  PyHessian as called: ran (no error)")
    except RuntimeError as err:
        print(f"  PyHessian as called: RuntimeError: {str(err).splitlines()[0]}")
    with sdpa_kernel(SDPBackend.MATH):
        start = time.perf_counter()
        h = hessian(wrapped, F.cross_entropy, data=(inputs["input_ids"], y), cuda=False)
        values, _ = h.eigenvalues(top_n=1, maxIter=30, tol=1e-3)
        seconds = time.perf_counter() - start
    # PyHessian's power iteration finds the eigenvalue of largest magnitude, which may be negative.
    print(
        f"  PyHessian inside the user's sdpa_kernel(MATH): largest-|lambda| {values[0]:.6f} in {seconds:.2f} s "
        f"(flatness Lanczos, tol 1e-6: {ours_top:.6f}; relative difference "
        f"{abs(values[0] - ours_top) / abs(ours_top):.1e})"
    )


def run_model(name, model, repeat):
    model.eval()
    inputs, y = batch()
    data = dict(inputs, labels=y)
    d = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"\n{name}: {d} parameters, {N} sequences of {SEQ} tokens")
    g_fast, _ = timed(gradient_fn(model, inputs, y, math=False), repeat)
    g_math, _ = timed(gradient_fn(model, inputs, y, math=True), repeat)
    print(f"  gradient, fast attention kernels: {g_fast * 1e3:.1f} ms")
    print(f"  gradient, math backend:           {g_math * 1e3:.1f} ms ({g_math / g_fast:.2f}x the fast kernels)")
    v = torch.randn(d, generator=torch.Generator().manual_seed(1))
    rows = {}
    op = flatness.HessianOperator(model, data)
    start = time.perf_counter()
    hv_first = op.matvec(v)
    rows["flatness double-backward, first product (builds the graph)"] = time.perf_counter() - start
    rows["flatness double-backward, later products (graph kept)"], hv_db = timed(lambda: op.matvec(v), repeat)
    op_nc = flatness.HessianOperator(model, data, cache_graph=False)
    rows["flatness double-backward, no kept graph"], _ = timed(lambda: op_nc.matvec(v), repeat)
    op_fr = flatness.HessianOperator(model, data, backend="forward-over-reverse")
    rows["flatness forward-over-reverse"], hv_fr = timed(lambda: op_fr.matvec(v), repeat)
    v_named = dict(zip(op.names, op.split(v)))
    rows["hand-written torch.func (jvp over grad), math backend"], hv_tf = timed(
        torch_func_hvp(model, inputs, y, v_named), repeat
    )
    hv_tf = torch.cat([hv_tf[n].reshape(-1) for n in op.names])
    for label, seconds in rows.items():
        print(f"  HVP {label}: {seconds * 1e3:.1f} ms = {seconds / g_fast:.2f}x the fast gradient")
    reference = flatness.HessianOperator(copy.deepcopy(model).double(), data).matvec(v.double())

    def rel(a):
        return float((a.double() - reference).norm() / reference.norm())

    print(
        "  relative error of Hv against float64: "
        f"flatness double-backward {rel(hv_db):.1e} (first {rel(hv_first):.1e}), "
        f"forward-over-reverse {rel(hv_fr):.1e}, torch.func {rel(hv_tf):.1e}"
    )
    largest = flatness.lanczos(op, 1, tol=1e-6).eigenvalues[0]
    smallest = flatness.lanczos(op, 1, which="smallest", tol=1e-6).eigenvalues[0]
    print(f"  flatness Lanczos: largest {largest:.6f}, smallest {smallest:.6f}")
    pyhessian_rows(model, inputs, y, max(largest, smallest, key=abs))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="encoder,bert")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, fastest of {args.repeat} calls")
    for name in args.models.split(","):
        torch.manual_seed(0)
        run_model(name, Encoder() if name == "encoder" else bert(), args.repeat)


if __name__ == "__main__":
    main()
