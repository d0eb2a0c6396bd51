"""``flatness.data.checks``: one pass over a user's data; the first bad example is the one named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from flatness.core.errors import FlatnessError
from flatness.data.checks import check_examples, check_label_range, check_splits


class Listed(Dataset):
    """A map-style dataset over a list of examples (the per-example path, not the vectorised one)."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _good(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(3, generator=g), int(torch.randint(0, 5, (), generator=g))) for _ in range(n)]


def _refused(dataset, what="data.py, train split") -> str:
    with pytest.raises(FlatnessError) as err:
        check_examples(dataset, what)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{what}: example ")
    return message


@pytest.mark.parametrize("bad_at", [0, 3, 9])
@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (lambda x, y: (torch.full_like(x, float("nan")), y), "NaN or infinite input"),
        (lambda x, y: (x.clone().index_fill_(0, torch.tensor([1]), float("inf")), y), "NaN or infinite input"),
        (lambda x, y: (torch.zeros(4), y), "inputs of shape"),
        (lambda x, y: (x, -2), "the label -2"),
        (lambda x, y: (x, torch.tensor([0, 1])), "integer label of shape (2,)"),
        (lambda x, y: (x, y, y), "3 items"),
        (lambda x, y: (x, "cat"), "type str"),
    ],
)
def test_the_first_bad_example_is_named(bad_at, spoil, says):
    items = _good()
    items[bad_at] = spoil(*items[bad_at])
    if bad_at < 9:  # a later bad example too: only the first is named
        items[9] = (torch.full((3,), float("nan")), 0)
    if bad_at == 0 and says == "inputs of shape":
        items[1] = (torch.zeros(3), 0)  # example 0 sets the form: the first that differs is example 1
        message = _refused(Listed(items))
        assert "example 1 has inputs of shape [(3,)] but example 0 [(4,)]" in message
        return
    message = _refused(Listed(items))
    assert f"example {bad_at} " in message and says in message


@pytest.mark.parametrize("bad_at", [0, 4, 11])
def test_the_tensor_path_names_the_same_first_example(bad_at):
    x, y = torch.randn(12, 2, 3), torch.randint(0, 4, (12,))
    x[11, 0, 0] = float("inf")  # a later bad example too: only the first is named
    x[bad_at, 1, 2] = float("nan")
    expected = _refused(Listed(list(zip(x, y.tolist()))))  # the per-example pass as the reference
    assert _refused(TensorDataset(x, y)) == expected
    assert f"example {bad_at} has a NaN or infinite input value" in expected
    x = torch.randn(12, 3)
    y = torch.randint(0, 4, (12,))
    y[11] = -1
    y[bad_at] = -7
    assert _refused(TensorDataset(x, y)).endswith(f"example {bad_at} has the label -7; class labels are indices from 0")
    yf = torch.randn(12, 2)
    yf[11, 0] = float("nan")
    yf[bad_at, 1] = float("-inf")
    assert _refused(TensorDataset(x, yf)).endswith(f"example {bad_at} has a NaN or infinite target")


def test_a_good_split_gives_its_size_and_largest_label():
    items = _good(17, seed=3)
    summary = check_examples(Listed(items), "d")
    assert summary.examples == 17 and summary.integer_labels
    assert summary.largest_label == max(y for _, y in items)
    x = torch.randn(17, 3)
    y = torch.tensor([y for _, y in items])
    assert check_examples(TensorDataset(x, y), "d") == summary
    # numpy examples and numpy labels are read as such
    as_numpy = Listed([(xx.numpy(), np.int64(yy)) for xx, yy in items])
    assert check_examples(as_numpy, "d") == summary
    regression = check_examples(TensorDataset(x, torch.randn(17, 1)), "d")
    assert (regression.integer_labels, regression.largest_label) == (False, None)


def test_an_unreadable_example_is_named_with_its_error():
    class Broken(Listed):
        def __getitem__(self, i):
            if i == 6:
                raise KeyError("missing.png")
            return super().__getitem__(i)

    message = _refused(Broken(_good()))
    assert "example 6 cannot be read (len() says 10 examples): KeyError" in message


def test_label_range_covers_both_splits_and_every_example():
    train = TensorDataset(torch.randn(8, 3), torch.tensor([0, 1, 2, 1, 0, 2, 1, 0]))
    test = Listed([(torch.randn(3), y) for y in (0, 1, 4, 2)])  # the largest label only in the test split
    summary = check_splits(train, test, "mine")
    assert summary.examples == 8 and summary.largest_label == 4
    check_label_range(train, 5)
    check_label_range(test, 5)
    for split in (train, test):
        with pytest.raises(
            FlatnessError, match=r"gives 4 class scores but the data has the label 4 \(labels must be below 4\)"
        ):
            check_label_range(split, 4)
    check_label_range(TensorDataset(torch.randn(2, 3), torch.tensor([9, 9])), 2)  # never checked: nothing known
