"""The feature-distillation (KD) baseline: the descendant trained from scratch with CE + the project's distillation loss.

The teacher is the ancestry (its stride 4/8/16 stage outputs, as `lgt distill` taps them); the
student maps are the descendant's outermost modules at the same strides. The loss is
`learngene_tools.distillation.loss.DistillLoss` with its reference settings (student projected
by 1x1 convs, teacher whitened, SmoothL1), added to the cross-entropy with `--kd-weight`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from learngene_tools.errors import ModelError


class FeatureTaps:
    """Forward hooks that keep the outputs of named modules of a model during its forward pass."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        modules = dict(model.named_modules())
        self.names = names
        self.out: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            self.out[name] = out[0] if isinstance(out, (tuple, list)) else out
        return hook

    def take(self) -> list[torch.Tensor]:
        """The maps of the last forward pass, in tap order (cleared)."""
        feats = [self.out[n] for n in self.names]
        self.out = {}
        return feats


class KDBaseline(nn.Module):
    """Teacher, student taps and the distillation loss (its 1x1 projections are trained with the student)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, input_size: tuple[int, int, int],
                 teacher_mean: tuple[float, ...], teacher_std: tuple[float, ...]) -> None:
        from learngene_tools.distillation.config import LossSettings
        from learngene_tools.distillation.loss import DistillLoss
        from learngene_tools.distillation.teacher import trace_taps

        super().__init__()
        self.teacher = teacher
        names = trace_taps(student, input_size)
        student.train()
        self.taps = FeatureTaps(student, names)
        with torch.no_grad():
            was = student.training
            student.eval()
            student(torch.zeros(1, *input_size))
            s_chs = [f.shape[1] for f in self.taps.take()]
            student.train(was)
            t_chs = [f.shape[1] for f in teacher(torch.zeros(1, 3, *input_size[1:]))]
        self.loss = DistillLoss(s_chs, t_chs, LossSettings())
        self.register_buffer("t_mean", torch.tensor(teacher_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("t_std", torch.tensor(teacher_std).view(1, -1, 1, 1), persistent=False)
        self.student_taps = names

    def train(self, mode: bool = True) -> "KDBaseline":
        """Train the projections; the teacher stays frozen in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def teacher_input(self, raw: torch.Tensor) -> torch.Tensor:
        """Images on the 0..1 scale as the teacher expects them: three channels, its own normalisation."""
        x = raw.expand(-1, 3, -1, -1) if raw.shape[1] == 1 else raw
        return (x - self.t_mean) / self.t_std

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        """The distillation loss for the student's last forward pass (on the same images, `raw` on 0..1)."""
        with torch.no_grad():
            targets = self.loss.teacher_targets(self.teacher(self.teacher_input(raw)))
        total, _ = self.loss(self.taps.take(), targets)
        return total


def build_kd(student: nn.Module, teacher_ckpt: str, teacher_arch: str, input_size: tuple[int, int, int],
             trust_pickle: bool = False) -> KDBaseline:
    """The KD baseline for `student`: the teacher built from its spec and checkpoint, frozen, in eval mode."""
    from learngene_tools.distillation.teacher import build_teacher

    teacher, _ = build_teacher(teacher_arch, teacher_ckpt, trust_pickle=trust_pickle, img_size=input_size[-1])
    cfg = getattr(teacher.model, "pretrained_cfg", None) or {}
    from learngene_tools.distillation.data import IMAGENET_MEAN, IMAGENET_STD

    mean = tuple(cfg.get("mean", IMAGENET_MEAN)) if isinstance(cfg, dict) else IMAGENET_MEAN
    std = tuple(cfg.get("std", IMAGENET_STD)) if isinstance(cfg, dict) else IMAGENET_STD
    try:
        return KDBaseline(student, teacher, input_size, mean, std)
    except ModelError as e:
        raise ModelError(f"KD baseline: {e}") from None
