"""Labelled image data for fine-tuning: image folders, the idx format (MNIST/Fashion-MNIST), a built-in synthetic task.

Everything is held in memory as uint8 tensors [N, C, H, W] at the training size, so a run is
cheap to repeat and augmentation runs batched on the training device. A validation split is
taken from the data when it has one (`train/` + `val/`), else carved from the training images
with a fixed seed (`carve`); the test split (idx `t10k-*`, a `test/` folder) is only read
for the final numbers.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from learngene_tools.errors import InvalidFileError, NotFoundError, SettingsError

SYNTHETIC = "synthetic"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
VAL_DIRS = ("val", "valid", "validation")


@dataclass(frozen=True)
class Split:
    """Images (uint8, [N, C, H, W]) and their class indices."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, index: torch.Tensor) -> "Split":
        """The samples at `index`."""
        return Split(self.images[index], self.labels[index])


@dataclass(frozen=True)
class TaskData:
    """A classification task: train/val (and maybe test) splits, class names and input normalisation."""

    train: Split
    val: Split
    test: Split | None
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        """Image channels (1 for grey, 3 for colour)."""
        return int(self.train.images.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """Image height and width."""
        return int(self.train.images.shape[2]), int(self.train.images.shape[3])


def carve(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) of a fixed-seed split of n samples: val is the first round(n * val_fraction) of a permutation."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(n * val_fraction)
    if not 0 < n_val < n:
        raise SettingsError(f"--val-fraction {val_fraction} leaves no validation or no training image of {n}")
    return perm[n_val:], perm[:n_val]


def subset_for(n: int, fraction: float, seed: int) -> torch.Tensor:
    """The training samples a run with this fraction and seed uses: the first ceil(n * fraction) of a seeded permutation."""
    k = max(1, math.ceil(n * fraction - 1e-9))
    return torch.randperm(n, generator=torch.Generator().manual_seed(10_007 + seed))[:k]


def read_idx(path: Path) -> torch.Tensor:
    """An idx file (raw or gzip) as a uint8 tensor of its recorded shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise InvalidFileError(f"{path}: not readable as an idx file ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise InvalidFileError(f"{path}: not an unsigned-byte idx file (magic {data[:4].hex()})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = data[4 + 4 * ndim :]
    if len(body) != math.prod(dims):
        raise InvalidFileError(f"{path}: truncated idx file ({len(body)} bytes for shape {dims})")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


def _idx_file(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def is_idx_folder(root: Path) -> bool:
    """True when `root` holds train-images-idx3-ubyte[.gz] (the MNIST / Fashion-MNIST layout)."""
    return _idx_file(root, IDX_NAMES["train"][0]) is not None


def load_idx_split(root: Path, which: str) -> Split | None:
    """The train or test split of an idx folder as [N, 1, H, W] uint8 (None when the files are absent)."""
    images_name, labels_name = IDX_NAMES[which]
    images, labels = _idx_file(root, images_name), _idx_file(root, labels_name)
    if images is None:
        return None
    if labels is None:
        raise NotFoundError(f"{root}: has {images.name} but no {labels_name}[.gz]")
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise InvalidFileError(f"{root}: {images.name} {list(x.shape)} and {labels.name} {list(y.shape)} do not pair up")
    return Split(x.unsqueeze(1).contiguous(), y.long())


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _load_image(path: Path, size: int) -> torch.Tensor:
    """One image as uint8 [3, size, size]: shorter side resized to `size`, centre crop."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            scale = size / min(w, h)
            img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
            w, h = img.size
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
            data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    except Exception as e:  # noqa: BLE001 - any decoding failure is reported with the file's name
        raise InvalidFileError(f"{path}: cannot decode this image ({type(e).__name__}: {e})") from None
    return data.view(size, size, 3).permute(2, 0, 1).contiguous()


def load_class_folders(root: Path, size: int, classes: tuple[str, ...] | None = None) -> tuple[Split, tuple[str, ...]]:
    """A folder of class subfolders (ImageNet layout) as a Split at `size` px, RGB."""
    dirs = _class_dirs(root)
    names = tuple(d.name for d in dirs)
    if classes is not None and set(names) - set(classes):
        raise InvalidFileError(f"{root}: has class folders {sorted(set(names) - set(classes))} that the training split lacks")
    classes = classes or names
    if len(classes) < 2:
        raise InvalidFileError(f"{root}: needs at least two class subfolders of images (found {len(names)})")
    images, labels = [], []
    for d in dirs:
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        images += [_load_image(p, size) for p in files]
        labels += [classes.index(d.name)] * len(files)
    if not images:
        raise NotFoundError(f"{root}: no images in its class folders (looked for {', '.join(IMAGE_SUFFIXES)})")
    return Split(torch.stack(images), torch.tensor(labels, dtype=torch.long)), classes


def pad_or_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images to size x size: zero padding when they are at most 8 px smaller, else bilinear resizing."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if size >= max(h, w) and size - min(h, w) <= 8:
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(images, (left, size - w - left, top, size - h - top))
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def synthetic_task(n_train: int = 600, n_val: int = 200, n_test: int = 200, size: int = 32, channels: int = 3,
                   num_classes: int = 4, seed: int = 0) -> tuple[Split, Split, Split, tuple[str, ...]]:
    """A small built-in task: the orientation of a noisy grating (one class per orientation), for tests and demos."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val + n_test
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    theta = labels.float() * math.pi / num_classes + (torch.rand(n, generator=g) - 0.5) * (math.pi / num_classes) * 0.5
    freq = 2 + 4 * torch.rand(n, generator=g)
    phase = 2 * math.pi * torch.rand(n, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    proj = xx[None] * torch.cos(theta)[:, None, None] + yy[None] * torch.sin(theta)[:, None, None]
    wave = torch.sin(math.pi * freq[:, None, None] * proj + phase[:, None, None])
    tint = 0.5 + 0.5 * torch.rand(n, channels, 1, 1, generator=g)
    img = 0.5 + 0.35 * wave[:, None] * tint + 0.25 * torch.randn(n, channels, size, size, generator=g)
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    names = tuple(f"{round(180 * k / num_classes)}deg" for k in range(num_classes))
    cut = (n_train, n_train + n_val)
    return (Split(images[: cut[0]], labels[: cut[0]]), Split(images[cut[0] : cut[1]], labels[cut[0] : cut[1]]),
            Split(images[cut[1] :], labels[cut[1] :]), names)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, on the 0..1 scale."""
    x = images.float().div_(255).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).clamp_min(1e-3).tolist())


def load_task(data: str, img_size: int | None = None, val_fraction: float = 0.1, split_seed: int = 0,
              train_limit: int | None = None, with_test: bool = True, val_limit: int | None = None,
              test_limit: int | None = None) -> TaskData:
    """Read `data` (an idx folder, an image folder, or "synthetic") into memory at the training size.

    Validation: the data's own `val/` split, else `val_fraction` of the training images carved with
    `split_seed`. `train_limit` keeps the first N of the (shuffled) training images: the "100 %";
    `val_limit` and `test_limit` keep the first N validation and test images.
    """
    root = Path(data)
    info: dict[str, Any] = {"data": data}
    test: Split | None = None
    if data == SYNTHETIC:
        train, val, test, classes = synthetic_task(size=img_size or 32)
        info.update(format="synthetic", split="built-in")
    elif not root.is_dir():
        raise NotFoundError(f"{data}: no such folder (--data takes an idx folder, an image folder with class "
                            f"subfolders, or `{SYNTHETIC}`)")
    elif is_idx_folder(root):
        full = load_idx_split(root, "train")
        assert full is not None
        size = img_size or 16 * math.ceil(max(full.images.shape[-2:]) / 16)
        full = Split(pad_or_resize(full.images, size), full.labels)
        tr, va = carve(len(full), val_fraction, split_seed)
        train, val = full.take(tr), full.take(va)
        if with_test:
            t = load_idx_split(root, "test")
            test = None if t is None else Split(pad_or_resize(t.images, size), t.labels)
        classes = tuple(str(c) for c in range(int(full.labels.max()) + 1))
        info.update(format="idx", split=f"val carved: {val_fraction:g} of train, seed {split_seed}")
    else:
        size = img_size or 224
        has_train = (root / "train").is_dir()
        val_dir = next((root / d for d in VAL_DIRS if (root / d).is_dir()), None) if has_train else None
        full, classes = load_class_folders(root / "train" if has_train else root, size)
        if val_dir is not None:
            train, (val, _) = full, load_class_folders(val_dir, size, classes)
            info.update(format="image folder", split=f"given ({val_dir.name}/)")
        else:
            tr, va = carve(len(full), val_fraction, split_seed)
            train, val = full.take(tr), full.take(va)
            info.update(format="image folder", split=f"val carved: {val_fraction:g} of train, seed {split_seed}")
        if with_test and has_train and (root / "test").is_dir():
            test, _ = load_class_folders(root / "test", size, classes)
    for limit, name in ((train_limit, "train"), (val_limit, "val"), (test_limit, "test")):
        if limit is not None and limit < 1:
            raise SettingsError(f"--{name}-limit must be at least 1 (got {limit})")
    train = train if train_limit is None else train.take(torch.arange(min(train_limit, len(train))))
    val = val if val_limit is None else val.take(torch.arange(min(val_limit, len(val))))
    if test is not None and test_limit is not None:
        test = test.take(torch.arange(min(test_limit, len(test))))
    mean, std = channel_stats(train.images)
    info.update(train=len(train), val=len(val), test=len(test) if test is not None else 0, classes=len(classes))
    return TaskData(train, val, test if with_test else None, classes, mean, std, info)


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images to float, normalised per channel (`mean`/`std` shaped [1, C, 1, 1] on the same device)."""
    return (images.float() / 255 - mean) / std


def augment(images: torch.Tensor, g: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Random translation by up to size/8 px (zero fill) and horizontal flip, per image, batched on the images' device."""
    n, c, h, w = images.shape
    pad = max(1, h // 8)
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(images.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device)[None])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device)[None])[:, None, None, :]
    out = padded[torch.arange(n, device=images.device)[:, None, None, None], torch.arange(c, device=images.device)[None, :, None, None],
                 rows, cols]
    if flip:
        mirror = (torch.rand(n, generator=g) < 0.5).to(images.device)
        out = torch.where(mirror[:, None, None, None], out.flip(-1), out)
    return out
