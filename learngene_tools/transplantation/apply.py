"""Transplant: resolve the target, plan, apply the plan and write the descendant checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from learngene_tools.transplantation.adapt import adapt_vector, adapt_weight, layer_generator
from learngene_tools.specs import build_model, default_input_size, is_model_spec
from learngene_tools.extraction.bundle import BN_PARTS, Bundle, read_bundle, read_bundle_header
from learngene_tools.io.checkpoint import Checkpoint, check_output, checkpoint_from_state_dict, load_checkpoint, output_format, save_checkpoint
from learngene_tools.transplantation.convs import TargetConv, convs_from_state, trace_convs
from learngene_tools.transplantation.planner import TransplantPlan, plan_transplant

TRANSPLANT_KEY = "learngene.transplant"


def open_target(target: str, seed: int = 0, trust_pickle: bool = False) -> tuple[Checkpoint, torch.nn.Module | None]:
    """A target checkpoint file, or a freshly built model for a spec such as `timm:resnet50`."""
    if is_model_spec(target):
        model = build_model(target, seed=seed)
        return checkpoint_from_state_dict(model.state_dict(), target, arch=target), model
    return load_checkpoint(target, trust_pickle=trust_pickle), None


def target_convs(
    ckpt: Checkpoint, arch: str | None, model: torch.nn.Module | None = None,
    input_size: tuple[int, int] | None = None, seed: int = 0,
) -> list[TargetConv]:
    """The target's convs: traced through `arch` (or the built model) when given, else from the state_dict."""
    if arch is None and model is None:
        return convs_from_state(ckpt.shapes, module_order=ckpt.fmt != "safetensors")
    if model is None:
        model = build_model(arch, seed=seed)  # type: ignore[arg-type]
    first = next((s for s in ckpt.shapes.values() if len(s) == 4), None)
    in_chans = first[1] if first else 3
    c, h, w = default_input_size(model, in_chans)
    if input_size is not None:
        h, w = input_size
    return trace_convs(model, (c, h, w), ckpt.shapes)


def make_plan(
    bundle: Bundle, ckpt: Checkpoint, *, arch: str | None = None, model: torch.nn.Module | None = None,
    seed: int = 0, transfer_bn: bool = True, input_size: tuple[int, int] | None = None,
) -> TransplantPlan:
    """Plan a transplant of `bundle` into `ckpt`."""
    arch = arch or ckpt.arch
    convs = target_convs(ckpt, arch, model, input_size, seed)
    return plan_transplant(
        bundle, convs, target=ckpt.source, target_format=ckpt.fmt, wrapper=ckpt.wrapper_desc, arch=arch,
        seed=seed, transfer_bn=transfer_bn,
    )


def apply_plan(plan: TransplantPlan, bundle: Bundle, ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """The rewritten target tensors (by unprefixed key), in the target's dtypes."""
    updates: dict[str, torch.Tensor] = {}
    by_id = {r.id: r for r in bundle.layers}
    keeps = {a.layer: list(a.keep) for a in plan.placed}
    for a in plan.placed:
        rec = by_id[a.layer]
        gen = layer_generator(plan.seed, a.layer)
        follow = keeps[a.follow] if a.in_map == "follow" and a.follow else None
        w = adapt_weight(bundle.tensors[rec.weight_name], a.target_shape, keeps[a.layer], follow, gen)  # type: ignore[arg-type]
        updates[a.target] = w.to(ckpt.dtypes[a.target])  # type: ignore[index]
        if a.bn:
            for p in BN_PARTS:
                key = f"{a.bn}.{p}"
                new = adapt_vector(bundle.tensors[rec.bn_name(p)], keeps[a.layer], ckpt.tensor(key))
                updates[key] = new.to(ckpt.dtypes[key])
    return updates


def transplant(
    bundle_path: str | Path,
    target: str,
    out: str | Path | None,
    *,
    arch: str | None = None,
    seed: int = 0,
    transfer_bn: bool = True,
    force: bool = False,
    trust_pickle: bool = False,
    dry_run: bool = False,
    input_size: tuple[int, int] | None = None,
    recipe: dict | None = None,
) -> TransplantPlan:
    """Initialise `target` from a learngene bundle and write it to `out` (nothing is written with `dry_run`).

    `recipe` (a recipe's provenance) is recorded with the transplant in a safetensors output's metadata.
    """
    bundle = read_bundle_header(bundle_path, verify=True)
    out_path = Path(out) if out is not None else None
    if out_path is not None and not dry_run:
        check_output(out_path, [Path(bundle_path)] + ([] if is_model_spec(target) else [Path(target)]), force)
    ckpt, model = open_target(target, seed=seed, trust_pickle=trust_pickle)
    if out_path is not None and not dry_run:
        output_format(ckpt, out_path)
    plan = make_plan(bundle, ckpt, arch=arch, model=model, seed=seed, transfer_bn=transfer_bn, input_size=input_size)
    if dry_run or out_path is None:
        return plan
    bundle = read_bundle(bundle_path)
    updates = apply_plan(plan, bundle, ckpt)
    record = {
        "bundle": Path(bundle.source).name, "bundle_hash": plan.bundle_hash, "seed": seed, "transfer_bn": transfer_bn,
        "layers": {a.layer: a.target for a in plan.placed}, **({"recipe": recipe} if recipe else {}),
    }
    save_checkpoint(ckpt, updates, out_path, metadata={TRANSPLANT_KEY: json.dumps(record, sort_keys=True)})
    return plan


def default_output(target: str, fmt_hint: str | None = None) -> Path:
    """`<target stem>_lg<suffix>` in the current folder (`<model>_lg.safetensors` for a model spec)."""
    if is_model_spec(target):
        return Path(f"{target.split(':', 1)[1].replace('.', '_')}_lg.safetensors")
    p = Path(target)
    return Path(f"{p.stem}_lg{p.suffix or '.pt'}")
