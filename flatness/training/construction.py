"""What a run trains, built from its config.

The initial model, drawn from ``seed`` (a built-in model from its spec, or a user's model whose file
must not have changed since the run began), and the optimizer (SGD, or AMP/SAM around the same SGD).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from flatness.core.errors import FlatnessError
from flatness.data.datasets import dataset_info
from flatness.models.references import is_reference
from flatness.models.registry import build_from_spec, canonical_model_name, model_spec
from flatness.sources.loading import build_user_model, infer_shape, is_code_reference, is_user_dataset
from flatness.training.config import TrainConfig
from flatness.training.optim import AMP, SAM


def initial_model(config: TrainConfig, train_set, stored: dict[str, Any] | None) -> tuple[nn.Module, dict, dict]:
    """The run's initial model (drawn from ``seed``), its spec, and the record of a user's model.

    Args:
        config: the run's config.
        train_set: the training split (a built-in model's shape on user data comes from it).
        stored: the resumed checkpoint's payload, or None for a new run.

    Returns:
        ``(model, model_spec, model record)``; the record is empty for a built-in model.
    """
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


def _model_spec(config: TrainConfig, train_set) -> dict[str, Any]:
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


def build_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """The run's optimizer: SGD for ERM, AMP or SAM wrapped around the same SGD settings.

    Args:
        config: the run's config (method, SGD settings, AMP/SAM radii, grad_clip).
        params: the parameters to train.

    Returns:
        The optimizer; AMP and SAM need ``step(closure)``.
    """
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
