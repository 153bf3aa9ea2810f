"""Applying a plan: the adapted tensors, written as the descendant checkpoint in the target's own form."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from learngene_tools.architectures.specs import is_model_spec
from learngene_tools.errors import InvalidFileError
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
from learngene_tools.transplantation.planner import TransplantPlan, plan_transplant
from learngene_tools.transplantation.target import open_target

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


def _inputs(bundle: str | Path, target: str | Path) -> list[Path]:
    return [Path(bundle)] + ([] if isinstance(target, str) and is_model_spec(target) else [Path(target)])


def check_transplant_output(out: Path, bundle: str | Path, target: str | Path, force: bool) -> None:
    """Refuse a bad output before any work: a folder target is written as a folder, anything else as a file."""
    inputs = _inputs(bundle, target)
    if Path(target).is_dir() and not (isinstance(target, str) and is_model_spec(target)):
        check_folder_output(out, inputs, force)
    else:
        check_output(out, inputs, force)


def apply_plan(plan: TransplantPlan, out: str | Path, *, force: bool = False, recipe: dict[str, Any] | None = None,
               trust_pickle: bool = False) -> Path:
    """Write the descendant checkpoint a plan describes to `out` (atomically); returns `out`.

    `recipe` (a recipe's provenance) is recorded with the transplant in a safetensors output's metadata.
    """
    out = Path(out)
    check_transplant_output(out, plan.bundle, plan.target, force)
    return _write(plan, out, recipe, trust_pickle, force)


def _write(plan: TransplantPlan, out: Path, recipe: dict[str, Any] | None, trust_pickle: bool, force: bool) -> Path:
    """Write a plan whose output was checked: from what the plan loaded (read again only for a plan without it)."""
    ckpt = plan.target_checkpoint or open_target(plan.target, seed=plan.seed, trust_pickle=trust_pickle)[0]
    fmt = output_format(ckpt, out)
    bundle = plan.loaded_bundle or read_bundle(plan.bundle)
    if str(bundle.provenance.get("tensor_hash", "")) != plan.bundle_hash:
        raise InvalidFileError(f"{plan.bundle}: changed since the plan was made (tensor hash differs); plan again")
    updates = [adapted_tensors(plan, bundle, ckpt, read) for read in copy_readers(ckpt)]
    record = {
        "bundle": Path(bundle.source).name, "bundle_hash": plan.bundle_hash, "seed": plan.seed,
        "transfer_bn": plan.transfer_bn, "rescale": plan.rescale, "layers": {a.layer: a.target for a in plan.placed},
        **({"recipe": recipe} if recipe else {}),
    }
    drop = tuple(ckpt.optimizer_state) if plan.drop_optimizer else ()
    save_checkpoint(ckpt, updates, out, metadata={TRANSPLANT_KEY: json.dumps(record, sort_keys=True)}, drop=drop,
                    fmt=fmt, replace=force)
    return out


def transplant(
    bundle: str | Path,
    target: str | Path,
    out: str | Path | None,
    settings: TransplantSettings | None = None,
    *,
    force: bool = False,
    dry_run: bool = False,
    recipe: dict[str, Any] | None = None,
    **overrides: Any,
) -> TransplantPlan:
    """Plan, then write the descendant to `out` (nothing is written with `dry_run` or `out=None`).

    `overrides` are `TransplantSettings` fields (`arch=`, `seed=`, `transfer_bn=`, `input_size=`, `trust_pickle=`,
    `grouped=`, `require_traced=`, `drop_optimizer=`).
    """
    s = replace(settings or TransplantSettings(), **overrides)
    write = out is not None and not dry_run
    if write:  # refuse a bad output before any work is done
        check_transplant_output(Path(out), bundle, target, force)  # type: ignore[arg-type]
    plan = plan_transplant(bundle, target, s)
    if write:
        _write(plan, Path(out), recipe, s.trust_pickle, force)  # type: ignore[arg-type]
    return plan
