"""flatness.data.batches: what the loss sees of each output form (tuple, logits dict, a user's output_fn) in every
routine, Hugging Face dict batches in every form, and integer inputs that keep their dtype."""

import pytest
import torch
import torch.nn as nn
from tiny_mlp import tiny_mlp, tiny_xy

import flatness
from flatness.core.errors import FlatnessError


class Wrapped(nn.Module):
    """A model whose forward returns something other than a tensor: ``kind`` says what."""

    def __init__(self, kind):
        super().__init__()
        self.net, self.kind = tiny_mlp(), kind

    def forward(self, x):
        z = self.net(x)
        if self.kind == "tuple":
            return z, z.sum()
        if self.kind == "logits":
            return {"logits": z, "hidden": x}
        if self.kind == "start":
            return {"start": z}
        return "not a tensor"


def test_what_the_loss_sees_of_each_output_form():
    (x, y) = tiny_xy()
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
    (x, y) = tiny_xy()
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
            self.net = tiny_mlp()

        def forward(self, features, scale):
            return {"logits": self.net(features * scale)}

    model, (x, y) = Keyword(), tiny_xy()
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


def test_call_model_names_the_model_when_its_forward_raises():
    """A user's forward raising is one FlatnessError naming the model; flatness's own errors and running
    out of memory pass through unchanged (they have their own messages)."""
    from flatness.core.errors import FlatnessError, ModelRaisedError
    from flatness.data.batches import call_model

    class Broken(torch.nn.Module):
        def __init__(self, error):
            super().__init__()
            self.error = error

        def forward(self, x, mask=None):
            raise self.error

    original = ValueError("bad\nshape")
    for inputs in (torch.zeros(2), (torch.zeros(2), torch.ones(2)), {"x": torch.zeros(2)}):
        with pytest.raises(ModelRaisedError) as caught:
            call_model(Broken(original), inputs)
        assert str(caught.value) == "the model (Broken) raised ValueError: bad shape in its forward"
        assert caught.value.original is original and caught.value.__cause__ is original
        assert isinstance(caught.value, FlatnessError) and caught.value.exit_code == 2
    mine = FlatnessError("own message")
    with pytest.raises(FlatnessError) as caught:
        call_model(Broken(mine), torch.zeros(2))
    assert caught.value is mine
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        call_model(Broken(oom), torch.zeros(2))
