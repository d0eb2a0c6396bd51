"""The settings of a study (``ExperimentConfig``) and their checks: what ``flatness experiment`` takes.

``ExperimentConfig(...).checked()`` is the one place its options are checked and its defaults filled
(``--quick``, the dataset's recipe, model and epochs, the workers and threads); it raises a one-line
``FlatnessError`` naming the option. Given values are checked before defaults fill the gaps: 0 is an
error, never "the default".
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flatness.core import engines
from flatness.core.errors import FlatnessError
from flatness.core.paths import check_name
from flatness.core.validation import check_count, check_seed
from flatness.data.probe_data import DEFAULT_SAMPLES
from flatness.landscape.grid import MAX_AXIS_POINTS, MAX_GRID_POINTS
from flatness.sharpness.measure import SharpnessSettings
from flatness.sources.loading import default_model_for, folder_label, is_user_dataset
from flatness.study.probe import QUICK_SHARPNESS, ProbeSettings
from flatness.training.config import METHODS, TrainConfig
from flatness.training.stopping import check_stop_loss

# 8 seeds: the fewest at which the paired rank test can find an effect that holds in every seed after
# Holm over the 6 primary measures (exact two-sided Wilcoxon p >= 2/2^n: 2/2^8 = 0.0078 < 0.05/6 = 0.0083;
# 7 seeds give 0.0156). The paired t-test has more power than that at the effect sizes seen (> 2 sd).
DEFAULT_SEEDS = tuple(range(8))
DEFAULT_MATCH_LOSS = 0.01  # Jiang et al. (2020)'s training cross-entropy, as `flatness sweep --stop-loss`
QUICK_MATCH_LOSS = 5.0  # --quick: one epoch reaches it (cross-entropy starts at ~ln 10), so the path runs
# A user's own data (FILE.npz, FILE.py:callable, ...) trains with this recipe unless --recipe is named:
# the MNIST-1D study's optimiser (SGD lr 0.1 momentum 0.9, batch 100, cosine, 100 epochs), which fits
# that training set (100 % train accuracy for ERM, AMP and SAM) where TrainConfig's 12 digits epochs
# leave a small MLP underfit; the report warns when a run ends below 99 % train accuracy.
OWN_DATA_RECIPE = "mnist1d-default"
# Epochs of the study on a dataset's own recipe unless --epochs is given: MNIST-1D's recipe (100 epochs,
# cosine to 0) leaves AMP at a whole-training-set loss of 0.0106-0.0124 (seeds 0-2), above the match loss,
# so the matched-loss protocol would have no AMP run; over 150 epochs AMP reaches 0.01 near epoch 60 (and
# ERM, SAM near 30, 40). `--epochs 100` gives the recipe's (the study before the two protocols) exactly.
STUDY_EPOCHS = {"mnist1d": 150}
DEFAULT_GRID = 21
# Datasets whose default models are tiny: one torch thread each is fastest on the CPU (core.engines).
TINY_MODEL_DATASETS = ("digits", "mnist1d")
# What the study's probes measure, as experiment.json records it (ProbeSettings fields, in this order);
# the probe data (split, samples, batch size, seed, device) are the study's own.
STUDY_PROBE_FIELDS = (
    "top_k",
    "eig_method",
    "max_iter",
    "tol",
    "trace",
    "trace_samples",
    "density",
    "density_steps",
    "density_vectors",
    "sharpness",
    "sharpness_options",
)
_PROBE_DATA_FIELDS = ("split", "samples", "batch_size", "seed", "device", "data_dir", "progress")

# What train_overrides may name: TrainConfig's fields (the run's method and seed are the study's)
TRAIN_OPTIONS = frozenset(f.name for f in dataclasses.fields(TrainConfig)) - {"method", "seed"}

# Settings that change finished results: a rerun must keep them.
FROZEN = (
    "dataset",
    "model",
    "recipe",
    "epochs",
    "samples",
    "grid",
    "quick",
    "batch_size",
    "probe",
    "train_overrides",
    "match_loss",
)


def study_probe_settings(quick: bool) -> ProbeSettings:
    """What every probe of the study measures (the probe's own defaults where not said here).

    The spectral density (the costliest part) is computed only for the seed whose spectra are plotted.

    Args:
        quick: the ``--quick`` smoke-test budget instead of the full one.

    Returns:
        The probe settings (their data fields are the study's, set by each probe step).
    """
    if quick:
        return ProbeSettings(
            top_k=2,
            eig_method="lanczos",
            max_iter=20,
            tol=1e-3,
            trace=True,
            trace_samples=4,
            density=True,
            density_steps=10,
            density_vectors=1,
            sharpness=SharpnessSettings(metrics=["all"], **QUICK_SHARPNESS),
        )
    return ProbeSettings(
        top_k=5,
        eig_method="lanczos",
        max_iter=200,
        tol=1e-3,
        trace=True,
        trace_samples=30,
        density=True,
        density_steps=40,
        density_vectors=2,
        sharpness=SharpnessSettings(metrics=["all"]),
    )


@dataclass(frozen=True)
class ExperimentConfig:
    """The settings of one study; ``None`` fields get their defaults in ``checked()``.

    Kept as given (not checked) so that a rerun can tell a default from an explicit value.
    """

    out: str | None = None
    # MNIST-1D: the offline study where AMP and ERM differ in test accuracy (digits saturates at ~99 %)
    dataset: str = "mnist1d"
    model: str | None = None  # None: the dataset's own model (mnist1d: mlp1d), else convnet
    methods: tuple[str, ...] | str = METHODS  # a tuple, or the command line's "erm,amp"
    seeds: tuple[int, ...] | str = DEFAULT_SEEDS
    recipe: str | None = None
    epochs: int | None = None
    device: str = "auto"
    samples: int | None = None
    grid: int | None = None
    data_dir: str | None = None
    download: bool = False
    quick: bool = False
    batch_size: int = 500  # probe/surface evaluation batch
    # `flatness train`'s options given explicitly (TrainConfig's names and values), applied to every run
    train_overrides: Mapping[str, Any] = field(default_factory=dict)
    probe: ProbeSettings | None = None  # None: study_probe_settings(quick)
    # the matched-loss protocol's whole-training-set loss (None: DEFAULT_MATCH_LOSS, --quick QUICK_MATCH_LOSS)
    match_loss: float | None = None
    # How the independent steps run (not results: every step is seeded and single-threaded in a
    # worker, so any number of workers gives the same numbers): 1 = in this process, in order.
    # None: core.engines.default_workers (the cores on the CPU, 1 on a GPU).
    workers: int | None = None
    engine: str = "local"
    # torch threads of each process (None: core.engines.default_threads: 1 for a tiny model on the CPU,
    # the cores shared out between several workers, else PyTorch's choice)
    threads: int | None = None

    def checked(self) -> ExperimentConfig:
        """A checked copy with every default filled in (lists parsed, ``--quick`` applied).

        Returns:
            The checked config; raises FlatnessError, one line naming the option, on the first invalid one.
        """
        methods, seeds = self._checked_methods_and_seeds()
        if self.data_dir is not None:
            check_name(self.data_dir, "--data-dir")
        # Given values are checked before defaults fill the gaps: 0 is an error, never "the default".
        if self.epochs is not None:
            check_count(self.epochs, "--epochs")
        if self.samples is not None:
            check_count(self.samples, "--samples")
        if self.grid is not None:
            check_grid(self.grid)
        if {"method", "seed"} & set(self.train_overrides):
            raise FlatnessError("train_overrides: --methods and --seeds set each run's method and seed")
        unknown = sorted(set(self.train_overrides) - TRAIN_OPTIONS)
        if unknown:
            raise FlatnessError(f"unknown training option(s): {', '.join(unknown)}")
        check_stop_loss(self.match_loss, "--match-loss")
        engines.check_engine(self.engine)
        epochs, samples, grid, overrides = self.epochs, self.samples, self.grid, dict(self.train_overrides)
        if self.quick:
            epochs = 1 if epochs is None else epochs
            samples = 128 if samples is None else samples
            grid = 5 if grid is None else grid
            overrides = {"batch_size": 128, **overrides}
        if epochs is None and self.recipe is None and not self.quick:
            epochs = STUDY_EPOCHS.get(self.dataset)
        recipe = self.recipe
        if recipe is None and is_user_dataset(self.dataset):
            recipe = OWN_DATA_RECIPE
        model = self.model or default_model_for(self.dataset) or "convnet"
        out = self.out
        if out is None:
            out = os.path.join("checkpoints", f"experiment-{folder_label(self.dataset)}-{folder_label(model)}")
        workers = engines.default_workers(self.workers, self.device)
        threads = engines.default_threads(self.threads, workers, self.device, self.dataset in TINY_MODEL_DATASETS)
        return dataclasses.replace(
            self,
            out=out,
            model=model,
            methods=methods,
            seeds=seeds,
            recipe=recipe,
            epochs=epochs,
            samples=DEFAULT_SAMPLES if samples is None else samples,
            grid=DEFAULT_GRID if grid is None else grid,
            train_overrides=overrides,
            probe=study_probe_settings(self.quick) if self.probe is None else self.probe,
            match_loss=(QUICK_MATCH_LOSS if self.quick else DEFAULT_MATCH_LOSS)
            if self.match_loss is None
            else self.match_loss,
            workers=workers,
            threads=threads,
        )

    def _checked_methods_and_seeds(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """``--methods`` and ``--seeds`` parsed and checked (erm and one more method; valid seeds)."""
        methods = tuple(_parse_list(self.methods, str, "methods"))
        seeds = tuple(_parse_list(self.seeds, int, "seeds"))
        for m in methods:
            if m not in METHODS:
                raise FlatnessError(f"unknown method {m!r} in --methods; use {', '.join(METHODS)}")
        if "erm" not in methods:
            raise FlatnessError("--methods must include erm: every method is compared with it")
        if len(methods) < 2:
            raise FlatnessError("--methods needs at least two methods to compare (e.g. erm,amp)")
        for seed in seeds:
            check_seed(seed, "--seeds")
        return methods, seeds

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready plain data (tuples as lists), as ``experiment.json`` stores them."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["methods"], d["seeds"] = list(self.methods), list(self.seeds)
        d["train_overrides"] = copy.deepcopy(self.train_overrides)
        d["probe"] = None if self.probe is None else probe_record(self.probe)
        return d


def probe_record(probe: ProbeSettings) -> dict[str, Any]:
    """What the study's probes measure as plain data: ``STUDY_PROBE_FIELDS``, then any other field set.

    Fields outside ``STUDY_PROBE_FIELDS`` (``dtype``, ``params``, ...) appear only where they differ from
    the probe's defaults, so a study of an earlier version, which recorded only those fields, resumes.
    """
    values = probe.to_dict()
    defaults = ProbeSettings().to_dict()
    record = {name: values[name] for name in STUDY_PROBE_FIELDS}
    for name, value in values.items():
        if name not in STUDY_PROBE_FIELDS and name not in _PROBE_DATA_FIELDS and value != defaults[name]:
            record[name] = value
    return record


def check_grid(grid: Any) -> int:
    """Check the study's surface resolution N against the surface module's limits.

    The 2D surface has N*N points and the 1D ones 2N-1; checked here, before any run is trained, not
    when the surfaces start.

    Args:
        grid: N as given.

    Returns:
        N as an int.
    """
    check_count(grid, "--grid", minimum=3)
    if 2 * grid - 1 > MAX_AXIS_POINTS or grid * grid > MAX_GRID_POINTS:
        largest = min((MAX_AXIS_POINTS + 1) // 2, int(MAX_GRID_POINTS**0.5))
        raise FlatnessError(f"--grid must be at most {largest} (the surfaces' size limit), got {grid}")
    return int(grid)


def _parse_list(value, kind, name) -> list[Any]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    try:
        out = [kind(v.strip().lower() if isinstance(v, str) and kind is str else v) for v in value]
    except (TypeError, ValueError):
        raise FlatnessError(f"--{name}: expected a comma-separated list of {kind.__name__}s") from None
    if not out:
        raise FlatnessError(f"--{name} is empty")
    if len(set(out)) != len(out):
        raise FlatnessError(f"--{name} repeats a value")
    return out
