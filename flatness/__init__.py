"""flatness: loss-landscape analysis of neural networks.

Every measurement is a function of (model, data, loss), so a notebook measures any ``nn.Module``
on any data; the ``flatness`` command is a thin layer over the same functions::

    import flatness
    flatness.evaluate(model, (x, y))                       # (mean loss, accuracy)
    op = flatness.HessianOperator(model, loader)           # the full-data Hessian as an operator
    flatness.lanczos(op, k=5)                              # top eigenvalues with residuals

Definitions of every quantity: docs/metrics.md. Code layout: docs/ARCHITECTURE.md.
"""

from flatness.core.devices import resolve_device
from flatness.core.errors import FlatnessError
from flatness.core.evaluation import evaluate
from flatness.core.losses import named_loss
from flatness.data.convert import as_probe_data
from flatness.data.datasets import dataset_info, get_dataset
from flatness.data.probe_data import ProbeData, load_probe_data
from flatness.data.user_data import check_model_fits, load_user_dataset
from flatness.formats.checkpoint import load_checkpoint, save_checkpoint
from flatness.formats.probe_file import read_probe, write_probe
from flatness.formats.surface_file import read_surface
from flatness.formats.weights import load_exported_program, load_weights_into
from flatness.hessian.density import slq
from flatness.hessian.eigen import lanczos, power_iteration
from flatness.hessian.operator import HessianOperator
from flatness.hessian.trace import estimate_trace
from flatness.landscape.compute import SurfaceSettings, compute_surface
from flatness.landscape.surface import loss_surface
from flatness.models.references import resolve_model_reference
from flatness.models.registry import build_model
from flatness.sharpness.measure import SharpnessSettings, measure_sharpness
from flatness.sources.loading import ModelSource, load_target
from flatness.study.experiment import run_experiment
from flatness.study.probe import ProbeSettings, measure, run_probe
from flatness.training.config import TrainConfig
from flatness.training.loop import train
from flatness.training.optim import AMP, SAM
from flatness.version import __version__

__all__ = [
    "AMP",
    "SAM",
    "FlatnessError",
    "HessianOperator",
    "ModelSource",
    "ProbeData",
    "ProbeSettings",
    "SharpnessSettings",
    "SurfaceSettings",
    "TrainConfig",
    "__version__",
    "as_probe_data",
    "build_model",
    "check_model_fits",
    "compute_surface",
    "dataset_info",
    "estimate_trace",
    "evaluate",
    "get_dataset",
    "lanczos",
    "load_checkpoint",
    "load_exported_program",
    "load_target",
    "load_probe_data",
    "load_user_dataset",
    "load_weights_into",
    "measure",
    "measure_sharpness",
    "named_loss",
    "loss_surface",
    "power_iteration",
    "read_probe",
    "read_surface",
    "resolve_device",
    "resolve_model_reference",
    "run_experiment",
    "run_probe",
    "save_checkpoint",
    "slq",
    "train",
    "write_probe",
]
