"""What a distillation run computes (`DistillSettings`) and how it is carried out (`RunOptions`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from learngene_tools.errors import SettingsError
from learngene_tools.models.variants import AuxConfig, variants_of
from learngene_tools.settings import coerce_fields, setting, to_json

PRECISIONS = ("auto", "bf16", "fp32")
LOSS_KINDS = ("smoothl1", "l2", "paper")
TEACHER_CONV_MODES = ("auto", "native", "contiguous", "channels_last", "fft")


@dataclass(frozen=True)
class LossSettings:
    """Which distance, its SmoothL1 beta, and the weight of each of the three stages."""

    kind: str = setting("smoothl1", "smoothl1 (reference, beta 2), l2, or paper (Eq. 2 literally).", name="loss",
                        choices=LOSS_KINDS)
    alphas: tuple[float, float, float] = setting((1.0, 1.0, 1.0), "Stage weights alpha_1..3; 0,0,1 = last stage "
                                                                  "only, 1,0,1 = first + last.")
    beta: float = setting(2.0, "SmoothL1 beta.")

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.kind not in LOSS_KINDS:
            raise SettingsError(f"--loss must be one of {', '.join(LOSS_KINDS)} (got {self.kind!r})")
        if len(self.alphas) != 3 or any(a < 0 for a in self.alphas) or not any(a > 0 for a in self.alphas):
            raise SettingsError(f"--alphas takes 3 non-negative stage weights, at least one > 0 (got {list(self.alphas)})")
        if not self.beta > 0:
            raise SettingsError(f"--beta must be > 0 (got {self.beta})")

    def describe(self) -> dict:
        """The settings plus which side is projected and which whitened (for the bundle's provenance)."""
        sides = {"projected": "teacher", "whitened": "student"} if self.kind == "paper" else \
            {"projected": "student", "whitened": "teacher"}
        return {**asdict(self), **sides, "whitening": "layer norm over channels per pixel, no affine"}


@dataclass(frozen=True)
class DistillSettings:
    """Everything that decides a distillation run's result (the work folder and progress display do not)."""

    arch: str | None = setting(None, "Ancestry architecture: replknet_31b/_31l/_xl, any timm name, "
                                     "torchvision:NAME or pkg.module:factory.")
    aux: AuxConfig = setting(variants_of(AuxConfig)["lgt_aux_base"], "Auxiliary model variant.",
                             presets=lambda: variants_of(AuxConfig), metavar="|".join(variants_of(AuxConfig)))
    loss: LossSettings = setting(LossSettings(), "Distillation loss.")
    data: str | None = setting(None, "Folder of training images (recursive; labels unused); without it, "
                                     "procedural images (data-free).", metavar="DIR")
    img_size: int = setting(224, "Training image size (a multiple of 16).")
    batch_size: int = setting(128, "Global batch size over all processes.")
    steps: int = setting(10_000, "Optimiser steps.")
    lr: float = setting(1e-3, "Peak AdamW learning rate.")
    weight_decay: float = setting(0.05, "AdamW weight decay (conv and projection weights only).")
    warmup_steps: int = setting(500, "Linear warm-up steps before the cosine decay.")
    min_lr_ratio: float = setting(0.01, "Final learning rate as a fraction of --lr.")
    grad_clip: float = setting(1.0, "Gradient-norm clip (0: off).")
    precision: str = setting("auto", "auto (bf16 on GPU, fp32 on CPU), bf16 or fp32.", choices=PRECISIONS)
    channels_last: bool = setting(True, "channels_last memory on GPU.")
    compile: bool = setting(False, "torch.compile the student and loss.")
    merged_teacher: bool = setting(True, "Run RepLKNet in its merged (re-parameterised) form.", name="merge_teacher")
    taps: tuple[str, ...] | None = setting(None, "Teacher module names giving the stride 4,8,16 maps "
                                                 "(default: found automatically).", metavar="A,B,C")
    seed: int = setting(0, "Seed of the student's init and the data order.")
    synthetic_length: int = setting(100_000, "Procedural images per epoch (data-free runs).")
    mean: tuple[float, float, float] | None = setting(None, "Input normalisation mean, e.g. 0.5,0.5,0.5 "
                                                            "(default: the teacher's, else ImageNet's).")
    std: tuple[float, float, float] | None = setting(None, "Input normalisation std (default: the teacher's, "
                                                           "else ImageNet's).")

    def __post_init__(self) -> None:
        coerce_fields(self)
        for name in ("img_size", "batch_size", "steps", "synthetic_length"):
            if getattr(self, name) < 1:
                raise SettingsError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.img_size % 16:
            raise SettingsError(f"--img-size must be a multiple of 16 (stage 3 runs at stride 16; got {self.img_size})")
        if self.precision not in PRECISIONS:
            raise SettingsError(f"--precision must be auto, bf16 or fp32 (got {self.precision!r})")
        if not (self.lr > 0) or self.warmup_steps < 0 or not (self.grad_clip >= 0) or not (0 <= self.min_lr_ratio <= 1):
            raise SettingsError("--lr must be > 0, --warmup-steps and --grad-clip >= 0, --min-lr-ratio in [0, 1]")

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (for checkpoints, metadata and the resume check)."""
        d = to_json(self)
        d["loss"] = self.loss.describe()
        return d

    def schedule_warnings(self) -> list[str]:
        """What is inconsistent about the learning-rate schedule (empty when nothing is)."""
        if self.warmup_steps >= self.steps:
            return [f"--warmup-steps {self.warmup_steps} >= --steps {self.steps}: the learning rate never reaches "
                    f"--lr {self.lr:g} and never decays; lower --warmup-steps (e.g. {max(1, self.steps // 20)})"]
        if self.warmup_steps > self.steps // 2:
            return [f"--warmup-steps {self.warmup_steps} is over half of --steps {self.steps}: most of the run "
                    "warms up; the usual share is a few percent"]
        return []


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out, not what it computes."""

    ancestry: str | None = setting(None, "Ancestry (teacher) checkpoint, .pth/.pt/.safetensors (e.g. "
                                         "RepLKNet-31B_ImageNet-1K_224.pth): a path or hf://OWNER/REPO/FILE[@REVISION].",
                                   positional=True)
    work_dir: Path = setting(Path("lgt-distill"), "Folder for checkpoints, metrics.jsonl and aux.safetensors.")
    resume: bool = setting(False, "Continue the run saved in --work-dir.", recipe=False)
    force: bool = setting(False, "Start over even if --work-dir holds a run (and overwrite outputs).", recipe=False)
    ckpt_every: int = setting(500, "Steps between checkpoints.")
    log_every: int = setting(20, "Steps between metrics lines.")
    num_workers: int = setting(4, "Data-loading worker processes per GPU.", name="workers")
    trust_pickle: bool = setting(False, "Allow arbitrary pickled objects in the ancestry (trusted files only).",
                                 recipe=False)
    device: str | None = setting(None, "cpu or cuda (default: cuda when available).", recipe=False)
    teacher_conv: str = setting("auto", "How the frozen teacher runs its large-kernel depthwise convs: auto (on "
                                "CPU the fastest of the others that agrees with native, timed once per "
                                "input shape; native elsewhere), native, contiguous or channels_last "
                                "(native on a copy in that layout), or fft.", choices=TEACHER_CONV_MODES)
    recipe: dict[str, Any] | None = None  # the recipe's provenance, recorded with the result
    progress: Callable[[dict[str, Any]], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.ckpt_every < 1 or self.log_every < 1 or self.num_workers < 0:
            raise SettingsError("--ckpt-every and --log-every must be at least 1, --workers at least 0")
        if self.teacher_conv not in TEACHER_CONV_MODES:
            raise SettingsError(f"--teacher-conv must be one of {', '.join(TEACHER_CONV_MODES)} "
                                f"(got {self.teacher_conv!r})")


def lr_at(step: int, s: DistillSettings) -> float:
    """Learning rate for a (0-based) step: linear warm-up, then cosine down to min_lr_ratio * lr."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    span = max(s.steps - s.warmup_steps, 1)
    t = min((step - s.warmup_steps) / span, 1.0)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def with_steps(settings: DistillSettings, steps: int) -> DistillSettings:
    """The same settings with another step count (the one setting a resume may change)."""
    return replace(settings, steps=steps)
