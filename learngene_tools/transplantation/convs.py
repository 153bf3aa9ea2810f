"""Find a target's conv layers and what each can take: from names, shapes and order, or from a traced forward.

Without an architecture, reductions (output strides) are estimated from channel
widths: every widening starts a new level, the last level is taken to run at stride
32. With one (`--arch`), a single forward pass on a dummy input gives each conv's
exact stride, groups, the BN that follows it and the conv that feeds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from learngene_tools.errors import ModelError

HEAD_NAMES = frozenset({
    "head", "heads", "fc", "classifier", "aux_classifier", "pre_logits", "decoder", "segmentation_head",
    "class_embed", "bbox_embed", "logits", "box_head", "box_predictor", "roi_heads", "rpn", "detect", "neck",
})
_BN_PARTS = ("weight", "bias", "running_mean", "running_var")
BEYOND_BACKBONE = "after the backbone: the feature path returns to a finer stride here (neck, decoder or head)"


def _is_bn(m: nn.Module) -> bool:
    """A BatchNorm, including the frozen kind torchvision and transformers use in detection backbones."""
    return isinstance(m, nn.modules.batchnorm._BatchNorm) or type(m).__name__.endswith("FrozenBatchNorm2d")


@dataclass(frozen=True)
class TargetConv:
    """A conv weight of the target and whether a learngene layer may go there."""

    key: str  # unprefixed weight key, e.g. "layer1.0.conv2.weight"
    shape: tuple[int, int, int, int]
    reduction: int | None  # output stride relative to the input image (times dilation: nominal stride)
    groups: int
    bn: str | None  # module prefix of the BatchNorm that normalises its output, e.g. "layer1.0.bn2"
    producer: str | None  # weight key of the conv whose output it reads (through BN/activation only)
    eligible: bool
    reason: str  # why it is not eligible, or what kind of conv it is

    @property
    def module(self) -> str:
        """Module path of the conv."""
        return self.key[: -len(".weight")]


def _head_part(key: str) -> str | None:
    for part in key.split("."):
        if part in HEAD_NAMES:
            return part
    return None


def _eligibility(key: str, shape: tuple[int, ...], groups: int, traced: bool | None) -> tuple[bool, str]:
    n, c, kh, kw = shape
    head = _head_part(key)
    if head is not None:
        return False, f"head ({head}): never touched"
    if traced is False:
        return False, "not run by the backbone's forward pass"
    if groups > 1:
        kind = "depthwise" if groups == n and c == 1 else f"grouped ({groups} groups)"
        return False, f"{kind} conv: a dense 3x3 learngene kernel has no per-group counterpart"
    if kh != kw:
        return False, f"non-square {kh}x{kw} kernel"
    if kh < 3:
        return False, f"{kh}x{kw} kernel is smaller than the 3x3 learngene kernel (never cropped)"
    return True, f"dense {kh}x{kw}"


def _follows_bn(keys: list[str], shapes: dict[str, tuple[int, ...]], i: int, n: int) -> str | None:
    """BN prefix when the keys right after conv weight keys[i] (and its bias) are a BatchNorm of width n."""
    conv = keys[i][: -len(".weight")]
    j = i + 1
    if j < len(keys) and keys[j] == conv + ".bias":
        j += 1
    if j >= len(keys) or "." not in keys[j]:
        return None
    bn = keys[j].rsplit(".", 1)[0]  # the next module, whichever of its tensors comes first
    if all(shapes.get(f"{bn}.{p}") == (n,) for p in _BN_PARTS):
        return bn
    return None


def _estimate_reductions(convs: list[tuple[str, tuple[int, ...]]]) -> dict[str, int]:
    """Width levels along the spatial convs; the last level runs at stride 32, each earlier one at half."""
    level_of: dict[str, int] = {}
    level, widest = 0, 0
    for key, shape in convs:
        if widest and shape[0] > widest:
            level += 1
        widest = max(widest, shape[0])
        level_of[key] = level
    top = level
    return {k: max(1, 2 ** (5 - (top - lv))) for k, lv in level_of.items()}


_FIRST = ("stem", "conv_stem", "patch_embed", "conv1", "bn1")


def _natural_key(key: str) -> tuple:
    """Module order guessed from a name alone: numbers compare as numbers, stems come first."""
    parts = key.split(".")
    first = 0 if parts[0] in _FIRST else 1
    return (first, *((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts))


def _bn_by_name(conv: str, shapes: dict[str, tuple[int, ...]], n: int) -> str | None:
    """BN named after its conv (conv1 -> bn1, cv1.conv -> cv1.bn), for files whose key order is not module order."""
    parent, _, leaf = conv.rpartition(".")
    candidates = [leaf.replace("conv", "bn"), leaf.replace("conv", "norm")] if "conv" in leaf else []
    for name in candidates:
        bn = f"{parent}.{name}" if parent else name
        if all(shapes.get(f"{bn}.{p}") == (n,) for p in _BN_PARTS):
            return bn
    return None


def convs_from_state(shapes: dict[str, tuple[int, ...]], module_order: bool = True) -> list[TargetConv]:
    """Conv layers from a state_dict's keys, shapes and order alone (reductions estimated).

    `module_order=False` (safetensors files store keys by dtype and name, not by module) sorts
    the keys naturally (layer.10 after layer.9) and also pairs BNs with convs by name.
    """
    keys = list(shapes) if module_order else sorted(shapes, key=_natural_key)
    prev: tuple[str, tuple[int, ...]] | None = None
    pending = []
    for i, key in enumerate(keys):
        shape = shapes[key]
        if len(shape) != 4 or not key.endswith(".weight"):
            continue
        n, c = shape[0], shape[1]
        groups = n if (c == 1 and n > 1 and pending) else 1
        producer = prev[0] if prev is not None and prev[1][0] == c and groups == 1 else None
        ok, reason = _eligibility(key, shape, groups, None)
        if module_order:
            bn = _follows_bn(keys, shapes, i, n)
        else:  # by name first; a neighbour in sorted order only when it is a sibling module (Sequential's 0 -> 1)
            conv_mod = key[: -len(".weight")]
            near = _follows_bn(keys, shapes, i, n)
            sibling = near is not None and near.rpartition(".")[0] == conv_mod.rpartition(".")[0]
            bn = _bn_by_name(conv_mod, shapes, n) or (near if sibling else None)
        pending.append((key, shape, groups, bn, producer, ok, reason))
        prev = (key, shape)
    est = _estimate_reductions([(k, s) for k, s, g, *_ in pending if g == 1 and s[2] >= 3 and _head_part(k) is None])
    return [
        TargetConv(key, shape, est.get(key), groups, bn, producer, ok, reason)  # type: ignore[arg-type]
        for key, shape, groups, bn, producer, ok, reason in pending
    ]


def _nominal_reductions(executed: list[tuple[str, nn.Conv2d, int]]) -> dict[str, int]:
    """Output stride of each conv as if dilation had not replaced striding (DeepLab's dilated ResNets).

    Among the convs that share a real stride, if any spatial one is dilated, each widening of
    the dense spatial convs (a new stage, whose stride became dilation) doubles the nominal
    stride. This holds whether the stage's first conv keeps the old dilation (torchvision) or
    takes the new one (segmentation-models-pytorch).
    """
    def spatial(n: str, m: nn.Conv2d) -> bool:
        return m.kernel_size[0] > 1 and m.groups == 1 and _head_part(n) is None

    out: dict[str, int] = {}
    for r in dict.fromkeys(rc for _, _, rc in executed):
        group = [(n, m) for n, m, rc in executed if rc == r]
        dilated = any(m.dilation[0] > 1 for n, m in group if spatial(n, m))
        level, width = 0, None
        for n, m in group:
            if dilated and spatial(n, m):
                if width is not None and m.out_channels > width:
                    level += 1
                width = m.out_channels if width is None else max(width, m.out_channels)
            out[n] = r * 2**level
    return out


def trace_convs(model: nn.Module, input_size: tuple[int, int, int], shapes: dict[str, tuple[int, ...]]) -> list[TargetConv]:
    """Conv layers of `model`, with exact strides, groups, BN and producers from one forward pass.

    Uses `forward_features` when the model has it (timm), so head convs are never run.
    """
    model = model.eval()
    names = {m: n for n, m in model.named_modules()}
    # BN modules may hold an activation (timm's BatchNormAct2d): hook them as well as the leaves.
    hooked = [m for m in model.modules() if not list(m.children()) or _is_bn(m)]
    events: list[tuple[nn.Module, Any, Any]] = []
    keep_alive: list[Any] = []

    def hook(mod: nn.Module, args: tuple, output: Any) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and isinstance(output, torch.Tensor):
            events.append((mod, x, output))
            keep_alive.extend((x, output))

    handles = [m.register_forward_hook(hook) for m in hooked]
    x = torch.zeros(1, *input_size)
    try:
        with torch.no_grad():
            fwd = getattr(model, "forward_features", None)
            (fwd if callable(fwd) else model)(x)
    except Exception as e:  # a model may reject the dummy input: say so plainly
        raise ModelError(f"the --arch model failed on a dummy input of shape {list(x.shape)}: {type(e).__name__}: {e}") from None
    finally:
        for h in handles:
            h.remove()

    produced_by: dict[int, tuple[nn.Module, Any]] = {}
    consumers: dict[int, list[nn.Module]] = {}
    for mod, xin, xout in events:
        consumers.setdefault(id(xin), []).append(mod)
        if xout is not xin:  # in-place ops keep their producer; an outer BN module (finishing later) wins
            produced_by[id(xout)] = (mod, xin)
    seen: dict[nn.Module, tuple[Any, Any]] = {}
    for mod, xin, xout in events:
        seen.setdefault(mod, (xin, xout))

    def producer_of(xin: Any) -> str | None:
        for _ in range(16):
            found = produced_by.get(id(xin))
            if found is None:
                return None
            mod, prev_in = found
            if isinstance(mod, nn.Conv2d):
                return names[mod] + ".weight"
            if not (_is_bn(mod) or isinstance(mod, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Identity, nn.Dropout,
                                                     nn.LeakyReLU, nn.Hardswish, nn.Mish, nn.ELU))):
                return None
            xin = prev_in
        return None

    image = input_size[1]
    nominal = _nominal_reductions(
        [(names[m], m, max(1, round(image / xout.shape[-2]))) for m, (_, xout) in seen.items() if isinstance(m, nn.Conv2d)]
    )
    beyond, peak = set(), 0
    for m in seen:  # execution order: the backbone is the prefix whose stride never falls back
        if isinstance(m, nn.Conv2d):
            r = nominal[names[m]]
            if beyond or r < peak:
                beyond.add(m)
            peak = max(peak, r)
    out: list[TargetConv] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Conv2d):
            continue
        key = name + ".weight"
        if key not in shapes:
            raise ModelError(f"the --arch model has conv {key!r} that the target checkpoint lacks; is --arch the right model?")
        shape = tuple(mod.weight.shape)
        if shapes[key] != shape:
            raise ModelError(f"the --arch model's {key} is {list(shape)} but the target's is {list(shapes[key])}; is --arch the right model?")
        traced = mod in seen
        reduction = bn = producer = None
        if traced:
            xin, xout = seen[mod]
            reduction = nominal[name]
            for c in consumers.get(id(xout), []):
                if _is_bn(c) and all(f"{names[c]}.{p}" in shapes for p in _BN_PARTS):
                    bn = names[c]
            producer = producer_of(xin)
        ok, reason = _eligibility(key, shape, mod.groups, traced)  # type: ignore[arg-type]
        if ok and mod in beyond:
            ok, reason = False, BEYOND_BACKBONE
        out.append(TargetConv(key, shape, reduction, mod.groups, bn, producer, ok, reason))  # type: ignore[arg-type]
    order = {k: i for i, k in enumerate(shapes)}
    return sorted(out, key=lambda c: order[c.key])
