"""flatness.core.errors: exit codes of the error classes, and no message ever advises unsafe loading."""

import signal

import pytest

from flatness.core.errors import SAFE_REPLACEMENT, DivergedError, FlatnessError, Signalled, without_unsafe_advice

TORCH_TEXT = (
    "Weights only load failed. This file can still be loaded, to do so you have two options, do those steps "
    "only if you trust the source of the checkpoint. (1) Re-running `torch.load` with `weights_only` set to "
    "`False` will likely succeed. (2) Alternatively, to load with `weights_only=True` please check the "
    "recommended steps in the following error message. WeightsUnpickler error: Unsupported global: GLOBAL x.Y"
)


def test_error_classes_carry_their_exit_codes():
    assert FlatnessError.exit_code == 2 and DivergedError.exit_code == 3
    assert issubclass(DivergedError, FlatnessError)
    err = Signalled(signal.SIGTERM)
    assert isinstance(err, KeyboardInterrupt) and err.signum == signal.SIGTERM


def test_torchs_advice_becomes_one_note_and_the_facts_stay():
    assert without_unsafe_advice(TORCH_TEXT) == (
        f"Weights only load failed. {SAFE_REPLACEMENT} WeightsUnpickler error: Unsupported global: GLOBAL x.Y"
    )


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        (
            "cannot read x.npz: Object arrays cannot be loaded when allow_pickle=False",
            f"cannot read x.npz: {SAFE_REPLACEMENT}",
        ),
        ("bad file. Pass pickle=True to read it.", f"bad file. {SAFE_REPLACEMENT}"),
        ("bad file. Use torch.serialization.safe_globals([X]).", f"bad file. {SAFE_REPLACEMENT}"),
    ],
)
def test_each_kind_of_unsafe_advice_is_replaced_keeping_what_came_before(text, cleaned):
    assert without_unsafe_advice(text) == cleaned


def test_a_message_without_advice_is_unchanged():
    for text in ("", "x.pt is not a checkpoint. Pass --model.", "weights are not finite (NaN in 'w')"):
        assert without_unsafe_advice(text) == text
