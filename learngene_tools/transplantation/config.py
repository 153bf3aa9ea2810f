"""What a transplant is configured by besides the bundle and the target (`TransplantSettings`).

Standard library only, so that the command line can build its options without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from learngene_tools.errors import SettingsError
from learngene_tools.settings import coerce_fields, setting

GROUPED_CHOICES = ("skip", "project")
CONTROLS = ("random-matched", "shuffled")  # control transplants (transplantation/control.py)


@dataclass(frozen=True)
class TransplantSettings:
    """What decides a transplant's result besides the bundle and the target."""

    arch: str | None = setting(None, "Model of the target (timm:NAME, torchvision:NAME or pkg.module:factory), "
                                     "traced for exact strides and execution order.", metavar="SPEC")
    seed: int = setting(0, "Seed for every random draw.")
    transfer_bn: bool = setting(True, "Carry the learngene's BatchNorm with its conv.", name="bn")
    rescale: bool = setting(False, "Rescale each transplanted kernel to the standard deviation of the target conv's "
                                   "own weight (its fresh init), BN statistics scaled to match.")
    input_size: tuple[int, ...] | None = setting(None, "Dummy input [C,]H,W for tracing the target's model "
                                                       "(default: the model's own).", metavar="C,H,W")
    trust_pickle: bool = setting(False, "Allow arbitrary pickled objects in the target (trusted files only).",
                                 recipe=False)
    grouped: str = setting("skip", "Grouped and depthwise convs: skip them, or project the learngene onto them "
                                   "(the block-diagonal part of the dense kernel; a depthwise conv takes its diagonal).",
                           choices=GROUPED_CHOICES)
    require_traced: bool = setting(False, "Refuse to plan when the architecture is neither given (--arch) nor "
                                          "identified, instead of estimating strides.")
    control: str | None = setting(None, "Write a control instead of the learngene: the same plan and changed "
                                        "tensors, each transplanted filter replaced by random values of its norm "
                                        "(random-matched) or its own values permuted (shuffled); tells the "
                                        "learngene's knowledge from its scale.", choices=CONTROLS,
                                  metavar="random-matched|shuffled")
    drop_optimizer: bool = setting(False, "Leave the target's optimizer state out of the output (it no longer "
                                          "matches the rewritten weights).")

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.grouped not in GROUPED_CHOICES:
            raise SettingsError(f"--grouped must be one of {', '.join(GROUPED_CHOICES)} (got {self.grouped!r})")
        size = self.input_size
        if size is not None and (len(size) not in (2, 3) or min(size[-2:]) < 8 or min(size) < 1):
            raise SettingsError(f"--input-size takes H,W or C,H,W with H and W at least 8 (got {list(size)})")
