"""Distillation (CLKG stage 1): train the auxiliary CNN to match the ancestry's stage 1-3 features.

AdamW, linear warm-up then cosine decay, bf16 autocast and channels_last on GPU (with cuDNN
autotuning and TF32), optional torch.compile, gradient clipping, a frozen teacher under
inference_mode, DistributedDataParallel when launched by torchrun (BN statistics synchronised,
so N processes equal one process with the same global batch), periodic atomic checkpoints,
`resume`, and metrics appended to a JSONL file. A run is a pure function of its settings and seed.

`distill` = `Run.setup` -> `Run.loop` (which calls `Run.checkpoint`) -> `Run.finish`;
the benchmark drives the same `Run` and `train_step`.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from learngene_tools.distillation.config import DistillSettings, RunOptions, lr_at
from learngene_tools.distillation.data import ImageFolder, StepSampler, SyntheticImages, collate_skipping
from learngene_tools.distillation.depthwise import use_fast_depthwise
from learngene_tools.distillation.distributed import DistContext, sync_batchnorm
from learngene_tools.distillation.loss import DistillLoss
from learngene_tools.distillation.state import (
    METRICS_FILE,
    STATE_FILE,
    SavedState,
    append_metrics,
    restart_metrics,
    resume_point,
    save_state,
)
from learngene_tools.distillation.teacher import Teacher, build_teacher
from learngene_tools.errors import ModelError, OutputError, SettingsError, TrainingError
from learngene_tools.models.aux_checkpoint import save_aux
from learngene_tools.models.auxiliary import AuxNet, create_aux

__all__ = ["AUX_FILE", "METRICS_FILE", "STATE_FILE", "Run", "ScheduleWarning", "Student", "distill", "load_teacher",
           "make_optimizer", "memory_format_for", "speed_settings", "teacher_features", "train_step", "use_bf16"]

AUX_FILE = "aux.safetensors"


class ScheduleWarning(UserWarning):
    """The learning-rate schedule is inconsistent (e.g. the warm-up is as long as the run)."""


class Student(nn.Module):
    """The auxiliary model and the loss's projections: one module for DDP and torch.compile."""

    def __init__(self, aux: AuxNet, loss: DistillLoss) -> None:
        super().__init__()
        self.aux, self.loss = aux, loss

    def forward(self, x: torch.Tensor, targets: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        feats = []
        for stage in self.aux.stages:
            x = stage(x)
            feats.append(x)
        return self.loss(feats, targets)


def use_bf16(s: DistillSettings, device: torch.device) -> bool:
    """Whether the run computes in bf16 autocast (`auto`: on GPU only)."""
    return s.precision == "bf16" or (s.precision == "auto" and device.type == "cuda")


@contextlib.contextmanager
def speed_settings(device: torch.device, bf16: bool) -> Iterator[None]:
    """On CUDA: cuDNN autotuning, and TF32 for fp32 matmuls/convs when the run is bf16; restored on exit.

    Under bf16 autocast the convs and matmuls run in bf16, so TF32 changes no result there; an
    fp32 run keeps torch's own TF32 defaults. Nothing here is recorded in any output file.
    """
    if device.type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.benchmark = True
    if bf16:
        cudnn.allow_tf32 = matmul.allow_tf32 = True
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def memory_format_for(s: DistillSettings, device: torch.device) -> torch.memory_format:
    """channels_last on GPU when the settings ask for it (the default), else the default layout."""
    return torch.channels_last if s.channels_last and device.type == "cuda" else torch.contiguous_format


def load_teacher(s: DistillSettings, opts: RunOptions, device: torch.device) -> tuple[Teacher, dict[str, Any]]:
    """The frozen teacher on `device` in the run's memory format, and its description for provenance."""
    teacher, desc = build_teacher(s.arch, opts.ancestry, s.taps, s.merged_teacher, opts.trust_pickle, s.img_size)
    use_fast_depthwise(teacher, opts.teacher_conv)
    return teacher.to(device, memory_format=memory_format_for(s, device)), desc


def teacher_features(teacher: nn.Module, x: torch.Tensor, bf16: bool) -> list[torch.Tensor]:
    """The frozen teacher's stage maps for a batch (inference_mode, bf16 autocast when asked)."""
    with torch.inference_mode(), _autocast(x.device, bf16):
        return teacher(x)


def make_optimizer(student: nn.Module, s: DistillSettings, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay on conv weights only, not on BN parameters or biases."""
    decay = [p for p in student.parameters() if p.ndim > 1]
    no_decay = [p for p in student.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=s.lr, betas=(0.9, 0.999), fused=device.type == "cuda")


def train_step(teacher: nn.Module, student: Student, fwd: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
               lr: float, grad_clip: float, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on a batch: frozen teacher under inference_mode, student + loss forward/backward."""
    with torch.inference_mode(), _autocast(x.device, bf16):
        targets = student.loss.teacher_targets(teacher_features(teacher, x, bf16))
    targets = [None if t is None else t.clone() for t in targets]  # inference tensors cannot be saved for backward
    for g in opt.param_groups:
        g["lr"] = lr
    with _autocast(x.device, bf16):
        loss, per = fwd(x, targets)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(student.parameters(), grad_clip)
    opt.step()
    return loss.detach(), per


@dataclass
class _Window:
    """Losses and images since the last metrics line."""

    losses: list[torch.Tensor] = field(default_factory=list)
    images: int = 0
    skipped: int = 0
    t0: float = field(default_factory=time.perf_counter)


@dataclass
class Run:
    """One distillation run: the models, optimiser and counters between `setup` and `finish`."""

    settings: DistillSettings  # as given: what the checkpoint records and a resume compares
    effective: DistillSettings  # with the teacher's normalisation filled in: what the run uses and reports
    opts: RunOptions
    ctx: DistContext
    teacher: Teacher
    student: Student
    forward: nn.Module  # the student as trained: wrapped by DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    bf16: bool
    memory_format: torch.memory_format
    ancestry: dict[str, Any]
    step: int = 0
    images_seen: int = 0
    skipped_images: int = 0
    start_step: int = 0
    last_losses: list[float] = field(default_factory=list)
    # set when a non-finite loss was seen since the last check (a device flag: no sync per step)
    _bad: torch.Tensor | None = field(default=None, init=False, repr=False)

    @classmethod
    def setup(cls, settings: DistillSettings, opts: RunOptions, ctx: DistContext | None = None) -> Run:
        """Check the work folder, build the teacher, student and optimiser, and load the state to resume from."""
        ctx = ctx or DistContext.from_env(opts.device)
        try:
            opts.work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{opts.work_dir}: cannot create the work folder ({e.strerror or e})") from None
        state = resume_point(opts, settings)
        ctx.barrier()
        memory_format = memory_format_for(settings, ctx.device)
        teacher, teacher_desc = load_teacher(settings, opts, ctx.device)
        t_chs = _teacher_channels(teacher, settings, ctx.device)
        effective = _with_normalisation(settings, teacher.model)
        student = _build_student(effective, t_chs, ctx, memory_format)
        optimizer = make_optimizer(student, effective, ctx.device)
        step, images_seen, skipped = _restore(student, optimizer, state)
        if step >= settings.steps:
            raise SettingsError(f"the run in {opts.work_dir} already reached step {step} of --steps {settings.steps}; "
                                "raise --steps to go on")
        if ctx.is_main:
            restart_metrics(opts.work_dir / METRICS_FILE, step if state is not None else None)
        return cls(settings=settings, effective=effective, opts=opts, ctx=ctx, teacher=teacher, student=student,
                   forward=_trained_form(student, effective, ctx), optimizer=optimizer,
                   bf16=use_bf16(settings, ctx.device), memory_format=memory_format,
                   ancestry=_ancestry_desc(teacher_desc, opts, ctx), step=step, images_seen=images_seen,
                   skipped_images=skipped, start_step=step)

    def train_step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step at the run's current step's learning rate (counters unchanged)."""
        s = self.effective
        return train_step(self.teacher, self.student, self.forward, self.optimizer, x, lr_at(self.step, s),
                          s.grad_clip, self.bf16)

    def loop(self) -> None:
        """Train from the current step to the last, writing metrics lines and checkpoints on the way."""
        s, opts = self.effective, self.opts
        self._bad = torch.zeros((), dtype=torch.bool, device=self.ctx.device)
        window, t_start = _Window(), time.perf_counter()
        self.student.train()
        for x, n_bad in make_loader(s, self.step, self.ctx, opts.num_workers):
            if x.numel() == 0:
                raise TrainingError(f"a whole batch of images failed to decode at step {self.step}; "
                                    f"check the files under {s.data}")
            x = x.to(self.ctx.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            loss, per = self.train_step(x)
            self._bad |= ~torch.isfinite(loss)
            self.step += 1
            self.images_seen += s.batch_size
            window.losses.append(torch.cat([loss.float().reshape(1), per.float()]))
            window.images += s.batch_size
            window.skipped += int(n_bad)
            at_checkpoint = self.step % opts.ckpt_every == 0 or self.step == s.steps
            if at_checkpoint or self.step % opts.log_every == 0:
                self._log(window, t_start)
                window = _Window()
            if at_checkpoint:
                self.checkpoint()

    def _log(self, window: _Window, t_start: float) -> None:
        """Close a metrics window: stop on a non-finite loss, else write a metrics line and report progress."""
        self._stop_if_not_finite()
        mean = self.ctx.all_reduce_mean(torch.stack(window.losses).mean(0))
        if self.ctx.device.type == "cuda":
            torch.cuda.synchronize(self.ctx.device)
        now = time.perf_counter()
        dt = now - window.t0
        self.last_losses = mean.tolist()
        self.skipped_images += self.ctx.sum_int(window.skipped)
        record = {
            "step": self.step, "loss": self.last_losses[0], "stage_losses": self.last_losses[1:],
            "lr": lr_at(self.step - 1, self.effective), "images_per_s": window.images / dt,
            "images_seen": self.images_seen, "skipped_images": self.skipped_images, "elapsed_s": now - t_start,
        }
        if self.ctx.is_main:
            append_metrics(self.opts.work_dir / METRICS_FILE, record)
            if self.opts.progress:
                self.opts.progress({**record, "steps": self.effective.steps})

    def checkpoint(self) -> None:
        """Save the state (main process, atomically) after checking that the weights are finite."""
        assert self._bad is not None
        if not all(bool(torch.isfinite(p).all()) for p in self.student.parameters()):
            self._bad.fill_(True)
        self._stop_if_not_finite()
        if self.ctx.is_main:
            save_state(self.opts.work_dir / STATE_FILE, SavedState(
                settings_json=_settings_json(self.settings), student=self.student.state_dict(),
                optimizer=self.optimizer.state_dict(), step=self.step, images_seen=self.images_seen,
                skipped_images=self.skipped_images,
            ))
        self.ctx.barrier()

    def _stop_if_not_finite(self) -> None:
        assert self._bad is not None
        if self.ctx.any(self._bad):
            state = self.opts.work_dir / STATE_FILE
            kept = f"the last good checkpoint is kept in {state}" if state.exists() \
                else "no checkpoint had been written yet"
            raise TrainingError(f"loss or weights became NaN/inf by step {self.step}; {kept}; "
                                "lower --lr or use --precision fp32, then --resume (or --force to start over)")

    def finish(self) -> dict[str, Any]:
        """Write aux.safetensors (main process) and return the run's summary.

        Nothing about interruptions goes into the file, so a resumed run writes the same bytes
        as an uninterrupted one (resumption is in metrics.jsonl and the summary's `resumed_from_step`).
        """
        recorded = {
            "settings": self.effective.to_json(), "steps": self.step, "images_seen": self.images_seen,
            "skipped_images": self.skipped_images, "final_loss": self.last_losses[0] if self.last_losses else None,
            "final_stage_losses": self.last_losses[1:] if self.last_losses else None,
            "world_size": self.ctx.world_size, "device": self.ctx.device.type,
            "precision": "bf16" if self.bf16 else "fp32",
            **({"recipe": self.opts.recipe} if self.opts.recipe else {}),
        }
        aux_path = self.opts.work_dir / AUX_FILE
        if self.ctx.is_main:
            plain = create_aux(self.effective.aux)
            plain.load_state_dict({k: v.detach().cpu() for k, v in self.student.aux.state_dict().items()})
            save_aux(plain, aux_path, ancestry=self.ancestry, distillation=recorded)
        self.ctx.barrier()
        return {**recorded, "ancestry": self.ancestry, "resumed_from_step": self.start_step or None,
                "aux_path": aux_path}


def distill(settings: DistillSettings, opts: RunOptions, ctx: DistContext | None = None) -> dict[str, Any]:
    """Run (or resume) a distillation; writes the auxiliary model to work_dir/aux.safetensors and returns a summary."""
    ctx = ctx or DistContext.from_env(opts.device)
    with speed_settings(ctx.device, use_bf16(settings, ctx.device)):
        run = Run.setup(settings, opts, ctx)
        if ctx.is_main:
            for message in settings.schedule_warnings():
                warnings.warn(message, ScheduleWarning, stacklevel=2)
        run.loop()
        return run.finish()


def _settings_json(s: DistillSettings) -> str:
    return json.dumps(s.to_json(), sort_keys=True)


def _with_normalisation(s: DistillSettings, model: nn.Module) -> DistillSettings:
    """Fill unset mean/std from the teacher's pretrained_cfg (timm), else ImageNet's."""
    from learngene_tools.distillation.data import IMAGENET_MEAN, IMAGENET_STD

    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = s.mean or tuple(cfg.get("mean", IMAGENET_MEAN))
    std = s.std or tuple(cfg.get("std", IMAGENET_STD))
    return replace(s, mean=mean, std=std)  # type: ignore[arg-type]


def _teacher_channels(teacher: nn.Module, s: DistillSettings, device: torch.device) -> list[int]:
    with torch.inference_mode():
        feats = teacher(torch.zeros(1, 3, s.img_size, s.img_size, device=device))
    for f, r in zip(feats, (4, 8, 16)):
        if f.shape[-1] != s.img_size // r:
            raise ModelError(
                f"teacher tap gives a {f.shape[-2]}x{f.shape[-1]} map at {s.img_size} px, expected stride {r} "
                f"({s.img_size // r}x{s.img_size // r}); pick the taps with --taps"
            )
    return [int(f.shape[1]) for f in feats]


def _build_student(s: DistillSettings, teacher_chs: list[int], ctx: DistContext,
                   memory_format: torch.memory_format) -> Student:
    """The auxiliary model and projections, seeded by the run's seed, BN synchronised over processes."""
    torch.manual_seed(s.seed)
    student = Student(create_aux(s.aux), DistillLoss(list(s.aux.widths), teacher_chs, s.loss))
    student = sync_batchnorm(student, ctx)
    return student.to(ctx.device, memory_format=memory_format)


def _restore(student: Student, optimizer: torch.optim.Optimizer, state: SavedState | None) -> tuple[int, int, int]:
    """Load a saved state into the student and optimiser; returns (step, images seen, skipped images)."""
    if state is None:
        return 0, 0, 0
    student.load_state_dict(state.student)
    optimizer.load_state_dict(state.optimizer)
    return state.step, state.images_seen, state.skipped_images


def _trained_form(student: Student, s: DistillSettings, ctx: DistContext) -> nn.Module:
    model: nn.Module = student
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(student, device_ids=[ctx.device.index]
                                                    if ctx.device.type == "cuda" else None)
    return torch.compile(model) if s.compile else model


def _ancestry_desc(teacher_desc: dict[str, Any], opts: RunOptions, ctx: DistContext) -> dict[str, Any]:
    from learngene_tools.io.files import file_sha256

    path = Path(opts.ancestry) if opts.ancestry else None
    return {**teacher_desc, "checkpoint": path.name if path else None,
            "checkpoint_sha256": file_sha256(path) if (path and ctx.is_main) else None}


def make_loader(s: DistillSettings, start_step: int, ctx: DistContext, num_workers: int) -> torch.utils.data.DataLoader:
    """The run's batches from `start_step` on: this process's share, decoded by `num_workers` processes."""
    dataset = ImageFolder(s.data, s.img_size, s.mean, s.std) if s.data else \
        SyntheticImages(s.img_size, s.synthetic_length, s.mean, s.std)
    sampler = StepSampler(len(dataset), s.batch_size, s.seed, start_step, s.steps, ctx.rank, ctx.world_size)
    return torch.utils.data.DataLoader(
        dataset, batch_size=s.batch_size // ctx.world_size, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_skipping, pin_memory=ctx.device.type == "cuda", drop_last=False,
        persistent_workers=False, prefetch_factor=4 if num_workers else None,
    )
