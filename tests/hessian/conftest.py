"""The ``setup`` fixture of tests/hessian/: each tiny net (an MLP, a CNN with BatchNorm), its probe data, its
dense float64 Hessian and the raw tensors; built once per test module and net."""

import pytest
from hessian_helpers import dense_hessian, tiny_problem


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def setup(request):
    model, data, xy = tiny_problem(request.param)
    return model, data, dense_hessian(model, xy), xy
