"""Transformers through the command line (issue 18): token ids from an npz, a Hugging Face model with dict inputs.

An ``nn.TransformerEncoder`` classifier on int64 token ids (with a padding mask) and a tiny Hugging Face
``BertForSequenceClassification`` built offline from a config (no download) whose inputs are the npz's
``x_train.input_ids`` and ``x_train.attention_mask`` arrays: ``train``, ``probe`` (λ1 against a dense
float64 Hessian computed with PyTorch's math attention backend) and ``surface`` with ``--model file.py:fn``.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

MODELS = textwrap.dedent('''
    import torch
    import torch.nn as nn


    class Encoder(nn.Module):
        """Token ids [B, L] (0 = padding) -> class scores, through one TransformerEncoder layer."""

        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(12, 4)
            layer = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
            self.head = nn.Linear(4, 3)

        def forward(self, tokens):
            pad = tokens == 0
            h = self.encoder(self.embed(tokens), src_key_padding_mask=pad)
            h = h.masked_fill(pad[..., None], 0.0).sum(1) / (~pad).sum(1, keepdim=True)
            return self.head(h)


    def encoder():
        torch.manual_seed(0)
        return Encoder()


    class HuggingFaceStyle(torch.utils.data.Dataset):
        """Examples {"input_ids": ..., "attention_mask": ..., "labels": ...}, as a tokenised HF dataset gives them."""

        def __init__(self, ids, mask, labels):
            self.ids, self.mask, self.labels = ids, mask, labels

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


    def hf_data():
        import numpy as np

        arrays = np.load(__file__.replace("models.py", "bert.npz"))
        splits = []
        for split in ("train", "test"):
            keys = (f"x_{split}.input_ids", f"x_{split}.attention_mask", f"y_{split}")
            ids, mask, y = (torch.from_numpy(arrays[k]) for k in keys)
            splits.append(HuggingFaceStyle(ids, mask, y))
        return tuple(splits)


    def bert():
        from transformers import BertConfig, BertForSequenceClassification

        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=12, hidden_size=4, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
            max_position_embeddings=8, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )
        return BertForSequenceClassification(config)
''')

LENGTH = 6


@pytest.fixture
def tokens(tmp_path):
    """models.py; enc.npz (token ids as x_train) and bert.npz (x_train.input_ids, x_train.attention_mask)."""
    (tmp_path / "models.py").write_text(MODELS)
    gen = np.random.default_rng(0)
    n = 40
    ids = gen.integers(1, 12, size=(n, LENGTH))
    lengths = gen.integers(2, LENGTH + 1, size=n)
    mask = (np.arange(LENGTH)[None, :] < lengths[:, None]).astype(np.int64)
    ids = ids * mask  # 0 pads the end of each sequence
    labels3, labels2 = gen.integers(0, 3, size=n), gen.integers(0, 2, size=n)
    np.savez(tmp_path / "enc.npz", x_train=ids[:32], y_train=labels3[:32], x_test=ids[32:], y_test=labels3[32:])
    arrays = {
        "x_train.input_ids": ids[:32],
        "x_train.attention_mask": mask[:32],
        "y_train": labels2[:32],
        "x_test.input_ids": ids[32:],
        "x_test.attention_mask": mask[32:],
        "y_test": labels2[32:],
    }
    np.savez(tmp_path / "bert.npz", **arrays)
    return {
        "dir": tmp_path,
        "file": str(tmp_path / "models.py"),
        "ids": ids[:32],
        "mask": mask[:32],
        "y3": labels3[:32],
        "y2": labels2[:32],
    }


def dense_top_eigenvalue(model, call, y) -> float:
    """The largest eigenvalue of the dense float64 Hessian of the mean cross-entropy (math attention)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = model.double().eval()
    named = [(n, p.detach()) for n, p in model.named_parameters()]
    sizes = [p.numel() for _, p in named]
    flat = torch.cat([p.reshape(-1) for _, p in named])

    def loss(theta):
        params = {n: t.reshape(p.shape) for (n, p), t in zip(named, theta.split(sizes))}
        return F.cross_entropy(call(lambda *a, **k: torch.func.functional_call(model, params, a, k)), y)

    with sdpa_kernel([SDPBackend.MATH]):
        return float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))[-1])


def run_train_probe_surface(cli, tmp_path, model_ref, npz):
    run = tmp_path / "run"
    common = ["--model", model_ref]
    result = cli(
        [
            "train",
            *common,
            "--dataset",
            npz,
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--lr",
            "0.05",
            "--no-progress",
            "--out",
            run,
        ]
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "p.json"
    result = cli(["probe", run, *common, "--top-k", "2", "--tol", "1e-6", "--max-iter", "200", "--out", out, "--quiet"])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    h5 = tmp_path / "s.h5"
    result = cli(["surface", run, *common, "--x=-1:1:3", "--out", h5, "--quiet"])
    assert result.exit_code == 0, result.output
    import h5py

    with h5py.File(h5, "r") as f:
        assert float(f["train_loss"][1]) == pytest.approx(written["loss"], rel=1e-5)
        assert f.attrs["samples"] == 32
    state = torch.load(run / "last.pt", weights_only=True)["model_state"]
    return written, state


def test_transformer_encoder_on_token_ids(cli, tokens, tmp_path):
    ref = f"{tokens['file']}:encoder"
    written, state = run_train_probe_surface(cli, tmp_path, ref, str(tokens["dir"] / "enc.npz"))
    net = __import__("flatness").models.references.resolve_model_reference(ref, {})[0]
    net.load_state_dict(state)
    ids, y = torch.from_numpy(tokens["ids"]), torch.from_numpy(tokens["y3"])
    expected = dense_top_eigenvalue(net, lambda f: f(ids), y)
    assert written["hessian"]["eigenvalues"][0] == pytest.approx(expected, rel=1e-4)
    assert written["accuracy"] is not None


def test_hugging_face_bert_with_dict_inputs(cli, tokens, tmp_path):
    ref = f"{tokens['file']}:bert"
    written, state = run_train_probe_surface(cli, tmp_path, ref, str(tokens["dir"] / "bert.npz"))
    net = __import__("flatness").models.references.resolve_model_reference(ref, {})[0]
    net.load_state_dict(state)
    ids, mask, y = (torch.from_numpy(tokens[k]) for k in ("ids", "mask", "y2"))
    expected = dense_top_eigenvalue(net, lambda f: f(input_ids=ids, attention_mask=mask).logits, y)
    assert written["hessian"]["eigenvalues"][0] == pytest.approx(expected, rel=1e-4)


def test_a_dataset_callable_of_hugging_face_dicts(cli, tokens, tmp_path):
    ref, data = f"{tokens['file']}:bert", f"{tokens['file']}:hf_data"
    run = tmp_path / "run"
    result = cli(
        [
            "train",
            "--model",
            ref,
            "--dataset",
            data,
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--no-progress",
            "--out",
            run,
        ]
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "p.json"
    args = ["probe", run, "--model", ref, "--dataset", data, "--top-k", "1", "--tol", "1e-6", "--max-iter", "200"]
    result = cli([*args, "--out", out, "--quiet"])
    assert result.exit_code == 0, result.output
    net = __import__("flatness").models.references.resolve_model_reference(ref, {})[0]
    net.load_state_dict(torch.load(run / "last.pt", weights_only=True)["model_state"])
    ids, mask, y = (torch.from_numpy(tokens[k]) for k in ("ids", "mask", "y2"))
    expected = dense_top_eigenvalue(net, lambda f: f(input_ids=ids, attention_mask=mask).logits, y)
    assert json.loads(out.read_text())["hessian"]["eigenvalues"][0] == pytest.approx(expected, rel=1e-4)
