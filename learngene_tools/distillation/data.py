"""Images for distillation: a folder of images (labels unused) or procedural synthetic images.

Every sample is a function of (seed, epoch, index) alone, augmentation included, so a run
is reproducible for a seed whatever the number of workers or processes, and a resumed run
sees exactly the images the uninterrupted one would have.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from learngene_tools.errors import NotFoundError, SettingsError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation (or synthesis) in one epoch."""
    return zlib.crc32(f"{seed}:{epoch}:{index}".encode())


def find_images(root: str | Path) -> list[Path]:
    """Every image file under `root`, recursively, in a stable order (class folders allowed)."""
    root = Path(root)
    if not root.is_dir():
        raise NotFoundError(f"{root}: no such folder of images (give --data a folder, or use --synthetic)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise NotFoundError(f"{root}: no images found (looked for {', '.join(IMAGE_SUFFIXES)} recursively)")
    return files


class ImageFolder(Dataset):
    """Images under a folder with ImageNet training augmentation; an unreadable image yields None."""

    def __init__(self, root: str | Path, size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, train: bool = True) -> None:
        from torchvision import transforms as T

        self.files = find_images(root)
        self.size = size
        aug = [T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip()] if train \
            else [T.Resize(int(size * 256 / 224), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)]
        self.transform = T.Compose([*aug, T.ToTensor(), T.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor | None:
        from PIL import Image

        index, seed = key
        try:
            with Image.open(self.files[index]) as img:
                img = img.convert("RGB")
        except Exception:  # noqa: BLE001 - any decoding failure means "skip this image"
            return None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(img)


class SyntheticImages(Dataset):
    """Procedural images (gradients, gratings, discs, boxes, noise) drawn on the fly: no data needed."""

    def __init__(self, size: int = 224, length: int = 50_000, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.size, self.length = size, length
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        _, seed = key
        g = torch.Generator().manual_seed(seed)
        s = self.size
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")

        def u(lo: float = 0.0, hi: float = 1.0) -> float:
            return lo + (hi - lo) * float(torch.rand((), generator=g))

        img = torch.rand(3, 1, 1, generator=g) * (1 - xx * u(-1, 1) - yy * u(-1, 1)).clamp(0, 2) / 2
        for _ in range(int(torch.randint(1, 4, (), generator=g))):  # gratings
            theta, freq = u(0, math.pi), u(2, 20)
            wave = torch.sin(freq * (xx * math.cos(theta) + yy * math.sin(theta)) + u(0, 6.28))
            img = img + u(0.1, 0.4) * torch.rand(3, 1, 1, generator=g) * wave
        for _ in range(int(torch.randint(1, 6, (), generator=g))):  # discs and boxes
            cx, cy, r = u(-1, 1), u(-1, 1), u(0.05, 0.5)
            mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r) if u() < 0.5 else \
                (((xx - cx).abs() < r) & ((yy - cy).abs() < r * u(0.3, 1.5)))
            img = torch.where(mask, torch.rand(3, 1, 1, generator=g), img)
        img = (img + u(0, 0.08) * torch.randn(3, s, s, generator=g)).clamp(0, 1)
        return (img - self.mean) / self.std


class StepSampler(Sampler):
    """Yields (index, sample seed) for global steps start_step.., taking this rank's slice of each global batch.

    Each epoch is a permutation of the dataset fixed by (seed, epoch); the last incomplete
    global batch of an epoch is dropped, so step -> images is a pure function.
    """

    def __init__(self, n: int, global_batch: int, seed: int, start_step: int = 0, total_steps: int | None = None,
                 rank: int = 0, world: int = 1) -> None:
        if n < global_batch:
            raise SettingsError(f"the data has {n} images, fewer than one global batch of {global_batch}; lower --batch-size")
        if global_batch % world:
            raise SettingsError(f"--batch-size {global_batch} does not split evenly over {world} processes")
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.start_step, self.total_steps, self.rank, self.world = start_step, total_steps, rank, world
        self.steps_per_epoch = n // global_batch
        self.local = global_batch // world

    def __len__(self) -> int:
        steps = (self.total_steps or self.start_step + self.steps_per_epoch) - self.start_step
        return max(steps, 0) * self.local

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step = self.start_step
        while self.total_steps is None or step < self.total_steps:
            epoch, within = divmod(step, self.steps_per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
            for b in range(within, self.steps_per_epoch):
                if self.total_steps is not None and step >= self.total_steps:
                    return
                lo = b * self.global_batch + self.rank * self.local
                for i in perm[lo : lo + self.local].tolist():
                    yield i, sample_seed(self.seed, epoch, i)
                step += 1
            if self.total_steps is None:
                return


def collate_skipping(batch: list[torch.Tensor | None]) -> tuple[torch.Tensor, int]:
    """Stack the images that decoded; also return how many did not (a batch may be short by that many)."""
    good = [b for b in batch if b is not None]
    if not good:
        return torch.empty(0), len(batch)
    return torch.stack(good), len(batch) - len(good)
