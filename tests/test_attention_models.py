"""Models with attention, exactly: every second-order routine against a dense float64 Hessian.

Four tiny models that use ``scaled_dot_product_attention``, whose fused CPU kernel has no double
backward (``test_the_fused_kernel_has_no_double_backward`` shows the failure flatness avoids): an
``nn.TransformerEncoder`` classifier on token ids with a padding mask, an ``nn.MultiheadAttention``
model, and Hugging Face ``BertForSequenceClassification`` and ``GPT2ForSequenceClassification`` built
from tiny configs (no download) on their default "sdpa" attention, fed dict batches with "labels"
and returning a ``ModelOutput``. The ground truth is ``torch.autograd.functional.hessian`` of the
mean cross-entropy in float64 under the math attention backend, written here independently of the
library (its own loss, its own functional call, its own backend scope).
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

import flatness
from flatness.hessian.trace import hutchinson

N, SEQ, VOCAB, CLASSES = 8, 6, 7, 3
# PyTorch's own note when nn.TransformerEncoder's eval fast path packs a padded batch (its default)
pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")


def _tokens(seed=0):
    """Token ids (0 = padding), their mask (True = a real token) and labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (N, SEQ), generator=g)
    mask = torch.ones(N, SEQ, dtype=torch.long)
    mask[::2, SEQ - 2 :] = 0  # every other example has two padding tokens at the end
    ids[mask == 0] = 0
    return ids, mask, torch.randint(0, CLASSES, (N,), generator=g)


class EncoderClassifier(nn.Module):
    """Embedding, one ``nn.TransformerEncoder`` layer with a key padding mask, masked mean pool, head."""

    def __init__(self, d=8):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d, padding_idx=0)
        layer = nn.TransformerEncoderLayer(d, 2, dim_feedforward=8, dropout=0.0, batch_first=True)
        # PyTorch's defaults (enable_nested_tensor=True): in eval mode without grad the native fast path
        # runs (evaluate, surfaces); every gradient and HVP takes the differentiable path
        self.encoder = nn.TransformerEncoder(layer, 1)
        self.head = nn.Linear(d, CLASSES)

    def forward(self, input_ids, attention_mask):
        keep = attention_mask.bool()
        h = self.encoder(self.emb(input_ids), src_key_padding_mask=~keep)
        w = keep.unsqueeze(-1).to(h.dtype)
        return self.head((h * w).sum(1) / w.sum(1))


class AttentionPool(nn.Module):
    """``nn.MultiheadAttention`` of a learned query over the tokens (keys masked), then a head; returns a tuple."""

    def __init__(self, d=8):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        self.query = nn.Parameter(torch.randn(1, 1, d) * 0.5)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.head = nn.Linear(d, CLASSES)

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids)
        q = self.query.expand(h.shape[0], 1, -1)
        pooled, _ = self.attn(q, h, h, key_padding_mask=attention_mask == 0, need_weights=False)
        return self.head(pooled[:, 0]), pooled


def _bert():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=SEQ,
        type_vocab_size=1,
        num_labels=CLASSES,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def _gpt2():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=8,
        n_layer=1,
        n_head=2,
        n_inner=8,
        n_positions=SEQ,
        num_labels=CLASSES,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2ForSequenceClassification(config)


MODELS = {"encoder": EncoderClassifier, "mha": AttentionPool, "bert": _bert, "gpt2": _gpt2}


def _dense_hessian(model, inputs, y):
    """∇² of the mean float64 cross-entropy over the trainable parameters (math attention backend)."""
    pairs = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in pairs])

    def loss(flat):
        params, offset = {}, 0
        for name, p in pairs:
            params[name] = flat[offset : offset + p.numel()].view(p.shape)
            offset += p.numel()
        out = functional_call(model, params, (), inputs, strict=False)
        logits = out if isinstance(out, torch.Tensor) else (out[0] if isinstance(out, tuple) else out["logits"])
        return F.cross_entropy(logits, y)

    with sdpa_kernel(SDPBackend.MATH):
        H = torch.autograd.functional.hessian(loss, flat0, vectorize=True)
    return (H + H.T) / 2


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    """(name, float64 model in train mode, dict batches with labels, hand-computed loss, dense H)."""
    torch.manual_seed(0)
    model = MODELS[request.param]().double()
    model.train()  # as a user hands it over; flatness measures in eval mode
    ids, mask, y = _tokens()
    batches = [{"input_ids": ids[i : i + 5], "attention_mask": mask[i : i + 5], "labels": y[i : i + 5]} for i in (0, 5)]
    model.eval()
    with torch.no_grad():  # the hand loop: batch mean losses weighted by n_b / n
        total = 0.0
        for b in batches:
            out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            logits = out if isinstance(out, torch.Tensor) else (out[0] if isinstance(out, tuple) else out.logits)
            total += F.cross_entropy(logits, b["labels"]).item() * b["labels"].shape[0] / N
    H = _dense_hessian(model, {"input_ids": ids, "attention_mask": mask}, y)
    model.train()
    return request.param, model, batches, total, H


def test_the_models_use_sdpa_attention():
    """The Hugging Face models are on "sdpa", the path that needs the math backend."""
    assert _bert().config._attn_implementation == "sdpa" and _gpt2().config._attn_implementation == "sdpa"


def test_the_fused_kernel_has_no_double_backward():
    """Outside flatness's scope a double backward through the encoder fails: what the scope avoids."""
    model = EncoderClassifier().double().eval()
    ids, mask, y = _tokens()
    loss = F.cross_entropy(model(ids, mask), y)
    grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    with pytest.raises(RuntimeError, match="derivative for .*scaled_dot_product.*not implemented"):
        torch.autograd.grad(sum(g.sum() for g in grads), list(model.parameters()))


def test_evaluate_equals_the_hand_loop(case):
    name, model, batches, total, _ = case
    loss, acc = flatness.evaluate(model, batches)
    assert abs(loss - total) <= 1e-12 and 0.0 <= acc <= 1.0
    assert model.training  # its mode is given back


@pytest.mark.parametrize("backend", ["double-backward", "forward-over-reverse"])
def test_hvps_equal_the_dense_hessian(case, backend):
    name, model, batches, _, H = case
    op = flatness.HessianOperator(model, batches, backend=backend)
    assert op.dim == H.shape[0]
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        v = torch.randn(op.dim, generator=g, dtype=torch.float64)
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", ["double-backward", "forward-over-reverse"])
def test_lanczos_top3_equals_the_dense_spectrum(case, backend):
    name, model, batches, _, H = case
    expected = torch.linalg.eigvalsh(H).flip(0)[:3]
    result = flatness.lanczos(flatness.HessianOperator(model, batches, backend=backend), 3, tol=1e-10, max_iter=300)
    got = torch.as_tensor(result.eigenvalues, dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


def test_power_iteration_through_attention():
    """Power iteration (largest |λ|) on the nn.MultiheadAttention model: the dense eigenvalue of largest magnitude."""
    torch.manual_seed(0)
    model = AttentionPool().double()
    ids, mask, y = _tokens()
    model.eval()
    ev = torch.linalg.eigvalsh(_dense_hessian(model, {"input_ids": ids, "attention_mask": mask}, y))
    data = {"input_ids": ids, "attention_mask": mask, "labels": y}
    result = flatness.power_iteration(flatness.HessianOperator(model, data), k=1, tol=1e-8, max_iter=300)
    assert result.eigenvalues[0] == pytest.approx(float(ev[ev.abs().argmax()]), rel=1e-6)


def test_trace_estimate_matches_the_dense_trace(case):
    """Hutchinson on the model equals Hutchinson on the dense H with the same draws, and brackets tr(H)."""
    name, model, batches, _, H = case

    class Dense:
        dim, dtype, device, hvps = H.shape[0], H.dtype, H.device, 0

        def matvec(self, v):
            return H @ v

    ours = hutchinson(flatness.HessianOperator(model, batches), samples=12, seed=5)
    dense = hutchinson(Dense(), samples=12, seed=5)
    assert ours.estimate == pytest.approx(dense.estimate, rel=1e-9, abs=1e-12)
    assert abs(ours.estimate - float(torch.trace(H))) <= 5 * ours.stderr


def test_surface_centre_equals_evaluate_and_eigen_directions_are_exact(case):
    name, model, batches, _, H = case
    surface = flatness.loss_surface(model, batches, "-0.1:0.1:3", "-0.1:0.1:3")
    assert surface["loss"][1, 1] == flatness.evaluate(model, batches)[0]
    from flatness.landscape.directions import eigen_directions

    top = eigen_directions(model, batches, k=1, tol=1e-8, max_iter=300)
    assert top.eigenvalues[0] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-6)


def test_float32_attention_models_are_measured_too():
    """The everyday case: a float32 encoder; its top eigenvalue agrees with float64's to float32 accuracy."""
    torch.manual_seed(0)
    model = EncoderClassifier()
    ids, mask, y = _tokens()
    data = {"input_ids": ids, "attention_mask": mask, "labels": y}
    top32 = flatness.lanczos(flatness.HessianOperator(model, data), 1, tol=1e-6).eigenvalues[0]
    top64 = flatness.lanczos(flatness.HessianOperator(model.double(), data), 1, tol=1e-10).eigenvalues[0]
    assert math.isclose(top32, top64, rel_tol=1e-4)


def test_measure_runs_every_quantity_on_a_hugging_face_model():
    """flatness.measure (the probe's library call) on BERT with dict batches: spectrum exact, all metrics run."""
    from flatness.study.probe import QUICK_SHARPNESS, ProbeSettings

    torch.manual_seed(0)
    model = _bert().double()
    ids, mask, y = _tokens()
    data = {"input_ids": ids, "attention_mask": mask, "labels": y}
    settings = ProbeSettings.from_dict(
        {
            "tol": 1e-8,
            "trace_samples": 4,
            "density_steps": 8,
            "density_vectors": 1,
            "sharpness_options": QUICK_SHARPNESS,
        }
    )
    result = flatness.measure(model, data, top_k=2, trace=True, density=True, sharpness="all", settings=settings)
    model.eval()
    H = _dense_hessian(model, {"input_ids": ids, "attention_mask": mask}, y)
    expected = torch.linalg.eigvalsh(H).flip(0)[:2].tolist()
    assert result["hessian"]["eigenvalues"] == pytest.approx(expected, rel=1e-6)
    assert result["accuracy"] is not None and result["loss"] == flatness.evaluate(model, data)[0]
    assert {r["metric"] for r in result["sharpness"]} == set(flatness.sharpness.METRIC_NAMES)
    assert all(r["value"] is None or math.isfinite(r["value"]) for r in result["sharpness"])
