"""ResNet-18 and MobileNetV2 in plain torch (no torchvision, which has no CPU wheel here and
none from NVIDIA for some JetPacks). With ``norm="batch"`` (the default) their ``state_dict()``
has exactly torchvision's keys, order, shapes and dtypes (``torchvision.models.resnet18`` /
``mobilenet_v2``), so torchvision's weights load into them with ``strict=True`` and give the same
outputs: checked by ``scripts/torchvision_equivalence.py``; ``tests/test_nets.py`` compares the
keys with the reference written by ``scripts/torchvision_reference.py``.

``norm="group"`` puts GroupNorm where torchvision has BatchNorm: no batch statistics, so a
step split over boards (and micro-batches) equals the step on one machine, as with
``cnn-small`` (for MobileNetV2 only with ``dropout=0``: random masks differ between one
machine's passes and several ranks' passes); its state dict has no running statistics and does
not load torchvision weights. See docs/training.md ("Models")."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

__all__ = ["MobileNetV2", "Norm", "ResNet18", "mobilenet_v2", "resnet18"]

Norm = Literal["batch", "group"]


def _norm(norm: Norm, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        # Every channel count of both nets is a multiple of 8: groups of at most 32 channels' worth.
        return nn.GroupNorm(math.gcd(32, channels), channels)
    raise ValueError(f"norm must be 'batch' or 'group', not {norm!r}")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class _BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: attribute names and registration order make the keys."""

    def __init__(self, cin: int, cout: int, stride: int, norm: Norm) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = _norm(norm, cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = _norm(norm, cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        result: torch.Tensor = self.relu(out + identity)
        return result


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016) as torchvision builds it: 7x7/2 stem, 3x3/2 max pool, four
    stages of two basic blocks (64, 128, 256, 512 channels), global average pool, linear head."""

    def __init__(self, num_classes: int = 1000, norm: Norm = "batch") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = _norm(norm, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(_BasicBlock(64, 64, 1, norm), _BasicBlock(64, 64, 1, norm))
        self.layer2 = nn.Sequential(_BasicBlock(64, 128, 2, norm), _BasicBlock(128, 128, 1, norm))
        self.layer3 = nn.Sequential(_BasicBlock(128, 256, 2, norm), _BasicBlock(256, 256, 1, norm))
        self.layer4 = nn.Sequential(_BasicBlock(256, 512, 2, norm), _BasicBlock(512, 512, 1, norm))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():  # torchvision's initialisation (fc keeps torch's default)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        out: torch.Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return out


def _conv_norm_relu6(cin: int, cout: int, kernel: int, stride: int, groups: int, norm: Norm) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation`` (an ``nn.Sequential``: keys ``.0`` conv, ``.1`` norm)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        _norm(norm, cout),
        nn.ReLU6(inplace=True),
    )


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, norm: Norm) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_norm_relu6(cin, hidden, 1, 1, 1, norm))  # pointwise expansion
        layers += [
            _conv_norm_relu6(hidden, hidden, 3, stride, hidden, norm),  # depthwise
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),  # pointwise projection, linear
            _norm(norm, cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return x + out if self.use_res_connect else out


# (expansion t, channels c, repeats n, first stride s): torchvision's (and the paper's) table, width 1.0
_MOBILENET_V2_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) at width 1.0 as torchvision builds it: 32-channel 3x3/2
    stem, 17 inverted residual blocks, 1x1 conv to 1280, global average pool, dropout, linear."""

    def __init__(self, num_classes: int = 1000, norm: Norm = "batch", dropout: float = 0.2) -> None:
        super().__init__()
        features: list[nn.Module] = [_conv_norm_relu6(3, 32, 3, 2, 1, norm)]
        cin = 32
        for t, c, n, s in _MOBILENET_V2_SETTING:
            for i in range(n):
                features.append(_InvertedResidual(cin, c, s if i == 0 else 1, t, norm))
                cin = c
        features.append(_conv_norm_relu6(cin, 1280, 1, 1, 1, norm))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(1280, num_classes))
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        out: torch.Tensor = self.classifier(torch.flatten(x, 1))
        return out


def resnet18(num_classes: int = 1000, norm: Norm = "batch") -> ResNet18:
    return ResNet18(num_classes, norm)


def mobilenet_v2(num_classes: int = 1000, norm: Norm = "batch", dropout: float = 0.2) -> MobileNetV2:
    return MobileNetV2(num_classes, norm, dropout)
