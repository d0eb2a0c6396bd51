"""Named training presets for ``flatness train --recipe NAME``.

A recipe is a set of TrainConfig values; options given explicitly on the command line (or
explicitly to ``training.build_config``) override it, and TrainConfig's defaults fill the rest.
``flatness.training.config.recipe_values`` reads a recipe (this module holds only the data, so that
it needs nothing of ``config``).
"""

from __future__ import annotations

from typing import Any

# The published AMP setup (Zheng et al., CVPR 2021, and its reference code) for PreActResNet18 /
# WRN-28-10 on CIFAR/SVHN. ERM baselines of the paper use the same recipe with --method erm.
_AMP_PAPER: dict[str, Any] = {
    "dataset": "cifar10",
    "model": "preactresnet18",
    "method": "amp",
    "epochs": 200,
    "batch_size": 50,
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 1e-4,
    "schedule": "step",
    "milestones": [100, 150],
    "grad_clip": 50.0,
    "epsilon": 0.5,
    "inner_lr": 1.0,
    "inner_iter": 1,
    "ball": "tensor",
    "augment": True,
}

RECIPES: dict[str, dict[str, Any]] = {
    "amp-paper": {
        "description": "the AMP paper's CIFAR/SVHN recipe: PreActResNet18, SGD lr 0.1 Nesterov 0.9, wd 1e-4, "
        "batch 50, 200 epochs, lr x0.1 at 100 and 150, grad clip 50, AMP eps 0.5 inner_lr 1 "
        "inner_iter 1 (per-tensor ball), augmentation on",
        "values": dict(_AMP_PAPER),
    },
    "amp-paper-vgg": {
        "description": "the AMP paper's VGG16 recipe: as amp-paper with model vgg16, eps 0.1, inner_lr 0.2",
        "values": dict(_AMP_PAPER, model="vgg16", epsilon=0.1, inner_lr=0.2),
    },
    # MNIST-1D (Greydanus 2020) with the paper's MLP, from a small sweep (plain SGD momentum 0.9, batch 100,
    # cosine to 0, no weight decay; lr 0.1; AMP eps 0.5, inner_lr 1). Through `flatness train` over seeds
    # 0-2: test accuracy ERM 68.1 +- 1.1 % vs AMP 70.5 +- 0.7 %, train accuracy 100 % for both; ~20 s a
    # run on one CPU thread, so `flatness experiment --dataset mnist1d` fits in a few minutes.
    "mnist1d-default": {
        "description": "MNIST-1D with the paper's MLP (mlp1d, 40-100-100-10): SGD lr 0.1 momentum 0.9 (no "
        "Nesterov), no weight decay, batch 100, 100 epochs, cosine schedule, AMP eps 0.5 "
        "inner_lr 1 (ERM ~68 %, AMP ~70.5 % test accuracy)",
        "values": {
            "dataset": "mnist1d",
            "model": "mlp1d",
            "epochs": 100,
            "batch_size": 100,
            "lr": 0.1,
            "momentum": 0.9,
            "nesterov": False,
            "weight_decay": 0.0,
            "schedule": "cosine",
            "milestones": [],
            "epsilon": 0.5,
            "inner_lr": 1.0,
            "inner_iter": 1,
            "ball": "tensor",
        },
    },
    "digits-default": {
        "description": "the offline default (what `flatness train` does with no options): digits, convnet, "
        "see TrainConfig for the values",
        # TrainConfig's own defaults (flatness.training.config.recipe_values), so the two can never disagree
        "values": {},
    },
}


# Test accuracy (%) reported for ERM / AMP with these recipes: the AMP paper (CIFAR-10) and a public
# reproduction (GTSRB, AMP only). Other pairs: see the paper's tables; none are quoted here unverified.
REPORTED = {
    ("preactresnet18", "cifar10"): "paper: ERM 94.98 / AMP 96.03",
    ("wrn-28-10", "cifar10"): "paper: ERM 96.13 / AMP 97.00",
    ("preactresnet18", "gtsrb"): "reproduction: AMP 99.25",
    ("wrn-28-10", "gtsrb"): "reproduction: AMP 99.22",
}

# One ready-to-run recipe per (model, dataset) of the published study: `--recipe amp-<model>-<dataset>`
# (and `--method erm` for its baseline). On a GPU add `--precision bf16 --channels-last` for speed and
# `--nproc N` (or torchrun) for several GPUs; the global batch stays 50 as published.
for _model in ("preactresnet18", "wrn-28-10"):
    for _dataset in ("cifar10", "cifar100", "svhn", "gtsrb"):
        _reported = REPORTED.get((_model, _dataset), "no figure quoted here")
        RECIPES[f"amp-{_model}-{_dataset}"] = {
            "description": f"the AMP paper's recipe with {_model} on {_dataset} ({_reported})",
            "values": dict(_AMP_PAPER, model=_model, dataset=_dataset),
        }


# The recipe a run on a dataset starts from when none is named (a dataset absent here: TrainConfig's
# defaults, tuned for digits).
DATASET_RECIPES: dict[str, str] = {"mnist1d": "mnist1d-default"}


def recipe_names():
    """Every recipe's name, sorted (the accepted values of ``--recipe``)."""
    return sorted(RECIPES)
