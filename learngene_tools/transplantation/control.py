"""Control transplants: the plan's kernels with their knowledge taken out, their scale kept.

A control follows the plain transplant's plan and changes the same tensors; only the transplanted
conv weights (as they are in the descendant, after width and kernel adaptation) get other values:

- `random-matched`: each output filter replaced by Gaussian values rescaled to that filter's L2 norm
  (keeps the scale, removes the structure and the value distribution);
- `shuffled`: each output filter's own values permuted (keeps the norm and the value distribution).

Training a control next to CLKG tells what the learngene's knowledge adds beyond its scale.
"""

from __future__ import annotations

import zlib

import torch

from learngene_tools.transplantation.config import CONTROLS


def control_generator(seed: int, layer_id: str) -> torch.Generator:
    """The control's own generator for a layer (independent of the width adaptation's draws)."""
    return torch.Generator().manual_seed((seed * 1_000_033 + zlib.crc32(b"control:" + layer_id.encode())) % (2**63))


def control_weight(w: torch.Tensor, control: str, gen: torch.Generator) -> torch.Tensor:
    """`w` ([out, ...]) with each output filter's values replaced as `control` says (float32 in, float32 out)."""
    if control not in CONTROLS:
        raise ValueError(f"unknown control {control!r}")
    flat = w.detach().float().reshape(w.shape[0], -1)
    if control == "shuffled":
        order = torch.stack([torch.randperm(flat.shape[1], generator=gen) for _ in range(flat.shape[0])])
        return flat.gather(1, order).reshape(w.shape)
    noise = torch.randn(flat.shape, generator=gen, dtype=torch.float64)
    norms = flat.double().norm(dim=1, keepdim=True)
    noise = noise * (norms / noise.norm(dim=1, keepdim=True).clamp_min(1e-30))
    return noise.float().reshape(w.shape)
