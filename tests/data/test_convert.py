"""``flatness.data.convert.as_probe_data``: every accepted form of the same data gives the same batches."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from flatness.core.errors import FlatnessError
from flatness.data.convert import as_probe_data
from flatness.data.probe_data import ProbeData

N, B = 23, 5  # a short last batch (3 examples)


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (N,), generator=g)


def _expected(x, y, batch_size=B):
    """The batches by hand: consecutive slices in order."""
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]


def _same(probe: ProbeData, expected) -> None:
    assert probe.n == sum(len(y) for _, y in expected)
    assert len(probe.batches) == len(expected)
    for (px, py), (ex, ey) in zip(probe.batches, expected, strict=True):
        if isinstance(ex, dict):
            assert px.keys() == ex.keys() and all(torch.equal(px[k], ex[k]) for k in ex)
        elif isinstance(ex, tuple):
            assert isinstance(px, tuple) and all(torch.equal(a, b) for a, b in zip(px, ex, strict=True))
        else:
            assert torch.equal(px, ex)
        assert torch.equal(py, ey)


def test_every_form_gives_the_same_batches():
    x, y = _data()
    expected = _expected(x, y)
    assert [len(b) for _, b in expected] == [5, 5, 5, 5, 3]
    forms = {
        "pair": (x, y),
        "list pair": [x, y],
        "dataset": TensorDataset(x, y),
        "loader": DataLoader(TensorDataset(x, y), batch_size=B, shuffle=False),
        "list of batches": expected,
        "generator of batches": (b for b in expected),
        "hugging face batches": [{"inputs": bx, "labels": by} for bx, by in expected],
        "probe data": ProbeData(list(expected)),
    }
    for name, data in forms.items():
        probe = as_probe_data(data, batch_size=B) if name in ("pair", "list pair", "dataset") else as_probe_data(data)
        if name == "hugging face batches":
            _same(probe, [({"inputs": bx}, by) for bx, by in expected])
        else:
            _same(probe, expected)
    whole = as_probe_data({"inputs": x, "labels": y}, batch_size=B)  # the whole data as one HF dict
    _same(whole, [({"inputs": bx}, by) for bx, by in expected])


def test_structured_inputs_are_sliced_alike():
    x, y = _data()
    ids = torch.arange(N * 2).reshape(N, 2)
    _same(
        as_probe_data(((x, ids), y), batch_size=B),
        [((bx, bi), by) for (bx, by), bi in zip(_expected(x, y), ids.split(B))],
    )
    _same(
        as_probe_data(({"a": x, "ids": ids}, y), batch_size=B),
        [({"a": bx, "ids": bi}, by) for (bx, by), bi in zip(_expected(x, y), ids.split(B))],
    )


def test_the_default_batch_size_and_a_probe_data_kept_as_is():
    x, y = torch.randn(1203, 2), torch.zeros(1203, dtype=torch.long)
    assert [len(b) for _, b in as_probe_data((x, y)).batches] == [500, 500, 203]
    probe = ProbeData(_expected(*_data()))
    assert as_probe_data(probe) is probe


def test_dtype_changes_floats_only():
    x, y = _data()
    probe = as_probe_data((x, y), batch_size=B, dtype=torch.float32)
    for (px, py), (ex, ey) in zip(probe.batches, _expected(x, y), strict=True):
        assert px.dtype == torch.float32 and torch.equal(px, ex.float())
        assert py.dtype == torch.long and torch.equal(py, ey)


def test_reading_a_shuffling_loader_leaves_the_global_generator_alone():
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=B, shuffle=True)
    torch.manual_seed(7)
    as_probe_data(loader)
    after = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(after, torch.rand(3))


@pytest.mark.parametrize(
    ("data", "kwargs", "says"),
    [
        ("text", {}, "cannot measure on data of type str"),
        (42, {}, "cannot measure on data of type int"),
        ((torch.randn(4, 2), torch.zeros(3)), {}, "inputs have 4 examples but targets 3"),
        ((torch.randn(0, 2), torch.zeros(0)), {}, "holds no examples"),
        ([], {}, "holds no examples"),
        ([(torch.randn(2, 2), torch.zeros(2)), "x"], {}, "batch 1 is not an (inputs, targets) pair"),
        ([(torch.randn(2, 2), torch.zeros(3))], {}, "batch 0: inputs and targets hold different numbers"),
        ((torch.randn(4, 2), torch.zeros(4)), {"batch_size": 0}, "batch size must be >= 1, got 0"),
    ],
)
def test_refusals_are_one_line(data, kwargs, says):
    with pytest.raises(FlatnessError) as err:
        as_probe_data(data, **kwargs)
    assert says in str(err.value) and "\n" not in str(err.value)
