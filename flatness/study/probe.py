"""Everything flatness measures, as one JSON-ready dict.

``measure`` is for a model in memory, ``run_probe`` for a checkpoint.

Loss, accuracy, weight norm, the top Hessian eigenvalues (and optionally vectors), the Hessian trace,
the spectral density (SLQ) and sharpness metrics (``flatness.sharpness``): all on the same data, model
in eval mode (docs/metrics.md). ``run_probe`` adds the checkpoint's identity, the probe data (the first
``samples`` examples of the split in dataset order, without augmentation) and the distance from the
run's initial weights. The dict's layout is the probe JSON format, written and read only by
``flatness.formats.probe_file``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from flatness.core import distributed
from flatness.core.devices import resolve_device
from flatness.core.errors import FlatnessError
from flatness.core.evaluation import evaluate, probe_for
from flatness.core.fileio import sha256_file
from flatness.core.limits import check_limit
from flatness.core.losses import LossFn, resolve_loss
from flatness.core.measured import second_order_model
from flatness.core.params import num_params, select_params, weight_norm
from flatness.core.paths import check_input, check_name, check_paths
from flatness.core.progress import show_plan
from flatness.core.validation import check_count, check_number, check_seed, parse_samples
from flatness.data.batches import OutputFn
from flatness.data.probe_data import DEFAULT_BATCH_SIZE, DEFAULT_SAMPLES
from flatness.formats.probe_file import refuse_existing, sidecar_path, write_probe
from flatness.hessian import (
    DEFAULT_BACKEND,
    HessianOperator,
    default_grid,
    density_on_grid,
    estimate_trace,
    slq,
    top_eigen,
)
from flatness.sharpness.measure import SharpnessSettings, measure_sharpness
from flatness.sharpness.oracle import METRIC_NAMES
from flatness.sources.loading import ModelSource, init_distance, load_target
from flatness.version import __version__

DEFAULT_EIG_METHOD = "lanczos"  # benchmarks/README.md: 5-20x fewer HVPs than power iteration at tol 1e-4
DEFAULT_TOL = 1e-4
DEFAULT_MAX_ITER = 1000  # lanczos: total HVPs; power: HVPs per eigenvalue
DEFAULT_TRACE_SAMPLES = 100
DEFAULT_DENSITY_STEPS = 80
DEFAULT_DENSITY_VECTORS = 5
DENSITY_GRID_POINTS = 512
SPLITS = ("train", "test")
EIG_METHODS = ("lanczos", "power")
TRACE_METHODS = ("hutchinson", "hutch++")
DTYPES = ("float32", "float64")


#: The keys of a probe record's ``sharpness_options`` (``ProbeSettings.to_dict``): ``SharpnessSettings``
#: fields, the metric names aside (the record's ``sharpness``).
SHARPNESS_OPTIONS = ("rhos", "epsilons", "ball", "p", "draws", "ascent_steps", "lbfgs_iterations", "pac_bayes_draws")

# The cheapest sharpness budget that still runs every metric (the --quick smoke tests of experiment
# and sweep): one radius, two draws, two ascent steps. A record's ``sharpness_options``.
QUICK_SHARPNESS = {
    "rhos": [0.05],
    "epsilons": [1e-3],
    "draws": 2,
    "ascent_steps": 2,
    "lbfgs_iterations": 2,
    "pac_bayes_draws": 2,
}


def _no_sharpness() -> SharpnessSettings:
    return SharpnessSettings(metrics=None)


@dataclass(frozen=True)
class ProbeSettings:
    """What a probe measures and how (``flatness probe``'s options; the defaults are its defaults).

    Data: ``split``, ``samples`` (the first N examples; ``"all"`` or None: the whole split),
    ``batch_size`` (memory only), ``data_dir``.
    Hessian: ``top_k`` eigenvalues (0: none) by ``eig_method`` to relative residual ``tol`` within
    ``max_iter`` HVPs (total for lanczos, per eigenvalue for power); ``params`` (globs such as
    ``"layer4.*"``) restricts the Hessian, its trace and density to a block (per-layer spectra);
    ``hvp_backend``; ``save_vectors`` keeps the eigenvectors. ``trace``/``trace_samples``/
    ``trace_method``; ``density``/``density_steps``/``density_vectors``.
    ``sharpness``: the sharpness metrics and how they are computed (``SharpnessSettings``; its
    ``metrics`` None, the default: no sharpness; its ``seed`` and ``progress`` are the probe's).
    ``seed``, ``device``, ``dtype`` (float32 or float64), ``progress``.

    ``checked()`` is the one check of every option; the functions that measure call it.
    """

    split: str = "train"
    samples: int | str | None = DEFAULT_SAMPLES
    batch_size: int = DEFAULT_BATCH_SIZE
    top_k: int = 5
    eig_method: str = DEFAULT_EIG_METHOD
    tol: float = DEFAULT_TOL
    max_iter: int = DEFAULT_MAX_ITER
    trace: bool = False
    trace_samples: int = DEFAULT_TRACE_SAMPLES
    trace_method: str = "hutchinson"
    density: bool = False
    density_steps: int = DEFAULT_DENSITY_STEPS
    density_vectors: int = DEFAULT_DENSITY_VECTORS
    sharpness: SharpnessSettings = field(default_factory=_no_sharpness)
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    hvp_backend: str | None = None
    params: str | Sequence[str] | None = None
    save_vectors: bool = False
    data_dir: str | None = None
    progress: bool = False

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> ProbeSettings:
        """Settings from their record (``to_dict``: what experiment.json and sweep.json store).

        The record holds the fields of ``ProbeSettings`` by name, but ``sharpness`` is the metric names
        (or None) and ``sharpness_options`` the other ``SharpnessSettings`` fields (``SHARPNESS_OPTIONS``;
        None values: the default). Unknown keys are an error.
        """
        options = dict(record)
        metrics = options.pop("sharpness", None)
        sharp = {k: v for k, v in (options.pop("sharpness_options", None) or {}).items() if v is not None}
        names = {f.name for f in dataclasses.fields(cls)} - {"sharpness"}
        for given, known, what in ((options, names, "probe"), (sharp, SHARPNESS_OPTIONS, "sharpness")):
            unknown = sorted(set(given) - set(known))
            if unknown:
                raise FlatnessError(f"unknown {what} option {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return cls(**options, sharpness=SharpnessSettings(metrics=metrics, **sharp))

    def to_dict(self) -> dict[str, Any]:
        """The record ``from_dict`` reads: plain JSON-ready values, field by field in order."""
        record: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name != "sharpness":
                record[f.name] = _plain(getattr(self, f.name))
                continue
            defaults = _no_sharpness()
            record["sharpness"] = _plain(self.sharpness.metrics)
            record["sharpness_options"] = {
                k: _plain(getattr(self.sharpness, k))
                for k in SHARPNESS_OPTIONS
                if getattr(self.sharpness, k) != getattr(defaults, k)
            }
        return record

    def checked(self) -> ProbeSettings:
        """Every option checked before any work, as a copy with the defaults resolved.

        The copy holds ``samples`` as a count (None: all) and ``sharpness`` checked
        (``SharpnessSettings.checked``: names, radii, budgets) with the probe's seed and progress.
        Every count and radius is checked, also those only some measurements use (0 is an error,
        never "the default"; a typo is never silently ignored, with or without sharpness metrics).

        Raises:
            FlatnessError: one line naming the option.
        """
        if self.split not in SPLITS:
            raise FlatnessError(f"unknown split {self.split!r}; use {' or '.join(SPLITS)}")
        if self.eig_method not in EIG_METHODS:
            raise FlatnessError(f"unknown eigen method {self.eig_method!r}; use {' or '.join(EIG_METHODS)}")
        if self.trace_method not in TRACE_METHODS:
            raise FlatnessError(f"unknown trace method {self.trace_method!r}; use {' or '.join(TRACE_METHODS)}")
        if self.dtype not in DTYPES:
            raise FlatnessError(f"unknown dtype {self.dtype!r}; use {' or '.join(DTYPES)}")
        check_seed(self.seed)
        check_number(self.tol, "--tol")
        check_count(self.batch_size, "--batch-size")
        for name in ("top_k", "max_iter", "trace_samples", "density_steps", "density_vectors"):
            check_limit(getattr(self, name), name)  # each sets how many Hessian-vector products run
            check_count(getattr(self, name), "--" + name.replace("_", "-"), minimum=0 if name == "top_k" else 1)
        least = 6 if self.trace_method == "hutch++" else 2
        if self.trace and self.trace_samples < least:
            raise FlatnessError(f"--trace-samples must be >= {least} for {self.trace_method}")
        sharp = dataclasses.replace(self.sharpness, seed=self.seed, progress=self.progress)
        if sharp.metrics is None:  # no sharpness: its options are still checked, as if all were asked for
            sharp = dataclasses.replace(dataclasses.replace(sharp, metrics=METRIC_NAMES).checked(), metrics=None)
        else:
            sharp = sharp.checked()
        return dataclasses.replace(self, samples=parse_samples(self.samples), sharpness=sharp)


def _plain(value: Any) -> Any:
    """Tuples as lists (JSON's form), everything else as it is."""
    return list(value) if isinstance(value, tuple) else value


def measure(
    model: nn.Module,
    data: Any,
    top_k: int | None = None,
    trace: bool | None = None,
    density: bool | None = None,
    sharpness: str | Sequence[str] | None = None,
    loss_fn: LossFn | str | None = None,
    settings: ProbeSettings | None = None,
    output_fn: OutputFn | None = None,
) -> dict[str, Any]:
    """The probe measurements of a model in memory, all on the same data, in eval mode.

    Loss, accuracy, weight norm, Hessian spectrum, trace, density and sharpness.

    Args:
        model: any ``nn.Module``; its weights and modes are left as they were.
        data: any form ``flatness.data.convert.as_probe_data`` accepts; read once (batched by
            ``settings.batch_size`` when it is not already in batches).
        top_k: top Hessian eigenvalues (0: none); overrides ``settings.top_k``.
        trace: estimate tr(H); overrides ``settings.trace``.
        density: the SLQ spectral density; overrides ``settings.density``.
        sharpness: sharpness metric names (``"all"``); overrides ``settings.sharpness.metrics``.
        loss_fn: ``loss_fn(outputs, targets)`` -> batch mean loss, or a loss name
            (``flatness.core.losses.LOSS_NAMES``); cross-entropy by default.
        settings: everything else (``ProbeSettings()``; its data fields ``split``/``samples``/
            ``data_dir``/``device``/``dtype`` only matter to ``run_probe``).
        output_fn: what of the model's output the loss sees (``flatness.data.batches.model_output``).

    Returns:
        A dict with ``loss``, ``accuracy`` (None unless class scores), ``num_params``,
        ``hessian_params``, ``hessian_dim``, ``weight_norm``, ``hessian``, ``trace``, ``density``,
        ``sharpness`` (None where not measured), plus ``eigenvectors`` (with ``save_vectors``),
        ``density_arrays`` and ``sharpness_seconds`` where computed, and ``precision_note`` when a
        float16/bfloat16 model was measured on a float32 copy (``flatness.core.measured``).

    Examples:
        >>> import torch, torch.nn as nn, torch.nn.functional as F
        >>> x, t = torch.diag(torch.tensor([1.0, 2.0, 3.0])), torch.zeros(3, 1)
        >>> model = nn.Linear(3, 1, bias=False)  # mean squared error: H = 2/n xᵀx = diag(2/3, 8/3, 6)
        >>> from flatness import measure
        >>> _ = nn.init.zeros_(model.weight)
        >>> probe = measure(model, (x, t), top_k=2, trace=True, loss_fn=F.mse_loss)
        >>> probe["loss"], [round(value, 4) for value in probe["hessian"]["eigenvalues"]]
        (0.0, [6.0, 2.6667])
        >>> round(probe["trace"]["estimate"], 4)
        9.3333
    """
    s = settings or ProbeSettings()
    shortcuts = {"top_k": top_k, "trace": trace, "density": density}
    s = dataclasses.replace(s, **{k: v for k, v in shortcuts.items() if v is not None})
    if sharpness is not None:
        s = dataclasses.replace(s, sharpness=dataclasses.replace(s.sharpness, metrics=sharpness))
    s = s.checked()
    loss_fn = resolve_loss(loss_fn)
    # every number below is of the same module: a compiled model's original, a half model's float32 copy
    model, note = second_order_model(model)
    data = probe_for(model, data, batch_size=s.batch_size)
    # Under torchrun the probe batches are shared out: every HVP and the loss sum over each rank's
    # shard and all-reduce, so all ranks run the same (seeded) algorithms on the same numbers.
    shard = data.shard(distributed.rank(), distributed.world_size())
    block = select_params(model, s.params) if s.params is not None else None
    op = HessianOperator(
        model, shard, loss_fn, params=block, backend=s.hvp_backend or DEFAULT_BACKEND, output_fn=output_fn
    )
    if s.top_k > op.dim:
        raise FlatnessError(
            f"top-k {s.top_k} exceeds the number of parameters ({op.dim}{' in the --params block' if block else ''})"
        )
    loss, acc = evaluate(model, shard, loss_fn, output_fn)
    result: dict[str, Any] = {
        "loss": _finite_or_none(loss),
        "accuracy": acc,
        "num_params": num_params(model),
        # the Hessian's block: null = all trainable parameters, else their names in vector order
        "hessian_params": block,
        "hessian_dim": op.dim,
        "weight_norm": _finite_or_none(weight_norm(model)),
        "hessian": None,
        "trace": None,
        "density": None,
        "sharpness": None,
    }
    if note is not None:
        result["precision_note"] = note
    show_plan(
        s.progress and distributed.is_main(),
        "probe",
        f"top-{s.top_k} Hessian eigenvalues ({s.eig_method}, at most {s.max_iter} iterations)" if s.top_k else "",
        f"trace from {s.trace_samples} {s.trace_method} vectors" if s.trace else "",
        f"density from {s.density_vectors} x {s.density_steps} Lanczos steps" if s.density else "",
        f"sharpness ({', '.join(s.sharpness.metrics)})" if s.sharpness.metrics else "",
        f"each Hessian-vector product a pass over {data.n} examples and {op.dim} parameters",
    )
    result.update(_spectrum(op, s))
    if s.sharpness.metrics is not None:
        start = time.perf_counter()
        results = measure_sharpness(model, data, loss_fn=loss_fn, settings=s.sharpness, output_fn=output_fn)
        result["sharpness"] = [one.to_dict() for one in results]
        result["sharpness_seconds"] = time.perf_counter() - start
    return result


def _spectrum(op: HessianOperator, s: ProbeSettings) -> dict[str, Any]:
    """The Hessian parts of the probe dict: top eigenpairs, trace and density, as asked."""
    out: dict[str, Any] = {}
    if s.top_k > 0:
        eig = top_eigen(op, s.top_k, s.eig_method, tol=s.tol, max_iter=s.max_iter, seed=s.seed, progress=s.progress)
        hess = eig.summary()
        hess["backend"] = op.backend
        hess["max_iter"] = s.max_iter
        out["hessian"] = hess
        if s.save_vectors:
            out["eigenvectors"] = eig.eigenvectors.detach().float().cpu().numpy()
    op.release()
    if s.trace:
        tr = estimate_trace(op, s.trace_samples, s.trace_method, seed=s.seed, progress=s.progress)
        out["trace"] = {
            "estimate": tr.estimate,
            "stderr": tr.stderr,
            "hvps": tr.hvps,
            "samples": tr.samples,
            "method": tr.method,
            "seconds": tr.seconds,
        }
        op.release()
    if s.density:
        dens = slq(op, steps=s.density_steps, vectors=s.density_vectors, seed=s.seed, progress=s.progress)
        nodes, weights = dens.flat()
        grid, sigma = default_grid(nodes, points=DENSITY_GRID_POINTS)
        values = density_on_grid(nodes, weights, grid, sigma)
        out["density"] = {
            "nodes": nodes.tolist(),
            "weights": weights.tolist(),
            "grid": grid.tolist(),
            "values": values.tolist(),
            "sigma": sigma,
            "steps": dens.steps,
            "vectors": dens.vectors,
            "hvps": dens.hvps,
            "seconds": dens.seconds,
        }
        out["density_arrays"] = {"nodes": dens.nodes, "weights": dens.weights, "grid": grid, "values": values}
        op.release()
    return out


def _finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def run_probe(
    checkpoint: str,
    settings: ProbeSettings | None = None,
    source: ModelSource | None = None,
    *,
    loss_fn: LossFn | str | None = None,
    output_fn: OutputFn | None = None,
) -> dict[str, Any]:
    """Measure one checkpoint on its dataset's probe data.

    Args:
        checkpoint: a flatness checkpoint file or run folder, a ``.pt2`` program, or a plain
            state_dict / ``.safetensors`` file (with ``source.model``).
        settings: what to measure (``ProbeSettings()`` by default).
        source: the command line's ``--model``/``--model-args``/``--dataset`` (``flatness.sources.loading``);
            None: everything as the checkpoint records it.
        loss_fn: the loss (a callable or a name of ``flatness.core.losses.LOSS_NAMES``; None: cross-entropy).
        output_fn: what of the model's output the loss sees (``flatness.data.batches.model_output``).

    Returns:
        The probe dict (see ``flatness.formats.probe_file``); with ``save_vectors`` it also holds
        ``"eigenvectors"`` (k×d numpy array) and with ``density`` ``"density_arrays"``, which
        ``write_probe`` moves into the sidecar ``.h5``.
    """
    s = (settings or ProbeSettings()).checked()  # before the checkpoint and data are loaded
    s = dataclasses.replace(s, progress=s.progress and distributed.is_main())  # under torchrun: rank 0's bars
    dev = distributed.local_device(resolve_device(s.device))
    target = load_target(checkpoint, source, device=dev, root=s.data_dir)
    model, info = target.model, target.info
    if loss_fn is None and output_fn is None:  # as the run recorded them, or as --loss / --output named them
        loss_fn, output_fn = target.loss_fn, target.output_fn
    data = target.probe_data(
        s.split, s.samples, s.batch_size, dev, root=s.data_dir, download=bool(source and source.download)
    )
    if s.dtype == "float64":
        # For ill-conditioned nets whose float32 HVPs are themselves inexact (a PreActResNet-18 with
        # stale BatchNorm statistics: 0.5% off); a trained net's are ~1e-6 off and float32 reaches
        # tol 1e-4 (reductions are accurate: hessian/reductions.py). float64 costs ~2x on CPUs.
        model.double()
        data = data.map_inputs(lambda x: x.double() if x.is_floating_point() else x)
    measured = measure(model, data, loss_fn=loss_fn, settings=s, output_fn=output_fn)
    result: dict[str, Any] = {
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
        "data": {
            "dataset": info["dataset"],
            "split": s.split,
            "samples": data.n,
            "batch_size": s.batch_size,
            # the --loss / --output measured with, where not the defaults (flatness.sources.losses)
            **{k: info[k] for k in ("loss", "output") if info.get(k) is not None},
        },
        "device": str(dev),
        "dtype": s.dtype,
    }
    for key in ("loss", "accuracy", "num_params", "hessian_params", "hessian_dim", "weight_norm"):
        result[key] = measured.pop(key)
    result["distance_from_init"] = init_distance(model, info["path"])
    for key in ("hessian", "trace", "density", "sharpness"):
        result[key] = measured.pop(key)
    result["sidecar"] = None
    result.update(measured)  # eigenvectors, density_arrays, sharpness_seconds: where computed
    return result


def default_probe_path(checkpoint: str, split: str) -> str:
    """Where ``flatness probe`` writes by default: beside the checkpoint, ``NAME.probe-SPLIT.json``."""
    path = os.path.join(checkpoint, "last.pt") if os.path.isdir(checkpoint) else checkpoint
    root, _ = os.path.splitext(path)
    return f"{root}.probe-{split}.json"


def probe_to_file(
    checkpoint: str,
    out: str | None,
    settings: ProbeSettings,
    source: ModelSource | None = None,
    *,
    force: bool = False,
) -> tuple[str, dict[str, Any] | None]:
    """``flatness probe``: check everything, measure ``checkpoint``, write the probe JSON (+ sidecar).

    Every option and path is checked before the checkpoint is loaded, and an existing output is
    refused before the work (not after it) unless ``force``. Under torchrun the ranks join here
    (the probe data is sharded) and rank 0 writes.

    Args:
        checkpoint: as for ``run_probe``.
        out: the probe JSON (None: ``default_probe_path``); never the checkpoint itself, ``force`` or not.
        settings: what to measure.
        source: as for ``run_probe``.
        force: replace existing output files.

    Returns:
        (the JSON's path, the dict as written; None on ranks other than 0).
    """
    s = settings.checked()
    check_input(checkpoint, "checkpoint")
    if s.data_dir is not None:
        check_name(s.data_dir, "--data-dir")
    out = out or default_probe_path(checkpoint, s.split)
    sidecar = sidecar_path(out) if s.save_vectors or s.density else None
    check_paths({"checkpoint": [checkpoint]}, {"--out": out, "--out's sidecar": sidecar})
    refuse_existing([out, sidecar], force)
    distributed.init_from_env(resolve_device(s.device))  # under torchrun: join the ranks
    result = run_probe(checkpoint, s, source)
    if not distributed.is_main():
        return out, None
    return out, write_probe(out, result, force=force)
