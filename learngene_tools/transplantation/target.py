"""Transplant targets: a checkpoint file or a freshly built model (spec), and its conv layers with their roles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from learngene_tools.errors import ModelError
from learngene_tools.io.checkpoint import Checkpoint, checkpoint_from_state_dict, load_checkpoint
from learngene_tools.specs import build_model, default_input_size, is_model_spec
from learngene_tools.transplantation.convs import TargetConv, convs_from_state, trace_convs


def open_target(target: str | Path, seed: int = 0, trust_pickle: bool = False) -> tuple[Checkpoint, torch.nn.Module | None]:
    """A target checkpoint file, or a freshly built model for a spec such as `timm:resnet50`."""
    if isinstance(target, str) and is_model_spec(target):
        model = build_model(target, seed=seed)
        return checkpoint_from_state_dict(model.state_dict(), target, arch=target), model
    return load_checkpoint(target, trust_pickle=trust_pickle), None


def target_convs(
    ckpt: Checkpoint, arch: str | None, model: torch.nn.Module | None = None,
    input_size: tuple[int, ...] | None = None, seed: int = 0,
) -> list[TargetConv]:
    """The target's convs: traced through `arch` (or the built model) when given, else from the state_dict."""
    if arch is None and model is None:
        return convs_from_state(ckpt.shapes, module_order=ckpt.fmt != "safetensors")
    if model is None:
        model = build_model(arch, seed=seed)  # type: ignore[arg-type]
    first = next((s for s in ckpt.shapes.values() if len(s) == 4), None)
    in_chans = first[1] if first else 3
    c, h, w = default_input_size(model, in_chans)
    if input_size is not None:
        h, w = input_size[-2:]
        c = input_size[0] if len(input_size) == 3 else c
    return trace_convs(model, (c, h, w), ckpt.shapes)


def describe_target(target: str | Path, arch: str | None = None, trust_pickle: bool = False) -> dict[str, Any]:
    """Describe a checkpoint (or model spec): format, wrapper, and every conv with what a transplant does with it."""
    ckpt, model = open_target(target, trust_pickle=trust_pickle)
    arch = arch or ckpt.arch
    convs = target_convs(ckpt, arch, model)
    if not convs:
        raise ModelError(f"{target}: has no conv layer (no 4-D weight); lgt transplants into CNN checkpoints")
    n_params = 0
    for shape in ckpt.shapes.values():
        size = 1
        for d in shape:
            size *= d
        n_params += size
    return {
        "kind": "checkpoint",
        "file": ckpt.source,
        "format": ckpt.fmt,
        "wrapper": ckpt.wrapper_desc,
        "tensors": len(ckpt.shapes),
        "params": n_params,
        "strides": "traced" if arch else "estimated",
        "arch": arch,
        "metadata": {k: v for k, v in ckpt.metadata.items() if k.startswith(("lgt.", "learngene."))},
        "convs": [
            {"key": c.key, "shape": list(c.shape), "reduction": c.reduction, "groups": c.groups, "bn": c.bn,
             "eligible": c.eligible, "role": ("can take learngene: " if c.eligible else "skipped: ") + c.reason}
            for c in convs
        ],
    }


def default_output(target: str | Path) -> Path:
    """`<target stem>_lg<suffix>` in the current folder (`<model>_lg.safetensors` for a model spec)."""
    if isinstance(target, str) and is_model_spec(target):
        return Path(f"{target.split(':', 1)[1].replace('.', '_')}_lg.safetensors")
    p = Path(target)
    return Path(f"{p.stem}_lg{p.suffix or '.pt'}")
