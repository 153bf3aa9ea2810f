"""The ancestry (teacher): any model, its weights, and taps on the outputs of its stages at strides 4/8/16."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from learngene_tools.errors import ModelError

TAP_REDUCTIONS = (4, 8, 16)


class _TapsDone(Exception):
    """Raised by the last tap's hook: nothing after the stride-16 stage is computed."""


class Teacher(nn.Module):
    """Runs `model` up to its last tap and returns the tapped feature maps, in order.

    With `indices` (positions in a timm model's feature_info) the maps come from the model's own
    `forward_intermediates`; without, forward hooks on the `taps` modules collect them.
    """

    def __init__(self, model: nn.Module, taps: Sequence[str], indices: Sequence[int] | None = None) -> None:
        super().__init__()
        self.model = model
        self.taps = list(taps)
        self.indices = None if indices is None else list(indices)
        self._out: dict[str, torch.Tensor] = {}
        if self.indices is not None:
            return
        modules = dict(model.named_modules())
        missing = [t for t in self.taps if t not in modules]
        if missing:
            raise ModelError(f"teacher has no module named {', '.join(missing)} (taps are module names such as layer2)")
        for name in self.taps:
            modules[name].register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(_m: nn.Module, _inp: object, out: torch.Tensor) -> None:
            self._out[name] = out[0] if isinstance(out, (tuple, list)) else out
            if len(self._out) == len(self.taps):
                raise _TapsDone

        return hook

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self._intermediates(x) if self.indices is not None else self._hooked(x)
        for name, f in zip(self.taps, feats):
            if f.ndim != 4:
                raise ModelError(f"teacher tap {name} gave a {f.ndim}-d output {tuple(f.shape)}; taps must give NCHW maps")
        return feats

    def _intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.model.forward_intermediates(x, indices=self.indices, intermediates_only=True, stop_early=True)
        if len(feats) != len(self.taps):
            raise ModelError(f"the teacher's forward_intermediates gave {len(feats)} maps for feature indices "
                             f"{self.indices}; name its stages with --taps")
        return list(feats)

    def _hooked(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._out = {}
        try:
            self.model(x)
        except _TapsDone:
            pass
        missing = [t for t in self.taps if t not in self._out]
        if missing:
            raise ModelError(f"teacher taps {missing} were not reached in the forward pass")
        feats, self._out = [self._out[t] for t in self.taps], {}
        return feats


def taps_from_feature_info(model: nn.Module) -> list[str] | None:
    """For a timm model: the last feature_info module at each of strides 4, 8 and 16."""
    found = _feature_info_taps(model)
    return None if found is None else [name for _, name in found]


def _feature_info_taps(model: nn.Module) -> list[tuple[int, str]] | None:
    """(feature_info index, module name) of the last feature at each of strides 4, 8 and 16, or None."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list) or not info or not all(isinstance(i, dict) for i in info):
        return None
    taps = []
    for r in TAP_REDUCTIONS:
        at = [(i, f["module"]) for i, f in enumerate(info) if f.get("reduction") == r]
        if not at:
            return None
        taps.append(at[-1])
    return taps


def trace_taps(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> list[str]:
    """Find taps by one dummy forward: at each stride 4, 8, 16, the last of the outermost modules with that output stride."""
    from learngene_tools.architectures.tracing import stage_outputs

    found = stage_outputs(model, input_size, TAP_REDUCTIONS)
    for r in TAP_REDUCTIONS:
        if r not in found:
            raise ModelError(f"the teacher has no module with output stride {r}; name its stages with --taps")
    return [found[r] for r in TAP_REDUCTIONS]


def build_teacher(arch: str, checkpoint: str | Path | None, taps: Sequence[str] | None = None,
                  merged: bool = True, trust_pickle: bool = False, img_size: int = 224) -> tuple[Teacher, dict]:
    """The frozen teacher in eval mode, and a description of it for provenance."""
    from learngene_tools.architectures.specs import build_model

    kwargs = {"merged": True} if merged and _is_replknet(arch) else {}
    model = build_model(arch, seed=0, **kwargs)
    if checkpoint is not None:
        from learngene_tools.distillation.ancestry import load_ancestry_checkpoint

        load_ancestry_checkpoint(model, checkpoint, trust_pickle=trust_pickle)
    model.eval().requires_grad_(False)
    teacher = _teacher_on(model, taps, img_size)
    return teacher, {"arch": arch, "taps": list(teacher.taps), "merged": bool(kwargs)}


def _teacher_on(model: nn.Module, taps: Sequence[str] | None, img_size: int) -> Teacher:
    """User taps and models without feature_info use hooks; timm's feature_info taps use forward_intermediates."""
    if taps:
        return Teacher(model, taps)
    found = _feature_info_taps(model)
    if found is None:
        return Teacher(model, trace_taps(model, (3, img_size, img_size)))
    indices = [i for i, _ in found] if callable(getattr(model, "forward_intermediates", None)) else None
    return Teacher(model, [name for _, name in found], indices)


def _is_replknet(arch: str) -> bool:
    return arch.split(":", 1)[-1].startswith("replknet")
