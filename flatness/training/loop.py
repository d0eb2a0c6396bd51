"""Training with ERM, AMP or SAM: ``train(TrainConfig(...), out_dir) -> out_dir``.

Everything on disk goes through ``flatness.formats.checkpoint`` (the run folder layout is documented there):
``config.json`` and ``init.pt`` at the start, ``last.pt`` + ``metrics.jsonl`` at the end of every
epoch, ``epoch-NNN.pt`` snapshots every ``save_every`` epochs (epoch 0 = the initial weights).

Reproducibility and resume
--------------------------
* The initial weights come from ``seed`` (drawn inside a forked RNG); the data order comes from a
  dedicated ``torch.Generator`` (seed ``seed``) whose state is stored in every checkpoint, with the
  global RNGs (augmentation draws from them) and the optimizer state.
* The learning rate is a closed-form function of the epoch (``lr_at``), so no scheduler state can
  drift: 4 epochs straight and 2 epochs + ``resume`` to 4 give bitwise-identical weights on the
  CPU (with the ``step`` or ``constant`` schedules; ``cosine`` depends on the total number of
  epochs, so extending a cosine run changes its remaining schedule).
* A run killed mid-epoch resumes from the last finished epoch and redoes the partial one.
* With ``stop_loss`` the run ends after the first epoch whose whole-training-set loss is <= it
  (``flatness.training.stopping``); a run that got there is finished, and resuming it does nothing.
* Gradient clipping (``grad_clip``) acts on the gradient of the optimizer's base step: for ERM the
  loop clips after the backward; for AMP/SAM the optimizer does it (``flatness.training.optim``), so the
  perturbation is built from plain gradients as docs/metrics.md defines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from flatness.core import distributed, locking
from flatness.core.devices import resolve_device
from flatness.core.errors import DivergedError, FlatnessError
from flatness.core.evaluation import evaluate
from flatness.core.fileio import atomic_write_json, atomic_write_text
from flatness.core.paths import check_name, check_paths
from flatness.core.progress import progress_bar
from flatness.core.validation import check_count, check_seed
from flatness.data.datasets import TensorImageDataset, dataset_info, get_dataset
from flatness.data.probe_data import ProbeData
from flatness.data.user_data import check_model_fits
from flatness.formats import checkpoint as ckpt
from flatness.models.registry import build_from_spec, canonical_model_name, model_spec
from flatness.sources.loading import is_user_dataset
from flatness.training import stopping
from flatness.training.cost import passes_per_step

METHODS = ("erm", "amp", "sam")
SCHEDULES = ("step", "cosine", "constant")
GAMMA = 0.1  # the step schedule's factor at each milestone
# What may differ between a run and its resumption; everything else must match the stored config.
RESUMABLE_CHANGES = (
    "epochs",
    "save_every",
    "device",
    "data_dir",
    "download",
    "precision",
    "channels_last",
    "compile",
    "data_on_device",
)
PRECISIONS = ("fp32", "bf16")
DATA_ON_DEVICE = ("auto", "yes", "no")


@dataclass
class TrainConfig:
    """Every option of ``flatness train``. Defaults: the offline digits setup (``digits-default``)."""

    dataset: str = "digits"
    model: str = "convnet"
    width: int | None = None
    depth: int | None = None
    method: str = "erm"
    epochs: int = 12
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "step"
    milestones: list[int] = field(default_factory=lambda: [6, 9])
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"
    epsilon: float = 0.02
    inner_lr: float = 0.5  # digits: 0.5 edged out 1.0 over 5 seeds (benchmarks/README.md); paper: 1
    inner_iter: int = 1
    ball: str = "tensor"
    rho: float = 0.05
    adaptive: bool = False
    augment: bool = False
    data_dir: str | None = None
    download: bool = False
    save_every: int = 0
    recipe: str | None = None
    # Speed settings (the CUDA fast path); they change no result on the CPU and may change on resume.
    precision: str = "fp32"  # "bf16": bfloat16 autocast for forward/backward (weights stay fp32)
    channels_last: bool = False  # NHWC memory layout for conv nets (faster on tensor cores)
    compile: bool = False  # torch.compile the model
    data_on_device: str = "auto"  # "auto": keep the dataset on the GPU when it fits; "yes" / "no"
    # Multi-process training (torchrun): AMP/SAM perturbations from each rank's own shard, not the
    # global batch (cheaper: no all-reduce on the perturbation passes; a different method, documented).
    local_perturbation: bool = False
    # A user's model and data (flatness.sources.loading): keyword arguments of a --model factory (a JSON
    # object), the size imagefolder images are resized to, and standardising user data by its training
    # split's statistics. Built-in datasets are prepared by flatness and take neither.
    model_args: dict[str, Any] | None = None
    image_size: int | None = None
    normalize: bool = False
    # Train to a fixed training loss (flatness.training.stopping): stop after the first epoch whose
    # whole-training-set loss is <= stop_loss; ``epochs`` is then the cap.
    stop_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-ready values (what config.json and every checkpoint store)."""
        out = dataclasses.asdict(self)
        out["milestones"] = list(out["milestones"])
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], strict: bool = True) -> TrainConfig:
        """A config from stored or typed values (not yet validated: call ``validate``).

        Args:
            values: option name -> value; missing options keep their defaults.
            strict: refuse unknown names (False for a stored config written by another version).

        Returns:
            The config, with ``milestones`` parsed.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown and strict:
            raise FlatnessError(f"unknown training option(s): {', '.join(unknown)}")
        config = cls(**{k: v for k, v in values.items() if k in names})
        config.milestones = _milestones(config.milestones)
        return config

    def validate(self) -> TrainConfig:
        """Check every value (one-line FlatnessError) and canonicalise names; returns self."""
        from flatness.models.references import is_reference, parse_model_args
        from flatness.sources.loading import check_dataset_reference

        check_dataset_reference(self.dataset)
        if not is_reference(self.model):
            self.model = canonical_model_name(self.model)
        if self.model_args is not None:
            if not is_reference(self.model):
                raise FlatnessError(
                    "--model-args applies to --model module:callable, file.py:callable or "
                    "torchvision:NAME; built-in models take --width/--depth"
                )
            self.model_args = parse_model_args(self.model_args)
        if self.image_size is not None:
            _integer("image_size", self.image_size, 1)
        _choice("method", self.method, METHODS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("ball", self.ball, ("tensor", "global"))
        _choice("precision", self.precision, PRECISIONS)
        _choice("data_on_device", self.data_on_device, DATA_ON_DEVICE)
        _integer("epochs", self.epochs, 1)
        _integer("batch_size", self.batch_size, 1)
        _integer("inner_iter", self.inner_iter, 1)
        _integer("save_every", self.save_every, 0)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise FlatnessError(f"seed must be an integer >= 0, got {self.seed!r}")
        check_seed(self.seed, "seed")  # beyond 64 bits torch's generators overflow
        for name in ("width", "depth"):
            if getattr(self, name) is not None:
                _integer(name, getattr(self, name), 0 if name == "depth" else 1)
        for name in ("lr", "epsilon", "inner_lr", "rho"):
            _number(name, getattr(self, name), positive=True)
        for name in ("momentum", "weight_decay"):
            _number(name, getattr(self, name), positive=False)
        if self.grad_clip is not None:
            _number("grad_clip", self.grad_clip, positive=True)
        stopping.check_stop_loss(self.stop_loss)
        if self.nesterov and self.momentum <= 0:
            raise FlatnessError("Nesterov momentum needs momentum > 0; pass --momentum or --no-nesterov")
        self.milestones = _milestones(self.milestones)
        return self


def _choice(name, value, choices):
    if value not in choices:
        raise FlatnessError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def _integer(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FlatnessError(f"{name} must be an integer >= {minimum}, got {value!r}")
    check_count(value, name, minimum)  # and within the native index size


def _number(name, value, positive):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > 0 if positive else value >= 0)
    if not ok:
        raise FlatnessError(f"{name} must be a {'positive' if positive else 'non-negative'} number, got {value!r}")


def _milestones(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise FlatnessError(f"milestones must be a comma-separated list of epochs, got {value!r}") from None
    out = []
    for m in value:
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise FlatnessError(f"milestones must be epochs >= 1, got {m!r}")
        out.append(int(m))
    return sorted(out)


# --------------------------------------------------------------------------- building a config


def build_config(explicit: dict[str, Any], recipe: str | None = None) -> TrainConfig:
    """TrainConfig defaults < the recipe's values < ``explicit`` values (what the user typed)."""
    from flatness.sources.loading import default_model_for
    from flatness.training.recipes import DATASET_RECIPES, recipe_values

    values = TrainConfig().to_dict()
    # A dataset with its own recipe (mnist1d) starts from it, and from its own model, unless told otherwise.
    recipe = recipe or DATASET_RECIPES.get(explicit.get("dataset"))
    if recipe:
        values.update(recipe_values(recipe))
        values["recipe"] = recipe
    values.update({k: v for k, v in explicit.items() if k != "recipe"})
    if "model" not in explicit and not (recipe and "model" in recipe_values(recipe)):
        values["model"] = default_model_for(values["dataset"]) or values["model"]
    return TrainConfig.from_dict(values).validate()


def default_out_dir(config: TrainConfig) -> str:
    """The run folder used when no --out is given: ``checkpoints/<dataset>-<model>-<method>-s<seed>``."""
    from flatness.models.references import is_reference
    from flatness.sources.loading import folder_label

    model = config.model if is_reference(config.model) else canonical_model_name(config.model)
    return os.path.join(
        "checkpoints", f"{folder_label(config.dataset)}-{folder_label(model)}-{config.method}-s{config.seed}"
    )


def stored_config(out_dir: str) -> TrainConfig:
    """The configuration of the run in ``out_dir``, for resuming it.

    It comes from last.pt; a run stopped before its first last.pt gives its config.json (resuming it
    starts it over).
    """
    last = _resumable(out_dir)
    if last is None:
        try:
            with open(os.path.join(out_dir, ckpt.CONFIG), encoding="utf-8") as handle:
                values = json.load(handle)
        except (OSError, ValueError):
            values = None
        if not isinstance(values, dict):
            raise FlatnessError(
                f"nothing to resume in {out_dir} (it was stopped before its first checkpoint); "
                "run the same command without --resume to start it over"
            )
        return TrainConfig.from_dict(values, strict=False)
    return TrainConfig.from_dict(ckpt.read_checkpoint(last)["config"], strict=False)


def resume_config(out_dir: str, explicit: dict[str, Any]) -> TrainConfig:
    """The stored config of ``out_dir`` with the explicitly given values applied.

    ``train`` then refuses any value that may not change on resume.

    Args:
        out_dir: the run folder to resume.
        explicit: the options the user typed.

    Returns:
        The validated config.
    """
    from flatness.sources.loading import is_code_reference

    values = stored_config(out_dir).to_dict()
    values["download"] = False  # a stored file never decides where to download (write) to: only the user
    # A run folder never makes flatness run the code it names: the command line must name it again.
    for key in ("model", "dataset"):
        if is_code_reference(values.get(key)) and key not in explicit:
            raise FlatnessError(
                f"{out_dir} was trained with --{key} {values[key]}: pass --{key} {values[key]} "
                "again to resume it (a run folder never makes flatness run the code it names)"
            )
    values.update({k: v for k, v in explicit.items() if k != "recipe" or v is not None})
    return TrainConfig.from_dict(values).validate()


def _resumable(out_dir: str) -> str | None:
    """``out_dir``'s last.pt; None for a run stopped before its first last.pt (it starts over)."""
    if os.path.isfile(out_dir):
        raise FlatnessError(f"--out {out_dir} is a file, not a run folder")
    last = os.path.join(out_dir, ckpt.LAST)
    if not os.path.isfile(last):
        if _unstarted(out_dir) and os.listdir(out_dir):
            return None
        raise FlatnessError(f"nothing to resume in {out_dir} (no {ckpt.LAST}); run without --resume to start it")
    return last


_FIRST_FILES = (ckpt.CONFIG, ckpt.INIT, ckpt.snapshot_name(0), ckpt.METRICS)


def _own_temp(name: str) -> bool:
    """A temporary file of flatness.core.fileio's atomic writes (``.NAME.XXXX.tmp``) left by a killed run."""
    return (
        name.startswith(".")
        and name.endswith(".tmp")
        and any(name.startswith(f".{f}.") for f in _FIRST_FILES + (ckpt.LAST,))
        or bool(name.startswith(".epoch-") and name.endswith(".tmp"))
    )


def _unstarted(out_dir: str) -> bool:
    """Whether ``out_dir`` is a run whose first ``train`` was stopped before it wrote last.pt.

    Only the files train writes first (config.json, init.pt, epoch-000.pt, metrics.jsonl, their
    temporaries) are there.
    """
    if not os.path.isdir(out_dir) or os.path.exists(os.path.join(out_dir, ckpt.LAST)):
        return False
    return all(n in _FIRST_FILES or _own_temp(n) for n in os.listdir(out_dir))


def _remove_own_temps(out_dir: str) -> None:
    """Temporaries of atomic writes that a SIGKILL cut short (never read; removed under the lock)."""
    if os.path.isdir(out_dir):
        for name in os.listdir(out_dir):
            if _own_temp(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(out_dir, name))


# --------------------------------------------------------------------------- schedule, devices


def lr_at(config: TrainConfig, epoch: int) -> float:
    """The learning rate used during ``epoch`` (1-based).

    A closed form of the epoch, so a resumed run needs no scheduler state. Milestone m means lr x0.1
    from epoch m+1 on (as torch's MultiStepLR stepped once per epoch).

    Args:
        config: the run's config (schedule, lr, milestones, epochs).
        epoch: the epoch, from 1.

    Returns:
        The learning rate.
    """
    done = epoch - 1
    if config.schedule == "step":
        return config.lr * GAMMA ** sum(1 for m in config.milestones if done >= m)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * done / config.epochs))
    return config.lr


@dataclass(frozen=True)
class DeviceFlags:
    """How data moves to ``device``: pinned host memory and asynchronous copies on CUDA only."""

    pin_memory: bool
    non_blocking: bool
    num_workers: int
    cudnn_benchmark: bool
    autocast: bool  # mixed precision is never used: measurements need full-precision weights


def device_flags(device: torch.device, cpu_count: int | None = None) -> DeviceFlags:
    """How training data moves to ``device``.

    Args:
        device: the compute device.
        cpu_count: CPUs to size the loader workers by (default: this machine's).

    Returns:
        The flags: pinned memory, asynchronous copies and loader workers on CUDA only.
    """
    cuda = torch.device(device).type == "cuda"
    cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return DeviceFlags(
        pin_memory=cuda,
        non_blocking=cuda,
        num_workers=min(4, max(0, cpus - 1)) if cuda else 0,
        cudnn_benchmark=False,
        autocast=False,
    )


def to_device(batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, flags: DeviceFlags):
    """Move an ``(x, y)`` batch to ``device``.

    Args:
        batch: inputs and targets.
        device: the compute device.
        flags: ``device_flags(device)`` (asynchronous copies on CUDA).

    Returns:
        ``(x, y)`` on ``device``.
    """
    x, y = batch
    return x.to(device, non_blocking=flags.non_blocking), y.to(device, non_blocking=flags.non_blocking)


class EpochBatches:
    """The training batches of one epoch in the order of a permutation drawn from ``generator``.

    Three ways to the data, one order: a dataset already on the compute device (the CUDA fast path:
    augmentation by ``flatness.data.tensor_data.augment_batch``, drawing from ``generator``); in-memory
    tensors without a transform, sliced directly; anything else through a DataLoader with a fixed
    batch sampler. A final batch of a single example is dropped (BatchNorm cannot train on it).

    Under torchrun every rank draws the same permutation and takes its contiguous share of each
    global batch; ``epoch`` yields ``(x, y, global_batch_size)`` so the loss can be scaled to make
    the all-reduced gradient the mean over the global batch exactly, even for uneven shares.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        flags: DeviceFlags,
        device: torch.device | None = None,
        on_device: bool = False,
        augment=None,
        pad_value=None,
    ):
        self.dataset = dataset
        self.batch_size = batch_size
        self.flags = flags
        n = len(dataset)
        full, rest = divmod(n, batch_size)
        self.steps = full + (1 if rest > 1 else 0)
        self.augment, self.pad_value = augment, pad_value
        if on_device:
            from flatness.data.tensor_data import materialize

            images, labels = materialize(dataset)
            self.images, self.labels, self.mode = images.to(device), labels.to(device), "device"
        elif isinstance(dataset, TensorImageDataset) and dataset.transform is None:
            self.images, self.labels, self.mode = dataset.images, dataset.labels, "tensor"
        else:
            self.mode = "loader"

    def __len__(self) -> int:
        return self.steps

    def epoch(
        self, generator: torch.Generator, rank: int = 0, world: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """The batches of one epoch, in the order of a fresh permutation drawn from ``generator``.

        Args:
            generator: the run's data-order generator (advanced by the draw).
            rank: this process's rank under torchrun.
            world: the number of processes.

        Returns:
            An iterator of ``(x, y, global_batch_size)``: this rank's share of each global batch.
        """
        perm = torch.randperm(len(self.dataset), generator=generator)
        chunks = [perm[i * self.batch_size : (i + 1) * self.batch_size] for i in range(self.steps)]
        share = (lambda t: t.tensor_split(world)[rank]) if world > 1 else (lambda t: t)
        if self.mode == "device":
            from flatness.data.tensor_data import AugmentSpec, augment_batch

            spec = self.augment or AugmentSpec()
            for idx in chunks:
                # augment the whole global batch, then take this rank's share: every rank consumes the
                # same random numbers, and the batch equals the single-process one
                idx_dev = idx.to(self.images.device)
                x = augment_batch(self.images[idx_dev], spec, generator, self.pad_value)
                yield share(x), share(self.labels[idx_dev]), int(idx.numel())
            return
        if self.mode == "tensor":
            for idx in chunks:
                part = share(idx)
                yield self.images[part], self.labels[part], int(idx.numel())
            return
        sizes = [int(c.numel()) for c in chunks]
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=[share(c).tolist() for c in chunks],
            num_workers=self.flags.num_workers,
            pin_memory=self.flags.pin_memory,
        )
        for (x, y), size in zip(loader, sizes):
            yield x, y, size


def keep_data_on_device(config: TrainConfig, device: torch.device, train_set) -> bool:
    """The CUDA fast path's data decision: whether the whole training set lives on the GPU.

    It does when asked ("yes"), or ("auto") when the un-augmented set takes under a quarter of the
    free GPU memory; never on the CPU, never for a user's dataset.

    Args:
        config: the run's config (``data_on_device``, ``dataset``).
        device: the compute device.
        train_set: the training split (its size decides "auto").

    Returns:
        True to keep the data on the device.
    """
    from flatness.sources.loading import is_user_dataset

    if config.data_on_device == "no" or device.type != "cuda" or is_user_dataset(config.dataset):
        return False
    if config.data_on_device == "yes":
        return True
    x, _ = train_set[0]
    needed = len(train_set) * x.numel() * 4
    free, _total = torch.cuda.mem_get_info(device)
    return needed < free // 4


SMALL_MODEL_PARAMS = 2_000_000
EVAL_BATCH_SIZE = 500


def cpu_threads_for(model: nn.Module, device: torch.device) -> int | None:
    """Intra-op threads to train ``model`` with.

    1 for a small model on the CPU: its ops are too small to gain from a second thread, and on a
    busy machine OpenMP's spin-waiting made a 2-thread run of the digits convnet use ~8x the CPU
    time of a 1-thread run. An explicit OMP_NUM_THREADS in the environment always wins.

    Args:
        model: the model to train.
        device: the compute device.

    Returns:
        The thread count, or None to leave torch's setting.
    """
    if torch.device(device).type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return None
    if sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS:
        return 1
    return None


def build_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """The run's optimizer: SGD for ERM, AMP or SAM wrapped around the same SGD settings.

    Args:
        config: the run's config (method, SGD settings, AMP/SAM radii, grad_clip).
        params: the parameters to train.

    Returns:
        The optimizer; AMP and SAM need ``step(closure)``.
    """
    from flatness.training.optim import AMP, SAM

    base = dict(lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay)
    if config.method == "amp":
        return AMP(
            params,
            epsilon=config.epsilon,
            inner_lr=config.inner_lr,
            inner_iter=config.inner_iter,
            ball=config.ball,
            grad_clip=config.grad_clip,
            **base,
        )
    if config.method == "sam":
        return SAM(params, rho=config.rho, adaptive=config.adaptive, grad_clip=config.grad_clip, **base)
    return torch.optim.SGD(params, **base)


def _model_spec(config: TrainConfig, train_set) -> dict[str, Any]:
    from flatness.sources.loading import infer_shape, is_user_dataset

    if is_user_dataset(config.dataset):
        shape = infer_shape(train_set)
    else:
        info = dataset_info(config.dataset)
        shape = (info.in_channels, info.image_size, info.num_classes)
    name = canonical_model_name(config.model)
    options = {}
    if name in ("convnet", "mlp", "mlp1d", "conv1d") and config.width is not None:
        options["width"] = config.width
    if name == "mlp" and config.depth is not None:
        options["depth"] = config.depth
    return model_spec(name, *shape, **options)


def _build_model(config: TrainConfig, train_set, stored: dict[str, Any] | None) -> tuple[nn.Module, dict, dict]:
    """The run's initial model (drawn from ``seed``), its spec, and the record of a user's model.

    Args:
        config: the run's config.
        train_set: the training split (a built-in model's shape on user data comes from it).
        stored: the resumed checkpoint's payload, or None for a new run.

    Returns:
        ``(model, model_spec, model record)``; the record is empty for a built-in model.
    """
    from flatness.models.references import is_reference
    from flatness.sources.loading import build_user_model, is_code_reference

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if not is_reference(config.model):
            spec = _model_spec(config, train_set)
            return build_from_spec(spec), spec, {}
        model, record = build_user_model(config.model, config.model_args, config.download)
    recorded = ((stored or {}).get("sources") or {}).get("model") or {}
    if is_code_reference(config.model) and recorded.get("sha256") and recorded["sha256"] != record["sha256"]:
        raise FlatnessError(
            f"{config.model.rpartition(':')[0]} changed since this run was trained (sha256 "
            "differs): resuming would mix two models; restore the file or start a new --out"
        )
    spec = {"name": config.model, "reference": config.model, "args": record["args"], "sha256": record["sha256"]}
    return model, spec, record


# --------------------------------------------------------------------------- the loop


def _check_out(out_dir: str, resume: bool) -> None:
    if os.path.isfile(out_dir):
        raise FlatnessError(f"--out {out_dir} is a file, not a run folder; choose another --out")
    if resume:
        _resumable(out_dir)
    elif os.path.isdir(out_dir) and os.listdir(out_dir) and not _unstarted(out_dir):
        raise FlatnessError(
            f"{out_dir} already exists and is not empty; pass --resume to continue that run, or choose another --out"
        )


def _write_metrics(out_dir: str, metrics: list[dict[str, Any]]) -> None:
    atomic_write_text(os.path.join(out_dir, ckpt.METRICS), "".join(json.dumps(m) + "\n" for m in metrics))


def train(
    config: TrainConfig, out_dir: str | None = None, resume: bool = False, progress: bool = True, verbose: bool = True
) -> str:
    """Train per ``config`` into the run folder ``out_dir``.

    Raises FlatnessError for bad input (nothing on disk touched) and DivergedError when the loss
    stops being finite (the last good checkpoint is kept).

    Args:
        config: the run's options.
        out_dir: the run folder (default ``checkpoints/<dataset>-<model>-<method>-s<seed>``).
        resume: continue the run stored there from its last finished epoch (``config`` may then
            differ from the stored one only in ``RESUMABLE_CHANGES``).
        progress: show a progress bar per epoch.
        verbose: print a line per epoch.

    Returns:
        ``out_dir``.
    """
    config = TrainConfig.from_dict(config.to_dict()).validate()
    out_dir = out_dir or default_out_dir(config)
    check_paths({}, {"--out": out_dir}, folders=["--out"])
    if config.data_dir is not None:
        check_name(config.data_dir, "--data-dir")
    # One writer per run folder: a second train (or resume) of it refuses at once. Under torchrun only
    # rank 0 writes, so only rank 0 locks (the launcher stops the other ranks when it fails).
    main_rank = not distributed.launched_by_torchrun() or int(os.environ.get("RANK", "0")) == 0
    with locking.exclusive(out_dir, "run folder") if main_rank else contextlib.nullcontext():
        return _train_locked(config, out_dir, resume, progress, verbose, main_rank)


def _resumed(out_dir: str, config: TrainConfig) -> tuple[dict[str, Any], TrainConfig]:
    """The stored state of the run in ``out_dir`` and the config to go on with.

    Args:
        out_dir: the run folder.
        config: the config asked for.

    Returns:
        (the last.pt payload, the stored config with the resumable changes applied); raises
        FlatnessError for any other change, and for fewer epochs than the run has done.
    """
    state = ckpt.read_checkpoint(os.path.join(out_dir, ckpt.LAST))
    stored = TrainConfig.from_dict(state["config"], strict=False).validate().to_dict()
    given = config.to_dict()
    changed = [k for k in stored if k not in RESUMABLE_CHANGES and k != "recipe" and stored[k] != given[k]]
    if changed:
        k = changed[0]
        raise FlatnessError(
            f"cannot change {k} when resuming {out_dir} (the run has {k}={stored[k]!r}, "
            f"given {given[k]!r}); drop the option or start a new run with another --out"
        )
    stored.update({k: given[k] for k in RESUMABLE_CHANGES})
    config = TrainConfig.from_dict(stored).validate()
    finished = int(state["epoch"])
    if config.epochs < finished:  # fewer epochs than done: neither shrink the record nor its config
        raise FlatnessError(
            f"{out_dir} has already trained {finished} epochs; --epochs {config.epochs} "
            f"would not undo them: give --epochs {finished} or more to continue, or choose "
            "another --out for a shorter run"
        )
    return state, config


@dataclass
class _Run:
    """The pieces of one training run that every epoch uses, built once by ``_train_locked``.

    Grouped so that the epoch loop and its helpers take one argument instead of fifteen; ``metrics``
    and ``step`` are the run's mutable record (the finished epochs and the optimizer steps taken).
    """

    config: TrainConfig
    out_dir: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: EpochBatches
    shuffle: torch.Generator  # the data order's generator, stored in every full checkpoint
    test_data: ProbeData
    device: torch.device
    flags: DeviceFlags
    spec: dict[str, Any]
    sources: dict[str, Any]
    main_rank: bool
    progress: bool = True
    verbose: bool = True
    metrics: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    train_eval: ProbeData | None = None  # the whole training split, when the run has a stop_loss
    stop: dict[str, Any] | None = None  # the stop record once the run has ended (flatness.training.stopping)
    config_dict: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.config_dict = self.config.to_dict()

    @property
    def last_path(self) -> str:
        """The run's ``last.pt`` (the last good checkpoint that a divergence message points to)."""
        return os.path.join(self.out_dir, ckpt.LAST)


def _train_locked(
    config: TrainConfig, out_dir: str, resume: bool, progress: bool, verbose: bool, main_rank: bool
) -> str:
    """Train into ``out_dir`` with its lock held (``train``'s body); returns ``out_dir``.

    Args:
        config: the validated config asked for.
        out_dir: the run folder.
        resume: continue the run stored in ``out_dir``.
        progress: show a progress bar per epoch (rank 0 only).
        verbose: print a line per epoch (rank 0 only).
        main_rank: this process writes the run folder (not a non-zero torchrun rank).

    Returns:
        ``out_dir``.
    """
    state, config = _prepare_folder(config, out_dir, resume, main_rank)
    run = _build_run(config, out_dir, state, main_rank)
    run.progress, run.verbose = progress and main_rank, verbose and main_rank
    start = _start_run(run) if state is None else _restore_run(run, state)
    threads_before = torch.get_num_threads()
    threads = cpu_threads_for(run.model, run.device)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        _loop(run, start)
    finally:
        torch.set_num_threads(threads_before)
    return out_dir


def _prepare_folder(
    config: TrainConfig, out_dir: str, resume: bool, main_rank: bool
) -> tuple[dict[str, Any] | None, TrainConfig]:
    """Check ``out_dir`` for a new run or a resume, and clear a killed run's temporaries.

    Returns:
        ``(the last.pt payload or None for a new run, the config to train with)``.
    """
    _check_out(out_dir, resume)
    if resume and _resumable(out_dir) is None:
        resume = False  # stopped before its first checkpoint: start it over
    if main_rank:
        _remove_own_temps(out_dir)
    if not resume:
        return None, config
    return _resumed(out_dir, config)


def _build_run(config: TrainConfig, out_dir: str, state: dict[str, Any] | None, main_rank: bool) -> _Run:
    """Device, data, model, optimizer and data order of a run.

    The order of these steps is fixed: it decides which random numbers each one draws.

    Returns:
        The run, with the initial weights (a resumed run's are restored later by ``_restore_run``).
    """
    device = resolve_device(config.device)
    distributed.init_from_env(device)
    device = distributed.local_device(device)
    flags = device_flags(device)
    train_set, test_set, data_record = _datasets(config, main_rank)
    if config.batch_size > len(train_set):
        raise FlatnessError(f"batch size {config.batch_size} exceeds the {len(train_set)} training examples")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = flags.cudnn_benchmark

    model, spec, model_record = _build_model(config, train_set, state)
    if model_record or is_user_dataset(config.dataset):
        check_model_fits(model, train_set)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config, model.parameters())
    shuffle = torch.Generator()
    shuffle.manual_seed(config.seed)
    batches = _epoch_batches(config, train_set, device, flags)
    # The test split, decoded once and kept on the compute device; every epoch's test loss and
    # accuracy come from the same exact-mean evaluate() that probes and surfaces use.
    test_data = ProbeData.from_dataset(test_set, None, EVAL_BATCH_SIZE, device)
    sources = {"model": model_record or None, "dataset": data_record}
    run = _Run(config, out_dir, model, optimizer, batches, shuffle, test_data, device, flags, spec, sources, main_rank)
    run.train_eval = stopping.whole_train_data(config, train_set, device, EVAL_BATCH_SIZE)
    return run


def _epoch_batches(config: TrainConfig, train_set, device: torch.device, flags: DeviceFlags) -> EpochBatches:
    """The training batches.

    From a copy of the un-augmented set on the GPU (augmented there) when ``keep_data_on_device``
    says so, else from ``train_set`` as it is.
    """
    if not keep_data_on_device(config, device, train_set):
        return EpochBatches(train_set, config.batch_size, flags)
    from flatness.data.tensor_data import AUGMENTATIONS, AugmentSpec

    info = dataset_info(config.dataset)
    plain = get_dataset(config.dataset, "train", root=config.data_dir, augment=False)
    spec_aug = AUGMENTATIONS.get(config.dataset, AugmentSpec()) if config.augment else AugmentSpec()
    return EpochBatches(
        plain,
        config.batch_size,
        flags,
        device=device,
        on_device=True,
        augment=spec_aug,
        pad_value=[-m / s for m, s in zip(info.mean, info.std)],
    )


def _save(run: _Run, path: str, epoch: int, full: bool) -> None:
    """Write a checkpoint of ``run`` at ``epoch`` to ``path``.

    Rank 0 alone writes; every rank holds the same state. ``full`` adds what a resume needs:
    optimizer, schedule, RNG and data order.
    """
    if not run.main_rank:
        return
    ckpt.save_checkpoint(
        path,
        run.model,
        model_spec=run.spec,
        config=run.config_dict,
        epoch=epoch,
        step=run.step,
        metrics=run.metrics,
        optimizer_state=run.optimizer.state_dict() if full else None,
        scheduler_state={"schedule": run.config.schedule, "epoch": epoch} if full else None,
        rng=ckpt.capture_rng() if full else None,
        extra={"shuffle_rng": run.shuffle.get_state(), stopping.STOP_KEY: run.stop} if full else None,
        sources=run.sources,
    )


def _start_run(run: _Run) -> int:
    """Seed the global RNG and write a new run's first files.

    Those are config.json, init.pt, epoch-000.pt, last.pt at epoch 0 and an empty metrics.jsonl.

    Returns:
        The first epoch to train (1).
    """
    if run.main_rank:
        os.makedirs(run.out_dir, exist_ok=True)
    torch.manual_seed(run.config.seed)  # the global RNG drives augmentation (and dropout)
    run.metrics, run.step = [], 0
    if run.main_rank:
        atomic_write_json(os.path.join(run.out_dir, ckpt.CONFIG), run.config_dict)
    _save(run, os.path.join(run.out_dir, ckpt.INIT), 0, full=False)
    if run.config.save_every:
        _save(run, os.path.join(run.out_dir, ckpt.snapshot_name(0)), 0, full=False)
    _save(run, run.last_path, 0, full=True)
    if run.main_rank:
        _write_metrics(run.out_dir, run.metrics)
    return 1


def _restore_run(run: _Run, state: dict[str, Any]) -> int:
    """Put a resumed run back where its last.pt left it: weights, optimizer, RNGs, data order, metrics.

    Returns:
        The first epoch still to train (past ``config.epochs`` when there is nothing to do).
    """
    try:
        run.model.load_state_dict(state["model_state"])
    except RuntimeError:
        raise FlatnessError(f"{state['path']}: the stored weights do not fit the model") from None
    if state.get("optimizer_state"):
        run.optimizer.load_state_dict(state["optimizer_state"])
    if state.get("rng"):
        ckpt.restore_rng(state["rng"])
    if (state.get("extra") or {}).get("shuffle_rng") is not None:
        run.shuffle.set_state(state["extra"]["shuffle_rng"])
    run.metrics = list(state.get("metrics") or [])
    start, run.step = int(state["epoch"]) + 1, int(state.get("step", 0))
    run.stop = stopping.stored_record(state)
    if run.main_rank:
        atomic_write_json(os.path.join(run.out_dir, ckpt.CONFIG), run.config_dict)
        _write_metrics(run.out_dir, run.metrics)  # repairs a metrics.jsonl a crash left behind
    if run.stop is not None and run.stop["reached"]:
        start = run.config.epochs + 1  # a run that reached its target loss is finished, whatever the cap
        if run.verbose:
            print(f"{run.out_dir}: reached the stop loss at epoch {run.stop['epoch']}; nothing to do")
    elif start > run.config.epochs and run.verbose:
        print(f"{run.out_dir}: already trained for {start - 1} epochs (asked {run.config.epochs}); nothing to do")
    return start


def _datasets(config: TrainConfig, main_rank: bool):
    """The run's train and test splits and the dataset's record.

    Under torchrun rank 0 downloads first and the others then read the same files.
    """
    from flatness.sources.loading import training_data

    args = (config.data_dir, config.augment)
    if main_rank:
        found = training_data(config.dataset, *args, config.download, config.image_size, config.normalize)
    distributed.barrier()
    if not main_rank:
        found = training_data(config.dataset, *args, False, config.image_size, config.normalize)
    return found


def _forward_module(model: nn.Module, config: TrainConfig, device: torch.device) -> nn.Module:
    """What the training step calls: the model, wrapped in DDP under torchrun and compiled when asked.

    DDP all-reduces the gradients in buckets during the backward. Parameters stay shared, so the
    optimizer and the checkpoint keep working on ``model``.
    """
    net = model
    if distributed.is_distributed():
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)
    return net


@dataclass(frozen=True)
class _Engine:
    """What every training step runs on, fixed for the whole run.

    ``net`` is the module the step calls (DDP-wrapped / compiled, sharing ``model``'s parameters);
    ``passes`` is the number of closure calls per step, of which all but the last build the
    perturbation (AMP: the first inner_iter, SAM: the first); with --local-perturbation those skip
    DDP's all-reduce, so each rank perturbs by its own shard.
    """

    net: nn.Module
    autocast: Any  # a reusable context manager: bf16 autocast, or a no-op
    rank: int
    world: int
    passes: int


@dataclass
class _StepRecord:
    """What the closure calls of one step have seen.

    How many ran, and the logits at theta (the first call's, before any perturbation) that the
    step's training accuracy comes from.
    """

    calls: int = 0
    logits: torch.Tensor | None = None


def _loop(run: _Run, start: int) -> None:
    """Train the epochs ``start`` .. ``config.epochs``, checkpointing and logging after each one."""
    config, device = run.config, run.device
    engine = _Engine(
        net=_forward_module(run.model, config, device),
        autocast=(
            torch.autocast(device_type=device.type, dtype=torch.bfloat16)
            if config.precision == "bf16"
            else contextlib.nullcontext()
        ),
        rank=distributed.rank(),
        world=distributed.world_size(),
        passes=passes_per_step(config),
    )
    for epoch in range(start, config.epochs + 1):
        began = time.perf_counter()
        lr = lr_at(config, epoch)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        totals = _train_epoch(run, engine, epoch, lr)
        _finish_epoch(run, epoch, lr, totals, began)
        if run.stop is not None:
            if run.verbose:
                print(stopping.describe(run.stop), flush=True)
            break


def _train_epoch(run: _Run, engine: _Engine, epoch: int, lr: float) -> tuple[torch.Tensor, int, int]:
    """One pass over the training batches.

    Returns:
        ``(summed training loss as a float64 tensor, correct predictions, examples)`` over the global
        batches; raises DivergedError at the first step whose loss is not finite (on any rank).
    """
    run.model.train()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct, seen = 0, 0
    bar = progress_bar(run.progress, len(run.batches), f"epoch {epoch}/{run.config.epochs}", unit="batch")
    try:
        for i, (bx, by, global_size) in enumerate(run.batches.epoch(run.shuffle, engine.rank, engine.world), 1):
            value, logits, y = _train_step(run, engine, bx, by, global_size)
            if not math.isfinite(value):
                raise DivergedError(
                    f"training diverged: the loss is {value} at epoch {epoch}, step {i} of {len(run.batches)} "
                    f"(lr {lr:g}); the last good checkpoint is kept: {run.last_path} (epoch {epoch - 1})"
                )
            loss_sum += value * y.shape[0]
            correct += int((logits.argmax(1) == y).sum())
            seen += int(y.shape[0])
            bar.update(1)
            if i % 10 == 0:
                bar.set_postfix(loss=f"{value:.4f}")
    finally:
        bar.close()
    if engine.world > 1:  # the epoch's training loss and accuracy over the global batches
        totals = torch.tensor([float(loss_sum), correct, seen], dtype=torch.float64, device=run.device)
        distributed.all_reduce_sum_(totals)
        loss_sum, correct, seen = totals[0].cpu(), int(totals[1]), int(totals[2])
    return loss_sum, correct, seen


def _train_step(
    run: _Run, engine: _Engine, bx: torch.Tensor, by: torch.Tensor, global_size: int
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """One optimizer step on the batch ``(bx, by)`` (this rank's share of ``global_size`` examples).

    Returns:
        ``(the loss at theta, NaN on every rank when any rank's is not finite; the logits at theta;
        the targets on the device)``.
    """
    config = run.config
    x, y = to_device((bx, by), run.device, run.flags)
    if config.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    # DDP averages gradients over ranks; scaling each rank's mean by its share makes the average the
    # exact mean over the global batch (also when shares are uneven).
    scale = y.shape[0] * engine.world / global_size
    record = _StepRecord()
    # Bound now, not closed over the loop's variables: AMP/SAM call it 1 + inner_iter / 2 times
    # within this step, always on this step's batch.
    closure = functools.partial(_forward_backward, run, engine, record, x, y, scale)
    if config.method == "erm":
        loss = closure()
        if torch.isfinite(loss) and config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
        if torch.isfinite(loss):
            run.optimizer.step()
    else:
        loss = run.optimizer.step(closure)
    run.step += 1
    value = float(loss.detach())
    if engine.world > 1:  # every rank must stop together when any rank's loss is not finite
        flag = torch.tensor([0.0 if math.isfinite(value) else 1.0], device=run.device)
        distributed.all_reduce_sum_(flag)
        if flag.item() > 0 and math.isfinite(value):
            value = float("nan")
    return value, record.logits, y


def _forward_backward(
    run: _Run, engine: _Engine, record: _StepRecord, x: torch.Tensor, y: torch.Tensor, scale: float
) -> torch.Tensor:
    """The optimizer's closure: zero the gradients, forward, cross-entropy, backward.

    Returns:
        The batch's mean loss (unscaled); the first call's logits go to ``record``.
    """
    record.calls += 1
    run.optimizer.zero_grad(set_to_none=True)
    local = engine.world > 1 and run.config.local_perturbation and record.calls < engine.passes
    with engine.net.no_sync() if local else contextlib.nullcontext():
        with engine.autocast:
            logits = engine.net(x)
        loss = F.cross_entropy(logits.float(), y)
        (loss * scale if engine.world > 1 else loss).backward()
    if record.logits is None:
        record.logits = logits.detach()
    return loss


def _finish_epoch(run: _Run, epoch: int, lr: float, totals: tuple[torch.Tensor, int, int], began: float) -> None:
    """Evaluate on the test split, record the epoch's metrics, checkpoint, and print its line.

    Raises DivergedError (before anything is written) when the test loss is not finite.
    """
    loss_sum, correct, seen = totals
    test_loss, test_acc = evaluate(run.model, run.test_data)
    if not math.isfinite(test_loss):
        raise DivergedError(
            f"training diverged: the test loss is {test_loss} after epoch {epoch} "
            f"(step {run.step}); the last good checkpoint is kept: {run.last_path} (epoch {epoch - 1})"
        )
    whole = stopping.measure(run.model, run.train_eval)
    seconds = time.perf_counter() - began
    record = {
        "epoch": epoch,
        "lr": lr,
        "train_loss": float(loss_sum) / seen,
        "train_acc": correct / seen,
        "test_loss": test_loss,
        "test_acc": test_acc,
        **whole,
        "seconds": round(seconds, 3),
    }
    run.metrics.append(record)
    config = run.config
    run.stop = stopping.end_record(config.stop_loss, epoch, config.epochs, whole.get("full_train_loss"))
    if config.save_every and epoch % config.save_every == 0:
        _save(run, os.path.join(run.out_dir, ckpt.snapshot_name(epoch)), epoch, full=False)
    _save(run, run.last_path, epoch, full=True)
    _write_metrics(run.out_dir, run.metrics)
    if run.verbose:
        print(
            f"epoch {epoch:3d}/{config.epochs}  lr {lr:.4g}  train loss {record['train_loss']:.4f} "
            f"acc {record['train_acc']:.4f}  test loss {test_loss:.4f} acc {test_acc:.4f}  "
            + (f"whole-train loss {whole['full_train_loss']:.4f}  " if whole else "")
            + f"{seconds:.1f}s",
            flush=True,
        )
