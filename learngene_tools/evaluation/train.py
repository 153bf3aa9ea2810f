"""One fine-tuning run: the schedule every initialisation shares, and top-1 on validation after every epoch.

SGD (momentum 0.9, Nesterov) with a per-step cosine decay, cross-entropy, the data order and
augmentation drawn from a generator seeded by the run's seed alone, so scratch, CLKG and KD
runs of one seed see exactly the same batches. On CUDA: bf16 autocast and channels_last.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from learngene_tools.errors import TrainingError
from learngene_tools.evaluation.data import Split, augment, normalise


@dataclass(frozen=True)
class Schedule:
    """The optimisation every arm of an evaluation shares."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    augment: bool = True
    min_steps: int = 0
    steps: int | None = None  # a fixed budget: every fraction gets it, in `epochs` equal parts

    def steps_per_epoch(self, n: int) -> int:
        """Optimiser steps between validations: the budget's share, or one pass (more when `min_steps` asks)."""
        if self.steps is not None:
            return math.ceil(self.steps / self.epochs)
        return max(steps_per_epoch(n, self.batch_size), math.ceil(self.min_steps / self.epochs))


@dataclass
class Device:
    """Where a run trains and in which precision and memory format."""

    device: torch.device
    bf16: bool
    channels_last: bool

    @classmethod
    def pick(cls, name: str | None, precision: str = "auto") -> "Device":
        """cuda when available (or asked for), else cpu; bf16 and channels_last on CUDA unless told otherwise."""
        if name not in (None, "cpu") and not torch.cuda.is_available():
            from learngene_tools.errors import SettingsError

            raise SettingsError(f"--device {name}: no CUDA device is available here")
        dev = torch.device("cuda" if (name is None and torch.cuda.is_available()) else (name or "cpu"))
        cuda = dev.type == "cuda"
        return cls(dev, bf16=precision == "bf16" or (precision == "auto" and cuda), channels_last=cuda)

    def autocast(self) -> Any:
        """bf16 autocast context on this device (a no-op in fp32)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def put(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the device, in the run's memory format."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, mean: torch.Tensor, std: torch.Tensor, dev: Device,
             in_chans: int, batch: int = 500) -> tuple[float, float]:
    """Top-1 accuracy (%) and mean cross-entropy of `model` on `split`."""
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(split), batch):
        x = dev.put(to_model_input(normalise(split.images[i : i + batch].to(dev.device), mean, std), in_chans))
        y = split.labels[i : i + batch].to(dev.device)
        with dev.autocast():
            logits = model(x)
        logits = logits.float()
        correct += int((logits.argmax(1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
    return 100.0 * correct / len(split), loss / len(split)


def to_model_input(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Grey images repeated to three channels when the model reads colour (torchvision builders take no in_chans)."""
    return x.expand(-1, in_chans, -1, -1) if x.shape[1] == 1 and in_chans != 1 else x


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per pass over n images (one short batch when n < batch_size)."""
    return max(1, n // batch_size)


def batch_stream(n: int, batch_size: int, g: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of successive seeded permutations of n images (the last incomplete batch of a pass dropped)."""
    while True:
        perm = torch.randperm(n, generator=g)
        for b in range(steps_per_epoch(n, batch_size)):
            yield perm[b * batch_size : (b + 1) * batch_size]


def fine_tune(
    model: nn.Module, train: Split, val: Split, schedule: Schedule, seed: int, dev: Device,
    mean: torch.Tensor, std: torch.Tensor, in_chans: int, *, kd: nn.Module | None = None, kd_weight: float = 0.0,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, float]]:
    """Train `model` on `train` with `schedule` and the seed's data order; validation after every epoch.

    Returns one record per epoch: val top-1 (%), val loss, mean train loss, seconds.
    """
    g = torch.Generator().manual_seed(seed)
    params = list(model.parameters()) + (list(kd.loss.parameters()) if kd is not None else [])
    opt = torch.optim.SGD(params, lr=schedule.lr, momentum=0.9, nesterov=True, weight_decay=schedule.weight_decay)
    n = len(train)
    per_epoch = schedule.steps_per_epoch(n)
    total, step = schedule.epochs * per_epoch, 0
    stream = batch_stream(n, schedule.batch_size, g)
    images = train.images.to(dev.device)
    labels = train.labels.to(dev.device)
    curve: list[dict[str, float]] = []
    for epoch in range(1, schedule.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        if kd is not None:
            kd.train()
        loss_sum = torch.zeros((), device=dev.device)  # summed on the device: no sync per step
        for _ in range(per_epoch):
            idx = next(stream).to(dev.device)
            raw = images[idx]
            if schedule.augment:
                raw = augment(raw, g)
            x = normalise(raw, mean, std)
            lr = schedule.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            for group in opt.param_groups:
                group["lr"] = lr
            with dev.autocast():
                logits = model(dev.put(to_model_input(x, in_chans)))
                loss = F.cross_entropy(logits.float(), labels[idx])
                if kd is not None:
                    loss = loss + kd_weight * kd(dev.put(raw.float() / 255))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            step += 1
        train_loss = float(loss_sum) / per_epoch
        if not math.isfinite(train_loss):
            raise TrainingError(f"non-finite training loss in epoch {epoch}; lower --lr (now {schedule.lr:g})")
        acc, val_loss = accuracy(model, val, mean, std, dev, in_chans)
        record = {"epoch": epoch, "val_acc": acc, "val_loss": val_loss, "train_loss": train_loss,
                  "seconds": time.perf_counter() - t0}
        curve.append(record)
        if on_epoch is not None:
            on_epoch(record)
    return curve
