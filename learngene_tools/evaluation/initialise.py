"""The descendant at initialisation: built from its spec for a seed, then (CLKG) the learngene transplanted in memory.

The transplant is the one `lgt transplant` writes (the same planner and adaptation, applied to
the freshly built model's state_dict), so every tensor the plan does not name keeps the
scratch model's value for the same seed.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from learngene_tools.architectures.specs import build_model
from learngene_tools.errors import ModelError, SettingsError
from learngene_tools.io.bundle import Bundle


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first Conv2d in module order (its input channels are the model's)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ModelError("the descendant has no Conv2d: lgt evaluates CNNs")
    return conv


def build_descendant(spec: str, seed: int, in_chans: int, num_classes: int) -> nn.Module:
    """The descendant with random init for `seed`, for `num_classes` classes and (where the builder takes it) `in_chans`."""
    prefix = spec.partition(":")[0] if ":" in spec else "timm"
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if prefix == "timm":
        kwargs["in_chans"] = in_chans
    elif prefix != "torchvision":
        factory = _factory(spec)
        params = inspect.signature(factory).parameters if factory is not None else {}
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in (("num_classes", num_classes), ("in_chans", in_chans))
                  if k in params or takes_any}
    model = build_model(spec, seed=seed, **kwargs)
    return model


def _factory(spec: str) -> Any:
    import importlib

    module, _, name = spec.partition("(")[0].partition(":")
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None  # build_model reports it


def check_outputs(model: nn.Module, in_chans: int, size: tuple[int, int], num_classes: int) -> None:
    """Refuse a descendant whose logits do not match the data's classes (a factory without num_classes)."""
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(2, in_chans, *size))
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != num_classes:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"the descendant gives {shape} for a batch of 2, not [2, {num_classes}] logits for the data's "
                         f"{num_classes} classes; give a factory that takes num_classes (and in_chans)")


def select_stages(bundle: Bundle, stages: tuple[int, ...] | None) -> Bundle:
    """The bundle with only the runs of `stages` (what `lgt select --stages` gives from the same auxiliary model)."""
    if stages is None:
        return bundle
    missing = sorted(set(stages) - set(bundle.stages))
    if missing:
        raise SettingsError(f"--stages {','.join(map(str, stages))}: the bundle has no stage {missing[0]} "
                            f"(it has {', '.join(map(str, bundle.stages))})")
    return replace(bundle, layers=tuple(r for r in bundle.layers if r.stage in stages))


def transplant_into(model: nn.Module, spec: str, bundle: Bundle, seed: int, input_size: tuple[int, int, int], *,
                    transfer_bn: bool, rescale: bool, control: str | None = None) -> Any:
    """Transplant `bundle` (tensors loaded) into `model` in place, as `lgt transplant` would; returns the plan."""
    from learngene_tools.io.checkpoint import checkpoint_from_state_dict
    from learngene_tools.transplantation.apply import adapted_tensors
    from learngene_tools.transplantation.convs import trace_convs
    from learngene_tools.transplantation.planner import place_layers

    was_training = model.training
    ckpt = checkpoint_from_state_dict(model.state_dict(), spec, arch=spec)
    convs = trace_convs(model, input_size, ckpt.shapes)
    plan = place_layers(bundle, convs, target=spec, target_format=ckpt.fmt, wrapper=ckpt.wrapper_desc, arch=spec,
                        seed=seed, transfer_bn=transfer_bn)
    plan = replace(plan, rescale=rescale, control=control)
    updates = adapted_tensors(plan, bundle, ckpt)
    result = model.load_state_dict(updates, strict=False)
    if result.unexpected_keys:
        raise ModelError(f"the transplant wrote keys the model lacks: {result.unexpected_keys[:3]}")
    model.train(was_training)
    return plan


def transplanted_bns(model: nn.Module, plan: Any) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm modules the plan wrote (those whose statistics `--bn reestimate` measures)."""
    modules = dict(model.named_modules())
    return [modules[a.bn] for a in plan.placed if a.bn and a.bn in modules]


@torch.no_grad()
def reestimate_bn(model: nn.Module, bns: list[nn.modules.batchnorm._BatchNorm], batches: list[torch.Tensor]) -> None:
    """Replace the running statistics of `bns` by their average over `batches` (train-mode forward, no update elsewhere)."""
    if not bns or not batches:
        return
    others = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m not in bns]
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in others]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    was_training = model.training
    model.train()
    for x in batches:
        model(x)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    for m, state in zip(others, saved):
        m.load_state_dict(state)
    model.train(was_training)
