"""The loss rules (flatness.core.losses), what the loss sees of a model's output
(flatness.data.batches.model_output), Hugging Face dict batches, and the dtype rules
(flatness.core.measured): each against an independent computation."""

import functools
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import flatness
from flatness.core.errors import FlatnessError
from flatness.core.losses import LOSS_NAMES, named_loss
from flatness.landscape.compute import SurfaceSettings
from flatness.sharpness import LossOracle, measure_with_oracle
from flatness.study.probe import ProbeSettings


def _mlp(out=3, dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, out)).to(dtype)


def _xy(n=12, classes=3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g), torch.randint(0, classes, (n,), generator=g)


class Wrapped(nn.Module):
    """A model whose forward returns something other than a tensor: ``kind`` says what."""

    def __init__(self, kind):
        super().__init__()
        self.net, self.kind = _mlp(), kind

    def forward(self, x):
        z = self.net(x)
        if self.kind == "tuple":
            return z, z.sum()
        if self.kind == "logits":
            return {"logits": z, "hidden": x}
        if self.kind == "start":
            return {"start": z}
        return "not a tensor"


@pytest.mark.parametrize(
    "bad",
    [
        nn.CrossEntropyLoss(reduction="sum"),
        nn.CrossEntropyLoss(reduction="none"),
        functools.partial(F.cross_entropy, reduction="sum"),
        nn.MSELoss(reduction="sum"),
    ],
    ids=["module-sum", "module-none", "partial-sum", "mse-sum"],
)
def test_a_loss_that_does_not_average_is_refused_before_any_work(bad):
    model, (x, y) = _mlp(), _xy()
    for call in (
        lambda: flatness.evaluate(model, (x, y), bad),
        lambda: flatness.HessianOperator(model, (x, y), bad),
        lambda: flatness.measure_sharpness(model, (x, y), "worst_case", rho=0.1, loss_fn=bad),
        lambda: flatness.loss_surface(model, (x, y), "-1:1:3", loss_fn=bad),
    ):
        with pytest.raises(FlatnessError, match="reduction=.*batch mean"):
            call()


def test_a_loss_returning_a_vector_is_refused_at_the_first_batch():
    model, (x, y) = _mlp(), _xy()

    def per_example(outputs, targets):
        return F.cross_entropy(outputs, targets, reduction="none")

    op = flatness.HessianOperator(model, (x, y), per_example)
    for call in (
        lambda: flatness.evaluate(model, (x, y), per_example),
        lambda: op.matvec(torch.randn(op.dim)),
        lambda: flatness.HessianOperator(model, (x, y), per_example, backend="forward-over-reverse").matvec(
            torch.randn(op.dim)
        ),
        lambda: flatness.measure_sharpness(model, (x, y), "worst_case", rho=0.1, loss_fn=per_example),
    ):
        with pytest.raises(FlatnessError, match=r"returned a tensor of shape \(12,\).*scalar"):
            call()


def test_what_the_loss_sees_of_each_output_form():
    (x, y) = _xy()
    reference = flatness.evaluate(Wrapped("tuple").net, (x, y))
    assert flatness.evaluate(Wrapped("tuple"), (x, y)) == reference
    assert flatness.evaluate(Wrapped("logits"), (x, y)) == reference
    assert flatness.evaluate(Wrapped("start"), (x, y), output_fn=lambda o: o["start"]) == reference
    for kind, message in (("start", "a dict with keys \\['start'\\] and no 'logits'"), ("str", "a str")):
        with pytest.raises(FlatnessError, match=f"the model returned {message}.*output_fn"):
            flatness.evaluate(Wrapped(kind), (x, y))
        with pytest.raises(FlatnessError, match="pass output_fn"):
            flatness.HessianOperator(Wrapped(kind), (x, y)).matvec(torch.zeros(51))
    with pytest.raises(FlatnessError, match="output_fn returned str"):
        flatness.evaluate(Wrapped("start"), (x, y), output_fn=lambda o: "x")


def test_output_fn_reaches_the_hessian_sharpness_and_surface():
    (x, y) = _xy()
    plain, wrapped = Wrapped("start").net, Wrapped("start")

    def pick(outputs):
        return outputs["start"]

    v = torch.randn(51, generator=torch.Generator().manual_seed(2))
    for backend in ("double-backward", "forward-over-reverse"):
        expected = flatness.HessianOperator(plain, (x, y), backend=backend).matvec(v)
        got = flatness.HessianOperator(wrapped, (x, y), backend=backend, output_fn=pick).matvec(v)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    sharp = flatness.measure_sharpness(wrapped, (x, y), "worst_case", rho=0.05, output_fn=pick)
    assert sharp[0].value == flatness.measure_sharpness(plain, (x, y), "worst_case", rho=0.05)[0].value
    surface = flatness.loss_surface(wrapped, (x, y), "-1:1:3", output_fn=pick)
    assert surface["loss"][1] == flatness.evaluate(plain, (x, y))[0]


def test_hugging_face_dict_batches_in_every_form():
    """A dict with "labels" is (inputs, targets) as a whole, as batches, and as a Dataset's examples."""

    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _mlp()

        def forward(self, features, scale):
            return {"logits": self.net(features * scale)}

    model, (x, y) = Keyword(), _xy()
    scale = torch.full((12, 1), 2.0)
    expected = flatness.evaluate(model.net, (2 * x, y))
    whole = {"features": x, "scale": scale, "labels": y}
    batches = [{"features": x[i : i + 5], "scale": scale[i : i + 5], "labels": y[i : i + 5]} for i in (0, 5, 10)]

    class Examples(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, i):
            return {"features": x[i], "scale": scale[i], "labels": y[i]}

    for data in (whole, batches, torch.utils.data.DataLoader(Examples(), batch_size=5), Examples()):
        loss, acc = flatness.evaluate(model, data)
        assert loss == pytest.approx(expected[0], rel=1e-6) and acc == expected[1]
    probe = flatness.as_probe_data(batches)
    assert probe.n == 12 and set(probe.batches[0][0]) == {"features", "scale"}


def test_a_float64_model_is_measured_in_float64():
    model, (x, y) = _mlp(dtype=torch.float64), _xy()
    loss, _ = flatness.evaluate(model, (x, y))  # float32 data: moved to the model's dtype
    with torch.no_grad():
        reference = F.cross_entropy(model(x.double()), y).item()
    assert abs(loss - reference) <= 1e-12
    for name in LOSS_NAMES:  # every named loss keeps float64 outputs in float64
        if name in ("ce", "nll"):
            out = named_loss(name)(torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 1]))
        else:
            out = named_loss(name)(torch.randn(4, 1, dtype=torch.float64), torch.tensor([0, 1, 1, 0]))
        assert out.dtype == torch.float64
    assert named_loss("ce")(torch.randn(4, 3, dtype=torch.bfloat16), torch.tensor([0, 1, 2, 1])).dtype == torch.float32


def test_regression_losses_meet_their_targets_without_broadcasting():
    torch.manual_seed(3)
    outputs, targets = torch.randn(8, 1), torch.randn(8)
    assert named_loss("mse")(outputs, targets) == F.mse_loss(outputs[:, 0], targets)
    assert named_loss("l1")(outputs, targets) == F.l1_loss(outputs[:, 0], targets)
    assert named_loss("huber")(outputs, targets) == F.huber_loss(outputs[:, 0], targets)
    assert named_loss("bce")(outputs, (targets > 0).long()) == F.binary_cross_entropy_with_logits(
        outputs[:, 0], (targets > 0).float()
    )
    with pytest.raises(FlatnessError, match=r"loss mse: the model's outputs have shape \(8, 3\) but the targets"):
        named_loss("mse")(torch.randn(8, 3), targets)
    with pytest.raises(FlatnessError, match="unknown loss 'hinge'"):
        named_loss("hinge")


def test_no_accuracy_and_a_loss_based_pac_bayes_on_a_regression_loss():
    """Was: PAC-Bayes 5.6e-13 from an argmax "error" of 1.0 on a one-output regression model."""
    model, (x, _) = _mlp(out=1), _xy()
    y = torch.randn(12)
    assert flatness.evaluate(model, (x, y), "mse")[1] is None
    assert flatness.evaluate(model, (x, y.unsqueeze(1)), F.mse_loss)[1] is None
    (record,) = flatness.measure_sharpness(model, (x, y.unsqueeze(1)), "pac_bayes", loss_fn=nn.MSELoss())
    base = flatness.evaluate(model, (x, y), "mse")[0]
    assert record.criterion == "loss" and record.base_error == pytest.approx(base, rel=1e-6)
    assert record.value is not None and record.value < 1e6
    # classification keeps the error, and a user's error_fn is taken as given
    (cls,) = flatness.measure_sharpness(_mlp(), _xy(), "pac_bayes")
    assert cls.criterion == "error"
    oracle = LossOracle(model, (x, y), "mse", error_fn=lambda o, t: (o[:, 0] - t).abs().mean())
    (own,) = measure_with_oracle(oracle, flatness.SharpnessSettings(metrics="pac_bayes"))
    assert own.criterion == "error"
    # accuracy needs at least two classes: a one-output model on integer labels has none
    assert flatness.evaluate(model, (x, torch.zeros(12, dtype=torch.long)), lambda o, t: o.mean())[1] is None


def test_a_half_model_is_measured_on_a_float32_copy():
    model, (x, y) = _mlp(dtype=torch.bfloat16), _xy()
    with pytest.warns(UserWarning, match="bfloat16: its Hessian and sharpness are measured on a float32 copy"):
        op = flatness.HessianOperator(model, (x, y))
    assert op.dtype == torch.float32 and next(model.parameters()).dtype == torch.bfloat16
    reference = flatness.HessianOperator(_mlp(dtype=torch.bfloat16).float(), (x, y))
    v = torch.randn(op.dim)
    torch.testing.assert_close(op.matvec(v), reference.matvec(v), rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = flatness.measure(model, (x, y), top_k=1)
    assert "float32 copy" in result["precision_note"]
    assert flatness.evaluate(model, (x, y))[0] == pytest.approx(flatness.evaluate(model.float(), (x, y))[0], rel=0.05)


def test_a_compiled_model_is_measured_through_its_original_module():
    model, (x, y) = _mlp(), _xy()
    compiled = torch.compile(model)
    assert flatness.evaluate(compiled, (x, y)) == flatness.evaluate(model, (x, y))
    v = torch.randn(51, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(
        flatness.HessianOperator(compiled, (x, y)).matvec(v), flatness.HessianOperator(model, (x, y)).matvec(v)
    )


def test_a_model_mixing_float_dtypes_is_refused():
    model = _mlp()
    model[2].double()
    with pytest.raises(FlatnessError, match="mix floating dtypes \\(float32, float64\\)"):
        flatness.evaluate(model, _xy())


def test_integer_inputs_keep_their_dtype():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 3)

        def forward(self, ids):
            assert ids.dtype == torch.int64
            return self.emb(ids).mean(1)

    ids = torch.randint(0, 5, (6, 4))
    model = Tokens().double()
    assert flatness.evaluate(model, (ids, torch.randint(0, 3, (6,))))[1] is not None


def test_params_takes_globs_and_a_string_is_one_pattern():
    model, (x, y) = _mlp(), _xy()
    assert flatness.HessianOperator(model, (x, y), params="2.*").names == ["2.weight", "2.bias"]
    assert flatness.HessianOperator(model, (x, y), params=["0.weight", "2.bias"]).names == ["0.weight", "2.bias"]
    with pytest.raises(FlatnessError, match="matches no trainable parameter"):
        flatness.HessianOperator(model, (x, y), params="layer4.*")


def test_library_defaults_are_quiet():
    assert ProbeSettings().progress is False and SurfaceSettings().progress is False
    import inspect

    from flatness.study.experiment import run_experiment
    from flatness.training.loop import train

    signature = inspect.signature(train)
    assert signature.parameters["progress"].default is False and signature.parameters["verbose"].default is False
    assert inspect.signature(run_experiment).parameters["progress"].default is False


def test_the_margin_exists_only_where_accuracy_does():
    from flatness.generalization.baselines import margin_percentile

    model, (x, y) = _mlp(), _xy()
    with torch.no_grad():
        out = model(x)
    true = out.gather(1, y[:, None]).squeeze(1)
    others = out.scatter(1, y[:, None], float("-inf")).max(1).values
    expected = torch.quantile((true - others).double(), 0.1).item()
    assert margin_percentile(model, (x, y)) == pytest.approx(expected, rel=1e-6)
    assert margin_percentile(model, (x, y), loss_fn="mse") is None
    assert margin_percentile(_mlp(out=1), (x, torch.randn(12, 1)), loss_fn=nn.MSELoss()) is None


def test_data_follow_the_model_dtype_but_half_models_keep_float32_targets():
    x, y = torch.randn(6, 4), torch.randn(6, 1) + 1000.125  # needs more digits than bfloat16 has
    for dtype, target in ((torch.float64, torch.float64), (torch.bfloat16, torch.float32)):
        probe = flatness.as_probe_data((x, y), dtype=dtype)
        assert probe.batches[0][0].dtype == dtype and probe.batches[0][1].dtype == target
    model = _mlp(out=1, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = F.mse_loss(model(x.bfloat16()).float(), y).item()
    assert flatness.evaluate(model, (x, y), "mse")[0] == pytest.approx(expected, rel=1e-6)
