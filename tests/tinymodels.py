"""Small CNNs used as transplant targets (importable as `tinymodels:<factory>` for --arch)."""

from __future__ import annotations

import torch
from torch import nn


def tiny_vgg() -> nn.Module:
    """A VGG-style CNN: 3x3 convs with BN at strides 1, 2, 4, 8, 16 and a linear head."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    cin = 3
    for i, (w, n) in enumerate([(8, 2), (16, 2), (24, 2), (32, 2), (40, 2)]):
        if i:
            layers.append(nn.MaxPool2d(2))
        for _ in range(n):
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            cin = w
    return nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10))


def only_linear() -> nn.Module:
    """No conv at all."""
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 4))


def only_pointwise() -> nn.Module:
    """Convs, but every one 1x1: nothing a 3x3 learngene can initialise."""
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1))
