"""Transplant targets: a checkpoint (file or folder) or a freshly built model (spec), its architecture, and its conv
layers with their roles."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Union

import torch
from torch import nn

from learngene_tools.architectures.identify import Architecture, identify
from learngene_tools.architectures.keysets import align_model
from learngene_tools.architectures.specs import build_model, is_model_spec, spec_name
from learngene_tools.architectures.tracing import model_device, model_input_size
from learngene_tools.errors import ModelError, SettingsError
from learngene_tools.io.checkpoint import Checkpoint, checkpoint_from_state_dict
from learngene_tools.io.reading import load_checkpoint
from learngene_tools.reporting import notice
from learngene_tools.transplantation.convs import TargetConv, convs_from_state, trace_convs
from learngene_tools.transplantation.memory import module_checkpoint, state_dict_checkpoint

NOT_IDENTIFIED = ("the architecture was not identified ({why}); strides are estimated from channel widths, "
                  "so placements may be wrong: pass {arch} (timm:NAME, torchvision:NAME or pkg.module:factory) "
                  "to trace it, or {require_traced} to refuse")

Target = Union[str, Path, nn.Module, Mapping[str, Any]]


def open_target(target: Target, seed: int = 0, trust_pickle: bool = False) -> tuple[Checkpoint, torch.nn.Module | None]:
    """A target checkpoint file or folder, a freshly built model for a spec such as `timm:resnet50`, or an in-memory
    module or state_dict (`transplantation.memory`)."""
    if isinstance(target, nn.Module):
        return module_checkpoint(target), target
    if isinstance(target, Mapping):
        ckpt = state_dict_checkpoint(target)
        ckpt.check_copies_agree()
        return ckpt, None
    if isinstance(target, str) and is_model_spec(target):
        model = build_model(target, seed=seed)
        return checkpoint_from_state_dict(model.state_dict(), target, arch=target), model
    ckpt = load_checkpoint(target, trust_pickle=trust_pickle)
    ckpt.check_copies_agree()
    return ckpt, None


def _classifier(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier") or () if isinstance(cfg, dict) else ()
    return (heads,) if isinstance(heads, str) else tuple(heads)


def given_architecture(ckpt: Checkpoint, arch: str, seed: int = 0) -> Architecture:
    """The `--arch` model, built, with its keys aligned with the checkpoint's (a prefix or save-time rename apart)."""
    model = build_model(arch, seed=seed)
    key_map = align_model(model, ckpt.shapes, _classifier(model), what=f"the --arch model {arch}")
    return Architecture(arch, "given with --arch", lambda meta: model, key_map=key_map)


def given_module(ckpt: Checkpoint, module: nn.Module) -> Architecture:
    """An `nn.Module` given as the architecture of a state_dict (`arch=` in Python), its keys aligned."""
    if not isinstance(module, nn.Module):
        raise SettingsError(f"arch= takes a model spec string or an nn.Module (got {type(module).__name__})")
    name = f"<{type(module).__name__} module>"
    key_map = align_model(module, ckpt.shapes, _classifier(module), what=f"the arch= module {type(module).__name__}")
    return Architecture(name, "given with arch=", lambda meta: module, key_map=key_map)


def architectures(ckpt: Checkpoint, arch: str | nn.Module | None = None, model: nn.Module | None = None,
                  seed: int = 0, notify: Callable[[str], None] | None = None) -> tuple[list[Architecture], str]:
    """The architectures to trace (one when given or hinted; all exact matches otherwise), or none and why.

    `model`: the target's own model (built from a spec, or the module given as the target), traced as it is.
    """
    if model is not None:
        how = "model spec" if ckpt.arch is not None else "given module"
        return [Architecture(ckpt.source, how, lambda meta: model)], ""
    if isinstance(arch, nn.Module):
        return [given_module(ckpt, arch)], ""
    if arch is not None:
        return [given_architecture(ckpt, arch, seed)], ""
    found = identify(ckpt, ckpt.path, notify)
    if found.more:
        return [], f"its keys match {len(found.candidates) + found.more} architectures"
    if not found.candidates:
        return [], "no model that timm, torchvision or the installed descendant packages build has its keys and shapes"
    return found.candidates, ""


def traced_convs(ckpt: Checkpoint, arch: Architecture, input_size: tuple[int, ...] | None = None,
                 grouped: str = "skip") -> list[TargetConv]:
    """The target's convs traced through `arch` (on the meta device when it builds there; on cpu otherwise)."""
    model = arch.model(True)
    for attempt in (0, 1):
        try:
            return trace_convs(model, model_input_size(model, input_size), ckpt.shapes, arch.key_map, grouped)
        except ModelError:
            if attempt or model_device(model).type != "meta":
                raise
            model = arch.model(False)  # a forward that needs real values (a data-dependent branch)
    raise AssertionError("unreachable")


def estimated_convs(ckpt: Checkpoint, grouped: str = "skip") -> list[TargetConv]:
    """The target's convs from its keys, shapes and order alone (strides estimated)."""
    first = ckpt.weight_sets[0][0] if ckpt.weight_sets else ckpt
    return convs_from_state(ckpt.shapes, module_order=first.fmt != "safetensors", grouped=grouped)


def conv_signature(convs: list[TargetConv]) -> list[tuple]:
    """What placement depends on, conv by conv (to tell whether two architectures trace the same)."""
    return [(c.key, c.reduction, c.groups, c.bn, c.producer, c.eligible) for c in convs]


def note(message: str) -> None:
    """A notice: what takes long happens once (building the architecture index for new package versions)."""
    notice(message)


def describe_target(target: str | Path, arch: str | None = None, trust_pickle: bool = False,
                    input_size: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Describe a checkpoint (or model spec): format, wrapper, identification, and every conv with what a transplant
    does with it."""
    ckpt, model = open_target(target, trust_pickle=trust_pickle)
    options, why = architectures(ckpt, arch, model, notify=note)
    identification: dict[str, Any]
    if options:
        convs = traced_convs(ckpt, options[0], input_size)
        same = [a.spec for a in options[1:] if conv_signature(traced_convs(ckpt, a, input_size)) == conv_signature(convs)]
        differ = [a.spec for a in options[1:] if a.spec not in same]
        options[0].also = tuple(same)
        identification = {"arch": options[0].spec, "how": options[0].how, "text": options[0].describe(),
                          "also": same, "differing": differ}
        if differ:
            verb = "also matches" if len(differ) == 1 else "also match"
            identification["text"] += (f"; {', '.join(differ)} {verb} with other strides: a transplant "
                                       "compares their plans")
    else:
        convs = estimated_convs(ckpt)
        identification = {"arch": None, "how": None, "text": f"not identified: {why}", "also": [], "differing": []}
    if not convs:
        raise ModelError(f"{target}: has no conv layer (no 4-D weight); lgt transplants into CNN checkpoints")
    n_params = 0
    for shape in ckpt.shapes.values():
        size = 1
        for d in shape:
            size *= d
        n_params += size
    return {
        "kind": "checkpoint",
        "file": ckpt.source,
        "format": ckpt.fmt,
        "wrapper": ckpt.wrapper_desc,
        "copies": ckpt.copy_labels,
        "optimizer_state": ckpt.optimizer_state,
        "tensors": len(ckpt.shapes),
        "params": n_params,
        "strides": "traced" if options else "estimated",
        "arch": options[0].spec if options else None,
        "identification": identification,
        "metadata": {k: v for k, v in ckpt.metadata.items() if k.startswith(("lgt.", "learngene."))},
        "convs": [
            {"key": c.key, "shape": list(c.shape), "reduction": c.reduction, "groups": c.groups, "bn": c.bn,
             "eligible": c.eligible, "role": ("can take learngene: " if c.eligible else "skipped: ") + c.reason}
            for c in convs
        ],
    }


def default_output(target: str | Path) -> Path:
    """`<target stem>_lg<suffix>` in the current folder (`<model>_lg.safetensors` for a model spec, `<name>_lg/`
    for a folder)."""
    if isinstance(target, str) and is_model_spec(target):
        return Path(f"{spec_name(target).replace('.', '_')}_lg.safetensors")
    p = Path(target)
    if p.is_dir():
        return Path(f"{p.resolve().name}_lg")
    return Path(f"{p.stem}_lg{p.suffix or '.pt'}")
