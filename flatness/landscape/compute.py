"""The file-backed loss surface of a checkpoint: ``compute_surface`` behind ``flatness surface``.

The grid is evaluated on the probe data (the first ``samples`` examples of a split, no augmentation,
exact means), writing the HDF5 file (``flatness.formats.surface_file``) as it goes so that an
interrupted run continues with ``resume=True``. Every point is evaluated by the same
``PointEvaluator`` as the in-memory ``loss_surface``; the points are visited coarse to fine (every
8th, then every 4th, 2nd, the rest), so a partial file already shows the whole picture at a lower
resolution. Under ``torchrun`` the points are dealt out to the ranks; rank 0 alone writes the file.

BatchNorm (``bn``): ``"eval"`` uses the running statistics as stored (or, for an interpolation, as
interpolated); ``"recalibrate"`` re-estimates them at every point on the training probe data
(``flatness.landscape.weights.recalibrate_bn``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flatness.core import distributed, locking
from flatness.core.devices import resolve_device
from flatness.core.errors import FlatnessError
from flatness.core.fileio import sha256_file
from flatness.core.losses import is_classification_loss
from flatness.core.paths import check_paths, file_id, same_file
from flatness.core.progress import progress_bar, show_plan
from flatness.core.validation import check_count, check_seed, parse_samples
from flatness.data.probe_data import DEFAULT_BATCH_SIZE, DEFAULT_SAMPLES
from flatness.formats import surface_file as surface_io
from flatness.formats.checkpoint import ForeignCheckpointError, check_state_finite, read_checkpoint
from flatness.landscape.directions import (
    IGNORES,
    NORMS,
    eigen_directions,
    interp_direction,
    pca_directions,
    random_directions,
)
from flatness.landscape.grid import (
    MAX_GRID_POINTS,
    GridSpec,
    coarse_to_fine_order,
    default_surface_path,
    grid_coordinates,
    parse_direction,
    parse_grid,
)
from flatness.landscape.surface import PRECISIONS, PointEvaluator
from flatness.landscape.weights import WeightSetter, batchnorm_layers
from flatness.sources.loading import load_target, source_file_sha256
from flatness.version import __version__

BN_MODES = ("eval", "recalibrate")
SPLIT_CHOICES = ("train", "test", "both")
SYNC_ROUNDS = 8  # distributed surfaces: points per rank between two all-reduces (and file flushes)
FLUSH_SECONDS = 1.0  # while computing, the file is written at most this often (and always at the end)
# the attributes that must agree for --resume to continue a file
MATCH_KEYS = (
    "checkpoint_sha256",
    "dims",
    "x_min",
    "x_max",
    "x_num",
    "y_min",
    "y_max",
    "y_num",
    "direction",
    "direction_source_sha256",
    "model",
    "model_args",
    "model_code_sha256",
    "dataset_code_sha256",
    "norm",
    "ignore",
    "orthogonal",
    "seed",
    "dataset",
    "split",
    "samples",
    "batch_size",
    "bn",
    "precision",
    "loss",
    "output",
)


@dataclass(frozen=True)
class SurfaceSettings:
    """Every option of ``flatness surface`` (the command builds one; see ``flatness surface --help``).

    ``samples``: the first N examples, ``"all"`` or None (the whole split); ``x``/``y``: grid specs
    (``(min, max, n)`` or ``"MIN:MAX:N"``). ``checked()`` is the one check of every option.
    ``precision="bf16"`` evaluates under bfloat16 autocast (the CUDA fast path; about 3 significant
    digits of loss, enough for pictures, not for differences near the minimum). ``channels_last``
    runs conv nets in NHWC layout: the same function, other rounding (~1e-6 relative in the loss),
    and on CPUs often much faster (benchmarks/README.md).
    """

    x: GridSpec = (-1.0, 1.0, 21)
    y: GridSpec | None = None
    direction: str = "random"
    norm: str = "filter"
    ignore: str = "biasbn"
    orthogonal: bool = False
    split: str = "train"
    samples: int | str | None = DEFAULT_SAMPLES
    batch_size: int = DEFAULT_BATCH_SIZE
    bn: str = "eval"
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    force: bool = False
    progress: bool = False
    data_dir: str | None = None
    download: bool = False
    precision: str = "fp32"
    channels_last: bool = False
    # the loss (a callable or a name of flatness.core.losses.LOSS_NAMES; None: cross-entropy) and what of
    # the model's output it sees (flatness.data.batches.model_output; None: the default rule)
    loss_fn: Any = None
    output_fn: Any = None
    # --model/--model-args/--dataset of the command line (flatness.sources.loading.ModelSource); None:
    # the model and dataset the checkpoint records
    source: Any = None

    def checked(self) -> SurfaceSettings:
        """Every option checked before anything is touched, as a copy with the defaults resolved.

        The copy holds ``x``/``y`` as ``(min, max, n)`` numbers and ``samples`` as a count (None: all);
        ``parse_direction(copy.direction)`` gives the direction's kind and source.

        Raises:
            FlatnessError: one line naming the option.
        """
        xs = parse_grid(self.x, "x")
        ys = parse_grid(self.y, "y") if self.y is not None else None
        if ys is not None and xs[2] * ys[2] > MAX_GRID_POINTS:
            raise FlatnessError(f"the grid has {xs[2] * ys[2]} points; at most {MAX_GRID_POINTS} are allowed")
        kind, source = parse_direction(self.direction)
        for option, value, choices in (
            ("norm", self.norm, NORMS),
            ("ignore", self.ignore, IGNORES),
            ("split", self.split, SPLIT_CHOICES),
            ("bn", self.bn, BN_MODES),
            ("precision", self.precision, PRECISIONS),
        ):
            if value not in choices:
                raise FlatnessError(f"unknown --{option} {value!r}; choose one of: {', '.join(choices)}")
        samples = parse_samples(self.samples)
        check_count(self.batch_size, "--batch-size")
        check_seed(self.seed)
        if kind == "interp" and ys is not None:
            raise FlatnessError("an interpolation is one-dimensional: leave out --y with --dir interp:CKPT_B")
        if self.resume and self.force:
            raise FlatnessError("--resume continues a file and --force starts it over: choose one")
        if self.orthogonal and (kind != "random" or ys is None):
            raise FlatnessError("--orthogonal applies to 2D random directions (--dir random with --y) only")
        return dataclasses.replace(self, x=xs, y=ys, samples=samples)


@dataclass
class _Job:
    """One checked request with its model and data loaded: what the file and the grid loop need."""

    settings: SurfaceSettings
    kind: str
    source: str | None
    model: torch.nn.Module
    out: str
    splits: list[str]
    wanted: dict[str, Any]
    match_keys: list[str]
    payload_b: dict[str, Any] | None
    data: dict[str, Any]
    recal_batches: Any
    xcoords: np.ndarray
    ycoords: np.ndarray | None
    resumed: bool

    @property
    def shape(self) -> tuple[int, ...]:
        """The value arrays' shape: (nx,) in 1D, (ny, nx) in 2D (``[j, i]`` at (x_i, y_j))."""
        return (len(self.xcoords),) if self.ycoords is None else (len(self.ycoords), len(self.xcoords))

    def load_train(self, in_layout: bool = True):
        """The training probe data (for eigen directions and BN recalibration).

        ``in_layout``: in the model's memory format (the Hessian of eigen directions has always used
        the plain layout).
        """
        s = self.settings
        if "train" in self.data:
            return self.data["train"]
        data = self.target.probe_data(
            "train", s.samples, s.batch_size, self.data_device, root=s.data_dir, download=s.download
        )
        return data.channels_last() if s.channels_last and in_layout else data

    data_device: Any = None
    target: Any = None  # the loaded flatness.sources.loading.Target (its data)


def compute_surface(
    checkpoint: str,
    out: str | None = None,
    settings: SurfaceSettings | None = None,
    *,
    data: dict[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Compute (or continue) a 1D/2D loss surface of ``checkpoint`` and write it to ``out`` (HDF5).

    Under ``torchrun`` the grid points are split across ranks (each point is computed whole by one
    rank, so the values equal a single-process run); rank 0 alone writes the file.

    Args:
        checkpoint: a flatness checkpoint (or run folder).
        out: the .h5 file; default: a descriptive name beside the checkpoint.
        settings: the options (``SurfaceSettings``); default: all defaults.
        data: ``{split: ProbeData}`` replacing the checkpoint's dataset (custom data in a notebook).
        **options: ``SurfaceSettings`` fields, overriding ``settings`` (``x=(-1, 1, 5), seed=3``).

    Returns:
        A summary: ``out``, ``shape`` (the arrays' shape: (nx,) or (ny, nx)), ``points``,
        ``computed_now``, ``remaining``, ``seconds`` (grid time, all runs), ``points_per_second`` (this
        run), ``cpu_seconds``, ``centre`` ({split: (loss, acc%)} when the grid has (0, 0)),
        ``min_loss`` ({split: value}), ``direction``, ``bn``, ``resumed``.
    """
    settings = dataclasses.replace(settings or SurfaceSettings(), **options).checked()
    distributed.init_from_env(resolve_device(settings.device))  # under torchrun: join the ranks
    settings = dataclasses.replace(settings, progress=settings.progress and distributed.is_main())
    job = _prepare(checkpoint, out, settings, data)
    main_rank = distributed.is_main()
    with locking.exclusive(job.out, "surface file") if main_rank else contextlib.nullcontext():
        error = None
        state = (None, None, None, None, 0.0)
        if main_rank:
            try:
                state = _open_surface_file(job)
            except FlatnessError as err:
                error = str(err)
        # Every rank learns of rank 0's error (and stops), and starts from rank 0's directions and state.
        error = distributed.broadcast_object(error)
        if error is not None:
            raise FlatnessError(error)
        handle = state[0]
        directions, values, computed, seconds_before = distributed.broadcast_object(state[1:])
        try:
            end = None
            if job.kind == "interp":
                end = {name: job.payload_b["model_state"][name] for name in directions[0]}
            setter = WeightSetter(job.model, directions, end=end)
            return _run_grid(job, setter, handle, values, computed, seconds_before)
        finally:
            if handle is not None:
                handle.close()


def _prepare(checkpoint: str, out: str | None, s: SurfaceSettings, data: dict[str, Any] | None) -> _Job:
    """Check the options, load the model and the data, and decide the output file (nothing written)."""
    xs, ys = s.x, s.y
    kind, source = parse_direction(s.direction)
    sources = [source] if kind in ("interp", "pca") and source else []
    # issue 15: an output that is any input (through links too) is refused, --force or not
    check_paths({"CHECKPOINT": [checkpoint], "--dir": sources}, {"--out": out})
    if kind == "interp" and file_id(source) is not None and same_file(source, checkpoint):
        raise FlatnessError(f"--dir interp:{source} is CHECKPOINT itself: an interpolation needs two checkpoints")
    dev = distributed.local_device(resolve_device(s.device))
    target = load_target(checkpoint, s.source, device=dev, root=s.data_dir)
    model, info = target.model, target.info
    if s.loss_fn is None and s.output_fn is None:  # as the run recorded them, or as --loss / --output named them
        s = dataclasses.replace(s, loss_fn=target.loss_fn, output_fn=target.output_fn)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ckpt_path = info["path"]
    if out is None:
        out = default_surface_path(ckpt_path, kind, source, s.norm, s.seed, xs, ys, s.split, s.bn)
    if os.path.isdir(out):
        raise FlatnessError(f"--out {out} is a folder; name a .h5 file")
    exists = os.path.exists(out)
    if exists and not (s.resume or s.force) and not surface_io.holds_no_point(out):  # no point computed: no result
        raise FlatnessError(f"{out} already exists; use --resume to continue it or --force to overwrite it")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise FlatnessError(f"the folder for --out {out} does not exist")
    if not info["dataset"]:
        raise FlatnessError(f"{ckpt_path} does not say which dataset it was trained on")
    splits = ["train", "test"] if s.split == "both" else [s.split]
    wanted, match_keys, payload_b = _provenance(s, info, kind, source, xs, ys)
    job = _Job(
        s,
        kind,
        source,
        model,
        out,
        splits,
        wanted,
        match_keys,
        payload_b,
        {},
        None,
        grid_coordinates(*xs),
        grid_coordinates(*ys) if ys is not None else None,
        bool(s.resume and exists),
        data_device=dev,
        target=target,
    )
    job.data = _probe_sets(job, data)
    # The examples actually used (the split may hold fewer than --samples asked for)
    counts = {sp: int(d.n) for sp, d in job.data.items()}
    job.wanted["samples"] = counts[splits[0]]
    job.wanted.update({f"{sp}_samples": n for sp, n in counts.items()})
    if s.bn == "recalibrate" and batchnorm_layers(model):
        job.recal_batches = job.load_train()
    return job


def _probe_sets(job: _Job, data: dict[str, Any] | None) -> dict[str, Any]:
    """The probe data of every split (loaded before any file is created: a missing dataset changes nothing)."""
    s = job.settings
    if data is None:
        data = {
            sp: job.target.probe_data(
                sp, s.samples, s.batch_size, job.data_device, root=s.data_dir, download=s.download
            )
            for sp in job.splits
        }
    elif set(data) != set(job.splits):
        raise FlatnessError(f"data must hold exactly the splits {job.splits}, got {sorted(data)}")
    return {sp: (d.channels_last() if s.channels_last else d) for sp, d in data.items()}


def _source_fingerprint(info: dict[str, Any]) -> dict[str, str]:
    """What fixes the model's code and the data besides their names: model arguments, file digests.

    Each is "" where the name fixes it, so files written before these keys existed still resume.
    """
    record = info.get("model_record") or {}
    args = record.get("args")
    return {
        "model_args": json.dumps(args, sort_keys=True) if args else "",
        "model_code_sha256": record.get("sha256") or "",
        "dataset_code_sha256": source_file_sha256(info["dataset"]),
    }


def _provenance(
    s: SurfaceSettings,
    info: dict[str, Any],
    kind: str,
    source: str | None,
    xs: tuple[float, float, int],
    ys: tuple[float, float, int] | None,
):
    """The file's attributes for this request, the keys a resume must match, and B's checkpoint."""
    wanted = {
        "flatness_version": __version__,
        "checkpoint": os.path.abspath(info["path"]),
        "checkpoint_sha256": sha256_file(info["path"]),
        "dataset": info["dataset"],
        "model": info["model"],
        **_source_fingerprint(info),
        "direction": kind,
        "direction_source": os.path.abspath(source) if source else "",
        "direction_source_sha256": "",
        "norm": s.norm if kind == "random" else "none",
        "ignore": s.ignore if kind == "random" else "none",
        "orthogonal": bool(s.orthogonal),
        "split": s.split,
        "samples": -1 if s.samples is None else int(s.samples),
        "batch_size": int(s.batch_size),
        "bn": s.bn,
        "memory_format": "channels_last" if s.channels_last else "contiguous",  # provenance, not a resume key
        "precision": s.precision,  # a resume key (issue 15): one file never mixes fp32 and bf16 points
        # the loss and output the values are of ("": cross-entropy on the output; flatness.sources.losses)
        "loss": info.get("loss") or "",
        "output": info.get("output") or "",
        "seed": int(s.seed),
        "dims": 1 if ys is None else 2,
        "x_min": xs[0],
        "x_max": xs[1],
        "x_num": xs[2],
    }
    if ys is not None:
        wanted.update({"y_min": ys[0], "y_max": ys[1], "y_num": ys[2]})
    payload_b = None
    if kind == "interp":
        try:
            payload_b = read_checkpoint(source)
        except ForeignCheckpointError:
            # the checkpoint's own advice ("needs --model") does not apply: --model builds CHECKPOINT only
            raise FlatnessError(
                f"--dir interp:{source} is not a flatness checkpoint: the end point of an interpolation must be "
                "one (written by flatness train), a plain state_dict or .pt2 file cannot be"
            ) from None
        check_state_finite(payload_b["model_state"], payload_b["path"])
        wanted["direction_source"] = os.path.abspath(payload_b["path"])
        wanted["direction_source_sha256"] = sha256_file(payload_b["path"])
    match_keys = list(MATCH_KEYS) + (["direction_source"] if kind == "pca" else [])
    return wanted, match_keys, payload_b


def _make_directions(job: _Job):
    """A new file's directions and what they add to it: (directions, extra attributes, PCA group or None)."""
    count = 1 if job.ycoords is None else 2
    s = job.settings
    if job.kind == "random":
        return (
            random_directions(job.model, count, norm=s.norm, ignore=s.ignore, seed=s.seed, orthogonal=s.orthogonal),
            {},
            None,
        )
    if job.kind == "interp":
        return [interp_direction(job.model, job.payload_b["model_state"])], {}, None
    if job.kind == "pca":
        result = pca_directions(job.source)
        pca = {
            "explained_variance_ratio": result.explained_variance_ratio,
            "coordinates": result.coordinates,
            "epochs": result.epochs,
            "reference": os.path.abspath(result.reference),
        }
        return result.directions[:count], {"explained_variance_ratio": list(result.explained_variance_ratio)}, pca
    result = eigen_directions(
        job.model, job.load_train(in_layout=False), k=count, seed=s.seed, loss_fn=s.loss_fn, output_fn=s.output_fn
    )
    return result.directions, {"eigenvalues": list(result.eigenvalues)}, None


def _has_accuracy(job: _Job) -> bool:
    """Whether the surface has accuracy arrays: not for a known regression loss (``--loss mse``)."""
    return is_classification_loss(job.settings.loss_fn) is not False


def _open_surface_file(job: _Job):
    """Rank 0: create the file (with its directions) or reopen it to resume.

    Returns:
        ``(handle, directions, values {key: (ny, nx) array}, computed (ny, nx) bool, seconds so far)``;
        1D surfaces are held as (1, nx).
    """
    out = job.out
    if job.resumed:
        handle = surface_io.SurfaceFile(out)
        try:
            surface_io.check_matches(handle.attrs, job.wanted, out, job.match_keys)
            kinds = ("loss", "acc") if _has_accuracy(job) else ("loss",)
            missing = [f"{sp}_{k}" for sp in job.splits for k in kinds if f"{sp}_{k}" not in handle.values]
            if missing or len(handle.directions) != (1 if job.ycoords is None else 2):
                raise FlatnessError(
                    f"{out} is incomplete (no {missing[0] if missing else 'directions'}); use --force to start over"
                )
        except BaseException:
            handle.close()
            raise
        seconds_before = float(handle.attrs.get("seconds", 0.0))
    else:
        if os.path.exists(out) and not job.settings.force and not surface_io.holds_no_point(out):
            # checked again under the lock: another run may have computed points since _prepare looked
            raise FlatnessError(f"{out} already exists; use --resume to continue it or --force to overwrite it")
        directions, extra_attrs, pca = _make_directions(job)
        attrs = dict(job.wanted)
        attrs.update(extra_attrs)
        surface_io.create_surface(
            out,
            xcoordinates=job.xcoords,
            ycoordinates=job.ycoords,
            splits=job.splits,
            directions=directions,
            attrs=attrs,
            pca=pca,
            accuracy=_has_accuracy(job),
        )
        handle = surface_io.SurfaceFile(out)
        seconds_before = 0.0
    handle.make_writable()
    nx = len(job.xcoords)
    values = {k: v.reshape(-1, nx).copy() for k, v in handle.values.items()}
    computed = handle.computed.reshape(-1, nx).astype(bool)
    return handle, handle.directions, values, computed, seconds_before


def _run_grid(
    job: _Job, setter: WeightSetter, handle, values: dict[str, np.ndarray], computed: np.ndarray, seconds_before: float
) -> dict[str, Any]:
    """Evaluate every point not yet computed (this rank's share), flushing the file as it goes."""
    nx, ny = len(job.xcoords), 1 if job.ycoords is None else len(job.ycoords)
    todo = [(i, j) for i, j in coarse_to_fine_order(nx, ny) if not computed[j, i]]
    rank, world = distributed.rank(), distributed.world_size()
    evaluate_point = PointEvaluator(
        job.model,
        setter,
        [job.data[sp] for sp in job.splits],
        loss_fn=job.settings.loss_fn,
        recalibration=job.recal_batches,
        precision=job.settings.precision,
        output_fn=job.settings.output_fn,
    )

    def save(elapsed: float) -> None:
        if handle is not None:  # rank 0 writes; the other ranks only compute
            handle.write(
                {k: v.reshape(job.shape) for k, v in values.items()},
                computed.reshape(job.shape).astype(np.uint8),
                seconds_before + elapsed,
            )

    bar = None
    if job.settings.progress and todo and rank == 0:
        examples = " and ".join(f"{job.wanted.get(f'{sp}_samples')} {sp}" for sp in job.splits)
        show_plan(True, "surface", f"{len(todo)} of {computed.size} points", f"each a pass over {examples} examples")
        bar = progress_bar(True, len(todo), "surface", unit="pt", leave=True)
    job.model.eval()
    start, cpu_start = time.perf_counter(), time.process_time()
    last_flush = start
    done_now = 0
    try:
        # Chunks of SYNC_ROUNDS x world points in the coarse-to-fine order, dealt round robin; after
        # each chunk one small all-reduce gives every rank all the chunk's values, so rank 0 can
        # flush the file. (Syncing after every point cost ~25% at 2 ranks: each round waits for
        # the slower rank.) Single-process runs take chunks of one point.
        chunk = world * SYNC_ROUNDS if world > 1 else 1
        for first in range(0, len(todo), chunk):
            chunk_points = todo[first : first + chunk]
            rows, done_now = _chunk_rows(job, evaluate_point, chunk_points, done_now)
            _store_rows(job.splits, chunk_points, rows, values, computed)
            if bar is not None:
                bar.update(len(chunk_points))
            if time.perf_counter() - last_flush >= FLUSH_SECONDS:
                save(time.perf_counter() - start)
                last_flush = time.perf_counter()
        elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu_start
        save(elapsed)
    except BaseException:
        # Ctrl-C or an error: keep what is finished (the point in flight is not marked computed)
        with contextlib.suppress(Exception):
            save(time.perf_counter() - start)
        raise
    finally:
        if bar is not None:
            bar.close()
        setter.restore()
    return _summary(job, values, computed, seconds_before, elapsed, cpu_elapsed, done_now)


def _store_rows(
    splits: Sequence[str],
    points: list[tuple[int, int]],
    rows: torch.Tensor,
    values: dict[str, np.ndarray],
    computed: np.ndarray,
) -> None:
    """Write a chunk's rows (per point ``[loss, acc %]`` per split) into the grids; mark the points computed."""
    for (i, j), numbers in zip(points, rows.tolist(), strict=True):
        for k, sp in enumerate(splits):
            values[f"{sp}_loss"][j, i] = numbers[2 * k]
            if f"{sp}_acc" in values:  # none for a regression loss
                values[f"{sp}_acc"][j, i] = numbers[2 * k + 1]
        computed[j, i] = True


def _chunk_rows(
    job: _Job, evaluate_point: PointEvaluator, chunk_points: list[tuple[int, int]], done_now: int
) -> tuple[torch.Tensor, int]:
    """This rank's points of a chunk, then one all-reduce: every rank gets every row.

    Returns:
        ``(rows, done_now)``: per point ``[loss, acc %]`` per split; the count of points computed
        by this rank in this run so far.
    """
    rank, world = distributed.rank(), distributed.world_size()
    rows = torch.zeros(len(chunk_points), 2 * len(job.splits), dtype=torch.float64)
    for k in range(rank, len(chunk_points), world):
        i, j = chunk_points[k]
        coefficients = [float(job.xcoords[i])] + ([] if job.ycoords is None else [float(job.ycoords[j])])
        numbers = [
            v for loss, acc in evaluate_point(coefficients) for v in (loss, np.nan if acc is None else 100.0 * acc)
        ]
        rows[k] = torch.tensor(numbers, dtype=torch.float64)
        done_now += 1
    distributed.all_reduce_sum_(rows)
    return rows, done_now


def _summary(job: _Job, values, computed, seconds_before, elapsed, cpu_elapsed, done_now) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "out": job.out,
        "shape": list(job.shape),
        "points": int(computed.size),
        "computed_now": done_now,
        "remaining": int((~computed).sum()),
        "seconds": seconds_before + elapsed,
        "points_per_second": done_now / elapsed if elapsed > 0 and done_now else None,
        "cpu_seconds": cpu_elapsed,  # this run's grid loop, process CPU time (benchmarks on shared machines)
        "direction": job.kind,
        "bn": job.settings.bn,
        "resumed": job.resumed,
        "centre": None,
        "min_loss": {},
    }
    ci = np.flatnonzero(job.xcoords == 0.0)
    cj = np.array([0]) if job.ycoords is None else np.flatnonzero(job.ycoords == 0.0)
    if ci.size and cj.size and computed[cj[0], ci[0]]:
        acc = {sp: values.get(f"{sp}_acc") for sp in job.splits}
        summary["centre"] = {
            sp: (
                float(values[f"{sp}_loss"][cj[0], ci[0]]),
                None if acc[sp] is None or np.isnan(acc[sp][cj[0], ci[0]]) else float(acc[sp][cj[0], ci[0]]),
            )
            for sp in job.splits
        }
    for sp in job.splits:
        finite = values[f"{sp}_loss"][np.isfinite(values[f"{sp}_loss"])]
        summary["min_loss"][sp] = float(finite.min()) if finite.size else None
    return summary
