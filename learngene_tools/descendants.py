"""`learngene_tools.descendants:NAME` specs (since 0.1.0) keep working: the factories live in `models.descendants`."""

from learngene_tools.models.descendants import (
    deeplabv3plus_resnet50,
    detr_resnet50,
    small_resnet,
    small_vgg,
    yolov8n,
)

__all__ = ["deeplabv3plus_resnet50", "detr_resnet50", "small_resnet", "small_vgg", "yolov8n"]
