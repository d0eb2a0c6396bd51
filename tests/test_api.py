"""Every measurement is a function of (model, data, loss): a model defined only here, on data given as a
DataLoader (uneven last batch), a list of batches and an (x, y) pair, checked against ground truth
computed independently (one big batch; dense Hessians from torch.autograd.functional.hessian)."""

import importlib
import math
import pkgutil
import types

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

import flatness
from flatness.core.errors import FlatnessError

N = 23  # examples: batches of 5 leave a last batch of 3, batches of 7 one of 2


class Classifier(nn.Module):
    """Exists only in this file: no registry, no checkpoint."""

    def __init__(self, inputs=5, hidden=6, classes=3):
        super().__init__()
        self.hidden = nn.Linear(inputs, hidden)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


class TwoInputs(nn.Module):
    """forward(a, b): takes its inputs as a tuple (positional) or a dict (keyword)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(2, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, a, b):
        return self.out(torch.tanh(self.a(a) + self.b(b)))


def _model(cls=Classifier, seed=0, **kwargs):
    torch.manual_seed(seed)
    return cls(**kwargs).double()


def _xy(seed=1, inputs=5, classes=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, inputs, generator=g, dtype=torch.float64), torch.randint(0, classes, (N,), generator=g)


def _forms(x, y):
    return {
        "loader": DataLoader(TensorDataset(x, y), batch_size=5, shuffle=False),
        "batches": [(x[i : i + 7], y[i : i + 7]) for i in range(0, N, 7)],
        "pair": (x, y),
    }


FORMS = ["loader", "batches", "pair"]


def _dense_hessian(model, loss_of_outputs):
    """∇² of the full-data loss by torch.autograd.functional.hessian over the flat parameters (float64)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def loss(flat):
        params, start = {}, 0
        for name, shape in zip(names, shapes):
            size = math.prod(shape)
            params[name] = flat[start : start + size].view(shape)
            start += size
        return loss_of_outputs(lambda *args, **kwargs: functional_call(model, params, args, kwargs))

    H = torch.autograd.functional.hessian(loss, flat0)
    return (H + H.T) / 2


@pytest.mark.parametrize("form", FORMS)
def test_evaluate_is_the_full_data_mean(form):
    model = _model()
    x, y = _xy()
    with torch.no_grad():  # one big batch, independently of any batching
        logits = model(x)
        ref_loss = float(F.cross_entropy(logits, y))
        ref_acc = float((logits.argmax(1) == y).double().mean())
    loss, acc = flatness.evaluate(model, _forms(x, y)[form])
    # the default cross-entropy is summed from float32 logits (evaluate's documented path), so ~1e-8
    assert loss == pytest.approx(ref_loss, rel=1e-6) and acc == pytest.approx(ref_acc, abs=1e-15)
    assert flatness.evaluate(model, _forms(x, y)[form]) == (loss, acc)


@pytest.mark.parametrize("form", FORMS)
def test_top_eigenvalues_equal_the_dense_hessians(form):
    model = _model()
    x, y = _xy()
    H = _dense_hessian(model, lambda f: F.cross_entropy(f(x), y))
    exact = torch.linalg.eigvalsh(H).flip(0)[:3]
    op = flatness.HessianOperator(model, _forms(x, y)[form])
    result = flatness.lanczos(op, k=3, tol=1e-10)
    assert result.converged
    np.testing.assert_allclose(result.eigenvalues, exact.numpy(), rtol=1e-8)
    torch.testing.assert_close(op.to_dense(), H, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("form", FORMS)
def test_mse_regression(form):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(N, 4, generator=g, dtype=torch.float64)
    y = torch.randn(N, 2, generator=g, dtype=torch.float64)
    data = _forms(x, y)[form]
    H = _dense_hessian(model, lambda f: F.mse_loss(f(x), y))
    op = flatness.HessianOperator(model, data, loss_fn=F.mse_loss)
    torch.testing.assert_close(op.to_dense(), H, rtol=1e-9, atol=1e-11)
    # torch 2.x cannot run F.mse_loss under torch.func's forward-over-reverse ("ZeroTensors are
    # immutable"), so that backend gets the same loss written out
    for backend, loss_fn in (
        ("double-backward", F.mse_loss),
        ("forward-over-reverse", lambda out, target: ((out - target) ** 2).mean()),
    ):
        v = torch.randn(op.dim, generator=g, dtype=torch.float64)
        out = flatness.HessianOperator(model, data, loss_fn, backend=backend).matvec(v)
        torch.testing.assert_close(out, H @ v, rtol=1e-9, atol=1e-11)
    loss, acc = flatness.evaluate(model, data, loss_fn=F.mse_loss)
    with torch.no_grad():
        assert loss == pytest.approx(float(F.mse_loss(model(x), y)), rel=1e-12)
    assert acc is None
    settings = flatness.SharpnessSettings(ball="global", ascent_steps=3, draws=3, lbfgs_iterations=3)
    records = flatness.measure_sharpness(
        model, data, "keskar,worst_case,average_case", rho=0.05, epsilon=1e-3, loss_fn=F.mse_loss, settings=settings
    )
    assert [r.metric for r in records] == ["keskar", "worst_case", "average_case"]
    assert all(math.isfinite(r.value) for r in records)
    assert all(r.base_loss == pytest.approx(loss, rel=1e-10) for r in records)
    assert records[1].value > 0  # ascent from the gradient direction raises the loss


def test_measure_returns_the_probe_keys():
    model = _model()
    x, y = _xy()
    data = _forms(x, y)["loader"]
    settings = flatness.ProbeSettings(
        tol=1e-8,
        trace_samples=6,
        density_steps=6,
        density_vectors=1,
        progress=False,
        sharpness=flatness.SharpnessSettings(  # metrics None: budgets only, sharpness where a call asks
            metrics=None, rhos=[0.05], epsilons=[1e-3], ascent_steps=2, draws=2, pac_bayes_draws=2, lbfgs_iterations=2
        ),
    )
    result = flatness.measure(model, data, top_k=2, trace=True, density=True, sharpness="worst_case", settings=settings)
    assert set(result) == {
        "loss",
        "accuracy",
        "num_params",
        "hessian_params",
        "hessian_dim",
        "weight_norm",
        "hessian",
        "trace",
        "density",
        "sharpness",
        "density_arrays",
        "sharpness_seconds",
    }
    H = _dense_hessian(model, lambda f: F.cross_entropy(f(x), y))
    np.testing.assert_allclose(
        result["hessian"]["eigenvalues"], torch.linalg.eigvalsh(H).flip(0)[:2].numpy(), rtol=1e-7
    )
    assert result["loss"] == flatness.evaluate(model, data)[0]
    assert result["num_params"] == result["hessian_dim"] == H.shape[0]
    assert [r["metric"] for r in result["sharpness"]] == ["worst_case"]
    again = flatness.measure(model, data, top_k=1, settings=settings)
    assert again["trace"] is None and again["sharpness"] is None and len(again["hessian"]["eigenvalues"]) == 1


def test_data_of_no_accepted_form_is_a_flatness_error():
    model = _model()
    for call in (
        lambda: flatness.evaluate(model, 42),
        lambda: flatness.HessianOperator(model, 42),
        lambda: flatness.measure_sharpness(model, 42, "worst_case"),
        lambda: flatness.measure(model, 42),
        lambda: flatness.as_probe_data("not data"),
    ):
        with pytest.raises(FlatnessError, match="cannot measure on data of type") as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_tuple_and_dict_inputs(form):
    model = _model(TwoInputs)
    g = torch.Generator().manual_seed(5)
    a = torch.randn(N, 3, generator=g, dtype=torch.float64)
    b = torch.randn(N, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=g)
    inputs = (a, b) if form == "tuple" else {"a": a, "b": b}
    datas = [(inputs, y)]  # an (x, y) pair
    if form == "tuple":
        datas.append([((a[i : i + 5], b[i : i + 5]), y[i : i + 5]) for i in range(0, N, 5)])
    else:
        datas.append([({"a": a[i : i + 5], "b": b[i : i + 5]}, y[i : i + 5]) for i in range(0, N, 5)])
    with torch.no_grad():
        ref = float(F.cross_entropy(model(a, b), y))
    H = _dense_hessian(model, lambda f: F.cross_entropy(f(a, b), y))
    for data in datas:
        assert flatness.evaluate(model, data)[0] == pytest.approx(ref, rel=1e-6)  # float32 logits
        for backend in ("double-backward", "forward-over-reverse"):
            op = flatness.HessianOperator(model, data, backend=backend)
            torch.testing.assert_close(op.to_dense(), H, rtol=1e-9, atol=1e-11)
        records = flatness.measure_sharpness(
            model, data, "average_case", rho=0.01, settings=flatness.SharpnessSettings(draws=2)
        )
        assert records[0].base_loss == pytest.approx(ref, rel=1e-10)


# --------------------------------------------------------------------------- the exports


def _import_every_submodule():
    for info in pkgutil.walk_packages(flatness.__path__, "flatness."):
        if info.name.startswith("flatness.cli"):
            continue
        importlib.import_module(info.name)


def test_every_export_is_what_it_says_even_after_every_submodule_is_imported():
    """The old lazy exports were shadowed by a submodule of the same name after its first import."""
    before = {name: getattr(flatness, name) for name in flatness.__all__}
    _import_every_submodule()
    for name in flatness.__all__:
        value = getattr(flatness, name)
        assert value is before[name] and not isinstance(value, types.ModuleType), name


def test_every_exported_function_called_twice(tmp_path, digits_mlp_checkpoint):
    model = _model()
    x, y = _xy()
    data = _forms(x, y)["loader"]
    settings = flatness.ProbeSettings(samples=20, batch_size=20, top_k=1, tol=1e-3, progress=False)
    calls = {
        "as_probe_data": lambda: flatness.as_probe_data(data).n,
        "evaluate": lambda: flatness.evaluate(model, data),
        "measure": lambda: flatness.measure(model, data, top_k=1, settings=settings)["loss"],
        "measure_sharpness": lambda: (
            flatness.measure_sharpness(
                model, data, "average_case", rho=0.01, settings=flatness.SharpnessSettings(draws=2)
            )[0].value
        ),
        "lanczos": lambda: flatness.lanczos(flatness.HessianOperator(model, data), k=1).eigenvalues,
        "power_iteration": lambda: (
            flatness.power_iteration(flatness.HessianOperator(model, data), k=1, tol=1e-3).eigenvalues
        ),
        "estimate_trace": lambda: flatness.estimate_trace(flatness.HessianOperator(model, data), 4).estimate,
        "slq": lambda: flatness.slq(flatness.HessianOperator(model, data), steps=3, vectors=1).nodes.tolist(),
        "dataset_info": lambda: flatness.dataset_info("digits").num_classes,
        "get_dataset": lambda: len(flatness.get_dataset("digits", "test")),
        "load_probe_data": lambda: flatness.load_probe_data("digits", "test", 10, 5).n,
        "build_model": lambda: sum(p.numel() for p in flatness.build_model("mlp", 1, 8, 10).parameters()),
        "run_probe": lambda: flatness.run_probe(digits_mlp_checkpoint, settings)["loss"],
        "load_checkpoint": lambda: flatness.load_checkpoint(digits_mlp_checkpoint)[1]["model"],
    }
    for name, call in calls.items():
        first, second = call(), call()
        assert first == second, name
    # the file functions, twice each: write, read back
    model2, info = flatness.load_checkpoint(digits_mlp_checkpoint)
    probe = flatness.run_probe(digits_mlp_checkpoint, settings)
    for i in range(2):
        path = str(tmp_path / f"ckpt{i}.pt")
        flatness.save_checkpoint(path, model2, model_spec=info["model_spec"], config=info["config"], epoch=1)
        assert flatness.load_checkpoint(path)[1]["epoch"] == 1
        flatness.write_probe(str(tmp_path / f"probe{i}.json"), probe)
        assert flatness.read_probe(str(tmp_path / f"probe{i}.json"))["loss"] == probe["loss"]


def test_reading_a_dataloader_leaves_the_global_rng_alone():
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4, shuffle=True)
    torch.manual_seed(123)
    flatness.as_probe_data(loader)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))
