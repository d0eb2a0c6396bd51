"""One registry of models: ``build_model(name, in_channels, image_size, num_classes, **options)``.

A model is fully described by a small JSON-safe *spec* (name, shape of the data, options), which a
checkpoint stores so that ``load_checkpoint`` can rebuild it without any command line.
"""

from __future__ import annotations

import re
from typing import Any

import torch.nn as nn
import torch.nn.functional as F

from flatness.core.errors import FlatnessError


class MLP(nn.Module):
    """A fully connected network: flatten, ``depth`` hidden ReLU layers of ``width``, a linear head."""

    def __init__(self, in_features: int, num_classes: int, width: int = 128, depth: int = 2):
        super().__init__()
        layers = [nn.Flatten()]
        features = in_features
        for _ in range(depth):
            layers += [nn.Linear(features, width), nn.ReLU()]
            features = width
        layers.append(nn.Linear(features, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        """The logits of the batch ``x``."""
        return self.net(x)


class ConvNet(nn.Module):
    """A small CNN that trains in seconds on a laptop CPU: two conv-BN-ReLU blocks and a classifier.

    BatchNorm is there on purpose: it is what makes flatness measurements subtle on real networks
    (scale invariance, train versus eval statistics), so the default model exercises it.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 2
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * side * side, 64), nn.ReLU(), nn.Linear(64, num_classes)
        )

    def forward(self, x):
        """The logits of the image batch ``x``."""
        return self.classifier(self.features(x))


class PreActBlock(nn.Module):
    """The pre-activation residual block (He et al. 2016): BN-ReLU-conv twice, plus the shortcut.

    The wide residual block (Zagoruyko & Komodakis 2016) is the same block with dropout between the
    convolutions and the stride on the second one (``wide=True``); parameter names are the same.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0, wide: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=1 if wide else stride, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride if wide else 1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x):
        """The block's output: the residual branch plus the (projected when needed) input."""
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(self.dropout(out))))
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation ResNet (He et al. 2016), the PreActResNet-18 of the AMP paper."""

    def __init__(self, in_channels: int, num_classes: int, num_blocks=(2, 2, 2, 2), width: int = 64):
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        stages = []
        for i, blocks in enumerate(num_blocks):
            stages.append(self._stage(width * 2**i, blocks, stride=1 if i == 0 else 2))
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(self.in_planes)
        self.linear = nn.Linear(self.in_planes, num_classes)

    def _stage(self, planes, blocks, stride):
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        """The logits of the image batch ``x``."""
        out = self.stages(self.conv1(x))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class WideResNet(nn.Module):
    """WRN-depth-k (Zagoruyko & Komodakis 2016): depth = 6n + 4."""

    def __init__(self, in_channels: int, num_classes: int, depth: int = 28, widen: int = 10, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise FlatnessError(f"WideResNet depth must be 6n+4 (10, 16, 22, 28, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        layers, in_planes = [], widths[0]
        for i, planes in enumerate(widths[1:]):
            for j in range(n):
                layers.append(PreActBlock(in_planes, planes, 2 if (j == 0 and i > 0) else 1, dropout, wide=True))
                in_planes = planes
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        """The logits of the image batch ``x``."""
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """VGG-16 with BatchNorm; pooling stops once the feature map is 1x1, so small images work too."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int):
        super().__init__()
        layers, channels, side = [], in_channels, image_size
        for item in VGG16_LAYOUT:
            if item == "M":
                if side >= 2:
                    layers.append(nn.MaxPool2d(2))
                    side //= 2
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
                channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        """The logits of the image batch ``x``."""
        out = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(out)


class MLP1D(nn.Module):
    """The MNIST-1D paper's MLP (Greydanus 2020): 40-100-100-10 with ReLU.

    The second hidden layer is added to the first (a residual step, as in the paper's code);
    ``width`` sets the hidden size.
    """

    def __init__(self, in_features: int, num_classes: int, width: int = 100):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear1 = nn.Linear(in_features, width)
        self.linear2 = nn.Linear(width, width)
        self.linear3 = nn.Linear(width, num_classes)

    def forward(self, x):
        """The logits of the signal batch ``x``."""
        h = F.relu(self.linear1(self.flatten(x)))
        h = h + F.relu(self.linear2(h))
        return self.linear3(h)


class Conv1D(nn.Module):
    """The MNIST-1D paper's 1-D CNN.

    Three strided convolutions (kernels 5, 3, 3; stride 2) with ReLU and a linear classifier on the
    flattened features; ``width`` sets the channels (25).
    """

    def __init__(self, in_channels: int, length: int, num_classes: int, width: int = 25):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(in_channels, width, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        for kernel in (5, 3, 3):
            length = (length + 2 - kernel) // 2 + 1
        if length < 1:
            raise FlatnessError("conv1d needs signals of at least 3 samples")
        self.classifier = nn.Linear(width * length, num_classes)

    def forward(self, x):
        """The logits of the signal batch ``x`` ([B, L] or [B, C, L])."""
        if x.dim() == 2:  # [B, L] signals without a channel dimension
            x = x.unsqueeze(1)
        return self.classifier(self.features(x).flatten(1))


def _wrn_options(name: str) -> dict[str, int]:
    match = re.fullmatch(r"wrn(?:-(\d+)-(\d+))?", name)
    if not match:
        raise FlatnessError(f"bad WideResNet name {name!r}: use wrn or wrn-DEPTH-WIDEN, e.g. wrn-28-10")
    return {"depth": int(match.group(1) or 28), "widen": int(match.group(2) or 10)}


MODEL_NAMES = ("mlp", "convnet", "preactresnet18", "wrn", "vgg16", "mlp1d", "conv1d")


def canonical_model_name(name: str) -> str:
    """The registry's name for ``name``: lower case, and ``wrn`` with its depth and width spelled out.

    Args:
        name: a model name as typed (``ConvNet``, ``wrn``, ``wrn-16-4``, ...).

    Returns:
        The canonical name (e.g. ``wrn-28-10`` for ``wrn``).

    Raises:
        FlatnessError: for an unknown name or a malformed WideResNet name.
    """
    name = name.strip().lower()
    if name.startswith("wrn"):
        options = _wrn_options(name)
        return f"wrn-{options['depth']}-{options['widen']}"
    if name not in MODEL_NAMES:
        raise FlatnessError(
            f"unknown model {name!r}; choose one of: mlp, convnet, preactresnet18, wrn-DEPTH-WIDEN (e.g. wrn-28-10), "
            "vgg16, mlp1d, conv1d"
        )
    return name


def model_spec(name: str, in_channels: int, image_size: int, num_classes: int, **options: Any) -> dict[str, Any]:
    """The JSON-safe description from which ``build_from_spec`` rebuilds the model."""
    name = canonical_model_name(name)
    options = {k: v for k, v in options.items() if v is not None}
    return {
        "name": name,
        "in_channels": int(in_channels),
        "image_size": int(image_size),
        "num_classes": int(num_classes),
        "options": options,
    }


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """A freshly initialised model from the description ``model_spec`` made (e.g. read from a checkpoint).

    Args:
        spec: ``name``, ``in_channels``, ``image_size`` (the length for 1-D signals), ``num_classes``
            and ``options`` (``width``, ``depth``, ``dropout`` where the model has them).

    Returns:
        The model (random weights; torch's current seed).

    Raises:
        FlatnessError: for an unknown name or an option out of range.
    """
    name = canonical_model_name(spec["name"])
    c, s, k = spec["in_channels"], spec["image_size"], spec["num_classes"]
    options = dict(spec.get("options") or {})
    if name == "mlp":
        width, depth = int(options.get("width", 128)), int(options.get("depth", 2))
        if width < 1 or depth < 0:
            raise FlatnessError(f"mlp needs width >= 1 and depth >= 0, got width={width}, depth={depth}")
        return MLP(c * s * s, k, width=width, depth=depth)
    if name == "convnet":
        return ConvNet(c, s, k, width=int(options.get("width", 16)))
    if name == "preactresnet18":
        return PreActResNet(c, k)
    if name.startswith("wrn"):
        wrn = _wrn_options(name)
        return WideResNet(c, k, depth=wrn["depth"], widen=wrn["widen"], dropout=float(options.get("dropout", 0.0)))
    if name == "vgg16":
        return VGG(c, s, k)
    # 1-D signals: image_size is the sequence length
    if name in ("mlp1d", "conv1d"):
        width = int(options.get("width", 100 if name == "mlp1d" else 25))
        if width < 1:
            raise FlatnessError(f"{name} needs width >= 1, got {width}")
        return MLP1D(c * s, k, width=width) if name == "mlp1d" else Conv1D(c, s, k, width=width)
    raise AssertionError(name)  # canonical_model_name already rejected anything else


def build_model(name: str, in_channels: int, image_size: int, num_classes: int, **options: Any) -> nn.Module:
    """A freshly initialised built-in model.

    Args:
        name: a name ``canonical_model_name`` accepts.
        in_channels: input channels.
        image_size: input height = width (the length for 1-D signals).
        num_classes: outputs.
        **options: model options (``width``, ``depth``, ``dropout``); ``None`` values are dropped.

    Returns:
        The model.
    """
    return build_from_spec(model_spec(name, in_channels, image_size, num_classes, **options))
