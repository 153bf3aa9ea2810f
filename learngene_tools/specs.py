"""Model specs: ``timm:NAME`` (or a bare timm name), ``torchvision:NAME``, ``package.module:factory``.

Every model is built with random initialisation; nothing is downloaded.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learngene_tools.errors import ModelError

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_model_spec(text: str) -> bool:
    """True for `prefix:name` strings that are not existing files."""
    return bool(_SPEC.match(text)) and not Path(text).exists()


def build_model(spec: str, seed: int = 0, **kwargs: Any) -> nn.Module:
    """Build a randomly initialised model from a spec (seeded, so the same spec gives the same weights).

    `kwargs` go to the model's constructor (timm: `create_model`; torchvision: the builder).
    """
    torch.manual_seed(seed)
    prefix, _, name = spec.partition(":") if ":" in spec else ("timm", ":", spec)
    try:
        if prefix == "timm":
            import timm  # importing learngene_tools registered lgt_aux_* and replknet_* with timm

            if not timm.is_model(name):
                raise ModelError(f"unknown timm model {name!r}; `python -c \"import timm; print(timm.list_models('*{name[:4]}*'))\"` lists near names")
            return timm.create_model(name, pretrained=False, **kwargs)
        if prefix == "torchvision":
            import torchvision

            try:
                builder = torchvision.models.get_model_builder(name)
            except ValueError:
                raise ModelError(f"unknown torchvision model {name!r}") from None
            try:
                return builder(weights=None, weights_backbone=None, **kwargs)
            except TypeError:
                return builder(weights=None, **kwargs)
        module = importlib.import_module(prefix)
        factory = getattr(module, name, None)
        if not callable(factory):
            raise ModelError(f"{spec}: {prefix} has no callable {name!r}")
        model = factory(**kwargs)
    except ImportError as e:
        raise ModelError(f"{spec}: cannot import {e.name or prefix} ({e}); install it first") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def default_input_size(model: nn.Module, in_chans: int) -> tuple[int, int, int]:
    """(C, H, W) for a dummy forward pass: timm's pretrained_cfg input size when known, else 224."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if size and len(size) == 3:
        return (in_chans, int(size[1]), int(size[2]))
    return (in_chans, 224, 224)
