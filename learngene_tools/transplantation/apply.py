"""Applying a plan: the adapted tensors, written as the descendant checkpoint in the target's own form."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from learngene_tools.architectures.specs import is_model_spec
from learngene_tools.errors import InvalidFileError, SettingsError
from learngene_tools.io.bundle import BN_PARTS, Bundle, read_bundle
from learngene_tools.io.checkpoint import Checkpoint, copy_readers
from learngene_tools.io.files import check_output
from learngene_tools.io.folders import check_folder_output
from learngene_tools.io.writing import output_format, save_checkpoint
from learngene_tools.transplantation.adapt import (
    adapt_vector,
    adapt_weight,
    block_diagonal,
    layer_generator,
    std_ratio,
)
from learngene_tools.transplantation.config import TransplantSettings
from learngene_tools.transplantation.control import control_generator, control_weight
from learngene_tools.transplantation.memory import apply_to_module, is_in_memory, on_cpu, updated_state
from learngene_tools.transplantation.planner import TransplantPlan, plan_transplant
from learngene_tools.transplantation.target import Target, open_target

TRANSPLANT_KEY = "learngene.transplant"


def adapted_tensors(plan: TransplantPlan, bundle: Bundle, ckpt: Checkpoint,
                    read: Callable[[str], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The rewritten target tensors (by unprefixed key), in the target's dtypes.

    `read` gives the target's own tensors (default: the checkpoint's first copy): new kernels keep its BN values.
    """
    read = read or ckpt.tensor
    updates: dict[str, torch.Tensor] = {}
    by_id = {r.id: r for r in bundle.layers}
    keeps = {a.layer: list(a.keep) for a in plan.placed}
    for a in plan.placed:
        rec = by_id[a.layer]
        gen = layer_generator(plan.seed, a.layer)
        follow = keeps[a.follow] if a.in_map == "follow" and a.follow else None
        dense = adapt_weight(bundle.tensors[rec.weight_name], a.dense_shape, keeps[a.layer], follow, gen)  # type: ignore[arg-type]
        w = block_diagonal(dense, a.groups)
        if plan.control is not None:
            w = control_weight(w, plan.control, control_generator(plan.seed, a.layer))
        scale = std_ratio(w, read(a.target)) if plan.rescale else 1.0  # type: ignore[arg-type]
        updates[a.target] = (w * scale).to(ckpt.dtypes[a.target])  # type: ignore[index]
        if a.bn:
            for p in BN_PARTS:
                key = f"{a.bn}.{p}"
                new = adapt_vector(bundle.tensors[rec.bn_name(p)], keeps[a.layer], read(key))
                # the conv's output scales by `scale`: its BN statistics follow, so the BN output is unchanged
                new = new * scale if p == "running_mean" else new * scale**2 if p == "running_var" else new
                updates[key] = new.to(ckpt.dtypes[key])
    return updates


def _inputs(bundle: str | Path, target: Any) -> list[Path]:
    if target is None or is_in_memory(target) or (isinstance(target, str) and is_model_spec(target)):
        return [Path(bundle)]
    return [Path(bundle), Path(target)]


def check_transplant_output(out: Path, bundle: str | Path, target: Any, force: bool) -> None:
    """Refuse a bad output before any work: a folder target is written as a folder, anything else as a file."""
    inputs = _inputs(bundle, target)
    if len(inputs) > 1 and os.path.isdir(target):
        check_folder_output(out, inputs, force)
    else:
        check_output(out, inputs, force)


def apply_plan(plan: TransplantPlan, out: str | Path | None, *, force: bool = False,
               recipe: dict[str, Any] | None = None, trust_pickle: bool = False) -> Any:
    """Carry out a plan: write the descendant checkpoint to `out` (atomically; returns `out` as a Path), or, with
    `out` None and an in-memory target, initialise the nn.Module in place (returns it) or return the new state_dict
    (the input mapping is not modified).

    `recipe` (a recipe's provenance) is recorded with the transplant in a safetensors output's metadata.
    """
    if out is None:
        return _apply_in_memory(plan)
    out = Path(out)
    check_transplant_output(out, plan.bundle, None if plan.in_memory else plan.target, force)
    return _write(plan, out, recipe, trust_pickle, force)


def _write(plan: TransplantPlan, out: Path, recipe: dict[str, Any] | None, trust_pickle: bool, force: bool) -> Path:
    """Write a plan whose output was checked: from what the plan loaded (read again only for a plan without it)."""
    ckpt = plan.target_checkpoint or open_target(plan.target, seed=plan.seed, trust_pickle=trust_pickle)[0]
    fmt = output_format(ckpt, out)
    bundle = _bundle_of(plan)
    updates = [adapted_tensors(plan, bundle, ckpt, on_cpu(read)) for read in copy_readers(ckpt)]
    record = {
        "bundle": Path(bundle.source).name, "bundle_hash": plan.bundle_hash, "seed": plan.seed,
        "transfer_bn": plan.transfer_bn, "rescale": plan.rescale,
        **({"control": plan.control} if plan.control else {}), "layers": {a.layer: a.target for a in plan.placed},
        **({"recipe": recipe} if recipe else {}),
    }
    drop = tuple(ckpt.optimizer_state) if plan.drop_optimizer else ()
    save_checkpoint(ckpt, updates, out, metadata={TRANSPLANT_KEY: json.dumps(record, sort_keys=True)}, drop=drop,
                    fmt=fmt, replace=force)
    return out


def _bundle_of(plan: TransplantPlan) -> Bundle:
    """The bundle the plan loaded (its tensors verified when planned), read again only for a plan without it."""
    if plan.loaded_bundle is not None:
        return plan.loaded_bundle
    bundle = read_bundle(plan.bundle)
    if str(bundle.provenance.get("tensor_hash", "")) != plan.bundle_hash:
        raise InvalidFileError(f"{plan.bundle}: changed since the plan was made (tensor hash differs); plan again")
    return bundle


def _apply_in_memory(plan: TransplantPlan) -> Any:
    ckpt = plan.target_checkpoint
    if ckpt is None or not plan.in_memory:
        raise SettingsError(f"apply_plan(plan, None) needs a plan made for an nn.Module or a state_dict; {plan.target} "
                            "is a file or a spec: give an output path")
    bundle = _bundle_of(plan)
    if plan.target_module is not None:
        updates = adapted_tensors(plan, bundle, ckpt, on_cpu(ckpt.tensor))
        apply_to_module(plan.target_module, ckpt, updates)
        return plan.target_module
    per_copy = [adapted_tensors(plan, bundle, ckpt, on_cpu(read)) for read in copy_readers(ckpt)]
    return updated_state(ckpt, per_copy)


def transplant(
    bundle: str | Path,
    target: Target,
    out: str | Path | None,
    settings: TransplantSettings | None = None,
    *,
    force: bool = False,
    dry_run: bool = False,
    recipe: dict[str, Any] | None = None,
    arch: Any = None,
    **overrides: Any,
) -> TransplantPlan:
    """Plan, then write the descendant to `out` (nothing is written with `dry_run`, nor with `out=None` for a file
    or spec target); an nn.Module target with `out=None` is initialised in place.

    `overrides` are `TransplantSettings` fields (`seed=`, `transfer_bn=`, `input_size=`, `trust_pickle=`,
    `grouped=`, `require_traced=`, `drop_optimizer=`); `arch` is a spec or an nn.Module.
    """
    s = replace(settings or TransplantSettings(), **overrides)
    write = out is not None and not dry_run
    if write:  # refuse a bad output before any work is done
        check_transplant_output(Path(out), bundle, target, force)  # type: ignore[arg-type]
    plan = plan_transplant(bundle, target, s, arch=arch)
    if write:
        _write(plan, Path(out), recipe, s.trust_pickle, force)  # type: ignore[arg-type]
    elif out is None and not dry_run and isinstance(target, nn.Module):
        apply_plan(plan, None)
    return plan
