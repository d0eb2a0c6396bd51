"""flatness.core.validation: seeds within PyTorch's 64 bits, counts >= their minimum and within the native
index size, --samples as N or 'all', finite numbers; each refusal one line naming the option."""

import math
import sys

import pytest
import torch

from flatness.core.errors import FlatnessError
from flatness.core.validation import SEED_MAX, SEED_MIN, check_count, check_number, check_seed, parse_samples


def test_seeds_at_both_ends_of_torchs_range_are_taken_and_one_beyond_is_refused():
    for seed in (SEED_MIN, 0, SEED_MAX):
        assert check_seed(seed) == seed
        torch.Generator().manual_seed(seed)  # the range is torch's own: these are accepted there too
    for bad in (SEED_MIN - 1, SEED_MAX + 1, True, 1.0, "3", None):
        with pytest.raises(FlatnessError, match=r"^--seed must be a whole number") as info:
            check_seed(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(FlatnessError, match="^seeds must"):
        check_seed(SEED_MAX + 1, "seeds")


@pytest.mark.parametrize(
    "value, minimum, maximum, expected",
    [
        (1, 1, None, 1),
        (0, 0, 5, 0),
        (5, 0, 5, 5),
        (sys.maxsize, 1, sys.maxsize, sys.maxsize),
        (10**30, 1, None, 10**30),
    ],
)
def test_counts_at_their_bounds_are_taken(value, minimum, maximum, expected):
    assert check_count(value, "--n", minimum, maximum) == expected


def test_counts_below_the_minimum_above_the_maximum_or_not_whole_are_refused():
    with pytest.raises(FlatnessError, match=r"^--grid must be >= 1 \(a whole number\), got 0$"):
        check_count(0, "--grid")
    with pytest.raises(FlatnessError, match=r"^--n must be >= 2 \(a whole number\), got 1$"):
        check_count(1, "--n", minimum=2)
    with pytest.raises(FlatnessError, match=r"^--n must be at most 5, got 6$"):
        check_count(6, "--n", 0, 5)
    with pytest.raises(FlatnessError, match="at most"):
        check_count(sys.maxsize + 1, "--n")  # the default bound is the native index size
    for bad in (True, 2.0, "2", None):
        with pytest.raises(FlatnessError, match="a whole number"):
            check_count(bad, "--n")


def test_samples_are_a_count_or_all():
    assert parse_samples(None) is None and parse_samples("all") is None and parse_samples(" ALL ") is None
    assert parse_samples(7) == 7 and parse_samples(" 12 ") == 12
    with pytest.raises(FlatnessError, match=r"^--samples must be >= 1"):
        parse_samples("0")
    with pytest.raises(FlatnessError, match=r"^--samples must be a whole number >= 1 or 'all', got 'some'$"):
        parse_samples("some")
    with pytest.raises(FlatnessError, match=r"^samples must"):
        parse_samples(-3, "samples")


def test_numbers_are_finite_and_positive_or_non_negative():
    assert check_number(3, "--lr") == 3.0 and isinstance(check_number(3, "--lr"), float)
    assert check_number(0, "--wd", positive=False) == 0.0
    with pytest.raises(FlatnessError, match=r"^--lr must be a finite number > 0, got 0$"):
        check_number(0, "--lr")
    with pytest.raises(FlatnessError, match=r"^--wd must be a finite number >= 0, got -1$"):
        check_number(-1, "--wd", positive=False)
    for bad in (math.inf, math.nan, True, "1"):
        with pytest.raises(FlatnessError, match="finite number"):
            check_number(bad, "--lr")
