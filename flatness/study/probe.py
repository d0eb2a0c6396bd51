"""``run_probe``: everything flatness measures at one checkpoint, as one JSON-ready dict.

Loss, accuracy, weight norm, distance from the run's initial weights, the top Hessian eigenvalues
(and optionally vectors), the Hessian trace, the spectral density (SLQ) and, through
``flatness.sharpness.metrics``, sharpness metrics: all on the same probe data, the first ``samples``
examples of the split in dataset order, without augmentation, model in eval mode (docs/metrics.md).

The dict's layout is the probe JSON format, written and read only by ``flatness.formats.probe_file``.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from flatness.formats.checkpoint import INIT, load_checkpoint
from flatness.core.devices import resolve_device
from flatness.core.errors import FlatnessError
from flatness.core.evaluation import evaluate
from flatness.core.fileio import sha256_file
from flatness.core.params import distance, num_params, select_params, weight_norm
from flatness.data.probe_data import ProbeData, load_probe_data
from flatness.version import __version__

DEFAULT_SAMPLES = 1000      # the first 1000 examples of the split: the usual probe size in the literature
DEFAULT_BATCH_SIZE = 500    # one batch's graph at a time; any size gives the same numbers
DEFAULT_EIG_METHOD = "lanczos"  # benchmarks/README.md: 5-20x fewer HVPs than power iteration at tol 1e-4
DEFAULT_TOL = 1e-4
DEFAULT_MAX_ITER = 1000     # lanczos: total HVPs; power: HVPs per eigenvalue
DEFAULT_TRACE_SAMPLES = 100
DEFAULT_DENSITY_STEPS = 80
DEFAULT_DENSITY_VECTORS = 5
DENSITY_GRID_POINTS = 512
SPLITS = ("train", "test")
EIG_METHODS = ("lanczos", "power")
TRACE_METHODS = ("hutchinson", "hutch++")


DTYPES = ("float32", "float64")


def _finite_or_none(x: float) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(x) else None


def distance_from_init(model: torch.nn.Module, checkpoint_path: str) -> Optional[float]:
    """‖θ − θ_init‖ when the run folder beside the checkpoint has ``init.pt`` (else None)."""
    init_path = os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), INIT)
    if not os.path.isfile(init_path):
        return None
    if os.path.abspath(init_path) == os.path.abspath(checkpoint_path):
        return 0.0
    try:
        init_model, _ = load_checkpoint(init_path)
        return distance(model, init_model)
    except FlatnessError:
        return None  # an unreadable or foreign init.pt only loses this one number


def _sharpness_module():
    try:
        from flatness.sharpness import metrics as sharp
    except ImportError as err:
        raise FlatnessError(f"sharpness metrics are not available in this installation ({err})") from None
    return sharp


def validate_sharpness(names, options: Optional[Dict[str, Any]] = None) -> List[str]:
    """The metric names (``all`` expanded) after checking names and options, before any work."""
    sharp = _sharpness_module()
    valid = list(getattr(sharp, "METRIC_NAMES", ()))
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    if "all" in names:
        names = valid
    if not names:
        raise FlatnessError("no sharpness metric given; use all or some of: " + ", ".join(valid))
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise FlatnessError(f"unknown sharpness metric {unknown[0]!r}; choose all or some of: {', '.join(valid)}")
    options = {k: v for k, v in (options or {}).items() if v is not None}
    for key in ("rhos", "epsilons"):
        for value in options.get(key) or ():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise FlatnessError(f"{key[:-1]} must be a finite number > 0, got {value}")
    if hasattr(sharp, "validate"):
        return list(sharp.validate(names, **options))
    return names


def run_probe(checkpoint: str, split: str = "train", samples: int = DEFAULT_SAMPLES,
              batch_size: int = DEFAULT_BATCH_SIZE, top_k: int = 5, eig_method: str = DEFAULT_EIG_METHOD,
              tol: float = DEFAULT_TOL, max_iter: int = DEFAULT_MAX_ITER, trace: bool = False,
              trace_samples: int = DEFAULT_TRACE_SAMPLES, trace_method: str = "hutchinson",
              density: bool = False, seed: int = 0, device: str = "auto",
              sharpness: Optional[Union[str, Sequence[str]]] = None,
              sharpness_options: Optional[Dict[str, Any]] = None, save_vectors: bool = False,
              data_dir: Optional[str] = None, progress: bool = True,
              density_steps: int = DEFAULT_DENSITY_STEPS, density_vectors: int = DEFAULT_DENSITY_VECTORS,
              hvp_backend: Optional[str] = None, dtype: str = "float32",
              params: Optional[Union[str, Sequence[str]]] = None) -> Dict[str, Any]:
    """Measure one checkpoint. Returns the probe dict (see ``flatness.formats.probe_file``); when
    ``save_vectors`` it also holds ``"eigenvectors"`` (k×d numpy array) and with ``density``
    ``"density_arrays"``, which ``write_probe`` moves into the sidecar ``.h5``.

    ``samples``: the first N examples of ``split`` (default 1000; fewer if the split is smaller).
    ``top_k=0`` skips the eigenvalues. ``max_iter`` bounds the HVPs (total for Lanczos, per
    eigenvalue for power iteration). ``params`` (globs such as ``"layer4.*"``) restricts the
    Hessian, its trace and density to that block of parameters (per-layer spectra); sharpness and
    the weight norm stay over all parameters.
    """
    from flatness.hessian import DEFAULT_BACKEND, HessianOperator, default_grid, density_on_grid, estimate_trace, slq, top_eigen

    if split not in SPLITS:
        raise FlatnessError(f"unknown split {split!r}; use train or test")
    if samples is None or samples < 1:
        raise FlatnessError(f"samples must be >= 1, got {samples}")
    if batch_size is None or batch_size < 1:
        raise FlatnessError(f"batch size must be >= 1, got {batch_size}")
    if top_k is None or top_k < 0:
        raise FlatnessError(f"top-k must be >= 0, got {top_k}")
    if eig_method not in EIG_METHODS:
        raise FlatnessError(f"unknown eigen method {eig_method!r}; use lanczos or power")
    if not (tol is not None and tol > 0):
        raise FlatnessError(f"tol must be > 0, got {tol}")
    if max_iter is None or max_iter < 1:
        raise FlatnessError(f"max-iter must be >= 1, got {max_iter}")
    if trace and trace_method not in TRACE_METHODS:
        raise FlatnessError(f"unknown trace method {trace_method!r}; use hutchinson or hutch++")
    if trace and trace_samples < (6 if trace_method == "hutch++" else 2):
        raise FlatnessError(f"trace samples must be >= {6 if trace_method == 'hutch++' else 2} for {trace_method}")
    if density and (density_steps < 1 or density_vectors < 1):
        raise FlatnessError("density needs steps >= 1 and vectors >= 1")

    sharp_names = None
    if sharpness is not None:
        sharp_names = validate_sharpness(sharpness, sharpness_options)

    from flatness.core import distributed

    dev = distributed.local_device(resolve_device(device))
    model, info = load_checkpoint(checkpoint, device=dev)
    data = load_probe_data(info["dataset"], split, samples, batch_size, device=dev, root=data_dir)
    # Under torchrun the probe batches are shared out: every HVP and the loss sum over each rank's
    # shard and all-reduce, so all ranks run the same (seeded) algorithms on the same numbers.
    if dtype not in DTYPES:
        raise FlatnessError(f"unknown dtype {dtype!r}; use float32 or float64")
    if dtype == "float64":
        # For ill-conditioned nets whose float32 HVPs are themselves inexact (a PreActResNet-18 with
        # stale BatchNorm statistics: 0.5% off); a trained net's are ~1e-6 off and float32 reaches
        # tol 1e-4 (reductions are accurate: hessian/reductions.py). float64 costs ~2x on CPUs.
        model.double()
        data = ProbeData([(x.double(), y) for x, y in data.batches], data.n, data.sharded)
    shard = data.shard(distributed.rank(), distributed.world_size())
    block = select_params(model, params) if params is not None else None
    op = HessianOperator(model, shard, params=block, backend=hvp_backend or DEFAULT_BACKEND)
    if top_k > op.dim:
        raise FlatnessError(f"top-k {top_k} exceeds the number of parameters "
                            f"({op.dim}{' in the --params block' if block else ''})")

    loss, acc = evaluate(model, shard)
    result: Dict[str, Any] = {
        "format": "flatness-probe",
        "flatness_version": __version__,
        "checkpoint": {
            "path": os.path.abspath(info["path"]),
            "sha256": sha256_file(info["path"]),
            "dataset": info["dataset"],
            "model": info["model"],
            "method": info["method"],
            "epoch": info["epoch"],
            "seed": info["config"].get("seed"),
        },
        "data": {"dataset": info["dataset"], "split": split, "samples": data.n, "batch_size": batch_size},
        "device": str(dev),
        "dtype": dtype,
        "loss": _finite_or_none(loss),
        "accuracy": acc,
        "num_params": num_params(model),
        # the Hessian's block: null = all trainable parameters, else their names in vector order
        "hessian_params": block,
        "hessian_dim": op.dim,
        "weight_norm": _finite_or_none(weight_norm(model)),
        "distance_from_init": distance_from_init(model, info["path"]),
        "hessian": None,
        "trace": None,
        "density": None,
        "sharpness": None,
        "sidecar": None,
    }

    if top_k > 0:
        options = {"tol": tol, "max_iter": max_iter, "seed": seed, "progress": progress}
        eig = top_eigen(op, top_k, eig_method, **options)
        hess = eig.summary()
        hess["backend"] = op.backend
        hess["max_iter"] = max_iter
        result["hessian"] = hess
        if save_vectors:
            result["eigenvectors"] = eig.eigenvectors.detach().float().cpu().numpy()
    op.release()

    if trace:
        tr = estimate_trace(op, trace_samples, trace_method, seed=seed, progress=progress)
        result["trace"] = {"estimate": tr.estimate, "stderr": tr.stderr, "hvps": tr.hvps, "samples": tr.samples,
                           "method": tr.method, "seconds": tr.seconds}
        op.release()

    if density:
        dens = slq(op, steps=density_steps, vectors=density_vectors, seed=seed, progress=progress)
        nodes, weights = dens.flat()
        grid, sigma = default_grid(nodes, points=DENSITY_GRID_POINTS)
        values = density_on_grid(nodes, weights, grid, sigma)
        result["density"] = {"nodes": nodes.tolist(), "weights": weights.tolist(), "grid": grid.tolist(),
                             "values": values.tolist(), "sigma": sigma, "steps": dens.steps,
                             "vectors": dens.vectors, "hvps": dens.hvps, "seconds": dens.seconds}
        result["density_arrays"] = {"nodes": dens.nodes, "weights": dens.weights, "grid": grid,
                                    "values": values}
        op.release()

    if sharpness is not None:
        kwargs = {k: v for k, v in (sharpness_options or {}).items() if v is not None}
        start = time.perf_counter()
        result["sharpness"] = _sharpness_module().compute(model, data, metrics=sharp_names, seed=seed,
                                                          progress=progress, **kwargs)
        result["sharpness_seconds"] = time.perf_counter() - start
    return result
