"""A teacher that can be made to hang mid-run, so a test can SIGKILL a real `lgt distill` at a known step.

Importable as `hangmodels:hanging_vgg` for --arch. With LGT_TEST_HANG_AT=N it blocks in the
forward pass of the N-th training batch (batches of one image, the set-up probes, do not count),
after writing the file named by LGT_TEST_HANG_MARKER; without it, it is `tinymodels.tiny_vgg`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn


class HangingSequential(nn.Sequential):
    """nn.Sequential (same module and state_dict names) that counts training batches and may block."""

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__(*modules)
        self.batches = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            self.batches += 1
            if self.batches == int(os.environ.get("LGT_TEST_HANG_AT", "0")):
                Path(os.environ["LGT_TEST_HANG_MARKER"]).write_text(str(os.getpid()))
                time.sleep(3600)
        return super().forward(x)


def hanging_vgg() -> nn.Module:
    """tinymodels.tiny_vgg with the same weights and names, hanging on request."""
    from tinymodels import tiny_vgg

    return HangingSequential(*tiny_vgg())
