"""flatness.core.limits: every bound refuses the first value above it, in one line naming the bound."""

import pytest

from flatness.core.errors import FlatnessError
from flatness.core.limits import LIMITS, check_limit, limit


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_each_bound_admits_its_value_and_refuses_the_next(name):
    bound, what = LIMITS[name]
    assert limit(name) == bound and bound > 0 and what
    assert check_limit(bound, name) == bound
    shown = "--" + name.replace("_", "-")
    with pytest.raises(FlatnessError) as err:
        check_limit(bound + 1, name)
    assert str(err.value) == (
        f"{shown} is {bound + 1}, above flatness's bound of {bound} {what} (flatness.core.limits; docs/reliability.md)"
    )


def test_the_label_is_the_option_as_typed_and_non_ints_are_the_callers_to_check():
    with pytest.raises(FlatnessError, match=r"^grid key epochs is 100001, above"):
        check_limit(100_001, "epochs", "grid key epochs")
    for value in (True, 1e12, "999999999", None):  # the type check is the caller's
        assert check_limit(value, "epochs") is value
    with pytest.raises(KeyError):
        check_limit(1, "no_such_bound")
