"""Model registry: a small CNN (tests, demo), ResNet-18 and MobileNetV2 in plain torch (their
state dicts are torchvision's, so its weights load), MobileNetV3-small when torchvision is
installed, and any ``module:callable`` factory; fine-tuning from a base checkpoint loaded with
``weights_only=True``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from deepedge.training._errors import TrainingError
from deepedge.training._files import load_weights
from deepedge.training._nets import mobilenet_v2, resnet18

__all__ = ["SmallCNN", "build_model", "load_checkpoint"]


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head. GroupNorm, not BatchNorm: batch statistics would make
    a split batch differ from the whole one, and the equivalence guarantee would not hold."""

    def __init__(self, num_classes: int, channels: int = 3, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.GroupNorm(4, width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.GroupNorm(4, 2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Linear(2 * width * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.flatten(self.features(x), 1))
        return out


def _torchvision(name: str) -> Callable[..., nn.Module]:
    try:
        models = importlib.import_module("torchvision.models")
    except ImportError:
        raise TrainingError(f"model {name!r} needs torchvision (pip install 'deepedge[vision]')") from None
    return getattr(models, name)  # type: ignore[no-any-return]


_REGISTRY: dict[str, Callable[[int], nn.Module]] = {
    "cnn-small": lambda n: SmallCNN(n),
    # BatchNorm, as torchvision (its weights load); -gn: GroupNorm and no dropout, so a step split
    # over ranks and micro-batches is the step of one machine (docs/training.md, "Models")
    "resnet18": lambda n: resnet18(n),
    "resnet18-gn": lambda n: resnet18(n, norm="group"),
    "mobilenet_v2": lambda n: mobilenet_v2(n),
    "mobilenet_v2-gn": lambda n: mobilenet_v2(n, norm="group", dropout=0.0),
    "mobilenet_v3_small": lambda n: _torchvision("mobilenet_v3_small")(num_classes=n),
}


def build_model(name: str, num_classes: int) -> nn.Module:
    if name in _REGISTRY:
        return _REGISTRY[name](num_classes)
    module, _, attr = name.partition(":")
    if not attr:
        raise TrainingError(f"unknown model {name!r}: one of {', '.join(_REGISTRY)} or module:callable")
    try:
        factory = getattr(importlib.import_module(module), attr)
        model = factory(num_classes=num_classes)
    except (ImportError, AttributeError, TypeError) as exc:
        raise TrainingError(f"model {name!r}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise TrainingError(f"model {name!r} did not return a torch.nn.Module")
    return model


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load weights saved as a state dict, or as deepedge's checkpoint {"model": state_dict, ...}."""
    data = load_weights(Path(path), "base checkpoint")
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise TrainingError(f"base checkpoint {path}: no state dict in it")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise TrainingError(f"base checkpoint {path} does not fit the model: {str(exc)[:300]}") from None
