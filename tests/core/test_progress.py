"""flatness.core.progress: the library is quiet by default (probe, surface, training and experiment settings show
no progress unless asked)."""

from flatness.landscape.compute import SurfaceSettings
from flatness.study.probe import ProbeSettings


def test_library_defaults_are_quiet():
    assert ProbeSettings().progress is False and SurfaceSettings().progress is False
    import inspect

    from flatness.study.experiment import run_experiment
    from flatness.training.loop import train

    signature = inspect.signature(train)
    assert signature.parameters["progress"].default is False and signature.parameters["verbose"].default is False
    assert inspect.signature(run_experiment).parameters["progress"].default is False
