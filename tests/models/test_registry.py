"""flatness.models.registry: an unknown model (and dataset, split, empty probe data) is a one-line error."""

import pytest

from flatness.core.errors import FlatnessError
from flatness.data.probe_data import ProbeData
from flatness.models.registry import build_model


def test_unknown_names_are_one_line_errors():
    from flatness.data.datasets import get_dataset

    with pytest.raises(FlatnessError, match="unknown dataset"):
        get_dataset("imagenet", "train")
    with pytest.raises(FlatnessError, match="unknown split"):
        get_dataset("digits", "val")
    with pytest.raises(FlatnessError, match="unknown model"):
        build_model("resnet9000", 1, 8, 10)
    with pytest.raises(FlatnessError):
        ProbeData([])
