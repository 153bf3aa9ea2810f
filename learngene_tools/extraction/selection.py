"""Learngene selection: CLKG's three criteria applied to a trained auxiliary model.

1. Direct kernel extraction: weights (and their BN) are copied as they are.
2. Priority to edge kernels: by default the first and the last stage.
3. Continuous kernel selection: one contiguous run per chosen stage, touching the
   stage's outer edge (the start of the first stage, the end of the last), never
   isolated layers.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from learngene_tools import __version__
from learngene_tools.errors import SettingsError
from learngene_tools.extraction.config import SelectionSettings
from learngene_tools.io.bundle import BN_PARTS, LayerRecord, write_bundle
from learngene_tools.io.files import file_sha256
from learngene_tools.models.aux_checkpoint import load_aux
from learngene_tools.models.variants import AuxConfig


def _anchor(stage: int) -> str:
    """Runs touch the network's edges: the last stage's run ends with the stage, the others start with it."""
    return "end" if stage == 3 else "start"


def select_learngene(
    state: dict[str, torch.Tensor], config: AuxConfig, settings: SelectionSettings
) -> tuple[list[LayerRecord], dict[str, torch.Tensor]]:
    """Pick the learngene layers from an auxiliary state_dict; returns records and bundle tensors."""
    records: list[LayerRecord] = []
    tensors: dict[str, torch.Tensor] = {}
    reduction = 1
    stage_layers: dict[int, list[tuple[int, int, int]]] = {}  # stage -> [(index, stride, in_reduction)]
    for i in range(3):
        for j, s in enumerate(config.layer_strides(i)):
            stage_layers.setdefault(i + 1, []).append((j, s, reduction))
            reduction *= s
    for stage in sorted(settings.stages):
        layers = stage_layers[stage]
        n = len(layers) if settings.run_length is None else settings.run_length
        if n > len(layers):
            raise SettingsError(f"--run-length {n} is longer than stage {stage}, which has {len(layers)} layers")
        anchor = _anchor(stage)
        run = layers[:n] if anchor == "start" else layers[len(layers) - n :]
        for pos, (j, stride, in_red) in enumerate(run):
            key = f"stages.{stage - 1}.{j}.conv.weight"
            w = state[key].detach().float().contiguous()
            bn_prefix = f"stages.{stage - 1}.{j}.bn."
            has_bn = all(bn_prefix + p in state for p in BN_PARTS)
            rec = LayerRecord(
                id=f"s{stage}.{pos}", stage=stage, position=pos, run_length=n, anchor=anchor,
                shape=tuple(w.shape), stride=stride, in_reduction=in_red, reduction=in_red * stride,  # type: ignore[arg-type]
                source_key=key, has_bn=has_bn, l2_norms=tuple(w.flatten(1).norm(dim=1).tolist()),
            )
            tensors[rec.weight_name] = w.clone()
            if has_bn:
                for p in BN_PARTS:
                    tensors[rec.bn_name(p)] = state[bn_prefix + p].detach().float().clone()
            records.append(rec)
    return records, tensors


def select_from_file(
    aux_path: str | Path, out: str | Path, settings: SelectionSettings, trust_pickle: bool = False
) -> list[LayerRecord]:
    """`lgt select`: read an auxiliary checkpoint, select its learngene and write the bundle."""
    aux = load_aux(aux_path, trust_pickle=trust_pickle)
    records, tensors = select_learngene(aux.state, aux.config, settings)
    provenance: dict[str, Any] = {
        "ancestry": aux.ancestry,
        "auxiliary": {"config": json.loads(aux.config.to_json()), "checkpoint": Path(aux_path).name,
                      "checkpoint_sha256": file_sha256(aux_path)},
        "distillation": aux.distillation,
        "selection": {"criteria": ["direct_kernel_extraction", "edge_kernels", "continuous_runs"], **asdict(settings)},
        "tool": {"name": "learngene_tools", "version": __version__},
    }
    write_bundle(out, records, tensors, provenance)
    return records
