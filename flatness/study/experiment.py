"""The whole ERM-versus-AMP study in one call: ``run_experiment(ExperimentConfig(...))``.

Steps, each idempotent (a rerun skips what is finished; a killed run, rerun, completes):

1. train every (method, seed) into ``OUT/runs/<method>-s<seed>/`` (``flatness.training.loop.train``;
   a finished run is skipped, a partial one resumed);
2. probe every final checkpoint into ``OUT/runs/<method>-s<seed>/probe.json`` (top-k Hessian
   eigenvalues by Lanczos, Hutchinson trace, spectral density, every sharpness metric), and the same
   for the run's matched-loss checkpoint (``matched.pt`` -> ``matched/probe.json``; the two protocols,
   ``flatness.study.protocols``), with a radius profile of each (``profile.json``); an existing
   file is kept;
3. surfaces for one seed per method, the same seed for every method so that the random directions
   are drawn alike: ``surface-1d.h5`` and ``surface-2d.h5`` (random, filter-normalised, BN/bias
   ignored) in the run folders, and the ERM→AMP interpolation ``OUT/surfaces/interp-<a>-<b>-s<seed>.h5``;
   ``compute_surface(resume=True)`` continues a partial file;
4. figures (``OUT/figures/``), the comparisons (``OUT/comparison.{md,json,csv}`` at a fixed budget,
   ``OUT/matched-loss/comparison.{md,json,csv}`` at matched training loss), and the report
   (``OUT/REPORT.md``, ``OUT/report.html``), rebuilt every time from what is on disk.

With ``workers`` > 1 (or the Ray engine), steps 1-3 are one job in one pool of workers
(``flatness.core.engines``): every run (train, then probe) is ready at once, the costliest first, and
each surface starts as soon as the runs it reads are done; the numbers are those of one process.

``OUT/experiment.json`` records the settings; a rerun with settings that would change finished results
(dataset, model, epochs, samples, grid, ...) is refused rather than mixing two studies in one folder.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flatness.core.errors import FlatnessError
from flatness.core.fileio import atomic_write_json
from flatness.core.paths import check_name, check_paths
from flatness.core.progress import plan_line
from flatness.core.validation import check_count, check_seed
from flatness.formats.checkpoint import CONFIG, INIT, METRICS, finished_epochs, snapshot_name
from flatness.study.probe import QUICK_SHARPNESS
from flatness.training.cost import training_cost

RUNS = "runs"
FIGURES = "figures"
SURFACES = "surfaces"
STATE = "experiment.json"
PROBE = "probe.json"
SURFACE_1D = "surface-1d.h5"
SURFACE_2D = "surface-2d.h5"

# The default study's budget on a 2-core CPU (<= 5 minutes in all): 8 seeds x (ERM + AMP + SAM) runs, two
# probes and two radius profiles per run, 1D (2*grid-1 points) and 2D (grid x grid) surfaces on
# `samples` training examples + the whole test split.
DEFAULT_SAMPLES = 1000
DEFAULT_METHODS = ("erm", "amp", "sam")  # SAM is the control: a perturbation method other than AMP
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
SURFACE_SEED = 0  # the seed of the random directions, the same for every method

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


@dataclass
class ExperimentConfig:
    """The settings of one study; ``None`` fields get their defaults in ``resolved()``.

    Kept as given (not resolved) so that a rerun can tell a default from an explicit value.
    """

    out: str | None = None
    # MNIST-1D: the offline study where AMP and ERM differ in test accuracy (digits saturates at ~99 %)
    dataset: str = "mnist1d"
    model: str | None = None  # None: the dataset's own model (mnist1d: mlp1d), else convnet
    methods: tuple[str, ...] = DEFAULT_METHODS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    recipe: str | None = None
    epochs: int | None = None
    device: str = "auto"
    samples: int | None = None
    grid: int | None = None
    data_dir: str | None = None
    download: bool = False
    quick: bool = False
    batch_size: int = 500  # probe/surface evaluation batch
    train_overrides: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)
    # the matched-loss protocol's whole-training-set loss (None: DEFAULT_MATCH_LOSS, --quick QUICK_MATCH_LOSS)
    match_loss: float | None = None
    # How the independent steps run (not results: every step is seeded and single-threaded in a
    # worker, so any number of workers gives the same numbers): 1 = in this process, in order.
    workers: int = 1
    engine: str = "local"
    threads: int | None = None  # torch threads in each worker process (None: PyTorch's choice)

    def resolved(self) -> ExperimentConfig:
        """A validated copy with every default filled in (lists parsed, ``--quick`` applied).

        Returns:
            The resolved config; raises FlatnessError on the first invalid setting.
        """
        c = dataclasses.replace(self)
        c.methods = tuple(_parse_list(c.methods, str, "methods"))
        c.seeds = tuple(_parse_list(c.seeds, int, "seeds"))
        for m in c.methods:
            if m not in ("erm", "amp", "sam"):
                raise FlatnessError(f"unknown method {m!r} in --methods; use erm, amp, sam")
        if "erm" not in c.methods:
            raise FlatnessError("--methods must include erm: every method is compared with it")
        if len(c.methods) < 2:
            raise FlatnessError("--methods needs at least two methods to compare (e.g. erm,amp)")
        for seed in c.seeds:
            check_seed(seed, "--seeds")
        if c.data_dir is not None:
            check_name(c.data_dir, "--data-dir")
        # Given values are checked before defaults fill the gaps: 0 is an error, never "the default".
        if c.epochs is not None:
            check_count(c.epochs, "--epochs")
        if c.samples is not None:
            check_count(c.samples, "--samples")
        if c.grid is not None:
            check_grid(c.grid)
        check_count(c.workers, "--workers")
        from flatness.training.stopping import check_stop_loss

        check_stop_loss(c.match_loss, "--match-loss")
        from flatness.core.engines import check_engine

        check_engine(c.engine)
        if c.quick:
            c.epochs = 1 if c.epochs is None else c.epochs
            c.samples = 128 if c.samples is None else c.samples
            c.grid = 5 if c.grid is None else c.grid
            c.train_overrides = {"batch_size": 128, **c.train_overrides}
        if c.epochs is None and c.recipe is None and not c.quick:
            c.epochs = STUDY_EPOCHS.get(c.dataset)
        if c.match_loss is None:
            c.match_loss = QUICK_MATCH_LOSS if c.quick else DEFAULT_MATCH_LOSS
        c.samples = DEFAULT_SAMPLES if c.samples is None else c.samples
        c.grid = DEFAULT_GRID if c.grid is None else c.grid
        from flatness.sources.loading import default_model_for, folder_label, is_user_dataset

        if c.recipe is None and is_user_dataset(c.dataset):
            c.recipe = OWN_DATA_RECIPE
        c.model = c.model or default_model_for(c.dataset) or "convnet"
        if c.out is None:
            c.out = os.path.join("checkpoints", f"experiment-{folder_label(c.dataset)}-{folder_label(c.model)}")
        c.probe = {**probe_settings(c.quick), **c.probe}
        return c

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready plain data (tuples as lists), as ``experiment.json`` stores them."""
        d = dataclasses.asdict(self)
        d["methods"], d["seeds"] = list(self.methods), list(self.seeds)
        return d


def check_grid(grid: Any) -> int:
    """Check the study's surface resolution N against the surface module's limits.

    The 2D surface has N*N points and the 1D ones 2N-1; checked here, before any run is trained, not
    when the surfaces start.

    Args:
        grid: N as given.

    Returns:
        N as an int.
    """
    from flatness.landscape.grid import MAX_AXIS_POINTS, MAX_GRID_POINTS

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


def probe_settings(quick: bool) -> dict[str, Any]:
    """What every probe of the study measures (the probe's own defaults where not said here).

    The spectral density (the costliest part) is computed only for the seed whose spectra are plotted.

    Args:
        quick: the ``--quick`` smoke-test budget instead of the full one.

    Returns:
        The probe settings as a dict (``ProbeSettings.from_dict`` fields).
    """
    if quick:
        return {
            "top_k": 2,
            "eig_method": "lanczos",
            "max_iter": 20,
            "tol": 1e-3,
            "trace": True,
            "trace_samples": 4,
            "density": True,
            "density_steps": 10,
            "density_vectors": 1,
            "sharpness": ["all"],
            "sharpness_options": dict(QUICK_SHARPNESS),
        }
    return {
        "top_k": 5,
        "eig_method": "lanczos",
        "max_iter": 200,
        "tol": 1e-3,
        "trace": True,
        "trace_samples": 30,
        "density": True,
        "density_steps": 40,
        "density_vectors": 2,
        "sharpness": ["all"],
        "sharpness_options": {},
    }


# --------------------------------------------------------------------------- small helpers


def run_dir(cfg: ExperimentConfig, method: str, seed: int) -> str:
    """The folder of one (method, seed) run: ``OUT/runs/<method>-s<seed>``.

    Args:
        cfg: the resolved study settings.
        method: erm, amp or sam.
        seed: the training seed.

    Returns:
        The folder's path.
    """
    return os.path.join(cfg.out, RUNS, f"{method}-s{seed}")


def _log(msg: str, echo: Callable[[str], None] | None) -> None:
    if echo:
        echo(msg)


def _check_state(cfg: ExperimentConfig) -> None:
    path = os.path.join(cfg.out, STATE)
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as handle:
            stored = json.load(handle).get("config", {})
    except (OSError, ValueError):
        return
    now = json.loads(json.dumps(cfg.to_dict()))
    for key in FROZEN:
        if key in stored and stored[key] != now.get(key):
            raise FlatnessError(
                f"{cfg.out} holds a study made with {key}={stored[key]!r} (now {now.get(key)!r}); "
                "rerun with the same settings to resume it, or choose another --out"
            )


def _write_state(cfg: ExperimentConfig, steps: list[dict[str, Any]], started: float) -> None:
    atomic_write_json(
        os.path.join(cfg.out, STATE),
        {
            "config": cfg.to_dict(),
            "steps": steps,
            "seconds_this_run": time.time() - started,
        },
    )


# --------------------------------------------------------------------------- the steps


def train_config_for(cfg: ExperimentConfig, method: str, seed: int):
    """The training config of one run, built as ``flatness train`` would from the study's settings.

    Args:
        cfg: the resolved study settings.
        method: erm, amp or sam.
        seed: the training seed.

    Returns:
        The run's ``TrainConfig``; raises FlatnessError on an invalid option.
    """
    from flatness.training.config import build_config

    explicit: dict[str, Any] = {
        "dataset": cfg.dataset,
        "model": cfg.model,
        "method": method,
        "seed": seed,
        "device": cfg.device,
    }
    if cfg.data_dir:
        explicit["data_dir"] = cfg.data_dir
    if cfg.download:
        explicit["download"] = True
    if cfg.epochs is not None:
        explicit["epochs"] = cfg.epochs  # as `flatness train --epochs`: the schedule's milestones stay
    explicit.update(cfg.train_overrides)
    explicit["match_loss"] = cfg.match_loss  # every run also keeps its matched-loss checkpoint
    return build_config(explicit, recipe=cfg.recipe)


def _names_failures(kind: str):
    """A step whose one-line error says which run it was (``train amp s1 failed: ...``)."""

    def wrap(step):
        @functools.wraps(step)
        def run(cfg, method, seed, *args, **kwargs):
            try:
                return step(cfg, method, seed, *args, **kwargs)
            except FlatnessError as err:
                raise FlatnessError(
                    f"{kind} {method} s{seed} failed: {err} (rerun to retry; finished steps are kept)"
                ) from None

        return run

    return wrap


@_names_failures("train")
def step_train(cfg: ExperimentConfig, method: str, seed: int, progress: bool, echo) -> dict[str, Any]:
    """Train one run, resuming a partial one and skipping a finished one.

    Args:
        cfg: the resolved study settings.
        method: erm, amp or sam.
        seed: the training seed.
        progress: show progress bars.
        echo: called with one line per step started (None: quiet).

    Returns:
        The step record: ``{step, skipped, seconds}``.
    """
    from flatness.training.loop import train

    folder = run_dir(cfg, method, seed)
    config = train_config_for(cfg, method, seed)
    done = finished_epochs(folder)
    last = os.path.join(folder, "last.pt")
    if os.path.isfile(last) and done >= config.epochs:
        return {"step": f"train {method} s{seed}", "skipped": True, "seconds": 0.0}
    began = time.perf_counter()
    resume = os.path.isfile(last)
    if not resume and os.path.isdir(folder) and os.listdir(folder):
        _clear_unstarted_run(folder)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    _log(
        f"[train] {method.upper()} seed {seed}: {config.epochs} epochs"
        + (f" (resuming after epoch {done})" if resume else ""),
        echo,
    )
    train(config, out_dir=folder, resume=resume, progress=progress, verbose=False)
    return {"step": f"train {method} s{seed}", "skipped": False, "seconds": time.perf_counter() - began}


def _clear_unstarted_run(folder: str) -> None:
    """A run killed before its first last.pt: only the files train() writes first can be there."""
    allowed = {CONFIG, INIT, METRICS, snapshot_name(0)}
    names = os.listdir(folder)
    strangers = [n for n in names if n not in allowed and not (n.startswith(".") and n.endswith(".tmp"))]
    if strangers:
        raise FlatnessError(f"{folder} holds files this study did not write ({strangers[0]}); move them away")
    for n in names:
        os.unlink(os.path.join(folder, n))


@_names_failures("probe")
def step_probe(
    cfg: ExperimentConfig, method: str, seed: int, progress: bool, echo, matched: bool = False
) -> dict[str, Any]:
    """Probe one run's final (or matched-loss) checkpoint into its probe JSON, unless that file exists.

    Args:
        cfg: the resolved study settings.
        method: erm, amp or sam.
        seed: the training seed.
        progress: show progress bars.
        echo: called with one line per step started (None: quiet).
        matched: probe ``matched.pt`` into ``matched/probe.json`` (skipped when the run never reached
            the match loss) instead of ``last.pt`` into ``probe.json``.

    Returns:
        The step record: ``{step, skipped, seconds}``.
    """
    from flatness.formats.probe_file import write_probe
    from flatness.study.probe import run_probe

    def measure(checkpoint: str):
        opts = dict(cfg.probe)
        opts["density"] = bool(opts.get("density")) and seed == surface_seed(cfg) and not matched
        opts["sharpness_options"] = with_training_radius(cfg, opts.get("sharpness_options") or {})
        return run_probe(checkpoint, _probe_settings(cfg, opts, progress), study_source(cfg))

    def write(out: str, result) -> None:
        write_probe(out, result, force=True)  # no probe.json: a sidecar here is an orphan of a killed probe

    return _checkpoint_step("probe", PROBE, cfg, method, seed, echo, matched, measure, write)


@_names_failures("profile")
def step_profile(
    cfg: ExperimentConfig, method: str, seed: int, progress: bool, echo, matched: bool = False
) -> dict[str, Any]:
    """Worst- and average-case sharpness over ``RADIUS_GRID`` for one checkpoint, into ``profile.json``.

    Args:
        cfg: the resolved study settings.
        method: erm, amp or sam.
        seed: the training seed.
        progress: show progress bars.
        echo: called with one line per step started (None: quiet).
        matched: the matched-loss checkpoint instead of the final one.

    Returns:
        The step record: ``{step, skipped, seconds}``.
    """
    from flatness.study.probe import run_probe
    from flatness.study.protocols import PROFILE, profile_document, profile_settings

    def measure(checkpoint: str):
        return run_probe(checkpoint, _probe_settings(cfg, profile_settings(cfg.quick), progress), study_source(cfg))

    def write(out: str, result) -> None:
        atomic_write_json(out, profile_document(result))

    return _checkpoint_step("profile", PROFILE, cfg, method, seed, echo, matched, measure, write)


def _checkpoint_step(
    kind: str, filename: str, cfg: ExperimentConfig, method: str, seed: int, echo, matched: bool, measure, write
) -> dict[str, Any]:
    """One measurement of a run's final (or matched-loss) checkpoint into ``filename``, skipped when done.

    ``measure(checkpoint)`` computes the result and ``write(out, result)`` stores it (its folder made only
    then, so a failed measurement leaves nothing); a run that never reached the match loss has no matched
    checkpoint and is skipped.
    """
    folder = run_dir(cfg, method, seed)
    name = f"{kind} {'matched ' if matched else ''}{method} s{seed}"
    checkpoint, out = _protocol_paths(folder, matched, filename)
    if os.path.isfile(out) or not os.path.isfile(checkpoint):
        return {"step": name, "skipped": True, "seconds": 0.0}
    began = time.perf_counter()
    _log(f"[{kind}] {method.upper()} seed {seed}" + (" (matched loss)" if matched else ""), echo)
    result = measure(checkpoint)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    write(out, result)
    return {"step": name, "skipped": False, "seconds": time.perf_counter() - began}


def run_steps(cfg: ExperimentConfig, method: str, seed: int, progress: bool, echo) -> list[dict[str, Any]]:
    """Everything measured on one trained run: both protocols' probes and radius profiles."""
    return [
        step(cfg, method, seed, progress, echo, matched=matched)
        for step in (step_probe, step_profile)
        for matched in (False, True)
    ]


def _protocol_paths(folder: str, matched: bool, name: str) -> tuple[str, str]:
    """(checkpoint, output file) of one protocol in a run folder."""
    from flatness.formats.checkpoint import MATCHED
    from flatness.study.protocols import MATCHED_RUN_DIR

    if matched:
        return os.path.join(folder, MATCHED), os.path.join(folder, MATCHED_RUN_DIR, name)
    return os.path.join(folder, "last.pt"), os.path.join(folder, name)


def _probe_settings(cfg: ExperimentConfig, opts: dict[str, Any], progress: bool):
    """The ``ProbeSettings`` of one probe of the study: ``opts`` on the study's probe data."""
    from flatness.study.probe import ProbeSettings

    if cfg.data_dir:
        opts = {**opts, "data_dir": cfg.data_dir}
    return ProbeSettings.from_dict(
        {
            **opts,
            "split": "train",
            "samples": cfg.samples,
            "batch_size": cfg.batch_size,
            "seed": 0,
            "device": cfg.device,
            "progress": progress,
        }
    )


def with_training_radius(cfg: ExperimentConfig, options: dict[str, Any]) -> dict[str, Any]:
    """The sharpness options with the primary measures' radii among the radii.

    The primary rule (``flatness.study.quantities.PRIMARY_RULE``) needs worst-case sharpness at the
    perturbation method's own radius r (AMP's ε, else SAM's ρ) and at r/5; they are appended to the
    default radii when missing (only when the radii are left to the defaults). worst_case at AMP's ε is
    the very quantity AMP minimises.

    Args:
        cfg: the resolved study settings.
        options: the sharpness options as given.

    Returns:
        The options, with ``rhos`` extended when needed (the input is not modified).
    """
    from flatness.sharpness.oracle import DEFAULTS
    from flatness.study.quantities import primary_radii, training_radius

    if "rhos" in options:
        return options
    configs = [train_config_for(cfg, m, cfg.seeds[0]).to_dict() for m in cfg.methods if m != "erm"]
    rhos = list(DEFAULTS["rhos"])
    missing = [r for r in primary_radii(training_radius(configs)) if r not in rhos]
    return {**options, "rhos": rhos + missing} if missing else options


def study_source(cfg: ExperimentConfig):
    """The user's model, data and loss as this study's command line named them (None for built-ins)."""
    from flatness.sources.loading import named_source

    overrides = cfg.train_overrides
    return named_source(
        cfg.model,
        overrides.get("model_args"),
        cfg.dataset,
        overrides.get("normalize"),
        overrides.get("loss"),
        overrides.get("output"),
    )


def surface_seed(cfg: ExperimentConfig) -> int:
    """The one seed whose runs get surfaces and the density (the first seed), alike for every method."""
    return cfg.seeds[0]


@dataclass(frozen=True)
class SurfaceJob:
    """One surface of the study: where it comes from, where it goes, and the runs it needs first."""

    name: str  # the step's name in experiment.json
    checkpoint: str
    out: str
    options: dict[str, Any]  # compute_surface's grid and direction
    runs: tuple[tuple[str, int], ...]  # the (method, seed) runs whose checkpoints it reads

    @property
    def points(self) -> int:
        """How many grid points it evaluates (its expected cost)."""
        count = self.options["x"][2]
        return count * self.options["y"][2] if "y" in self.options else count


def surface_jobs(cfg: ExperimentConfig) -> list[SurfaceJob]:
    """Every surface of the study: a 1D and a 2D one per method, and the ERM→other interpolations."""
    seed = surface_seed(cfg)
    g = cfg.grid
    jobs = []
    for method in cfg.methods:
        folder = run_dir(cfg, method, seed)
        ckpt = os.path.join(folder, "last.pt")
        runs = ((method, seed),)
        one_d = dict(x=(-1.0, 1.0, 2 * g - 1), direction="random")
        jobs.append(SurfaceJob(f"surface 1D {method} s{seed}", ckpt, os.path.join(folder, SURFACE_1D), one_d, runs))
        two_d = dict(x=(-1.0, 1.0, g), y=(-1.0, 1.0, g), direction="random")
        jobs.append(SurfaceJob(f"surface 2D {method} s{seed}", ckpt, os.path.join(folder, SURFACE_2D), two_d, runs))
    base = os.path.join(run_dir(cfg, "erm", seed), "last.pt")
    for other in cfg.methods:
        if other == "erm":
            continue
        target = os.path.join(run_dir(cfg, other, seed), "last.pt")
        options = dict(x=(-0.5, 1.5, 2 * g - 1), direction=f"interp:{target}")
        runs = (("erm", seed), (other, seed))
        jobs.append(SurfaceJob(f"surface interp erm→{other} s{seed}", base, interp_path(cfg, other), options, runs))
    return jobs


def step_surface(cfg: ExperimentConfig, job: SurfaceJob, progress: bool, echo) -> dict[str, Any]:
    """Compute (or finish) one surface of ``surface_jobs``.

    Args:
        cfg: the resolved study settings.
        job: the surface.
        progress: show a progress bar.
        echo: called with one line when points were computed (None: quiet).

    Returns:
        The step record: ``{step, skipped, seconds}``.
    """
    from flatness.landscape.compute import compute_surface

    os.makedirs(os.path.dirname(job.out), exist_ok=True)
    began = time.perf_counter()
    summary = compute_surface(
        job.checkpoint,
        out=job.out,
        norm="filter",
        ignore="biasbn",
        split="both",
        samples=cfg.samples,
        batch_size=cfg.batch_size,
        bn="eval",
        seed=SURFACE_SEED,
        device=cfg.device,
        resume=True,
        progress=progress,
        data_dir=cfg.data_dir,
        source=study_source(cfg),
        **job.options,
    )
    did = bool(summary.get("computed_now"))
    if did:
        _log(f"[surface] {job.name}: {summary.get('computed_now')} points", echo)
    return {"step": job.name, "skipped": not did, "seconds": time.perf_counter() - began}


def step_surfaces(cfg: ExperimentConfig, progress: bool, echo) -> list[dict[str, Any]]:
    """Every surface of the study, one after the other."""
    return [step_surface(cfg, job, progress, echo) for job in surface_jobs(cfg)]


@dataclass(frozen=True)
class StudyTask:
    """One independent piece of the study for a worker: a run (train, then probe) or one surface."""

    cfg: ExperimentConfig
    kind: str  # "run" or "surface"
    method: str = ""
    seed: int = 0
    job: SurfaceJob | None = None  # the surface, for kind "surface"
    verbose: bool = True
    # The engine starts the costliest ready task first. Every run comes before any surface (tier 1 > 0):
    # in the studies measured a run is the longer task (MNIST-1D: runs 11-16 s, the 2D surface 2 s;
    # digits: 35-55 s and 22 s), and the surfaces, ready only once their runs are done, fill the end.
    cost: tuple[int, float] = (0, 0.0)


def run_study_task(task: StudyTask) -> tuple[StudyTask, list[dict[str, Any]]]:
    """Do one ``StudyTask`` (in a worker process or in this one).

    Args:
        task: the run or surface.

    Returns:
        The task itself (so the parent knows what is done) and its step records.
    """
    import torch

    if task.cfg.threads:
        torch.set_num_threads(task.cfg.threads)
    echo = (lambda line: print(line, flush=True)) if task.verbose else None
    if task.kind == "run":
        trained = step_train(task.cfg, task.method, task.seed, False, echo)
        return task, [trained, *run_steps(task.cfg, task.method, task.seed, False, echo)]
    return task, [step_surface(task.cfg, task.job, False, echo)]


def _run_steps_on_engine(cfg: ExperimentConfig, record, echo) -> None:
    """Every run (train, then probe) and every surface as one job on the engine, in one pool.

    The runs are ready at once, the costliest first (AMP and SAM before ERM); each surface becomes ready
    as soon as the runs it reads are done.
    """
    from operator import attrgetter

    from flatness.core.engines import run_local, run_ray

    _prepare_data(cfg)  # generated or unpacked once here, not by every worker at the same time
    verbose = echo is not None
    runs = [
        StudyTask(cfg, "run", m, s, verbose=verbose, cost=(1, training_cost(train_config_for(cfg, m, s))))
        for m in cfg.methods
        for s in cfg.seeds
    ]
    waiting = [StudyTask(cfg, "surface", job=job, verbose=verbose, cost=(0, job.points)) for job in surface_jobs(cfg)]
    finished_runs: set[tuple[str, int]] = set()
    os.makedirs(os.path.join(cfg.out, RUNS), exist_ok=True)

    def done(outcome: tuple[StudyTask, list[dict[str, Any]]]) -> list[StudyTask]:
        task, steps = outcome
        for entry in steps:
            record(entry)
        if task.kind == "run":
            finished_runs.add((task.method, task.seed))
        now_ready = [t for t in waiting if set(t.job.runs) <= finished_runs]
        for t in now_ready:
            waiting.remove(t)
        return now_ready

    if cfg.engine == "ray":
        gpu = str(cfg.device).startswith("cuda")
        run_ray(runs, cfg.workers, done, run_study_task, gpu=gpu, cost=attrgetter("cost"))
    else:
        run_local(runs, cfg.workers, done, fn=run_study_task, cost=attrgetter("cost"))


def _prepare_data(cfg: ExperimentConfig) -> None:
    """Materialise a built-in dataset (e.g. generate MNIST-1D's cache) before workers start."""
    from flatness.data.datasets import dataset_names, get_dataset

    if cfg.dataset in dataset_names():
        get_dataset(cfg.dataset, "train", root=cfg.data_dir, augment=False, download=cfg.download)


def interp_path(cfg: ExperimentConfig, other: str) -> str:
    """The file of the ERM→``other`` interpolation surface: ``OUT/surfaces/interp-erm-<other>-s<seed>.h5``.

    Args:
        cfg: the resolved study settings.
        other: the method interpolated towards.

    Returns:
        The file's path.
    """
    return os.path.join(cfg.out, SURFACES, f"interp-erm-{other}-s{surface_seed(cfg)}.h5")


def step_figures(cfg: ExperimentConfig, records, comp) -> dict[str, str]:
    """Every figure the report shows, rebuilt from the files (cheap; derived outputs of this folder)."""
    from flatness.plot.curves import plot_1d
    from flatness.plot.loading import load_surface
    from flatness.plot.maps import plot_2d
    from flatness.plot.spectra import plot_spectrum
    from flatness.plot.style import common_limits, pick_value
    from flatness.study.compare import compare_figures

    fig_dir = os.path.join(cfg.out, FIGURES)
    os.makedirs(fig_dir, exist_ok=True)
    figs = dict(compare_figures(records, fig_dir, fmt="png", force=True, prefix="compare"))
    seed = surface_seed(cfg)
    two_d = {}
    for method in cfg.methods:
        path = os.path.join(run_dir(cfg, method, seed), SURFACE_2D)
        if os.path.isfile(path):
            two_d[method] = load_surface(path)
    if two_d:
        value = pick_value(next(iter(two_d.values())), None)
        limits = common_limits(list(two_d.values()), value)
        for method, surf in two_d.items():
            for kind in ("contour", "3d"):
                figs[f"{kind}-{method}"] = plot_2d(
                    surf, os.path.join(fig_dir, f"{method}-s{seed}-{kind}.png"), kind, value, force=True, limits=limits
                )
    interps = []
    for other in cfg.methods:
        if other != "erm" and os.path.isfile(interp_path(cfg, other)):
            interps.append((other, load_surface(interp_path(cfg, other))))
    if interps:
        labels = [f"ERM (α=0) → {o.upper()} (α=1), seed {seed}" for o, _ in interps]
        figs["interp"] = plot_1d(
            [s for _, s in interps],
            os.path.join(fig_dir, "interpolation.png"),
            force=True,
            labels=labels,
            log=True,
            title=f"Linear interpolation θ(α) = (1−α)·θ_ERM + α·θ_other, seed {seed} (loss on a log scale)",
        )
    probes = [r.probe for r in sorted(records, key=lambda r: (r.method, r.seed)) if r.probe]
    if probes:
        figs["spectra-all"] = plot_spectrum(probes, os.path.join(fig_dir, "spectra-all-seeds.png"), force=True)
    return figs


# --------------------------------------------------------------------------- the driver


def run_experiment(
    config: ExperimentConfig, progress: bool = False, echo: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run (or resume) the whole study; returns {out, report, html, steps, verdict, seconds}."""
    cfg = config.resolved()
    started = time.time()
    check_paths({}, {"--out": cfg.out}, folders=["--out"])
    if os.path.isfile(cfg.out):
        raise FlatnessError(f"--out {cfg.out} is a file; name a folder")
    for m in cfg.methods:  # a bad option fails before the study folder is even created
        train_config_for(cfg, m, cfg.seeds[0])
    from flatness.core.locking import exclusive

    with exclusive(cfg.out, "study folder"):  # a second study in this folder refuses at once
        os.makedirs(cfg.out, exist_ok=True)
        return _run_locked(cfg, started, progress, echo)


def _run_locked(cfg: ExperimentConfig, started: float, progress: bool, echo) -> dict[str, Any]:
    from flatness.study.compare import compare, load_run_dir
    from flatness.study.report import write_report

    _check_state(cfg)
    # check every training config before the first step, so a bad option fails at once
    for m in cfg.methods:
        train_config_for(cfg, m, cfg.seeds[0])
    steps: list[dict[str, Any]] = _previous_steps(cfg)
    _write_state(cfg, steps, started)
    if echo and progress:  # the planned size, shown with the progress display
        echo(_plan(cfg))

    def record(entry):
        steps.append(dict(entry, at=time.time()))
        _write_state(cfg, steps, started)

    if cfg.workers > 1 or cfg.engine == "ray":
        _run_steps_on_engine(cfg, record, echo)
    else:
        for method in cfg.methods:
            for seed in cfg.seeds:
                record(step_train(cfg, method, seed, progress, echo))
        for method in cfg.methods:
            for seed in cfg.seeds:
                for entry in run_steps(cfg, method, seed, progress, echo):
                    record(entry)
        for entry in step_surfaces(cfg, progress, echo):
            record(entry)

    records = [load_run_dir(run_dir(cfg, m, s)) for m in cfg.methods for s in cfg.seeds]
    from flatness.study.compare import record_values
    from flatness.study.protocols import MATCHED_DIR, matched_records, write_comparison

    for r in records:
        r.values = record_values(r)
    comp = compare(records)
    matched, unreached = matched_records(records)
    comp_matched = compare(matched) if matched else None
    began = time.perf_counter()
    figures = step_figures(cfg, records, comp)
    figures.update(profile_figures(cfg, records, matched))
    write_comparison(cfg.out, comp)
    if comp_matched is not None:
        write_comparison(os.path.join(cfg.out, MATCHED_DIR), comp_matched)
    record({"step": "figures and comparison", "skipped": False, "seconds": time.perf_counter() - began})
    protocols = {"matched": matched, "unreached": unreached, "comp_matched": comp_matched}
    report = write_report(cfg, records, comp, figures, steps, protocols)
    _write_state(cfg, steps, started)
    return {
        "out": cfg.out,
        "report": report["markdown"],
        "html": report["html"],
        "steps": steps,
        "verdict": report["verdict"],
        "seconds": time.time() - started,
        "figures": figures,
    }


def _plan(cfg: ExperimentConfig) -> str:
    """The study's planned size, printed before its first step: runs, epochs, surfaces and their points."""
    runs = len(cfg.methods) * len(cfg.seeds)
    epochs = max(train_config_for(cfg, m, cfg.seeds[0]).epochs for m in cfg.methods)
    jobs = surface_jobs(cfg)
    points = sum(math.prod(axis[2] for axis in (j.options.get("x"), j.options.get("y")) if axis) for j in jobs)
    runs_text = f"{runs} run(s) of up to {epochs} epochs, each probed"
    return plan_line("experiment", runs_text, f"{len(jobs)} surfaces of {points} points in all")


def profile_figures(cfg: ExperimentConfig, records, matched) -> dict[str, str]:
    """The sharpness-against-radius figure of each protocol (``figures/radius-profile-<protocol>.png``)."""
    from flatness.study.protocols import figure_profile, profile_summary

    out = {}
    for key, group, title in (("fixed", records, "fixed budget"), ("matched", matched, "matched training loss")):
        path = os.path.join(cfg.out, FIGURES, f"radius-profile-{key}.png")
        written = figure_profile(profile_summary(group, key == "matched"), path, title) if group else None
        if written:
            out[f"profile-{key}"] = written
    return out


def _previous_steps(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """Steps done by earlier invocations (kept, so the report can tell what each step cost)."""
    path = os.path.join(cfg.out, STATE)
    try:
        with open(path, encoding="utf-8") as handle:
            old = json.load(handle).get("steps", [])
    except (OSError, ValueError):
        return []
    return [dict(s, earlier=True) for s in old if not s.get("skipped") and s.get("step") != "figures and comparison"]
