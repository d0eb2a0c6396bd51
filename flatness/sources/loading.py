"""What a command line named, turned into a model and its data: ONE place for every command.

``load_target(checkpoint, source)`` accepts a flatness checkpoint or run folder, a plain state_dict or
``.safetensors`` file (with ``source.model``), or a ``.pt2`` program (no model needed), and decides the
dataset (the one the checkpoint records, or ``source.dataset``). ``training_data`` gives ``flatness
train`` the two splits of a built-in or user dataset.

Security: a checkpoint or run folder only ever *names* code (the model or dataset factory it was
trained with); nothing here imports or runs a reference that the caller's ``ModelSource`` did not
give. A recorded ``module:callable`` or ``file.py:callable`` must be named again; another one than
recorded, or a factory file whose sha256 changed, is refused unless ``source.allow_source_change``
(``--allow-source-change``, a flag of its own: ``--force`` only ever overwrites outputs). torchvision
model names, npz files and image folders are data, not code, and may come from the record.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from flatness.core.errors import FlatnessError
from flatness.core.fileio import sha256_file
from flatness.core.params import distance
from flatness.data.datasets import DATASETS, get_dataset
from flatness.data.probe_data import ProbeData
from flatness.data.user_data import check_model_fits, data_digest, load_user_dataset
from flatness.formats.checkpoint import (
    INIT,
    ForeignCheckpointError,
    check_finite,
    read_checkpoint,
    user_model_reference,
)
from flatness.formats.weights import load_exported_program, load_state_into, load_weights_into
from flatness.models.references import TORCHVISION_PREFIX, is_reference, parse_model_args, resolve_model_reference
from flatness.models.registry import build_from_spec, canonical_model_name
from flatness.sources.losses import check_loss_spec, check_output_spec, loss_fn_for, output_fn_for

PT2_SUFFIX = ".pt2"
# The command-line flag that sets ModelSource.allow_source_change, named in every refusal it lifts.
ALLOW_SOURCE_CHANGE_FLAG = "--allow-source-change"
STATE_DICT_HINT = "a plain state_dict or .safetensors file"


@dataclass
class ModelSource:
    """The model and data options of one command line (``--model``, ``--model-args``, ``--dataset``, ...).

    ``model``/``dataset`` None: what the checkpoint records (built-ins and data files only; recorded
    code must be named again). ``model_args`` apply to the model named or recorded as a reference;
    a built-in model is rebuilt from the options its checkpoint records, so they are refused there.
    ``allow_source_change``: accept a model or dataset factory other than the recorded one, one whose
    file changed since training, or another model for a built-in model's weights.
    """

    model: str | None = None
    model_args: Any = None
    dataset: str | None = None
    image_size: int | None = None
    normalize: bool | None = None
    download: bool = False
    allow_source_change: bool = False
    loss: str | None = None
    output: str | None = None


@dataclass
class Target:
    """A model to measure and where its data comes from.

    ``info`` has ``path``, ``dataset``, ``model``, ``method``, ``epoch``, ``step``, ``config``,
    ``metrics``, ``model_spec`` (None outside flatness checkpoints), ``format``, and ``loss`` and
    ``output``: the specs measured with (``flatness.sources.losses``; None: the defaults), whose
    functions are ``loss_fn`` and ``output_fn``.
    """

    model: nn.Module
    info: dict[str, Any]
    image_size: int | None = None
    normalize: bool = False
    sources: dict[str, Any] = field(default_factory=dict)
    loss_fn: Any = None
    output_fn: Any = None

    def probe_data(
        self,
        split: str,
        samples: int | None,
        batch_size: int,
        device: torch.device,
        root: str | None = None,
        download: bool = False,
    ) -> ProbeData:
        """The first ``samples`` examples of ``split`` (None: all), checked against the model.

        Args:
            split: train or test.
            samples: how many examples (None: the whole split).
            batch_size: examples per batch.
            device: where the batches live.
            root: the data folder of built-in datasets.
            download: allow downloading a built-in dataset.

        Returns:
            The probe data.
        """
        dataset = split_dataset(self.info["dataset"], split, root, download, self.image_size, self.normalize)
        if is_user_dataset(self.info["dataset"]) and not _static_program(self.model):
            check_model_fits(self.model, dataset, self.loss_fn, self.output_fn)
        return ProbeData.from_dataset(dataset, samples, batch_size, device)


def is_user_dataset(name: str | None) -> bool:
    """True for a dataset that is not built in (an npz, an image folder or a factory reference)."""
    return bool(name) and name not in DATASETS


def is_code_reference(ref: str | None) -> bool:
    """True for a reference that runs the user's code (``module:callable``, ``file.py:callable``)."""
    return (
        bool(ref)
        and is_reference(ref)
        and not ref.startswith(TORCHVISION_PREFIX)
        and not ref.startswith("imagefolder:")
    )


def default_model_for(dataset: str | None) -> str | None:
    """The built-in model a run on ``dataset`` uses when none is named (None: the general default)."""
    info = DATASETS.get(dataset) if dataset else None
    return info.default_model if info is not None else None


def check_dataset_reference(name: str) -> None:
    """FlatnessError unless ``name`` is a built-in dataset or has the form of a user dataset."""
    if name in DATASETS or name.endswith(".npz") or is_reference(name):
        return
    raise FlatnessError(
        f"unknown dataset {name!r}; choose a built-in one ({', '.join(sorted(DATASETS))}), "
        "file.npz, package.module:callable, file.py:callable or imagefolder:DIR"
    )


# --------------------------------------------------------------------------- data


def split_dataset(
    name: str,
    split: str,
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    normalize: bool = False,
    augment: bool = False,
) -> Dataset:
    """One split of a built-in or user dataset, without augmentation unless asked (built-ins only)."""
    if not is_user_dataset(name):
        return get_dataset(name, split, root=root, augment=augment, download=download)

    data = load_user_dataset(name, image_size=image_size, normalize=normalize)
    return data.train if split == "train" else data.test


def training_data(
    dataset: str, root: str | None, augment: bool, download: bool, image_size: int | None, normalize: bool
) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """The train and test splits of a run's dataset and a JSON-safe record of where they came from.

    Args:
        dataset: a built-in name, ``file.npz``, ``module:callable``, ``file.py:callable`` or ``imagefolder:DIR``.
        root: the data folder of built-in datasets.
        augment: the built-in training augmentation (user data is used exactly as given).
        download: allow downloading a built-in dataset.
        image_size: resize imagefolder images.
        normalize: standardise user data with its training split's statistics.

    Returns:
        ``(train, test, record)``.
    """
    if not is_user_dataset(dataset):
        if normalize or image_size:
            raise FlatnessError(
                f"--normalize and --image-size apply to your own data; {dataset} is prepared by flatness already"
            )
        train = get_dataset(dataset, "train", root=root, augment=augment, download=download)
        test = get_dataset(dataset, "test", root=root, augment=False, download=download)
        return train, test, {"reference": dataset}
    if augment:
        raise FlatnessError("--augment applies to the built-in datasets; your own data is used exactly as given")

    data = load_user_dataset(dataset, image_size=image_size, normalize=normalize)
    return data.train, data.test, data.record


def infer_shape(dataset: Dataset) -> tuple[int, int, int]:
    """``(in_channels, image_size, num_classes)`` of a user dataset, for a built-in model on it.

    Args:
        dataset: yields ``(x, label)`` with ``x`` of shape [C, H, W], [C, L] or [L].

    Returns:
        The channels (1 for a plain vector), the last dimension's size and the number of classes
        (the largest label + 1).
    """
    x, _ = dataset[0]
    if not torch.is_tensor(x) or x.dim() not in (1, 2, 3):
        raise FlatnessError(
            "a built-in model needs examples that are one tensor [C, H, W], [C, L] or [L]; "
            "use --model module:callable for other inputs"
        )
    channels = 1 if x.dim() == 1 else int(x.shape[0])
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and len(tensors) == 2:
        labels = tensors[1]
    elif hasattr(dataset, "classes"):
        return channels, int(x.shape[-1]), len(dataset.classes)
    else:
        labels = torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])
    if labels.is_floating_point() or labels.dim() != 1:
        raise FlatnessError("a built-in model needs integer class labels; use --model module:callable")
    return channels, int(x.shape[-1]), int(labels.max()) + 1


# --------------------------------------------------------------------------- models


def build_user_model(
    ref: str, model_args: Any, download: bool, shape: tuple[int, int, int] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The model a ``--model`` reference names, with its record (reference, args, sha256).

    Args:
        ref: a reference or a built-in model name.
        model_args: keyword arguments (JSON object string or dict).
        download: allow torchvision to download weights named in the args.
        shape: ``(in_channels, image_size, num_classes)`` for a built-in name (from its dataset).

    Returns:
        ``(model, record)``.
    """
    args = parse_model_args(model_args)
    if not is_reference(ref) and shape is not None:
        args = {**dict(zip(("in_channels", "image_size", "num_classes"), shape)), **args}
    return resolve_model_reference(ref, args, download=download)


def check_recorded(
    kind: str, recorded: dict[str, Any] | None, given: str | None, allow_change: bool, where: str
) -> str | None:
    """The reference to use for a checkpoint's model or dataset, refusing what the record forbids.

    Args:
        kind: "model" or "dataset" (the flag is ``--<kind>``).
        recorded: the checkpoint's record (``reference``, ``sha256``) or None.
        given: what the command line named, or None.
        allow_change: accept another reference, or a changed factory file (``--allow-source-change``).
        where: the checkpoint's path, for messages.

    Returns:
        The reference to build from (``given``, or a recorded one that runs no code).
    """
    ref = (recorded or {}).get("reference")
    if kind == "dataset" and is_data_path(ref) and given in (None, ref):
        return _checked_data_path(ref, (recorded or {}).get("sha256"), given, allow_change, where)
    if given is None:
        if is_code_reference(ref):
            raise FlatnessError(
                f"{where} was trained with --{kind} {ref}: pass --{kind} {ref} to run it again "
                "(a checkpoint never makes flatness run the code it names)"
            )
        return ref
    if is_code_reference(ref) and given != ref and not allow_change:
        raise FlatnessError(
            f"{where} was trained with --{kind} {ref}, not {given}; pass {ALLOW_SOURCE_CHANGE_FLAG} to use {given}"
        )
    recorded_sha = (recorded or {}).get("sha256")
    if given == ref and is_code_reference(ref) and recorded_sha and not allow_change:
        path = ref.rpartition(":")[0]
        if os.path.isfile(path) and sha256_file(path) != recorded_sha:
            raise FlatnessError(
                f"{path} changed since {where} was trained (sha256 differs); "
                f"pass {ALLOW_SOURCE_CHANGE_FLAG} to use it anyway"
            )
    return given


def is_data_path(ref: Any) -> bool:
    """True for a dataset that is a path to data: an npz file or ``imagefolder:DIR``."""
    return isinstance(ref, str) and (ref.endswith(".npz") or ref.startswith("imagefolder:"))


def _checked_data_path(ref: str, recorded_sha: Any, given: str | None, allow_change: bool, where: str) -> str:
    """A checkpoint's recorded data path, followed only while it holds the data the run recorded.

    A checkpoint is data from anywhere: the path it names may lead to any file on this machine (an
    absolute path outside its folder, ``..``). Unless the command line names the path itself, it is read
    only when its digest (``flatness.data.user_data.data_digest``) equals the recorded one; a named path
    whose data changed since training is refused unless ``allow_change``.
    """
    if given is None and not isinstance(recorded_sha, str):
        raise FlatnessError(
            f"{where} names its data as {ref} but records no digest of it, so flatness does not follow "
            f"that path on its own: pass --dataset {ref} to read it"
        )
    if isinstance(recorded_sha, str) and not allow_change and data_digest(ref) != recorded_sha:
        hint = f"--dataset {ref} {ALLOW_SOURCE_CHANGE_FLAG}" if given is None else ALLOW_SOURCE_CHANGE_FLAG
        raise FlatnessError(
            f"{ref} is not the data {where} was trained on (missing, or its sha256 differs from the "
            f"recorded one); pass {hint} to use it anyway"
        )
    return ref


def source_file_sha256(ref: str | None) -> str:
    """sha256 of the file behind a model or dataset reference (``file.py:callable``, ``data.npz``).

    "" for references whose content the name fixes (built-ins, installed modules, torchvision names).
    A surface resumes only with the same digests: its points must all come from one model and one data.
    """
    if not ref:
        return ""
    path = ref if ref.endswith(".npz") else (ref.rpartition(":")[0] if is_code_reference(ref) else "")
    return sha256_file(path) if path and os.path.isfile(path) else ""


def _static_program(model: nn.Module) -> bool:
    return getattr(model, "static_batch_size", None) is not None


def _foreign_info(path: str, kind: str, model: str, dataset: str | None) -> dict[str, Any]:
    if not dataset:
        raise FlatnessError(f"{path} is {kind} and records no dataset: pass --dataset")
    return {
        "path": path,
        "dataset": dataset,
        "model": model,
        "method": None,
        "epoch": None,
        "step": 0,
        "config": {},
        "metrics": [],
        "model_spec": None,
        "format": kind,
    }


def _shape_for(model_ref: str, dataset: str | None, source: ModelSource, root: str | None):
    """The built-in model's shape from its dataset (a built-in dataset's info, or the user data)."""
    if is_reference(model_ref) or not dataset:
        return None
    if not is_user_dataset(dataset):
        info = DATASETS[dataset]
        return info.in_channels, info.image_size, info.num_classes
    return infer_shape(split_dataset(dataset, "train", root, False, source.image_size, bool(source.normalize)))


def _checked_model_reference(
    spec: dict[str, Any], model_record: dict[str, Any], source: ModelSource, path: str
) -> str | None:
    """The reference to build a flatness checkpoint's model from, or None for its recorded built-in spec.

    A built-in model is rebuilt from its spec: the options it records are the ones its weights were
    trained with, so ``--model-args`` cannot change them (a width would not fit the weights, and an
    option that fits would silently measure another model than the one trained).
    """
    reference = user_model_reference(spec)
    if reference is not None:
        return check_recorded("model", model_record, source.model, source.allow_source_change, path)
    name = spec.get("name")
    if source.model is None or (not is_reference(source.model) and canonical_model_name(source.model) == name):
        if source.model_args is not None:
            options = json.dumps(spec.get("options") or {}, sort_keys=True)
            raise FlatnessError(
                f"{path} holds the built-in model {name}, rebuilt with the options it was trained with "
                f"({options}), which its weights fix: leave out --model-args (it is for a --model callable "
                "or torchvision:NAME)"
            )
        return None
    if not source.allow_source_change:
        raise FlatnessError(
            f"{path} holds the built-in model {name}, not {source.model}; leave out --model, "
            f"or pass {ALLOW_SOURCE_CHANGE_FLAG} to load its weights into that one"
        )
    return source.model


def _load_flatness(payload: dict[str, Any], source: ModelSource, root: str | None) -> Target:
    path, spec, config = payload["path"], payload["model_spec"], payload["config"]
    records = payload.get("sources") or {}
    reference = user_model_reference(spec)
    model_record = records.get("model") or {"reference": reference}
    # Every refusal comes before any code runs: the model's reference, then the dataset's.
    ref = _checked_model_reference(spec, model_record, source, path)
    dataset_record = records.get("dataset") or {"reference": config.get("dataset")}
    dataset = check_recorded("dataset", dataset_record, source.dataset, source.allow_source_change, path)
    allow = source.allow_source_change
    losses = {
        k: check_recorded(k, {"reference": config.get(k)}, getattr(source, k), allow, path) for k in ("loss", "output")
    }
    used: dict[str, Any] = {"reference": spec.get("name"), "args": None, "sha256": None}
    if ref is None:
        model = build_from_spec(spec)
    else:
        args = source.model_args if source.model_args is not None else model_record.get("args")
        model, used = build_user_model(ref, args, source.download, _shape_for(ref, config.get("dataset"), source, root))
    load_state_into(model, payload["model_state"], path)
    same_data = dataset == config.get("dataset")
    image_size = (
        source.image_size if source.image_size is not None else (config.get("image_size") if same_data else None)
    )
    normalize = source.normalize if source.normalize is not None else bool(same_data and config.get("normalize"))
    info = {
        "path": path,
        "dataset": dataset,
        "model": used["reference"],  # the model built now (another one under --allow-source-change)
        "model_record": used,
        "method": config.get("method"),
        "epoch": payload["epoch"],
        "step": payload.get("step", 0),
        "config": config,
        "metrics": payload.get("metrics", []),
        "model_spec": spec,
        "format": "flatness",
        **losses,
    }
    return Target(model, info, image_size, bool(normalize), records)


def load_target(
    checkpoint: str, source: ModelSource | None = None, device: Any = "cpu", root: str | None = None
) -> Target:
    """The model stored in (or named beside) ``checkpoint``, in eval mode on ``device``, and its dataset.

    Args:
        checkpoint: a flatness checkpoint or run folder, a ``.pt2`` program, or a plain state_dict /
            ``.safetensors`` file (then ``source.model`` builds the model).
        source: the command line's model and data options (None: all from the checkpoint).
        device: where the model goes.
        root: the data folder of built-in datasets (for a built-in model's shape on them).

    Returns:
        A ``Target``.

    Raises:
        FlatnessError: one line for anything that cannot be loaded, and for recorded code that the
            command line did not name (see the module docstring).
    """
    source = source or ModelSource()
    if checkpoint.endswith(PT2_SUFFIX) and not os.path.isdir(checkpoint):
        if source.model is not None or source.model_args is not None:
            raise FlatnessError(
                f"{checkpoint} is a .pt2 program that holds its own model: leave out --model and --model-args"
            )
        model = load_exported_program(checkpoint)
        target = Target(
            model,
            _foreign_info(checkpoint, "a .pt2 program", f"pt2:{os.path.basename(checkpoint)}", source.dataset),
            source.image_size,
            bool(source.normalize),
        )
    elif checkpoint.endswith(".safetensors") and not os.path.isdir(checkpoint):
        target = _load_foreign(checkpoint, source, root)
    else:
        try:
            payload = read_checkpoint(checkpoint)
        except ForeignCheckpointError:
            if source.model is None:
                raise
            target = _load_foreign(checkpoint, source, root)
        else:
            target = _load_flatness(payload, source, root)
    check_finite(target.model, target.info["path"])
    _resolve_losses(target, source)
    target.model.to(device).eval()
    return target


def _resolve_losses(target: Target, source: ModelSource) -> None:
    """The target's ``loss_fn`` and ``output_fn``: as its run recorded them (already checked), or as named."""
    info = target.info
    if "loss" not in info:  # a foreign file records none: the command line's, or the defaults
        info["loss"], info["output"] = check_loss_spec(source.loss), check_output_spec(source.output)
    target.loss_fn = loss_fn_for(info["loss"])
    target.output_fn = output_fn_for(info["output"])


def _load_foreign(path: str, source: ModelSource, root: str | None) -> Target:
    if source.model is None:
        raise FlatnessError(
            f"{path} is {STATE_DICT_HINT}: pass --model (and --model-args) to say which model its weights belong to"
        )
    info = _foreign_info(path, STATE_DICT_HINT, source.model, source.dataset)
    model, record = build_user_model(
        source.model, source.model_args, source.download, _shape_for(source.model, source.dataset, source, root)
    )
    load_weights_into(model, path)
    info["model_record"] = record
    return Target(model, info, source.image_size, bool(source.normalize), {"model": record})


def init_distance(model: nn.Module, checkpoint_path: str) -> float | None:
    """‖θ − θ_init‖ to the ``init.pt`` beside a flatness checkpoint, for any model (None without one).

    Args:
        model: the checkpoint's model.
        checkpoint_path: the checkpoint's file.

    Returns:
        The distance, 0.0 for ``init.pt`` itself, None when there is no readable, fitting ``init.pt``.
    """
    init_path = os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), INIT)
    if not os.path.isfile(init_path):
        return None
    if os.path.abspath(init_path) == os.path.abspath(checkpoint_path):
        return 0.0
    try:
        state = read_checkpoint(init_path)["model_state"]
        init_model = copy.deepcopy(model)
        load_state_into(init_model, state, init_path)
        return distance(model, init_model)
    except FlatnessError:
        return None  # an unreadable or foreign init.pt only loses this one number


def named_source(
    model: str | None,
    model_args: Any,
    dataset: str | None,
    normalize: bool | None = None,
    loss: str | None = None,
    output: str | None = None,
) -> ModelSource | None:
    """The ``ModelSource`` with which a study measures the runs it trained from these options.

    Args:
        model: the study's ``--model``.
        model_args: its ``--model-args``.
        dataset: its ``--dataset``.
        normalize: its ``--normalize``.
        loss: its ``--loss``.
        output: its ``--output``.

    Returns:
        A source naming the user's model, data, loss and output again (the study's own command line
        named them), or None when all are built in.
    """
    user_model = bool(model) and is_reference(model)
    code = [spec for spec in (loss, output) if is_code_reference(spec)]
    if not user_model and not is_user_dataset(dataset) and not code:
        return None
    return ModelSource(
        model=model if user_model else None,
        model_args=model_args if user_model else None,
        dataset=dataset if is_user_dataset(dataset) else None,
        normalize=normalize,
        loss=loss if is_code_reference(loss) else None,
        output=output if is_code_reference(output) else None,
    )


def config_source(config: Any) -> ModelSource | None:
    """``named_source`` of a run's ``TrainConfig`` (a study measures the runs its command line trained)."""
    return named_source(config.model, config.model_args, config.dataset, config.normalize, config.loss, config.output)


def folder_label(ref: str) -> str:
    """A folder-safe short name of a model or dataset: a built-in name as is, else the callable's or file's name."""
    if ref in DATASETS or not (is_reference(ref) or os.sep in ref or "/" in ref or "." in ref):
        return ref
    if ref.startswith("imagefolder:"):
        ref = ref[len("imagefolder:") :]
    elif ":" in ref:
        return ref.rpartition(":")[2].replace(".", "-") or "custom"
    return os.path.splitext(os.path.basename(ref.rstrip("/\\")))[0].replace(".", "-") or "custom"
