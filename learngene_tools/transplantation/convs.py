"""Find a target's conv layers and what each can take: from a traced forward, or from names, shapes and order.

With the architecture (given, identified, or a model spec), one forward pass on a dummy
input (`learngene_tools.architectures.tracing`) gives each conv's exact stride, groups, the BN that
follows it, the conv that feeds it and the execution order. Only without one are
reductions (output strides) estimated from channel widths: every widening starts a new
level, the last level is taken to run at stride 32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from learngene_tools.architectures.keysets import KeyMap
from learngene_tools.architectures.tracing import Trace, run_trace
from learngene_tools.io.bundle import BN_PARTS

HEAD_NAMES = frozenset({
    "head", "heads", "fc", "classifier", "aux_classifier", "pre_logits", "decoder", "segmentation_head",
    "class_embed", "bbox_embed", "logits", "box_head", "box_predictor", "roi_heads", "rpn", "detect", "neck",
})
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


def conv_kind(shape: tuple[int, ...], groups: int) -> str:
    """'dense', 'depthwise' or 'grouped (G groups)'."""
    if groups <= 1:
        return "dense"
    return "depthwise" if shape[1] == 1 else f"grouped ({groups} groups)"


def _eligibility(key: str, shape: tuple[int, ...], groups: int, traced: bool | None,
                 grouped: str = "skip") -> tuple[bool, str]:
    n, c, kh, kw = shape
    head = _head_part(key)
    if head is not None:
        return False, f"head ({head}): never touched"
    if traced is False:
        return False, "not run by the backbone's forward pass"
    kind = conv_kind(shape, groups)
    if groups > 1 and grouped != "project":
        return False, f"{kind} conv: a dense 3x3 learngene kernel has no per-group counterpart (--grouped project " \
                      "gives it the block-diagonal part)"
    if kh != kw:
        return False, f"non-square {kh}x{kw} kernel"
    if kh < 3:
        return False, f"{kh}x{kw} kernel is smaller than the 3x3 learngene kernel (never cropped)"
    return True, f"{kind} {kh}x{kw}" + (" (block-diagonal part of the learngene)" if groups > 1 else "")


def _follows_bn(keys: list[str], shapes: dict[str, tuple[int, ...]], i: int, n: int) -> str | None:
    """BN prefix when the keys right after conv weight keys[i] (and its bias) are a BatchNorm of width n."""
    conv = keys[i][: -len(".weight")]
    j = i + 1
    if j < len(keys) and keys[j] == conv + ".bias":
        j += 1
    if j >= len(keys) or "." not in keys[j]:
        return None
    bn = keys[j].rsplit(".", 1)[0]  # the next module, whichever of its tensors comes first
    if all(shapes.get(f"{bn}.{p}") == (n,) for p in BN_PARTS):
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
        if all(shapes.get(f"{bn}.{p}") == (n,) for p in BN_PARTS):
            return bn
    return None


def convs_from_state(shapes: dict[str, tuple[int, ...]], module_order: bool = True,
                     grouped: str = "skip") -> list[TargetConv]:
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
        ok, reason = _eligibility(key, shape, groups, None, grouped)
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


def trace_convs(model: nn.Module, input_size: tuple[int, int, int], shapes: dict[str, tuple[int, ...]],
                key_map: KeyMap | None = None, grouped: str = "skip") -> list[TargetConv]:
    """Conv layers of `model` in execution order, with exact strides, groups, BN and producers from one forward pass.

    Keys are the checkpoint's (`key_map` maps the model's onto them; identity when None) and shapes are the
    checkpoint's. Uses `forward_features` when the model has it (timm), so head convs are never run.
    """
    def ckpt_key(model_key: str | None) -> str | None:
        if model_key is None:
            return None
        return key_map.ckpt(model_key) if key_map is not None else (model_key if model_key in shapes else None)

    trace = run_trace(model, input_size, features=True, extra=_is_bn)
    names = {m: n for n, m in model.named_modules()}
    produced_by: dict[int, tuple[nn.Module, Any]] = {}
    consumers: dict[int, list[nn.Module]] = {}
    for call in trace.calls:
        if call.input is None or call.output is None:
            continue
        consumers.setdefault(id(call.input), []).append(call.module)
        if call.output is not call.input:  # in-place ops keep their producer; an outer BN module (finishing later) wins
            produced_by[id(call.output)] = (call.module, call.input)

    def producer_of(xin: Any) -> str | None:
        for _ in range(16):
            found = produced_by.get(id(xin))
            if found is None:
                return None
            mod, prev_in = found
            if isinstance(mod, nn.Conv2d):
                return ckpt_key(names[mod] + ".weight")
            if not (_is_bn(mod) or isinstance(mod, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Identity, nn.Dropout,
                                                     nn.LeakyReLU, nn.Hardswish, nn.Mish, nn.ELU))):
                return None
            xin = prev_in
        return None

    seen = {m: trace.first[m] for m in trace.executed(nn.Conv2d) if trace.first[m].output is not None}
    nominal = _nominal_reductions([(names[m], m, trace.reduction(c.output)) for m, c in seen.items()])  # type: ignore[arg-type]
    # convs on a globally pooled map (squeeze-and-excitation gates) are off the feature path
    pooled = {m for m, c in seen.items() if c.input is not None and c.input.ndim == 4
              and c.input.shape[-2] == 1 and c.input.shape[-1] == 1 and trace.image > 1}
    beyond, peak = set(), 0
    for m in seen:  # execution order: the backbone is the prefix whose stride never falls back
        if m in pooled:
            continue
        r = nominal[names[m]]
        if beyond or r < peak:
            beyond.add(m)
        peak = max(peak, r)
    convs = [m for m in seen] + [m for m in model.modules() if isinstance(m, nn.Conv2d) and m not in seen]
    out: list[TargetConv] = []
    for mod in convs:
        name = names[mod]
        key = ckpt_key(name + ".weight")
        if key is None:
            continue  # a head conv the checkpoint does not hold
        shape = tuple(shapes[key])
        reduction = bn = producer = None
        if mod in seen:
            call = seen[mod]
            reduction = nominal[name]
            for c in consumers.get(id(call.output), []):
                b = names[c]
                if _is_bn(c) and all(ckpt_key(f"{b}.{p}") is not None for p in BN_PARTS):
                    bn = ckpt_key(f"{b}.weight")[: -len(".weight")]  # type: ignore[index]
            producer = producer_of(call.input)
        ok, reason = _eligibility(key, shape, mod.groups, mod in seen, grouped)  # type: ignore[arg-type]
        if ok and mod in beyond:
            ok, reason = False, BEYOND_BACKBONE
        out.append(TargetConv(key, shape, reduction, mod.groups, bn, producer, ok, reason))  # type: ignore[arg-type]
    return out


def trace_of(model: nn.Module, input_size: tuple[int, int, int]) -> Trace:
    """The planner's trace of a model (leaf modules and BatchNorms), for callers that need more than the convs."""
    return run_trace(model, input_size, features=True, extra=_is_bn)
