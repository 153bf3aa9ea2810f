"""RepLKNet ancestry models (Ding et al., CVPR 2022), registered with timm, loading the released checkpoints.

timm has no RepLKNet, so the project provides RepLKNet-31B, -31L and -XL as ``replknet_31b``,
``replknet_31l`` and ``replknet_xl`` (plus ``replknet_test_tiny`` for fast tests). Parameter
names and shapes follow the official release (DingXiaoH/RepLKNet-pytorch), so its ``.pth``
files load strictly with `learngene_tools.distillation.ancestry.load_ancestry_checkpoint`.

Two structural forms exist:

- training form: each large depthwise kernel is ``large_kernel.lkb_origin.{conv,bn}`` plus, when
  the config has a small kernel, a parallel ``large_kernel.small_conv.{conv,bn}`` whose outputs
  are summed;
- merged (re-parameterised) form: both branches and their BNs are folded into one biased
  depthwise conv ``large_kernel.lkb_reparam.{weight,bias}`` (the small kernel zero-padded into
  the centre). ``timm.create_model(name, merged=True)`` builds it; `merge_kernels` converts a
  training-form model in place. The two forms compute the same function in eval mode.

``features_only=True`` gives the stage outputs (taken before each transition, as the reference
does) at strides 4, 8, 16 by default (``out_indices=(0, 1, 2)``); stage 4 (stride 32) is index 3.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from learngene_tools.errors import InvalidFileError, ModelError, SettingsError
from learngene_tools.io.bundle import BN_PARTS
from learngene_tools.models.variants import VARIANTS, RepLKNetConfig, variants_of

BN_EPS = 1e-5  # nn.BatchNorm2d's default, which the released models were trained with
ORIGIN_URL = "https://github.com/DingXiaoH/RepLKNet-pytorch"


# ----------------------------------------------------------------------------------------------
# building blocks (attribute names are the checkpoint's key names; keep them)


class ConvBN(nn.Sequential):
    """conv (no bias) -> BatchNorm, optionally -> ReLU (stored as `nonlinear`, which has no weights)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        if relu:
            self.nonlinear = nn.ReLU()


def _fold_bn(weight: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, mean: torch.Tensor,
             var: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of a conv followed by an eval-mode BN, computed in float32."""
    scale = gamma.float() / torch.sqrt(var.float() + eps)
    return weight.float() * scale.reshape(-1, 1, 1, 1), beta.float() - mean.float() * scale


def _merged_kernel_bias(get: Callable[[str], torch.Tensor | None], eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold `lkb_origin` (and `small_conv`, if `get` has it) into one kernel and bias.

    `get(name)` returns the tensor named relative to the large-kernel module, or None.
    """

    def folded(branch: str) -> tuple[torch.Tensor, torch.Tensor]:
        w = get(f"{branch}.conv.weight")
        assert w is not None
        bn = [get(f"{branch}.bn.{n}") for n in BN_PARTS]
        return _fold_bn(w, *bn, eps)  # type: ignore[arg-type]

    kernel, bias = folded("lkb_origin")
    if get("small_conv.conv.weight") is not None:
        small_k, small_b = folded("small_conv")
        big, small = kernel.shape[-1], small_k.shape[-1]
        if small > big or (big - small) % 2:
            raise SettingsError(f"cannot centre a {small}x{small} kernel in a {big}x{big} one (sizes must be odd, small <= large)")
        pad = (big - small) // 2
        kernel = kernel + nn.functional.pad(small_k, [pad] * 4)
        bias = bias + small_b
    return kernel, bias


class LargeKernelConv(nn.Module):
    """Depthwise large-kernel conv: big conv+BN (+ small conv+BN in parallel), or their merged equivalent."""

    def __init__(self, channels: int, kernel: int, small_kernel: int | None, merged: bool = False) -> None:
        super().__init__()
        if small_kernel is not None and (small_kernel > kernel or (kernel - small_kernel) % 2):
            raise ModelError(f"small kernel {small_kernel} must be <= the large kernel {kernel} and of the same parity")
        self.channels, self.kernel_size, self.small_kernel = channels, kernel, small_kernel
        if merged:
            self.lkb_reparam = nn.Conv2d(channels, channels, kernel, 1, kernel // 2, groups=channels, bias=True)
        else:
            self.lkb_origin = ConvBN(channels, channels, kernel, groups=channels)
            if small_kernel is not None:
                self.small_conv = ConvBN(channels, channels, small_kernel, groups=channels)

    @property
    def merged(self) -> bool:
        return hasattr(self, "lkb_reparam")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.lkb_reparam(x)
        out = self.lkb_origin(x)
        if hasattr(self, "small_conv"):
            out = out + self.small_conv(x)
        return out

    @torch.no_grad()
    def merge(self) -> None:
        """Replace the branches by one biased conv with the same eval-mode output (no-op if merged)."""
        if self.merged:
            return
        origin = self.lkb_origin.conv.weight
        modules = dict(self.named_modules())

        def get(name: str) -> torch.Tensor | None:
            mod, _, attr = name.rpartition(".")
            return getattr(modules[mod], attr) if mod in modules else None

        kernel, bias = _merged_kernel_bias(get, self.lkb_origin.bn.eps)
        conv = nn.Conv2d(self.channels, self.channels, self.kernel_size, 1, self.kernel_size // 2,
                         groups=self.channels, bias=True, device=origin.device, dtype=origin.dtype)
        conv.weight.copy_(kernel.to(origin.dtype))
        conv.bias.copy_(bias.to(origin.dtype))
        conv.requires_grad_(origin.requires_grad)
        conv.train(self.training)
        del self.lkb_origin
        if hasattr(self, "small_conv"):
            del self.small_conv
        self.lkb_reparam = conv

    def extra_repr(self) -> str:
        return f"kernel={self.kernel_size}, small_kernel={self.small_kernel}, merged={self.merged}"


def _drop_path(rate: float) -> nn.Module:
    from timm.layers import DropPath

    return DropPath(rate) if rate > 0 else nn.Identity()


class RepLKBlock(nn.Module):
    """x + pw2(relu(large_kernel(pw1(bn(x))))), pw1 with ReLU; the large kernel is depthwise."""

    def __init__(self, channels: int, dw_channels: int, kernel: int, small_kernel: int | None,
                 drop_path: float, merged: bool = False) -> None:
        super().__init__()
        self.pw1 = ConvBN(channels, dw_channels, 1, relu=True)
        self.pw2 = ConvBN(dw_channels, channels, 1)
        self.large_kernel = LargeKernelConv(dw_channels, kernel, small_kernel, merged)
        self.lk_nonlinear = nn.ReLU()
        self.prelkb_bn = nn.BatchNorm2d(channels)
        self.drop_path = _drop_path(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw2(self.lk_nonlinear(self.large_kernel(self.pw1(self.prelkb_bn(x)))))
        return x + self.drop_path(y)


class ConvFFN(nn.Module):
    """x + pw2(gelu(pw1(bn(x)))): a 1x1-conv MLP with a residual."""

    def __init__(self, channels: int, hidden: int, drop_path: float) -> None:
        super().__init__()
        self.drop_path = _drop_path(drop_path)
        self.preffn_bn = nn.BatchNorm2d(channels)
        self.pw1 = ConvBN(channels, hidden, 1)
        self.pw2 = ConvBN(hidden, channels, 1)
        self.nonlinear = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.pw2(self.nonlinear(self.pw1(self.preffn_bn(x)))))


class RepLKNetStage(nn.Module):
    """Alternating RepLK blocks and ConvFFNs (`blocks.2j`, `blocks.2j+1`) at one resolution."""

    def __init__(self, channels: int, num_pairs: int, kernel: int, small_kernel: int | None, drop_path: list[float],
                 dw_ratio: float, ffn_ratio: float, merged: bool) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for j in range(num_pairs):
            blocks.append(RepLKBlock(channels, int(channels * dw_ratio), kernel, small_kernel, drop_path[j], merged))
            blocks.append(ConvFFN(channels, int(channels * ffn_ratio), drop_path[j]))
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = grad_checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x


class RepLKNet(nn.Module):
    """RepLKNet: stem (stride 4), four stages joined by stride-2 transitions, BN + average pool + linear head.

    `merged=True` builds the re-parameterised form directly (for loading merged weights or a
    training-form checkpoint through `load_ancestry_checkpoint`, which merges it).
    """

    def __init__(
        self,
        kernels: tuple[int, ...] = (31, 29, 27, 13),
        layers: tuple[int, ...] = (2, 2, 18, 2),
        channels: tuple[int, ...] = (128, 256, 512, 1024),
        small_kernel: int | None = 5,
        dw_ratio: float = 1.0,
        ffn_ratio: float = 4.0,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        merged: bool = False,
    ) -> None:
        super().__init__()
        if not len(kernels) == len(layers) == len(channels) or not layers:
            raise ModelError("kernels, layers and channels need one entry per stage")
        if global_pool not in ("avg", ""):
            raise ModelError(f"global_pool {global_pool!r} is not supported (use 'avg' or '')")
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = channels[-1]
        self.drop_rate = drop_rate
        self.global_pool_type = global_pool
        w = channels[0]
        self.stem = nn.ModuleList([
            ConvBN(in_chans, w, 3, stride=2, relu=True),
            ConvBN(w, w, 3, groups=w, relu=True),
            ConvBN(w, w, 1, relu=True),
            ConvBN(w, w, 3, stride=2, groups=w, relu=True),
        ])
        # stochastic depth grows linearly over block pairs (both blocks of a pair share a rate)
        dpr = torch.linspace(0, drop_path_rate, sum(layers), device="cpu").tolist()  # also under a meta device
        self.stages = nn.ModuleList()
        self.transitions = nn.ModuleList()
        self.feature_info: list[dict[str, Any]] = []
        for i, (k, n, c) in enumerate(zip(kernels, layers, channels)):
            start = sum(layers[:i])
            self.stages.append(RepLKNetStage(c, n, k, small_kernel, dpr[start:start + n], dw_ratio, ffn_ratio, merged))
            self.feature_info.append(dict(num_chs=c, reduction=4 * 2 ** i, module=f"stages.{i}"))
            if i < len(layers) - 1:
                nxt = channels[i + 1]
                self.transitions.append(nn.Sequential(
                    ConvBN(c, nxt, 1, relu=True),
                    ConvBN(nxt, nxt, 3, stride=2, groups=nxt, relu=True),
                ))
        self.norm = nn.BatchNorm2d(channels[-1])
        self.global_pool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(channels[-1], num_classes) if num_classes > 0 else nn.Identity()

    # --- timm interface

    @property
    def merged(self) -> bool:
        """True when every large kernel is in the re-parameterised form."""
        return all(m.merged for m in self.modules() if isinstance(m, LargeKernelConv))

    def merge_kernels(self) -> "RepLKNet":
        """Re-parameterise in place (see module `merge_kernels`); returns self."""
        return merge_kernels(self)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.blocks\.(\d+)")

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ModelError(f"global_pool {global_pool!r} is not supported (use 'avg' or '')")
            self.global_pool_type = global_pool
            self.global_pool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.stem:
            x = layer(x)
        return x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (before each transition) at `indices`; `norm` applies the final BN to the last stage's."""
        from timm.models._features import feature_take_indices

        if output_fmt != "NCHW":
            raise ModelError("RepLKNet intermediates are NCHW only")
        take, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        feats = []
        x = self._stem(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in take:
                feats.append(self.norm(x) if norm and i == last else x)
            if (stop_early or intermediates_only) and i >= max_index:
                break
            if i < len(self.transitions):
                x = self.transitions[i](x)
        return feats if intermediates_only else (x, feats)

    def prune_intermediate_layers(
        self, indices: int | list[int] | tuple[int, ...] = 1, prune_norm: bool = False, prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages (and transitions) after the last wanted one; optionally the final BN and head."""
        from timm.models._features import feature_take_indices

        take, max_index = feature_take_indices(len(self.stages), indices)
        keep_all = max_index == len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        self.transitions = self.transitions[:max_index]
        if prune_norm or not keep_all:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last stage (before the final BN, as in the reference)."""
        x = self._stem(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Final BN, global average pool, dropout, linear classifier (skipped if `pre_logits`)."""
        x = self.global_pool(self.norm(x))
        if self.global_pool_type:
            x = x.flatten(1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def merge_kernels(model: nn.Module) -> nn.Module:
    """Re-parameterise every large-kernel conv of `model` in place and return it.

    lkb_origin conv+BN and small_conv conv+BN fold into `lkb_reparam` (the small kernel
    zero-padded into the centre of the large one). The result equals the training form in eval
    mode (BN running statistics are baked in); merged blocks are left as they are. Works on a
    features_only wrapper too.
    """
    for m in list(model.modules()):
        if isinstance(m, LargeKernelConv):
            m.merge()
    return model


def merge_state_dict(state: Mapping[str, torch.Tensor], eps: float = BN_EPS) -> dict[str, torch.Tensor]:
    """The merged-form state_dict of a training-form one (tensors of already-merged blocks pass through).

    Entries keep their order; each block's `lkb_reparam.{weight,bias}` takes the place of its
    `lkb_origin`/`small_conv` entries and has the dtype of `lkb_origin.conv.weight`.
    """
    suffix = ".lkb_origin.conv.weight"
    prefixes = [k[: -len(suffix)] for k in state if k.endswith(suffix)]
    owner = {}
    for p in prefixes:
        for k in state:
            if k.startswith(p + ".lkb_origin.") or k.startswith(p + ".small_conv."):
                owner[k] = p
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        p = owner.get(k)
        if p is None:
            out[k] = v
            continue
        if p + ".lkb_reparam.weight" in out:
            continue

        def get(name: str, p: str = p) -> torch.Tensor | None:
            return state.get(f"{p}.{name}")

        missing = [n for n in BN_PARTS if get(f"lkb_origin.bn.{n}") is None]
        if missing:
            raise InvalidFileError(f"checkpoint: {p}.lkb_origin.bn lacks {', '.join(missing)}; cannot merge it")
        kernel, bias = _merged_kernel_bias(get, eps)
        dtype = state[p + suffix].dtype
        out[p + ".lkb_reparam.weight"] = kernel.to(dtype)
        out[p + ".lkb_reparam.bias"] = bias.to(dtype)
    return out


# ----------------------------------------------------------------------------------------------
# loading the released checkpoints


def _form(keys: Any) -> str:
    """'merged', 'training', 'mixed' or 'none' by the large-kernel keys present."""
    keys = list(keys)
    merged = any(".lkb_reparam." in k for k in keys)
    training = any(".lkb_origin." in k for k in keys)
    return "mixed" if merged and training else "merged" if merged else "training" if training else "none"


def guess_variant(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """The registered variant whose stem width, depth and kernel sizes match `shapes`, if any."""
    stem = shapes.get("stem.0.conv.weight")
    if stem is None:
        return None
    for name, cfg in variants_of(RepLKNetConfig).items():
        if stem[0] != cfg.channels[0]:
            continue
        depth_ok = all(f"stages.{i}.blocks.{2 * n - 1}.pw1.conv.weight" in shapes
                       and f"stages.{i}.blocks.{2 * n}.pw1.conv.weight" not in shapes for i, n in enumerate(cfg.layers))
        kernel = shapes.get("stages.0.blocks.0.large_kernel.lkb_origin.conv.weight") or \
            shapes.get("stages.0.blocks.0.large_kernel.lkb_reparam.weight")
        if depth_ok and kernel is not None and kernel[-1] == cfg.kernels[0]:
            return name
    return None


def load_replknet_state(model: "RepLKNet", state: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Load a RepLKNet state_dict (training or merged form) strictly into `model`, in place.

    A training-form state loads into a merged model by merging its tensors; a merged state
    cannot be un-merged, so it needs `merged=True`. A model without a classifier
    (num_classes=0) ignores the state's `head.*`. Returns the state's form and whether it was
    merged on load.
    """
    ckpt_form, model_form = _form(state), ("merged" if model.merged else "training")
    if ckpt_form == "none":
        raise InvalidFileError(f"{source}: not a RepLKNet checkpoint (no `large_kernel.lkb_origin` / `lkb_reparam` keys; "
                       f"first keys: {', '.join(list(state)[:3])})")
    if ckpt_form == "mixed":
        raise InvalidFileError(f"{source}: mixes merged (`lkb_reparam`) and training-form (`lkb_origin`) large kernels")
    if ckpt_form == "merged" and model_form == "training":
        raise ModelError(f"{source}: is a merged (re-parameterised) RepLKNet checkpoint, which cannot be turned back into "
                       "the training form; build the model with merged=True, e.g. "
                       "timm.create_model('replknet_31b', merged=True)")
    merged_on_load = ckpt_form == "training" and model_form == "merged"
    if merged_on_load:
        eps = next((m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)), BN_EPS)
        state = merge_state_dict(state, eps)
    if isinstance(model.head, nn.Identity):
        state = {k: v for k, v in state.items() if not k.startswith("head.")}

    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        guess = guess_variant({k: tuple(v.shape) for k, v in state.items()})
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {wrong[0]}: checkpoint "
                         f"{tuple(state[wrong[0]].shape)}, model {tuple(own[wrong[0]].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        hint = f"; the checkpoint looks like {guess}" if guess else ""
        if wrong == ["head.weight", "head.bias"] or wrong == ["head.weight"]:
            hint += f"; build the model with num_classes={state['head.weight'].shape[0]} (or 0 to drop the head)"
        raise ModelError(f"{source}: does not match this RepLKNet: {'; '.join(parts)}{hint}")
    model.load_state_dict(state, strict=True)
    return {"checkpoint_form": ckpt_form, "merged_on_load": merged_on_load}


# ----------------------------------------------------------------------------------------------
# timm registration


def _cfg(num_classes: int = 1000, size: int = 224, mean: tuple[float, ...] = (0.485, 0.456, 0.406),
         std: tuple[float, ...] = (0.229, 0.224, 0.225), **extra: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": num_classes, "input_size": (3, size, size), "pool_size": (size // 32, size // 32),
        "crop_pct": 0.875 if size == 224 else 1.0, "interpolation": "bicubic", "mean": mean, "std": std,
        "first_conv": "stem.0.conv", "classifier": "head", "license": "mit", "origin_url": ORIGIN_URL,
        "paper_ids": "arXiv:2203.06717",
        "notes": ("weights are not downloaded: load the released .pth with "
                  "learngene_tools.distillation.ancestry.load_ancestry_checkpoint",),
        **extra,
    }


_HALF = (0.5, 0.5, 0.5)
DEFAULT_CFGS = {
    "replknet_31b.in1k": _cfg(),  # RepLKNet-31B_ImageNet-1K_224.pth
    "replknet_31b.in1k_384": _cfg(size=384),
    "replknet_31b.in22k_ft_in1k": _cfg(),
    "replknet_31b.in22k_ft_in1k_384": _cfg(size=384),
    "replknet_31b.in22k": _cfg(num_classes=21841),
    "replknet_31l.in22k_ft_in1k_384": _cfg(size=384),
    "replknet_31l.in22k": _cfg(num_classes=21841),
    # RepLKNet-XL was pretrained on MegData-73M and fine-tuned at 320 px with mean = std = 0.5
    "replknet_xl.meg73m_ft_in1k_320": _cfg(size=320, mean=_HALF, std=_HALF),
    "replknet_test_tiny.untrained": _cfg(notes=("tiny test configuration, not a published model",)),
}


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> RepLKNet:
    if pretrained:
        raise ModelError(f"{variant}: timm cannot download RepLKNet weights; build it with pretrained=False and "
                         "load the released .pth with learngene_tools.distillation.ancestry.load_ancestry_checkpoint")
    cfg = VARIANTS[variant]
    assert isinstance(cfg, RepLKNetConfig)
    return build_model_with_cfg(RepLKNet, variant, pretrained, feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2)),
                                **{**cfg.kwargs(), **kwargs})


default_cfgs = generate_default_cfgs(DEFAULT_CFGS)


@register_model
def replknet_31b(pretrained: bool = False, **kwargs: Any) -> RepLKNet:
    """RepLKNet-31B: kernels 31/29/27/13, widths 128 to 1024, small kernel 5 (merged=True: re-parameterised)."""
    return _create("replknet_31b", pretrained, **kwargs)


@register_model
def replknet_31l(pretrained: bool = False, **kwargs: Any) -> RepLKNet:
    """RepLKNet-31L: kernels 31/29/27/13, widths 192 to 1536, small kernel 5 (merged=True: re-parameterised)."""
    return _create("replknet_31l", pretrained, **kwargs)


@register_model
def replknet_xl(pretrained: bool = False, **kwargs: Any) -> RepLKNet:
    """RepLKNet-XL: kernels 27/27/27/13, widths 256 to 2048, dw ratio 1.5 (merged=True: re-parameterised)."""
    return _create("replknet_xl", pretrained, **kwargs)


@register_model
def replknet_test_tiny(pretrained: bool = False, **kwargs: Any) -> RepLKNet:
    """A tiny RepLKNet for fast tests, not a published model (merged=True: re-parameterised)."""
    return _create("replknet_test_tiny", pretrained, **kwargs)
