"""Factories for the paper's descendants from the packages users train them with (optional extra).

Use them as transplant targets or --arch specs, e.g.
`lgt transplant learngene.safetensors learngene_tools.descendants:yolov8n -o yolov8n_lg.pt`.
Each builds with random initialisation and downloads nothing. Install the packages with
`pip install -e ".[descendants]"`.
"""

from __future__ import annotations

import os

from torch import nn

from .errors import LgtError


def _need(package: str, pip_name: str) -> None:
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise LgtError(f"this descendant needs {pip_name}: pip install {pip_name} (or pip install -e \".[descendants]\")")


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
