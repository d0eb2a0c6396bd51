"""The examples in the docstrings of the main public functions run and print what they say (doctest).

Each example is checked against a number it can derive by hand: a linear model under mean squared error
on x = diag(1, 2, 3) has the Hessian diag(2/3, 8/3, 6), so the eigenvalues, the trace, the SLQ nodes, a
surface's values and the worst-case sharpness at the minimum are known exactly."""

import doctest
import importlib

import pytest

import flatness

# (module, the public names whose docstrings must carry an example)
DOCUMENTED = {
    "flatness.core.evaluation": ["evaluate"],
    "flatness.hessian.operator": ["HessianOperator"],
    "flatness.hessian.eigen": ["lanczos", "power_iteration"],
    "flatness.hessian.trace": ["estimate_trace"],
    "flatness.hessian.density": ["slq"],
    "flatness.landscape.surface": ["loss_surface"],
    "flatness.sharpness.measure": ["measure_sharpness"],
    "flatness.study.probe": ["measure"],
    "flatness.training.optim": ["AMP", "SAM"],
}


@pytest.mark.parametrize("module_name", sorted(DOCUMENTED))
def test_docstring_examples_run(module_name):
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = {t.name.rsplit(".", 1)[-1]: t for t in finder.find(module, module_name) if t.examples}
    missing = [name for name in DOCUMENTED[module_name] if name not in tests]
    assert not missing, f"{module_name}: no example in the docstring of {missing}"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for name in DOCUMENTED[module_name]:
        runner.run(tests[name], out=lambda text: print(text, end=""))
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {module_name} (see output)"


def test_every_documented_name_is_public():
    public = set(flatness.__all__)
    assert {name for names in DOCUMENTED.values() for name in names} <= public
