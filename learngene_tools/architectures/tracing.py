"""One forward pass of a model on a dummy input, recorded module by module in execution order.

The single owner of stride tracing: the transplant planner reads each conv's output stride,
the BatchNorm that consumes it and the conv that feeds it from a `Trace`; distillation reads
the teacher's stage outputs (taps) from one. A model built on the meta device is traced on
meta tensors (shapes only, no arithmetic), so tracing a large model costs almost nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from learngene_tools.errors import ModelError

DEFAULT_SIDE = 224


@dataclass
class Call:
    """One module's forward: its first tensor input and its tensor output (None when it returned something else)."""

    module: nn.Module
    name: str
    input: torch.Tensor | None
    output: torch.Tensor | None


@dataclass
class Trace:
    """Every hooked module's forward in the order the calls finished, and the image side strides are relative to."""

    calls: list[Call]
    image: int  # the input side (height) that stride 1 refers to
    first: dict[nn.Module, Call] = field(default_factory=dict)  # each module's first call

    def __post_init__(self) -> None:
        for c in self.calls:
            self.first.setdefault(c.module, c)

    def reduction(self, t: torch.Tensor) -> int:
        """Output stride of a feature map (image side / its height), at least 1."""
        return max(1, round(self.image / t.shape[-2])) if t.shape[-2] > 0 else 0

    def executed(self, kind: type | tuple[type, ...] = nn.Module) -> list[nn.Module]:
        """Modules of `kind` that ran, in the order of their first call."""
        return [m for m in self.first if isinstance(m, kind)]


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], torch.Tensor):
        return obj[0]
    return None


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (cpu when it has none)."""
    for t in [*model.parameters(), *model.buffers()]:
        return t.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter or buffer (float32 when it has none)."""
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def input_channels(model: nn.Module) -> int:
    """Image channels the model takes: timm's `in_chans`/pretrained_cfg, else its first conv's input channels."""
    for attr in ("in_chans", "in_channels", "num_channels"):
        v = getattr(model, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        first = cfg.get("first_conv")
        names = dict(model.named_modules())
        conv = names.get(first[0] if isinstance(first, (list, tuple)) and first else first)  # type: ignore[arg-type]
        if isinstance(conv, nn.Conv2d):
            return conv.in_channels
        size = cfg.get("input_size")
        if size and len(size) == 3:
            return int(size[0])
    config = getattr(model, "config", None)  # transformers
    n = getattr(config, "num_channels", None)
    if isinstance(n, int) and n > 0:
        return n
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


def model_input_size(model: nn.Module, override: tuple[int, ...] | None = None) -> tuple[int, int, int]:
    """(C, H, W) of a dummy input the model takes: its own channels and size, `override` ([C,]H,W) winning."""
    c = input_channels(model)
    h = w = DEFAULT_SIDE
    cfg = getattr(model, "pretrained_cfg", None)
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if size and len(size) == 3:
        h, w = int(size[1]), int(size[2])
    if override is not None:
        h, w = override[-2], override[-1]
        c = override[0] if len(override) == 3 else c
    return c, h, w


class _SkipInitOnMeta(TorchFunctionMode):
    """In-place ops on meta tensors (weight initialisation) return at once: building on meta costs only the modules."""

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__") and args and isinstance(args[0], torch.Tensor) \
                and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    """Build models inside this block on the meta device: shapes without memory, initialisation skipped."""
    with torch.device("meta"), _SkipInitOnMeta():
        yield


def run_trace(model: nn.Module, input_size: tuple[int, int, int], *, features: bool = True,
              leaves_only: bool = True, extra: Callable[[nn.Module], bool] | None = None) -> Trace:
    """Run `model` once on zeros of `input_size` (on the model's device) and record its modules' calls.

    `features`: call `forward_features` when the model has one (timm), so heads never run.
    `leaves_only`: hook leaf modules (plus those `extra` accepts); otherwise every named module.
    """
    names = {m: n for n, m in model.named_modules()}
    if leaves_only:
        hooked = [m for m in model.modules() if not next(m.children(), None) or (extra is not None and extra(m))]
    else:
        hooked = [m for n, m in model.named_modules() if n]
    calls: list[Call] = []

    def hook(mod: nn.Module, args: tuple, output: Any) -> None:
        calls.append(Call(mod, names[mod], _first_tensor(args), _first_tensor(output)))

    handles = [m.register_forward_hook(hook) for m in hooked]
    x = torch.zeros(1, *input_size, device=model_device(model), dtype=model_dtype(model))
    was_training = {m: m.training for m in model.modules()}  # each module's own mode (a frozen BN stays in eval)
    model.eval()
    try:
        with torch.no_grad():
            fwd = getattr(model, "forward_features", None) if features else None
            (fwd if callable(fwd) else model)(x)
    except Exception as e:  # a model may reject the dummy input: say so plainly
        raise ModelError(f"the model failed on a dummy input of shape {list(x.shape)}: {type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''} "
                         "(--input-size C,H,W sets another)") from None
    finally:
        for h in handles:
            h.remove()
        for m, mode in was_training.items():
            m.training = mode
    return Trace(calls, _image_side(calls, input_size[1]))


def _image_side(calls: list[Call], side: int) -> int:
    """The side stride 1 refers to: the dummy input's, or the first conv's input when the model resized the image
    first (torchvision detection models resize to 800 px before their backbone)."""
    conv = next((c for c in calls if isinstance(c.module, nn.Conv2d) and c.input is not None), None)
    if conv is not None and conv.input.ndim == 4 and conv.input.shape[-2] > side:  # type: ignore[union-attr]
        return int(conv.input.shape[-2])  # type: ignore[union-attr]
    return side


def stage_outputs(model: nn.Module, input_size: tuple[int, int, int], reductions: tuple[int, ...]) -> dict[int, str]:
    """For each output stride in `reductions`: the last of the outermost modules whose output has that stride."""
    trace = run_trace(model, input_size, features=False, leaves_only=False)
    seen = [(c.name, trace.reduction(c.output)) for c in trace.calls
            if c.output is not None and c.output.ndim == 4 and c.output.shape[-2] > 0]
    found: dict[int, str] = {}
    for r in reductions:
        names = [n for n, red in seen if red == r]
        if names:
            # the outermost modules are the stages/blocks; inner ones may be the next block's expansion
            depth = min(n.count(".") for n in names)
            found[r] = [n for n in names if n.count(".") == depth][-1]
    return found
