"""``flatness.training.cost``: the relative cost that orders runs, in closed form."""

from __future__ import annotations

import pytest

from flatness.training.config import TrainConfig
from flatness.training.cost import passes_per_step, training_cost


@pytest.mark.parametrize(
    ("method", "inner_iter", "passes"), [("erm", 5, 1), ("sam", 5, 2), ("amp", 1, 2), ("amp", 3, 4)]
)
def test_passes_per_step(method, inner_iter, passes):
    assert passes_per_step(TrainConfig(method=method, inner_iter=inner_iter)) == passes


def test_a_fixed_length_run_costs_passes_times_epochs_over_the_batch_size():
    assert training_cost(TrainConfig(method="sam", epochs=10, batch_size=50)) == pytest.approx(2 * 10 / 50)
    assert training_cost(TrainConfig(method="amp", inner_iter=2, epochs=4, batch_size=8)) == pytest.approx(3 * 4 / 8)
    # halving the batch doubles the steps and the cost; the learning rate does not matter
    assert training_cost(TrainConfig(epochs=4, batch_size=8, lr=0.5)) == 2 * training_cost(
        TrainConfig(epochs=4, batch_size=16)
    )


def test_a_run_to_a_stop_loss_costs_passes_over_the_learning_rate():
    assert training_cost(TrainConfig(method="erm", lr=0.05, stop_loss=0.01, epochs=999)) == pytest.approx(1 / 0.05)
    assert training_cost(TrainConfig(method="sam", lr=0.1, stop_loss=0.01, batch_size=7)) == pytest.approx(2 / 0.1)
