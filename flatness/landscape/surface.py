"""Loss surfaces: loss and accuracy at θ + a·x (+ b·y) on a grid of (a, b) (docs/metrics.md, "Loss surfaces").

``compute_surface`` evaluates the grid on the probe data (the first ``samples`` examples of a split, no
augmentation, exact means), writing the HDF5 file (``flatness.formats.surface_file``) as it goes so that an
interrupted run continues with ``resume=True``. The weights are set in place from a saved copy at
every point (one ``copy_`` and one ``add_`` per tensor and direction; the model is never rebuilt) and
the points are visited coarse to fine (every 8th, then every 4th, 2nd, the rest), so a partial file
already shows the whole picture at a lower resolution.

BatchNorm (``bn``): ``"eval"`` uses the running statistics as stored (or, for an interpolation, as
interpolated); ``"recalibrate"`` re-estimates them at every point on the training probe data: the
statistics are reset, momentum set to None (a cumulative average over batches), the BN layers run
forward in train mode over the fixed training batches, then everything is evaluated in eval mode.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from flatness.core import distributed, locking
from flatness.formats import surface_file as surface_io
from flatness.core.errors import FlatnessError
from flatness.core.evaluation import evaluate
from flatness.core.progress import progress_bar
from flatness.version import __version__

GridSpec = Union[str, Sequence[float]]
BN_MODES = ("eval", "recalibrate")
SPLIT_CHOICES = ("train", "test", "both")
DIRECTION_KINDS = ("random", "eigen", "interp", "pca")
PRECISIONS = ("fp32", "bf16")
SYNC_ROUNDS = 8  # distributed surfaces: points per rank between two all-reduces (and file flushes)
DEFAULT_SAMPLES = 1000
DEFAULT_BATCH_SIZE = 500
MAX_AXIS_POINTS = 100_000     # a grid's arrays live in memory and in the file: refuse absurd sizes up front
MAX_GRID_POINTS = 10_000_000
FLUSH_SECONDS = 1.0
# test hooks: flush after every point / SIGKILL this process after K newly computed points
ENV_FLUSH = "FLATNESS_SURFACE_FLUSH_SECONDS"
ENV_KILL = "FLATNESS_TEST_SURFACE_KILL_AFTER"


# --------------------------------------------------------------------------- parsing

def parse_grid(spec: GridSpec, axis: str = "x") -> Tuple[float, float, int]:
    """``"MIN:MAX:N"`` or ``(min, max, n)`` -> (min, max, n), checked: finite, MIN < MAX, integer N >= 2."""
    if isinstance(spec, str):
        parts = spec.strip().split(":")
        if len(parts) != 3:
            raise FlatnessError(f"--{axis} must be MIN:MAX:N (e.g. -1:1:21), got {spec!r}")
    else:
        parts = list(spec)
        if len(parts) != 3:
            raise FlatnessError(f"{axis} grid must be (min, max, n), got {spec!r}")
    try:
        lo, hi = float(parts[0]), float(parts[1])
        n_float = float(parts[2])
    except (TypeError, ValueError):
        raise FlatnessError(f"--{axis} must be MIN:MAX:N with numbers (e.g. -1:1:21), got {spec!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise FlatnessError(f"--{axis}: MIN and MAX must be finite numbers, got {spec!r}")
    if not n_float.is_integer():
        raise FlatnessError(f"--{axis}: N must be a whole number of points, got {parts[2]!r}")
    n = int(n_float)
    if n < 2:
        raise FlatnessError(f"--{axis}: N must be at least 2 points, got {n}")
    if n > MAX_AXIS_POINTS:
        raise FlatnessError(f"--{axis}: N must be at most {MAX_AXIS_POINTS} points, got {n}")
    if lo >= hi:
        raise FlatnessError(f"--{axis}: MIN must be below MAX, got {lo:g} >= {hi:g}")
    return lo, hi, n


def grid_coordinates(lo: float, hi: float, n: int) -> np.ndarray:
    """``np.linspace(lo, hi, n)`` with values within rounding of 0 snapped to exactly 0 (the centre)."""
    coords = np.linspace(lo, hi, n, dtype=np.float64)
    coords[np.abs(coords) < 1e-12 * (hi - lo)] = 0.0
    return coords


def parse_direction(spec: str) -> Tuple[str, Optional[str]]:
    """``random`` | ``eigen`` | ``interp:CKPT_B`` | ``pca:RUN_DIR`` -> (kind, source)."""
    spec = (spec or "").strip()
    kind, _, source = spec.partition(":")
    kind = kind.lower()
    if kind not in DIRECTION_KINDS:
        raise FlatnessError(f"unknown direction {spec!r}; use random, eigen, interp:CKPT_B or pca:RUN_DIR")
    if kind in ("interp", "pca"):
        if not source:
            raise FlatnessError(f"--dir {kind} needs a path: {kind}:{'CKPT_B' if kind == 'interp' else 'RUN_DIR'}")
        return kind, source
    if source:
        raise FlatnessError(f"--dir {kind} takes no path, got {spec!r}")
    return kind, None


def _fmt(v: float) -> str:
    return f"{v:g}"


def default_surface_path(checkpoint_path: str, kind: str, source: Optional[str], norm: str, seed: int,
                         x: Tuple[float, float, int], y: Optional[Tuple[float, float, int]], split: str,
                         bn: str) -> str:
    """A descriptive name beside the checkpoint, e.g.
    ``last.surface-random-filter-s0-x-1_1_21-y-1_1_21-train.h5``."""
    folder = os.path.dirname(os.path.abspath(checkpoint_path))
    stem = os.path.splitext(os.path.basename(checkpoint_path))[0]
    if kind == "random":
        tag = f"random-{norm}-s{seed}"
    elif kind == "interp":
        tag = "interp-" + os.path.splitext(os.path.basename(os.path.normpath(source)))[0]
    elif kind == "pca":
        tag = "pca"
    else:
        tag = "eigen"
    grid = f"x{_fmt(x[0])}_{_fmt(x[1])}_{x[2]}"
    if y is not None:
        grid += f"-y{_fmt(y[0])}_{_fmt(y[1])}_{y[2]}"
    name = f"{stem}.surface-{tag}-{grid}-{split}" + ("-bnrecal" if bn == "recalibrate" else "") + ".h5"
    return os.path.join(folder, name)


# --------------------------------------------------------------------------- evaluation order

def coarse_to_fine_order(nx: int, ny: int) -> List[Tuple[int, int]]:
    """Every grid point once: first those on a stride-2^k lattice (largest k with 2^k < max(nx, ny)),
    then each halved stride, so early points cover the whole grid."""
    stride = 1
    while stride * 2 < max(nx, ny):
        stride *= 2
    stride = min(stride, 8) if max(nx, ny) > 8 else stride
    seen = np.zeros((nx, ny), dtype=bool)
    order = []
    while stride >= 1:
        for i in range(0, nx, stride):
            for j in range(0, ny, stride):
                if not seen[i, j]:
                    seen[i, j] = True
                    order.append((i, j))
        stride //= 2
    return order


# --------------------------------------------------------------------------- the pieces of one point

class WeightSetter:
    """Moves a model to θ + a·x + b·y in place: one ``copy_`` plus one ``add_`` per direction for each
    tensor that a direction touches (parameters; BN buffers too where the direction has them)."""

    def __init__(self, model: nn.Module, directions: Sequence[Dict[str, torch.Tensor]],
                 end: Optional[Dict[str, torch.Tensor]] = None):
        state = model.state_dict(keep_vars=True)
        if end is not None and len(directions) != 1:
            raise ValueError("an end point (interpolation) goes with exactly one direction")
        self.end = end
        names = []
        for d in directions:
            for name in d:
                if name not in state:
                    raise FlatnessError(f"the direction has '{name}', which the model does not")
                if name not in names:
                    names.append(name)
        self.slots = []
        for name in names:
            live = state[name]
            target = live.data if isinstance(live, nn.Parameter) else live
            if not target.is_floating_point():
                raise FlatnessError(f"the direction moves '{name}', which is not a floating-point tensor")
            parts = []
            for d in directions:
                t = d.get(name)
                if t is not None:
                    if tuple(t.shape) != tuple(target.shape):
                        raise FlatnessError(f"the direction's '{name}' has shape {tuple(t.shape)}, "
                                            f"the model's {tuple(target.shape)}")
                    t = t.to(device=target.device, dtype=target.dtype)
                parts.append(t)
            if end is not None:
                # interpolation: lerp between the two exact end points, so that 0 is A and 1 is B bit
                # for bit (torch.lerp is start + w·(end − start) below w = 0.5, end − (1 − w)·(end − start)
                # from there, with the same end − start as the stored direction)
                parts = [end[name].detach().to(device=target.device, dtype=target.dtype)]
            self.slots.append((target, target.detach().clone(), parts))
        self.names = names

    @torch.no_grad()
    def set(self, coefficients: Sequence[float]) -> None:
        if self.end is not None:
            weight = float(coefficients[0])
            for target, base, (end,) in self.slots:
                target.copy_(base)
                if weight != 0.0:
                    target.lerp_(end, weight)
            return
        for target, base, parts in self.slots:
            target.copy_(base)
            for coef, d in zip(coefficients, parts):
                if d is not None and coef != 0.0:
                    target.add_(d, alpha=float(coef))

    def restore(self) -> None:
        self.set([0.0] * 2)


def batchnorm_layers(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches) -> None:
    """Re-estimate every BatchNorm's running statistics on ``batches``: reset, momentum None (cumulative
    average over the batches), forward in train mode (BN layers only; dropout etc. stay in eval), then
    eval mode. Only BN buffers change."""
    layers = batchnorm_layers(model)
    if not layers:
        return
    model.eval()
    saved = []
    for m in layers:
        saved.append(m.momentum)
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for x, _ in batches:
            model(x)
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum
        model.eval()


# --------------------------------------------------------------------------- the whole surface

def compute_surface(checkpoint: str, out: Optional[str] = None, x: GridSpec = (-1.0, 1.0, 21),
                    y: Optional[GridSpec] = None, direction: str = "random", norm: str = "filter",
                    ignore: str = "biasbn", orthogonal: bool = False, split: str = "train",
                    samples: Optional[int] = DEFAULT_SAMPLES, batch_size: int = DEFAULT_BATCH_SIZE,
                    bn: str = "eval", seed: int = 0, device: str = "auto", resume: bool = False,
                    force: bool = False, progress: bool = True, data_dir: Optional[str] = None,
                    download: bool = False, precision: str = "fp32", channels_last: bool = False,
                    data: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Compute (or continue) a 1D/2D loss surface of ``checkpoint`` and write it to ``out`` (HDF5).

    ``precision="bf16"`` evaluates under bfloat16 autocast (the CUDA fast path; about 3 significant
    digits of loss, enough for pictures, not for differences near the minimum). ``channels_last``
    runs conv nets in NHWC layout: the same function, other rounding (~1e-6 relative in the loss),
    and on CPUs often much faster (the default convnet: 0.73x the time of a plain forward pass, see
    benchmarks/README.md). ``data`` ({split:
    ProbeData}) replaces the checkpoint's dataset, e.g. for custom data in a notebook.

    Under ``torchrun`` the grid points are split across ranks (each point is computed whole by one
    rank, so the values equal a single-process run); rank 0 alone writes the file.

    Returns a summary dict: ``out``, ``shape``, ``points``, ``computed_now``, ``seconds`` (grid time,
    all runs), ``points_per_second`` (this run), ``centre`` ({split: (loss, acc%)} when the grid has
    (0, 0)), ``min_loss`` ({split: value}), ``direction``, ``bn``, ``resumed``.
    """
    from flatness.formats.checkpoint import check_state_finite, load_checkpoint, read_checkpoint
    from flatness.core.devices import resolve_device
    from flatness.landscape.directions import IGNORES, NORMS, random_directions
    from flatness.core.fileio import sha256_file
    from flatness.data.probe_data import load_probe_data

    # ---- check every option before touching anything
    xs = parse_grid(x, "x")
    ys = parse_grid(y, "y") if y is not None else None
    if ys is not None and xs[2] * ys[2] > MAX_GRID_POINTS:
        raise FlatnessError(f"the grid has {xs[2] * ys[2]} points; at most {MAX_GRID_POINTS} are allowed")
    kind, source = parse_direction(direction)
    if norm not in NORMS:
        raise FlatnessError(f"unknown --norm {norm!r}; choose one of: {', '.join(NORMS)}")
    if ignore not in IGNORES:
        raise FlatnessError(f"unknown --ignore {ignore!r}; choose one of: {', '.join(IGNORES)}")
    if split not in SPLIT_CHOICES:
        raise FlatnessError(f"unknown --split {split!r}; choose one of: {', '.join(SPLIT_CHOICES)}")
    if bn not in BN_MODES:
        raise FlatnessError(f"unknown --bn {bn!r}; choose one of: {', '.join(BN_MODES)}")
    if samples is not None and samples < 1:
        raise FlatnessError(f"--samples must be >= 1, got {samples}")
    if batch_size < 1:
        raise FlatnessError(f"--batch-size must be >= 1, got {batch_size}")
    if kind == "interp" and ys is not None:
        raise FlatnessError("an interpolation is one-dimensional: leave out --y with --dir interp:CKPT_B")
    if resume and force:
        raise FlatnessError("--resume continues a file and --force starts it over: choose one")
    if orthogonal and (kind != "random" or ys is None):
        raise FlatnessError("--orthogonal applies to 2D random directions (--dir random with --y) only")
    if precision not in PRECISIONS:
        raise FlatnessError(f"unknown --precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")

    dev = distributed.local_device(resolve_device(device))
    model, info = load_checkpoint(checkpoint, device=dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ckpt_path = info["path"]
    if out is None:
        out = default_surface_path(ckpt_path, kind, source, norm, seed, xs, ys, split, bn)
    if os.path.isdir(out):
        raise FlatnessError(f"--out {out} is a folder; name a .h5 file")
    exists = os.path.exists(out)
    if exists and not (resume or force):
        raise FlatnessError(f"{out} already exists; use --resume to continue it or --force to overwrite it")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise FlatnessError(f"the folder for --out {out} does not exist")
    dataset = info["dataset"]
    if not dataset:
        raise FlatnessError(f"{ckpt_path} does not say which dataset it was trained on")

    splits = ["train", "test"] if split == "both" else [split]
    applied_norm = norm if kind == "random" else "none"
    applied_ignore = ignore if kind == "random" else "none"
    wanted = {
        "flatness_version": __version__,
        "checkpoint": os.path.abspath(ckpt_path),
        "checkpoint_sha256": sha256_file(ckpt_path),
        "dataset": dataset,
        "model": info["model"],
        "direction": kind,
        "direction_source": os.path.abspath(source) if source else "",
        "direction_source_sha256": "",
        "norm": applied_norm,
        "ignore": applied_ignore,
        "orthogonal": bool(orthogonal),
        "split": split,
        "samples": -1 if samples is None else int(samples),
        "batch_size": int(batch_size),
        "bn": bn,
        "memory_format": "channels_last" if channels_last else "contiguous",  # provenance, not a resume key
        "seed": int(seed),
        "dims": 1 if ys is None else 2,
        "x_min": xs[0], "x_max": xs[1], "x_num": xs[2],
    }
    if ys is not None:
        wanted.update({"y_min": ys[0], "y_max": ys[1], "y_num": ys[2]})
    payload_b = None
    if kind == "interp":
        payload_b = read_checkpoint(source)
        check_state_finite(payload_b["model_state"], payload_b["path"])
        wanted["direction_source"] = os.path.abspath(payload_b["path"])
        wanted["direction_source_sha256"] = sha256_file(payload_b["path"])
    match_keys = ["checkpoint_sha256", "dims", "x_min", "x_max", "x_num", "y_min", "y_max", "y_num", "direction",
                  "direction_source_sha256", "norm", "ignore", "orthogonal", "seed", "dataset", "split", "samples",
                  "batch_size", "bn"]
    if kind == "pca":
        match_keys.append("direction_source")

    # ---- the data (loaded before any file is created, so a missing dataset changes nothing)
    def in_layout(probe_data):
        return probe_data.channels_last() if channels_last else probe_data

    if data is None:
        data = {s: load_probe_data(dataset, s, samples, batch_size, device=dev, root=data_dir, download=download)
                for s in splits}
    elif set(data) != set(splits):
        raise FlatnessError(f"data must hold exactly the splits {splits}, got {sorted(data)}")
    data = {s: in_layout(d) for s, d in data.items()}
    recal_batches = None
    if bn == "recalibrate" and batchnorm_layers(model):
        recal_batches = data["train"] if "train" in data else in_layout(load_probe_data(
            dataset, "train", samples, batch_size, device=dev, root=data_dir, download=download))

    xcoords = grid_coordinates(*xs)
    ycoords = grid_coordinates(*ys) if ys is not None else None
    resumed = bool(resume and exists)

    def open_surface_file():
        """Rank 0: create the file (with its directions) or reopen it to resume; returns its state."""
        if resumed:
            handle = surface_io.SurfaceFile(out)
            try:
                surface_io.check_matches(handle.attrs, wanted, out, match_keys)
                missing = [k for s in splits for k in (f"{s}_loss", f"{s}_acc") if k not in handle.values]
                if missing or len(handle.directions) != (1 if ys is None else 2):
                    raise FlatnessError(f"{out} is incomplete (no {missing[0] if missing else 'directions'}); "
                                        "use --force to start over")
            except BaseException:
                handle.close()
                raise
            handle.make_writable()
            directions = handle.directions
            values = {k: v.reshape(len(xcoords), -1).copy() for k, v in handle.values.items()}
            computed = handle.computed.reshape(len(xcoords), -1).astype(bool)
            seconds_before = float(handle.attrs.get("seconds", 0.0))
        else:
            count = 1 if ys is None else 2
            extra_attrs: Dict[str, Any] = {}
            pca_extra = None
            if kind == "random":
                directions = random_directions(model, count, norm=norm, ignore=ignore, seed=seed, orthogonal=orthogonal)
            elif kind == "interp":
                from flatness.landscape.directions import interp_direction

                directions = [interp_direction(model, payload_b["model_state"])]
            elif kind == "pca":
                from flatness.landscape.directions import pca_directions

                result = pca_directions(source)
                directions = result.directions[:count]
                pca_extra = {"explained_variance_ratio": result.explained_variance_ratio,
                             "coordinates": result.coordinates, "epochs": result.epochs,
                             "reference": os.path.abspath(result.reference)}
                extra_attrs["explained_variance_ratio"] = list(result.explained_variance_ratio)
            else:
                from flatness.landscape.directions import eigen_directions

                hessian_data = data["train"] if "train" in data else load_probe_data(
                    dataset, "train", samples, batch_size, device=dev, root=data_dir, download=download)
                result = eigen_directions(model, hessian_data, k=count, seed=seed)
                directions = result.directions
                extra_attrs["eigenvalues"] = list(result.eigenvalues)
            attrs = dict(wanted)
            attrs.update(extra_attrs)
            surface_io.create_surface(out, xcoordinates=xcoords, ycoordinates=ycoords, splits=splits,
                                      directions=directions, attrs=attrs, pca=pca_extra)
            handle = surface_io.SurfaceFile(out)
            handle.make_writable()
            values = {k: v.reshape(len(xcoords), -1).copy() for k, v in handle.values.items()}
            computed = handle.computed.reshape(len(xcoords), -1).astype(bool)
            seconds_before = 0.0
        return handle, directions, values, computed, seconds_before

    main_rank = distributed.is_main()
    handle = None
    with (locking.exclusive(out, "surface file") if main_rank else contextlib.nullcontext()):
        error = None
        state = (None, None, None, None, 0.0)
        if main_rank:
            try:
                state = open_surface_file()
            except FlatnessError as err:
                error = str(err)
        # Every rank learns of rank 0's error (and stops), and starts from rank 0's directions and state.
        error = distributed.broadcast_object(error)
        if error is not None:
            raise FlatnessError(error)
        handle = state[0]
        directions, values, computed, seconds_before = distributed.broadcast_object(state[1:])
        return _finish(model, directions, handle, data, recal_batches, splits, xcoords, ycoords, values,
                       computed, seconds_before, progress, out, kind, bn, resumed, precision, payload_b)


def _finish(model, directions, handle, data, recal_batches, splits, xcoords, ycoords, values, computed,
            seconds_before, progress, out, kind, bn, resumed, precision, payload_b):
    try:
        end = None
        if kind == "interp":
            end = {name: payload_b["model_state"][name] for name in directions[0]}
        setter = WeightSetter(model, directions, end=end)
        return _run_grid(model, setter, handle, data, recal_batches, splits, xcoords, ycoords, values, computed,
                         seconds_before, progress, out, kind, bn, resumed, precision)
    finally:
        if handle is not None:
            handle.close()


def _run_grid(model, setter, handle, data, recal_batches, splits, xcoords, ycoords, values, computed,
              seconds_before, progress, out, kind, bn, resumed, precision="fp32") -> Dict[str, Any]:
    nx = len(xcoords)
    ny = 1 if ycoords is None else len(ycoords)
    todo = [(i, j) for i, j in coarse_to_fine_order(nx, ny) if not computed[i, j]]
    flush_every = float(os.environ.get(ENV_FLUSH, FLUSH_SECONDS))
    kill_after = int(os.environ.get(ENV_KILL, "0") or 0)
    out_shape = (nx,) if ycoords is None else (nx, ny)
    rank, world = distributed.rank(), distributed.world_size()
    device = next(model.parameters()).device
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())

    def save(elapsed: float) -> None:
        if handle is not None:  # rank 0 writes; the other ranks only compute
            handle.write({k: v.reshape(out_shape) for k, v in values.items()},
                         computed.reshape(out_shape).astype(np.uint8), seconds_before + elapsed)

    def compute_point(i: int, j: int) -> List[float]:
        coefficients = [float(xcoords[i])] + ([] if ycoords is None else [float(ycoords[j])])
        setter.set(coefficients)
        if recal_batches is not None:
            recalibrate_bn(model, recal_batches)
        with autocast:
            # exactly `evaluate` (one sync per call), so the centre equals the checkpoint's plain numbers
            results = [evaluate(model, data[s]) for s in splits]
        return [v for loss, acc in results for v in (loss, 100.0 * acc)]

    bar = None
    if progress and todo and rank == 0:
        bar = progress_bar(True, len(todo), "surface", unit="pt", leave=True)
    model.eval()
    start = time.perf_counter()
    cpu_start = time.process_time()
    last_flush = start
    done_now = 0
    try:
        # Chunks of SYNC_ROUNDS x world points in the coarse-to-fine order, dealt round robin; after
        # each chunk one small all-reduce gives every rank all the chunk's values, so rank 0 can
        # flush the file. (Syncing after every point cost ~25% at 2 ranks: each round waits for
        # the slower rank.) Single-process runs take chunks of one point.
        chunk = world * SYNC_ROUNDS if world > 1 else 1
        for first in range(0, len(todo), chunk):
            chunk_points = todo[first:first + chunk]
            rows = torch.zeros(len(chunk_points), 2 * len(splits), dtype=torch.float64)
            for k in range(rank, len(chunk_points), world):
                rows[k] = torch.tensor(compute_point(*chunk_points[k]), dtype=torch.float64)
                done_now += 1
                if kill_after and done_now >= kill_after:  # test hook: die with this point in flight
                    os.kill(os.getpid(), signal.SIGKILL)
            distributed.all_reduce_sum_(rows)
            for (i, j), numbers in zip(chunk_points, rows.tolist()):
                for k, s in enumerate(splits):
                    values[f"{s}_loss"][i, j] = numbers[2 * k]
                    values[f"{s}_acc"][i, j] = numbers[2 * k + 1]
                computed[i, j] = True
            if bar is not None:
                bar.update(len(chunk_points))
            now = time.perf_counter()
            if now - last_flush >= flush_every:
                save(now - start)
                last_flush = time.perf_counter()
        elapsed = time.perf_counter() - start
        cpu_elapsed = time.process_time() - cpu_start
        save(elapsed)
    except BaseException:
        # Ctrl-C or an error: keep what is finished (the point in flight is not marked computed)
        try:
            save(time.perf_counter() - start)
        except Exception:
            pass
        raise
    finally:
        if bar is not None:
            bar.close()
        setter.restore()
    summary: Dict[str, Any] = {
        "out": out,
        "shape": list(out_shape),
        "points": int(nx * ny),
        "computed_now": done_now,
        "remaining": int((~computed).sum()),
        "seconds": seconds_before + elapsed,
        "points_per_second": done_now / elapsed if elapsed > 0 and done_now else None,
        "cpu_seconds": cpu_elapsed,  # this run's grid loop, process CPU time (benchmarks on shared machines)
        "direction": kind,
        "bn": bn,
        "resumed": resumed,
        "centre": None,
        "min_loss": {},
    }
    ci = np.flatnonzero(xcoords == 0.0)
    cj = np.array([0]) if ycoords is None else np.flatnonzero(ycoords == 0.0)
    if ci.size and cj.size and computed[ci[0], cj[0]]:
        summary["centre"] = {s: (float(values[f"{s}_loss"][ci[0], cj[0]]), float(values[f"{s}_acc"][ci[0], cj[0]]))
                             for s in splits}
    for s in splits:
        finite = values[f"{s}_loss"][np.isfinite(values[f"{s}_loss"])]
        summary["min_loss"][s] = float(finite.min()) if finite.size else None
    return summary
