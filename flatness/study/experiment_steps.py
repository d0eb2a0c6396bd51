"""The steps of a study, each idempotent (a rerun skips what is finished; a killed run, rerun, completes).

1. train every (method, seed) into ``OUT/runs/<method>-s<seed>/`` (``step_train``;
   a finished run is skipped, a partial one resumed);
2. probe every final checkpoint into ``OUT/runs/<method>-s<seed>/probe.json`` (top-k Hessian
   eigenvalues by Lanczos, Hutchinson trace, spectral density, every sharpness metric), and the same
   for the run's matched-loss checkpoint (``matched.pt`` -> ``matched/probe.json``; the two protocols,
   ``flatness.study.protocols``), with a radius profile of each (``profile.json``); an existing
   file is kept (``step_probe``, ``step_profile``, both in ``run_steps``);
3. surfaces for one seed per method, the same seed for every method so that the random directions
   are drawn alike: ``surface-1d.h5`` and ``surface-2d.h5`` (random, filter-normalised, BN/bias
   ignored) in the run folders, and the ERM→AMP interpolation ``OUT/surfaces/interp-<a>-<b>-s<seed>.h5``;
   ``compute_surface(resume=True)`` continues a partial file (``surface_jobs``, ``step_surface``);
4. figures (``OUT/figures/``: ``step_figures``, ``profile_figures``), rebuilt every time from what is
   on disk.

Each step takes the checked settings (``ExperimentConfig.checked()``) and returns its record
(``{step, skipped, seconds}``); ``flatness.study.experiment`` schedules them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flatness.core.errors import FlatnessError
from flatness.core.fileio import atomic_write_json
from flatness.data.datasets import dataset_names, get_dataset
from flatness.formats.checkpoint import CONFIG, INIT, MATCHED, METRICS, finished_epochs, snapshot_name
from flatness.formats.probe_file import write_probe
from flatness.landscape.compute import compute_surface
from flatness.plot.curves import plot_1d
from flatness.plot.loading import load_surface
from flatness.plot.maps import plot_2d
from flatness.plot.spectra import plot_spectrum
from flatness.plot.style import common_limits, pick_value
from flatness.sharpness.measure import SharpnessSettings
from flatness.sharpness.oracle import DEFAULTS
from flatness.sources.loading import named_source
from flatness.study.comparison_figures import compare_figures
from flatness.study.experiment_config import ExperimentConfig
from flatness.study.probe import ProbeSettings, run_probe
from flatness.study.protocols import (
    MATCHED_RUN_DIR,
    PROFILE,
    figure_profile,
    profile_document,
    profile_settings,
    profile_summary,
)
from flatness.study.quantities import primary_radii, training_radius
from flatness.training.config import TrainConfig, build_config
from flatness.training.loop import train

RUNS = "runs"
FIGURES = "figures"
SURFACES = "surfaces"
PROBE = "probe.json"
SURFACE_1D = "surface-1d.h5"
SURFACE_2D = "surface-2d.h5"
SURFACE_SEED = 0  # the seed of the random directions, the same for every method


def _log(msg: str, echo: Callable[[str], None] | None) -> None:
    if echo:
        echo(msg)


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


def train_config_for(cfg: ExperimentConfig, method: str, seed: int) -> TrainConfig:
    """The training config of one run, built as ``flatness train`` would from the study's settings.

    Args:
        cfg: the resolved study settings.
        method: erm, amp or sam.
        seed: the training seed.

    Returns:
        The run's ``TrainConfig``; raises FlatnessError on an invalid option.
    """
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

    def measure(checkpoint: str):
        probe = dataclasses.replace(
            cfg.probe,
            density=bool(cfg.probe.density) and seed == surface_seed(cfg) and not matched,
            sharpness=with_training_radius(cfg, cfg.probe.sharpness),
        )
        return run_probe(checkpoint, _on_study_data(cfg, probe, progress), study_source(cfg))

    def write(out: str, result) -> None:
        write_probe(out, result, force=True)  # no probe.json: a sidecar here is an orphan of a killed probe

    return _checkpoint_step(_Measurement("probe", PROBE, measure, write), cfg, method, seed, echo, matched)


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

    def measure(checkpoint: str):
        profile = ProbeSettings.from_dict(profile_settings(cfg.quick))
        return run_probe(checkpoint, _on_study_data(cfg, profile, progress), study_source(cfg))

    def write(out: str, result) -> None:
        atomic_write_json(out, profile_document(result))

    return _checkpoint_step(_Measurement("profile", PROFILE, measure, write), cfg, method, seed, echo, matched)


@dataclass(frozen=True)
class _Measurement:
    """What one checkpoint step measures: ``measure(checkpoint)`` computes it, ``write(out, result)`` stores it."""

    kind: str  # the step's name: probe, profile
    filename: str  # the file it writes in the run folder (or its matched/ folder)
    measure: Callable[[str], Any]
    write: Callable[[str, Any], None]


def _checkpoint_step(
    what: _Measurement, cfg: ExperimentConfig, method: str, seed: int, echo, matched: bool
) -> dict[str, Any]:
    """One measurement of a run's final (or matched-loss) checkpoint into ``what.filename``, skipped when done.

    The output's folder is made only once the measurement is done, so a failed one leaves nothing; a run
    that never reached the match loss has no matched checkpoint and is skipped.
    """
    kind, filename, measure, write = what.kind, what.filename, what.measure, what.write
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
    if matched:
        return os.path.join(folder, MATCHED), os.path.join(folder, MATCHED_RUN_DIR, name)
    return os.path.join(folder, "last.pt"), os.path.join(folder, name)


def _on_study_data(cfg: ExperimentConfig, probe: ProbeSettings, progress: bool) -> ProbeSettings:
    """One probe of the study: what ``probe`` measures, on the study's probe data and device."""
    return dataclasses.replace(
        probe,
        split="train",
        samples=cfg.samples,
        batch_size=cfg.batch_size,
        seed=0,
        device=cfg.device,
        progress=progress,
        data_dir=cfg.data_dir or probe.data_dir,
    )


def with_training_radius(cfg: ExperimentConfig, sharpness: SharpnessSettings) -> SharpnessSettings:
    """The sharpness settings with the primary measures' radii among the radii.

    The primary rule (``flatness.study.quantities.PRIMARY_RULE``) needs worst-case sharpness at the
    perturbation method's own radius r (AMP's ε, else SAM's ρ) and at r/5; they are appended to the
    default radii when missing (only when the radii are left to the defaults). worst_case at AMP's ε is
    the very quantity AMP minimises.

    Args:
        cfg: the resolved study settings.
        sharpness: the sharpness settings as given.

    Returns:
        The settings, with ``rhos`` extended when needed.
    """
    if sharpness.rhos is not None:
        return sharpness
    configs = [train_config_for(cfg, m, cfg.seeds[0]).to_dict() for m in cfg.methods if m != "erm"]
    rhos = list(DEFAULTS["rhos"])
    missing = [r for r in primary_radii(training_radius(configs)) if r not in rhos]
    return dataclasses.replace(sharpness, rhos=rhos + missing) if missing else sharpness


def study_source(cfg: ExperimentConfig):
    """The user's model, data and loss as this study's command line named them (None for built-ins)."""
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


def prepare_data(cfg: ExperimentConfig) -> None:
    """Materialise a built-in dataset (e.g. generate MNIST-1D's cache) before workers start."""
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


def profile_figures(cfg: ExperimentConfig, records, matched) -> dict[str, str]:
    """The sharpness-against-radius figure of each protocol (``figures/radius-profile-<protocol>.png``)."""
    out = {}
    for key, group, title in (("fixed", records, "fixed budget"), ("matched", matched, "matched training loss")):
        path = os.path.join(cfg.out, FIGURES, f"radius-profile-{key}.png")
        written = figure_profile(profile_summary(group, key == "matched"), path, title) if group else None
        if written:
            out[f"profile-{key}"] = written
    return out
