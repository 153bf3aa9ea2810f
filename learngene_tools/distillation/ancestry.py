"""Ancestry checkpoints: a released file loaded strictly into the teacher model built from its spec.

RepLKNet's released `.pth` files hold the state under `model` beside `optimizer`, `epoch`,
`scaler`, `args` (an argparse.Namespace, allowed in the weights-only load) and maybe
`model_ema`; bare state_dicts, `module.` prefixes and safetensors files load too.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learngene_tools.errors import InvalidFileError, ModelError
from learngene_tools.io.reading import common_prefix, find_state_dict, load_checkpoint
from learngene_tools.models.replknet import RepLKNet, load_replknet_state


def _ema_state(container: Any, path: str | Path) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    found = find_state_dict(container.get("model_ema")) if isinstance(container, Mapping) and "model_ema" in container else None
    if found is None:
        top = ", ".join(map(str, list(container)[:8])) if isinstance(container, Mapping) else type(container).__name__
        raise InvalidFileError(f"{path}: has no `model_ema` weights (top level: {top}); drop the EMA option")
    raw, inner = found
    keys = [k for k, v in raw.items() if isinstance(v, torch.Tensor)]
    pre = common_prefix(keys)
    return {k[len(pre):]: raw[k] for k in keys}, ("model_ema", *inner)


def load_ancestry_checkpoint(model: nn.Module, path: str | Path, ema: bool = False,
                             trust_pickle: bool = False) -> dict[str, Any]:
    """Load an ancestry checkpoint strictly into `model`, in place; `ema=True` takes `model_ema` instead of `model`.

    Returns a description: source, wrapper, the epoch when the file records one, and for
    RepLKNet the checkpoint's form and whether it was merged on load.
    """
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = load_checkpoint(path, trust_pickle=trust_pickle)
    if ema:
        state, wrapper = _ema_state(ckpt.container, path)
    else:
        state, wrapper = ckpt.state_dict(), ckpt.wrapper
    info: dict[str, Any] = {}
    if isinstance(model, RepLKNet):
        info = load_replknet_state(model, state, str(path))
    else:
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ModelError(
                f"{path}: does not match the ancestry architecture: {len(result.missing_keys)} missing keys "
                f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected "
                f"(e.g. {result.unexpected_keys[:3]}); check --arch"
            )
    container = ckpt.container if isinstance(ckpt.container, Mapping) else {}
    epoch = container.get("epoch")
    return {"source": str(path), "wrapper": ", ".join(wrapper) or "bare",
            "epoch": epoch if isinstance(epoch, (int, str)) else None, **info}
