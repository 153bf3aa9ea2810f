"""Width and kernel-size adaptation of one learngene conv weight to a target conv's shape.

Rules (DESIGN.md):
- fewer target kernels: keep the n2 source kernels with the largest L2 norm (in source order);
- more target kernels: copy all source kernels, draw the rest from N(0, 0.05^2);
- input channels follow the kernels the previous layer of the run kept; where they
  cannot, a 1x1 linear map is folded into the kernel;
- a 3x3 kernel in a larger odd target kernel sits at its centre, zeros around it, so the
  target conv computes exactly the learngene's response at initialisation; in an even
  kernel (4x4, 6x6) it sits at offset (K-3)//2, the closest to centred;
- newly drawn kernels (and new input channels of kept kernels) are N(0, 0.05^2) over the
  whole target kernel, not only its 3x3 centre: a new kernel has no learngene to keep.
- a grouped target conv (`--grouped project`) takes the block-diagonal part of the kernel
  adapted as if it were dense: output kernel o of group g keeps its weights on the input
  channels of group g, so the conv computes the learngene's same-group contributions; a
  depthwise conv keeps the diagonal (each kernel its own input channel's weights).
Targets whose kernels are smaller than 3x3 are not adapted at all, nor grouped ones by
default: the planner skips them with a reason (convs.py).
"""

from __future__ import annotations

import zlib

import torch

NEW_KERNEL_STD = 0.05


def layer_generator(seed: int, layer_id: str) -> torch.Generator:
    """A generator seeded by (seed, layer id): a layer's draws do not depend on the other layers."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(layer_id.encode())) % (2**63))


def keep_by_norm(norms: list[float] | tuple[float, ...], n2: int) -> list[int | None]:
    """Source kernel index for each of the n2 target kernels (None: newly drawn).

    n1 >= n2 keeps the n2 largest norms, listed in source order; n1 < n2 keeps all, then new ones.
    """
    n1 = len(norms)
    if n1 <= n2:
        return list(range(n1)) + [None] * (n2 - n1)
    order = sorted(range(n1), key=lambda i: (-norms[i], i))[:n2]
    return sorted(order)  # type: ignore[return-value]


def fold_map(c1: int, c2: int) -> torch.Tensor:
    """The 1x1 map [c1, c2] folded into a kernel whose c1 input channels meet c2 target channels.

    Fewer channels sum the source channels that fold onto them (c mod c2), so an input
    replicated across channels (grey from RGB) gives the same response; more channels
    read source channel t mod c1, scaled by 1/(number of readers) (Net2Net widening).
    """
    m = torch.zeros(c1, c2)
    if c2 <= c1:
        m[torch.arange(c1), torch.arange(c1) % c2] = 1.0
    else:
        src = torch.arange(c2) % c1
        counts = torch.bincount(src, minlength=c1).float()
        m[src, torch.arange(c2)] = 1.0 / counts[src]
    return m


def adapt_in_channels(w: torch.Tensor, c2: int, follow: list[int | None] | None, gen: torch.Generator) -> torch.Tensor:
    """Map the input channels of `w` [n, c1, k, k] to c2.

    `follow` gives, for each target input channel, the source channel the previous layer
    put there (None: a newly drawn kernel, whose input weights are drawn too).
    """
    n, c1, kh, kw = w.shape
    if follow is not None:
        if len(follow) != c2:
            raise ValueError(f"follow map has {len(follow)} channels, target has {c2}")
        out = torch.randn(n, c2, kh, kw, generator=gen) * NEW_KERNEL_STD
        have = [t for t, s in enumerate(follow) if s is not None]
        if have:
            out[:, have] = w[:, [follow[t] for t in have]]
        return out
    if c1 == c2:
        return w.clone()
    return torch.einsum("ncij,cd->ndij", w, fold_map(c1, c2))


def embed_kernel(w: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Place a k x k kernel into a larger kh x kw one, centred (offset (K-k)//2), zeros around it."""
    n, c, h, wd = w.shape
    if (kh, kw) == (h, wd):
        return w
    if kh < h or kw < wd:
        raise ValueError(f"cannot embed a {h}x{wd} kernel into {kh}x{kw}")
    out = torch.zeros(n, c, kh, kw, dtype=w.dtype)
    top, left = (kh - h) // 2, (kw - wd) // 2
    out[:, :, top : top + h, left : left + wd] = w
    return out


def adapt_weight(
    w: torch.Tensor,
    target_shape: tuple[int, ...],
    keep: list[int | None],
    follow: list[int | None] | None,
    gen: torch.Generator,
) -> torch.Tensor:
    """Adapt a learngene weight to `target_shape` (float32): kept kernels mapped, new ones N(0, 0.05^2)."""
    n2, c2, kh, kw = target_shape
    out = torch.randn(n2, c2, kh, kw, generator=gen) * NEW_KERNEL_STD
    have = [t for t, s in enumerate(keep) if s is not None]
    if have:
        kept = w.float()[[keep[t] for t in have]]
        block = embed_kernel(adapt_in_channels(kept, c2, follow, gen), kh, kw)
        new_in = [c for c, s in enumerate(follow or []) if s is None]
        if new_in and (kh, kw) != tuple(w.shape[2:]):  # new input channels: drawn over the whole kernel
            block[:, new_in] = torch.randn(len(have), len(new_in), kh, kw, generator=gen) * NEW_KERNEL_STD
        out[have] = block
    return out


def adapt_vector(src: torch.Tensor, keep: list[int | None], target: torch.Tensor) -> torch.Tensor:
    """Per-kernel vector (BN statistic) following `keep`; new kernels keep the target's own values."""
    out = target.detach().clone().float()
    have = [t for t, s in enumerate(keep) if s is not None]
    if have:
        out[have] = src.float()[[keep[t] for t in have]]
    return out


def block_diagonal(dense: torch.Tensor, groups: int) -> torch.Tensor:
    """The grouped-conv weight [n, c/groups, kh, kw] holding the block-diagonal part of a dense [n, c, kh, kw] kernel."""
    n, c = dense.shape[:2]
    if groups == 1:
        return dense
    if n % groups or c % groups:
        raise ValueError(f"{n} kernels x {c} channels do not split into {groups} groups")
    per_out, per_in = n // groups, c // groups
    group = torch.arange(n) // per_out  # the group of each output kernel
    cols = group[:, None] * per_in + torch.arange(per_in)[None, :]  # its input channels in the dense kernel
    return dense[torch.arange(n)[:, None], cols]


def std_ratio(w: torch.Tensor, reference: torch.Tensor) -> float:
    """The factor that gives `w` the standard deviation of `reference` (1.0 when either is constant)."""
    sw, sr = float(w.float().std()), float(reference.float().std())
    return sr / sw if sw > 0 and sr > 0 else 1.0
