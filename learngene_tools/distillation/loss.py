"""Dense feature distillation loss (CLKG Eq. 2): sum over stages of alpha_i * d(projected, whitened).

Default ("smoothl1", the feature-distillation reference, Wei et al. 2022): the teacher map is
whitened (layer norm over channels at each pixel, no affine, no gradient), the student map is
projected to the teacher's channels by a 1x1 conv, and d is SmoothL1 with beta 2.0, averaged
over elements. "l2" is the same with a mean squared error. "paper" is Eq. 2 as printed:
g (the 1x1 conv) on the teacher, w (the whitening) on the student, d the L2 norm over
channels at each pixel, averaged over pixels and images.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from learngene_tools.distillation.config import LossSettings


def whiten(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Non-parametric layer norm over the channels of an NCHW map, at each pixel."""
    x = x.float()
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, keepdim=True, unbiased=False)
    return (x - mean) * torch.rsqrt(var + eps)


class DistillLoss(nn.Module):
    """The projections g_i and the distance; stages with alpha 0 get no projection and cost nothing."""

    def __init__(self, student_chs: Sequence[int], teacher_chs: Sequence[int], settings: LossSettings) -> None:
        super().__init__()
        self.settings = settings
        self.active = [i for i, a in enumerate(settings.alphas) if a > 0]
        paper = settings.kind == "paper"
        self.proj = nn.ModuleDict({
            str(i): nn.Conv2d(teacher_chs[i] if paper else student_chs[i], student_chs[i] if paper else teacher_chs[i], 1)
            for i in self.active
        })

    def teacher_targets(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
        """What the loss needs of the teacher maps (whitened unless the teacher is the projected side)."""
        if self.settings.kind == "paper":
            return [f.float() if i in self.active else None for i, f in enumerate(feats)]
        return [whiten(f) if i in self.active else None for i, f in enumerate(feats)]

    def forward(self, student: Sequence[torch.Tensor], targets: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Total loss and the per-stage distances (0 for inactive stages; detached)."""
        per = []
        total = student[0].new_zeros((), dtype=torch.float32)
        for i in range(3):
            if i not in self.active:
                per.append(total.detach() * 0)
                continue
            s, t = student[i], targets[i]
            assert t is not None
            if self.settings.kind == "paper":
                a, b = self.proj[str(i)](t.to(s.dtype)).float(), whiten(s)
            else:
                a, b = self.proj[str(i)](s).float(), t
            if a.shape[-2:] != b.shape[-2:]:
                a = F.interpolate(a, size=b.shape[-2:], mode="bilinear", align_corners=False)
            if self.settings.kind == "smoothl1":
                d = F.smooth_l1_loss(a, b, beta=self.settings.beta)
            elif self.settings.kind == "l2":
                d = F.mse_loss(a, b)
            else:
                d = (a - b).pow(2).sum(dim=1).add(1e-12).sqrt().mean()
            total = total + self.settings.alphas[i] * d
            per.append(d.detach())
        return total, torch.stack(per)
