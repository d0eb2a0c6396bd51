"""The options of a training run, with no file I/O.

``TrainConfig`` (every option of ``flatness train``, its validation and canonical names), ``METHODS`` (the
training methods, in the order every table lists them), ``recipe_values`` and ``build_config`` (defaults <
a recipe < what the user typed), the default run folder name, what may change on resume
(``RESUMABLE_CHANGES``) and the learning-rate schedule ``lr_at``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from flatness.core.errors import FlatnessError
from flatness.core.limits import LIMITS, check_limit
from flatness.core.validation import check_count, check_seed
from flatness.models.references import is_reference, parse_model_args
from flatness.models.registry import canonical_model_name
from flatness.sources.loading import check_dataset_reference, default_model_for, folder_label
from flatness.sources.losses import check_loss_spec, check_output_spec
from flatness.training import stopping
from flatness.training.optim import BALLS
from flatness.training.recipes import DATASET_RECIPES, RECIPES, recipe_names

# The training methods, in the canonical order of every table, figure and default study (ERM the baseline).
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


@dataclass(frozen=True)
class TrainConfig:
    """Every option of ``flatness train``. Defaults: the offline digits setup (``digits-default``).

    ``checked()`` is the one check of every value; ``to_dict``/``from_dict`` are the form config.json
    and every checkpoint store.
    """

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
    # What the model is trained on (flatness.sources.losses): a loss name (ce, mse, bce, nll, l1, huber)
    # or a module:callable / file.py:callable reference; None is cross-entropy. ``output``: the key of a
    # dict/ModelOutput output the loss sees, or a reference to output_fn; None is flatness's rule.
    loss: str | None = None
    output: str | None = None
    # Also keep ``matched.pt``: the weights after the first epoch whose whole-training-set loss is <=
    # match_loss (the matched-loss protocol of ``flatness experiment``); training goes on to ``epochs``.
    match_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-ready values (what config.json and every checkpoint store)."""
        out = dataclasses.asdict(self)
        out["milestones"] = list(out["milestones"])
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], strict: bool = True) -> TrainConfig:
        """A config from stored or typed values (not yet checked: call ``checked``).

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
        known = {k: v for k, v in values.items() if k in names}
        if "milestones" in known:
            known["milestones"] = _milestones(known["milestones"])
        return cls(**known)

    def checked(self) -> TrainConfig:
        """Every value checked, as a copy with names canonicalised and milestones parsed.

        Raises:
            FlatnessError: one line naming the option.
        """
        check_dataset_reference(self.dataset)
        model = self.model if is_reference(self.model) else canonical_model_name(self.model)
        model_args = self.model_args
        if model_args is not None:
            if not is_reference(model):
                raise FlatnessError(
                    "--model-args applies to --model module:callable, file.py:callable or "
                    "torchvision:NAME; built-in models take --width/--depth"
                )
            model_args = parse_model_args(model_args)
        if self.image_size is not None:
            _integer("image_size", self.image_size, 1)
        _choice("method", self.method, METHODS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("ball", self.ball, BALLS)
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
        loss, output = check_loss_spec(self.loss), check_output_spec(self.output)
        stopping.check_stop_loss(self.match_loss, "match_loss")
        if self.nesterov and self.momentum <= 0:
            raise FlatnessError("Nesterov momentum needs momentum > 0; pass --momentum or --no-nesterov")
        return dataclasses.replace(
            self, model=model, model_args=model_args, loss=loss, output=output, milestones=_milestones(self.milestones)
        )


def _choice(name, value, choices):
    if value not in choices:
        raise FlatnessError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def _integer(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FlatnessError(f"{name} must be an integer >= {minimum}, got {value!r}")
    check_count(value, name, minimum)  # and within the native index size
    if name in LIMITS:  # epochs, inner_iter, image_size, width, depth: the time and memory of a run
        check_limit(value, name, name)


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


def recipe_values(name: str) -> dict[str, Any]:
    """The values of recipe ``name`` (a copy); ``digits-default``'s are TrainConfig's defaults."""
    if name not in RECIPES:
        raise FlatnessError(f"unknown recipe {name!r}; choose one of: {', '.join(recipe_names())}")
    if name == "digits-default":
        values = TrainConfig().to_dict()
        values.pop("recipe", None)
        return values
    values = dict(RECIPES[name]["values"])
    values["milestones"] = list(values.get("milestones", []))
    return values


def build_config(explicit: dict[str, Any], recipe: str | None = None) -> TrainConfig:
    """TrainConfig defaults < the recipe's values < ``explicit`` values (what the user typed)."""
    values = TrainConfig().to_dict()
    # A dataset with its own recipe (mnist1d) starts from it, and from its own model, unless told otherwise.
    recipe = recipe or DATASET_RECIPES.get(explicit.get("dataset"))
    if recipe:
        values.update(recipe_values(recipe))
        values["recipe"] = recipe
    values.update({k: v for k, v in explicit.items() if k != "recipe"})
    if "model" not in explicit and not (recipe and "model" in recipe_values(recipe)):
        values["model"] = default_model_for(values["dataset"]) or values["model"]
    return TrainConfig.from_dict(values).checked()


def default_out_dir(config: TrainConfig) -> str:
    """The run folder used when no --out is given: ``checkpoints/<dataset>-<model>-<method>-s<seed>``."""
    model = config.model if is_reference(config.model) else canonical_model_name(config.model)
    return os.path.join(
        "checkpoints", f"{folder_label(config.dataset)}-{folder_label(model)}-{config.method}-s{config.seed}"
    )


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
