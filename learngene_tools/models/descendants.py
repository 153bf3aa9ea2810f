"""Factories for the paper's descendants from the packages users train them with (optional extra).

Use them as transplant targets or --arch specs, e.g.
`lgt transplant learngene.safetensors learngene_tools.descendants:yolov8n -o yolov8n_lg.pt`.
Each builds with random initialisation and downloads nothing. Install the packages with
`pip install -e ".[descendants]"`.
"""

from __future__ import annotations

import os

from torch import nn

from learngene_tools.errors import ModelError


def _need(package: str, pip_name: str) -> None:
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise ModelError(f"this descendant needs {pip_name}: pip install {pip_name} (or pip install -e \".[descendants]\")")


def yolov8n() -> nn.Module:
    """Ultralytics YOLOv8n detection model (`YOLO('yolov8n.yaml').model`), random init."""
    _need("ultralytics", "ultralytics")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    from ultralytics import YOLO

    return YOLO("yolov8n.yaml").model


def detr_resnet50() -> nn.Module:
    """transformers DETR with its timm ResNet-50 backbone, random init (no pretrained backbone download)."""
    _need("transformers", "transformers")
    from transformers import DetrConfig, DetrForObjectDetection

    return DetrForObjectDetection(DetrConfig(use_pretrained_backbone=False))


def deeplabv3plus_resnet50() -> nn.Module:
    """segmentation-models-pytorch DeepLabV3+ with a ResNet-50 encoder, random init (encoder_weights=None)."""
    _need("segmentation_models_pytorch", "segmentation-models-pytorch")
    import segmentation_models_pytorch as smp

    return smp.DeepLabV3Plus(encoder_name="resnet50", encoder_weights=None)


def small_vgg(in_chans: int = 1, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64, 128, 128),
              depths: tuple[int, ...] = (2, 2, 3, 3, 3)) -> nn.Module:
    """VGG-16's layout (2-2-3-3-3 3x3 convs with BN, max-pools between) at small widths, for 32 px images."""
    layers: list[nn.Module] = []
    cin = in_chans
    for i, (w, n) in enumerate(zip(widths, depths, strict=True)):
        if i:
            layers.append(nn.MaxPool2d(2))
        for _ in range(n):
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            cin = w
    return nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):  # noqa: ANN001, ANN201
        idt = x if self.downsample is None else self.downsample(x)
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)) + idt)


class SmallResNet(nn.Module):
    """ResNet-18's layout (stride-2 3x3 stem, four stages of two basic blocks) at small widths, for 32 px images."""

    def __init__(self, in_chans: int = 1, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            stage = nn.Sequential(_BasicBlock(cin, w, 1 if i == 0 else 2), _BasicBlock(w, w, 1))
            blocks.append(stage)
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = blocks
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):  # noqa: ANN001, ANN201
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


def small_resnet(in_chans: int = 1, num_classes: int = 10) -> nn.Module:
    """SmallResNet with its default widths (16, 32, 64, 128)."""
    return SmallResNet(in_chans, num_classes)
