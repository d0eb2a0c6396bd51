"""``flatness.study.run_record.RunRecord``: one run's record and the label tables and legends give it."""

from __future__ import annotations

from flatness.study.run_record import RunRecord


def test_the_label_is_the_method_in_capitals_and_the_seed():
    assert RunRecord("a", "amp", 1).label == "AMP seed 1"
    assert RunRecord("a", "sam", 0).label == "SAM seed 0"  # seed 0 is a seed, not a missing one
    assert RunRecord("a", "my-method").label == "MY-METHOD"


def test_records_do_not_share_their_lists():
    first, second = RunRecord("a", "erm"), RunRecord("b", "erm")
    first.epochs.append({"epoch": 1})
    first.values["trace"] = 1.0
    first.surfaces.append("s.h5")
    first.config["lr"] = 0.1
    assert (second.epochs, second.values, second.surfaces, second.config) == ([], {}, [], {})
