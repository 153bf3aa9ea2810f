"""Distillation (CLKG stage 1): train the auxiliary CNN to match the ancestry's stage 1-3 features.

AdamW, linear warm-up then cosine decay, bf16 autocast and channels_last on GPU, optional
torch.compile, gradient clipping, a frozen teacher under inference_mode, DistributedDataParallel
when launched by torchrun (BN statistics synchronised, so N processes equal one process with
the same global batch), periodic atomic checkpoints, `resume`, and metrics appended to a
JSONL file. A run is a pure function of its settings and seed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from learngene_tools import __version__
from learngene_tools.distillation.config import DistillSettings, RunOptions, lr_at
from learngene_tools.distillation.data import ImageFolder, StepSampler, SyntheticImages, collate_skipping
from learngene_tools.distillation.loss import DistillLoss
from learngene_tools.distillation.teacher import build_teacher
from learngene_tools.errors import ModelError, NotFoundError, OutputError, SettingsError, TrainingError
from learngene_tools.extraction.aux_checkpoint import save_aux
from learngene_tools.extraction.auxiliary import AuxNet, create_aux

STATE_FILE = "distill-state.pt"
METRICS_FILE = "metrics.jsonl"
AUX_FILE = "aux.safetensors"


class _SyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose batch statistics are summed over all processes (any backend, CPU or GPU).

    torch's SyncBatchNorm runs on GPU only; this one uses the differentiable all_reduce, so a
    gloo run on CPU matches a single process with the same global batch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        xf = x.float()
        n_local = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float32)
        stats = torch.cat([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)), n_local])
        stats = all_reduce(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach() * m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1) * m)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        return (y * self.weight[None, :, None, None] + self.bias[None, :, None, None]).to(x.dtype)


def _sync_bn(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d for _SyncBatchNorm in place (same parameter and buffer names)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = _SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            _sync_bn(child)
    return module


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


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_hint: str | None) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_hint != "cpu"
    if device_hint and device_hint != "cpu" and not torch.cuda.is_available():
        raise SettingsError(f"--device {device_hint}: no CUDA device is available here")
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    d = _Dist(rank=dist.get_rank() if world > 1 else 0, world=world, local_rank=local_rank)
    return d, device


def _barrier(d: _Dist) -> None:
    if d.world > 1:
        dist.barrier()


def _atomic_torch_save(obj: Any, path: Path) -> None:
    from learngene_tools.io.files import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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


def _loader(s: DistillSettings, start_step: int, d: _Dist, num_workers: int, device: torch.device):
    dataset = ImageFolder(s.data, s.img_size, s.mean, s.std) if s.data else \
        SyntheticImages(s.img_size, s.synthetic_length, s.mean, s.std)
    sampler = StepSampler(len(dataset), s.batch_size, s.seed, start_step, s.steps, d.rank, d.world)
    return torch.utils.data.DataLoader(
        dataset, batch_size=s.batch_size // d.world, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_skipping, pin_memory=device.type == "cuda", drop_last=False,
        persistent_workers=False, prefetch_factor=4 if num_workers else None,
    )


def _check_work_dir(opts: RunOptions, settings: DistillSettings) -> dict[str, Any] | None:
    """The saved state to resume from, or None for a fresh run; refuses to mix runs."""
    state_path = opts.work_dir / STATE_FILE
    if not state_path.exists():
        if opts.resume:
            raise NotFoundError(f"{state_path}: nothing to resume (no checkpoint in {opts.work_dir}); run without --resume")
        return None
    if not opts.resume:
        if opts.force:
            return None
        raise OutputError(f"{opts.work_dir} holds an earlier run (step checkpoint {STATE_FILE}); "
                       "pass --resume to continue it or --force to start over")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    saved = json.loads(state["settings"])
    now = json.loads(json.dumps(settings.to_json()))
    diff = sorted(k for k in set(saved) | set(now) if k != "steps" and saved.get(k) != now.get(k))
    if diff:
        raise SettingsError(f"--resume: settings differ from the saved run in {', '.join(diff)}; "
                       "use the same settings (only --steps may change) or another --work-dir")
    return state


def make_optimizer(student: nn.Module, s: DistillSettings, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay on conv weights only, not on BN parameters or biases."""
    decay = [p for p in student.parameters() if p.ndim > 1]
    no_decay = [p for p in student.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=s.lr, betas=(0.9, 0.999), fused=device.type == "cuda")


def train_step(teacher: nn.Module, student: Student, fwd: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
               lr: float, grad_clip: float, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on a batch: frozen teacher under inference_mode, student + loss forward/backward."""
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        targets = student.loss.teacher_targets(teacher(x))
    targets = [None if t is None else t.clone() for t in targets]  # inference tensors cannot be saved for backward
    for g in opt.param_groups:
        g["lr"] = lr
    with torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
        loss, per = fwd(x, targets)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(student.parameters(), grad_clip)
    opt.step()
    return loss.detach(), per


def distill(settings: DistillSettings, opts: RunOptions) -> dict[str, Any]:
    """Run (or resume) a distillation; writes the auxiliary model to work_dir/aux.safetensors and returns a summary."""
    d, device = _init_distributed(opts.device)
    s = settings
    bf16 = s.precision == "bf16" or (s.precision == "auto" and device.type == "cuda")
    opts.work_dir.mkdir(parents=True, exist_ok=True)
    state = _check_work_dir(opts, s)
    _barrier(d)

    teacher, teacher_desc = build_teacher(s.arch, opts.ancestry, s.taps, s.merged_teacher, opts.trust_pickle, s.img_size)
    memory_format = torch.channels_last if s.channels_last and device.type == "cuda" else torch.contiguous_format
    teacher = teacher.to(device, memory_format=memory_format)
    t_chs = _teacher_channels(teacher, s, device)
    s = _with_normalisation(s, teacher.model)

    torch.manual_seed(s.seed)
    aux = create_aux(s.aux)
    student = Student(aux, DistillLoss(list(s.aux.widths), t_chs, s.loss))
    if d.world > 1:
        _sync_bn(student)
    student = student.to(device, memory_format=memory_format)
    opt = make_optimizer(student, s, device)
    step, images_seen, skipped = 0, 0, 0
    if state is not None:
        student.load_state_dict(state["student"])
        opt.load_state_dict(state["optimizer"])
        step, images_seen, skipped = int(state["step"]), int(state["images_seen"]), int(state["skipped_images"])
    if step >= s.steps:
        raise SettingsError(f"the run in {opts.work_dir} already reached step {step} of --steps {s.steps}; raise --steps to go on")
    model: nn.Module = student
    if d.world > 1:
        model = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)
    fwd = torch.compile(model) if s.compile else model

    ancestry_desc = {**teacher_desc, "checkpoint": Path(opts.ancestry).name if opts.ancestry else None,
                     "checkpoint_sha256": _sha256(opts.ancestry) if (opts.ancestry and d.main) else None}
    metrics_path = opts.work_dir / METRICS_FILE
    if state is None and d.main and metrics_path.exists():
        metrics_path.unlink()
    start_step, t_start = step, time.perf_counter()
    window: list[torch.Tensor] = []
    window_images, window_t0 = 0, time.perf_counter()
    last_losses: list[float] = []
    bad = torch.zeros((), dtype=torch.bool, device=device)
    skipped_before, skipped_here = skipped, 0

    def checkpoint() -> None:
        if not all(bool(torch.isfinite(p).all()) for p in student.parameters()):
            bad.fill_(True)
            finite_or_stop(step)
        if d.main:
            _atomic_torch_save({
                "settings": json.dumps(settings.to_json(), sort_keys=True), "student": student.state_dict(),
                "optimizer": opt.state_dict(), "step": step, "images_seen": images_seen, "skipped_images": skipped,
                "tool_version": __version__,
            }, opts.work_dir / STATE_FILE)
        _barrier(d)

    def finite_or_stop(at: int) -> None:
        flag = bad.clone().int()
        if d.world > 1:
            dist.all_reduce(flag)
        if flag.item():
            kept = f"the last good checkpoint is kept in {opts.work_dir / STATE_FILE}" \
                if (opts.work_dir / STATE_FILE).exists() else "no checkpoint had been written yet"
            raise TrainingError(f"loss or weights became NaN/inf by step {at}; {kept}; "
                           "lower --lr or use --precision fp32, then --resume (or --force to start over)")

    student.train()
    for x, n_bad in _loader(s, step, d, opts.num_workers, device):
        if x.numel() == 0:
            raise TrainingError(f"a whole batch of images failed to decode at step {step}; check the files under {s.data}")
        x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        loss, per = train_step(teacher, student, fwd, opt, x, lr_at(step, s), s.grad_clip, bf16)
        bad |= ~torch.isfinite(loss)
        step += 1
        n_imgs = s.batch_size
        images_seen += n_imgs
        skipped_here += int(n_bad)
        window.append(torch.cat([loss.detach().float().reshape(1), per.float()]))
        window_images += n_imgs
        if step % opts.log_every == 0 or step == s.steps or step % opts.ckpt_every == 0:
            finite_or_stop(step)
            mean = torch.stack(window).mean(0)
            if d.world > 1:
                dist.all_reduce(mean)
                mean /= d.world
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - window_t0
            last_losses = mean.tolist()
            skipped = skipped_before + _sum_over_ranks(skipped_here, d, device)
            record = {
                "step": step, "loss": last_losses[0], "stage_losses": last_losses[1:], "lr": lr_at(step - 1, s),
                "images_per_s": window_images / dt, "images_seen": images_seen, "skipped_images": skipped,
                "elapsed_s": time.perf_counter() - t_start,
            }
            if d.main:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                if opts.progress:
                    opts.progress({**record, "steps": s.steps})
            window, window_images, window_t0 = [], 0, time.perf_counter()
        if step % opts.ckpt_every == 0 or step == s.steps:
            checkpoint()

    summary = {
        "settings": s.to_json(), "ancestry": ancestry_desc, "steps": step, "images_seen": images_seen,
        "skipped_images": skipped, "final_loss": last_losses[0] if last_losses else None,
        "final_stage_losses": last_losses[1:] if last_losses else None, "resumed_from_step": start_step or None,
        "world_size": d.world, "device": device.type, "precision": "bf16" if bf16 else "fp32",
        **({"recipe": opts.recipe} if opts.recipe else {}),
    }
    aux_path = opts.work_dir / AUX_FILE
    if d.main:
        plain = create_aux(s.aux)
        plain.load_state_dict({k: v.detach().cpu() for k, v in student.aux.state_dict().items()})
        save_aux(plain, aux_path, ancestry=ancestry_desc,
                 distillation={k: v for k, v in summary.items() if k != "ancestry"})
    _barrier(d)
    return {**summary, "aux_path": aux_path}


def _sum_over_ranks(n: int, d: _Dist, device: torch.device) -> int:
    if d.world == 1:
        return n
    t = torch.tensor([n], device=device)
    dist.all_reduce(t)
    return int(t.item())


def _sha256(path: Path) -> str:
    from learngene_tools.io.files import file_sha256

    return file_sha256(path)
