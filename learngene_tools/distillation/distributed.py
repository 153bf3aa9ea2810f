"""Where this process runs: one `DistContext` (rank, world size, device, collectives) per run.

Built once from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) by `DistContext.from_env`;
a plain `python` process is rank 0 of a world of 1 and every collective is a no-op. NCCL on
CUDA, gloo on CPU. Batch statistics are synchronised with `nn.SyncBatchNorm` on NCCL and with
an all_reduce-based BatchNorm elsewhere (gloo has no SyncBatchNorm).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from learngene_tools.errors import SettingsError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run: rank, world size, device and the collectives over the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # None: a single process, no process group

    @classmethod
    def from_env(cls, device_hint: str | None = None) -> DistContext:
        """The context of this process under torchrun (or alone); joins the process group once.

        `device_hint`: None (CUDA when available), "cpu", "cuda" or "cuda:N" (N only for a single process).
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = _pick_device(device_hint, local_rank, world)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if world == 1:
            return cls(device=device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank=dist.get_rank(), world_size=world, local_rank=local_rank, device=device,
                   backend=str(dist.get_backend()))

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and reports (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when there is more than one process."""
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every process (no-op alone)."""
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum `t` over all processes, in place; returns it."""
        if self.distributed:
            dist.all_reduce(t)
        return t

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        """Average `t` over all processes, in place; returns it."""
        if self.distributed:
            dist.all_reduce(t)
            t /= self.world_size
        return t

    def sum_int(self, n: int) -> int:
        """The sum of an integer over all processes."""
        if not self.distributed:
            return n
        return int(self.all_reduce_sum(torch.tensor([n], device=self.device)).item())

    def any(self, flag: torch.Tensor) -> bool:
        """True when `flag` (a bool tensor on this device) is set on any process."""
        return bool(self.all_reduce_sum(flag.clone().int()).item())


def _pick_device(hint: str | None, local_rank: int, world: int) -> torch.device:
    if hint not in (None, "cpu", "cuda") and not (hint or "").startswith("cuda:"):
        raise SettingsError(f"--device {hint}: give cpu or cuda")
    if hint == "cpu" or (hint is None and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SettingsError(f"--device {hint}: no CUDA device is available here")
    if hint and hint != "cuda" and world == 1:
        try:
            index = int(hint.split(":", 1)[1])
        except ValueError:
            raise SettingsError(f"--device {hint}: give cuda or cuda:N") from None
        if not 0 <= index < torch.cuda.device_count():
            raise SettingsError(f"--device {hint}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    return torch.device("cuda", local_rank)


class AllReduceBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose batch statistics are summed over all processes with the differentiable all_reduce.

    Works on any backend (gloo on CPU included), so N CPU processes match one process with the
    same global batch; on NCCL `nn.SyncBatchNorm` (fused CUDA kernels) is used instead.
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


def sync_batchnorm(module: nn.Module, ctx: DistContext) -> nn.Module:
    """`module` with batch statistics synchronised over the processes of `ctx` (unchanged alone).

    Parameter and buffer names stay the same, so the state_dict loads into the plain model.
    """
    if not ctx.distributed:
        return module
    if ctx.backend == "nccl":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _swap_batchnorm(module)


def _swap_batchnorm(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = AllReduceBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            _swap_batchnorm(child)
    return module
