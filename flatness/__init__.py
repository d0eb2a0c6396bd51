"""flatness: loss-landscape analysis of neural networks.

The library behind the ``flatness`` command. Everything the CLI does is a function here, so a
notebook can do the same::

    import flatness
    model, info = flatness.load_checkpoint("checkpoints/digits-convnet-amp-s0/last.pt")
    data = flatness.load_probe_data(info["dataset"], "train", samples=1000, batch_size=500)
    flatness.evaluate(model, data)

Names are imported lazily so that ``import flatness`` stays cheap and submodules stay independent.
"""
from importlib import import_module

from .version import __version__

_EXPORTS = {
    "FlatnessError": "errors",
    "get_dataset": "datasets",
    "dataset_info": "datasets",
    "build_model": "models",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "ProbeData": "probe_data",
    "load_probe_data": "probe_data",
    "evaluate": "evaluate",
    "resolve_device": "devices",
    "AMP": "optim",
    "SAM": "optim",
    "train": "training",
    "TrainConfig": "training",
    "HessianOperator": "hessian",
    "lanczos": "hessian",
    "power_iteration": "hessian",
    "estimate_trace": "hessian",
    "slq": "hessian",
    "run_probe": "probe",
    "read_probe": "probe_io",
    "write_probe": "probe_io",
    "compute_surface": "surface",
    "read_surface": "surface_io",
    "run_experiment": "experiment",
}


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flatness' has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = ["__version__", *_EXPORTS]
