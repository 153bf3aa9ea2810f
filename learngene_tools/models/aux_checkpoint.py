"""The auxiliary checkpoint file: the model's tensors plus its config and the record of how it was distilled.

`lgt distill` writes it (`aux.safetensors`); `lgt select` reads it. Metadata keys:
  lgt.aux_config       JSON AuxConfig (widths, depths, in_chans)
  lgt.ancestry         JSON: the teacher's arch, checkpoint name and hash, taps
  lgt.distillation     JSON: every distillation setting, steps, final losses
A checkpoint without them (e.g. a `torch.save` of the model's state_dict) still reads:
the config is recovered from its keys and shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from learngene_tools.models.auxiliary import AuxNet, config_from_state_dict
from learngene_tools.models.variants import AuxConfig

AUX_CONFIG_KEY = "lgt.aux_config"
ANCESTRY_KEY = "lgt.ancestry"
DISTILLATION_KEY = "lgt.distillation"


@dataclass(frozen=True)
class AuxCheckpoint:
    """A read auxiliary checkpoint: config, tensors, and the provenance recorded with it (None when absent)."""

    source: str
    config: AuxConfig
    state: dict[str, torch.Tensor]
    ancestry: Any = None
    distillation: Any = None


def save_aux(model: AuxNet, path: str | Path, ancestry: Any = None, distillation: Any = None) -> None:
    """Save an auxiliary model as safetensors with its config (and provenance, when given), atomically."""
    from learngene_tools.io.files import atomic_path
    from learngene_tools.io.tensors import encode_safetensors

    meta = {AUX_CONFIG_KEY: model.cfg.to_json()}
    if ancestry is not None:
        meta[ANCESTRY_KEY] = json.dumps(ancestry, sort_keys=True)
    if distillation is not None:
        meta[DISTILLATION_KEY] = json.dumps(distillation, sort_keys=True)
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(encode_safetensors(model.state_dict(), meta))


def load_aux(path: str | Path, trust_pickle: bool = False) -> AuxCheckpoint:
    """Read an auxiliary checkpoint (`.safetensors` from `lgt distill`, or any state_dict file of an AuxNet)."""
    from learngene_tools.io.reading import load_checkpoint

    ckpt = load_checkpoint(path, trust_pickle=trust_pickle)
    state = ckpt.state_dict()
    meta = ckpt.metadata
    config = AuxConfig.from_json(meta[AUX_CONFIG_KEY]) if AUX_CONFIG_KEY in meta else config_from_state_dict(state, ckpt.source)
    return AuxCheckpoint(
        source=ckpt.source, config=config, state=state,
        ancestry=json.loads(meta.get(ANCESTRY_KEY, "null")),
        distillation=json.loads(meta.get(DISTILLATION_KEY, "null")),
    )
