"""Fixtures shared by tests/sharpness/: a small digits probe set (200 images, batches of 100)."""

import pytest

from flatness.data.probe_data import load_probe_data


@pytest.fixture(scope="module")
def small_digits():
    return load_probe_data("digits", "train", 200, 100)
