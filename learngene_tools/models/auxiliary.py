"""The CLKG auxiliary model: a plain 3-stage stack of 3x3 conv + BN + ReLU, stage outputs at strides 4/8/16.

Registered with timm as timm registers its own models (``lgt_aux_tiny``, ``lgt_aux_small``, ``lgt_aux_base``;
their shapes are `models.variants.VARIANTS`) so that
``timm.create_model(name, features_only=True)`` works once ``learngene_tools`` is imported.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from learngene_tools.errors import InvalidFileError
from learngene_tools.models.variants import VARIANTS, AuxConfig, variants_of

_CONV_KEY = re.compile(r"^stages\.(\d+)\.(\d+)\.conv\.weight$")


class ConvBnAct(nn.Sequential):
    """3x3 conv (no bias) -> BatchNorm -> ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)


class AuxNet(nn.Module):
    """The auxiliary CNN; `forward_features` returns the stride-16 map, `forward` class logits."""

    def __init__(
        self,
        widths: tuple[int, ...] = (64, 128, 256),
        depths: tuple[int, ...] = (3, 4, 4),
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        **_: Any,
    ) -> None:
        super().__init__()
        self.cfg = AuxConfig(tuple(widths), tuple(depths), in_chans)  # type: ignore[arg-type]
        self.num_classes = num_classes
        self.num_features = widths[-1]
        stages, cin, reduction = [], in_chans, 1
        self.feature_info = []
        for i, (w, d) in enumerate(zip(widths, depths)):
            layers = []
            for s in self.cfg.layer_strides(i):
                layers.append(ConvBnAct(cin, w, s))
                cin, reduction = w, reduction * s
            stages.append(nn.Sequential(*layers))
            self.feature_info.append(dict(num_chs=w, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(widths[-1], num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        """timm interface: the classification layer."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        """timm interface: replace the classifier."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map of the last stage (stride 16)."""
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, then classify unless `pre_logits`."""
        x = self.head_drop(self.global_pool(x).flatten(1))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def config_from_state_dict(state: dict[str, torch.Tensor], source: str = "checkpoint") -> AuxConfig:
    """Recover an AuxConfig from auxiliary-model keys and shapes alone."""
    layers: dict[int, dict[int, tuple[int, ...]]] = {}
    for k, v in state.items():
        m = _CONV_KEY.match(k)
        if m:
            layers.setdefault(int(m[1]), {})[int(m[2])] = tuple(v.shape)
    if sorted(layers) != [0, 1, 2] or any(sorted(s) != list(range(len(s))) for s in layers.values()):
        raise InvalidFileError(
            f"{source}: not a learngene_tools auxiliary model (expected keys stages.<0-2>.<j>.conv.weight); "
            "train one with `lgt distill` or build it with timm.create_model('lgt_aux_base')"
        )
    widths = tuple(layers[i][0][0] for i in range(3))
    depths = tuple(len(layers[i]) for i in range(3))
    return AuxConfig(widths, depths, layers[0][0][1])  # type: ignore[arg-type]


def create_aux(config: AuxConfig, num_classes: int = 0) -> AuxNet:
    """Build an auxiliary model from a config (no classifier by default: distillation needs none)."""
    return AuxNet(config.widths, config.depths, config.in_chans, num_classes=num_classes)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> AuxNet:
    cfg = VARIANTS[variant]
    assert isinstance(cfg, AuxConfig)
    return build_model_with_cfg(AuxNet, variant, pretrained, feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2)),
                                **{"widths": cfg.widths, "depths": cfg.depths, **kwargs})


def _cfg(**extra: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (14, 14),
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "interpolation": "bicubic",
        "first_conv": "stages.0.0.conv", "classifier": "head", "license": "mit", **extra,
    }


default_cfgs = generate_default_cfgs({f"{name}.untrained": _cfg() for name in variants_of(AuxConfig)})


@register_model
def lgt_aux_tiny(pretrained: bool = False, **kwargs: Any) -> AuxNet:
    """CLKG auxiliary model lgt_aux_tiny: widths (8, 16, 32), depths (2, 2, 2)."""
    return _create("lgt_aux_tiny", pretrained, **kwargs)


@register_model
def lgt_aux_small(pretrained: bool = False, **kwargs: Any) -> AuxNet:
    """CLKG auxiliary model lgt_aux_small: widths (32, 64, 128), depths (2, 3, 3)."""
    return _create("lgt_aux_small", pretrained, **kwargs)


@register_model
def lgt_aux_base(pretrained: bool = False, **kwargs: Any) -> AuxNet:
    """CLKG auxiliary model lgt_aux_base: widths (64, 128, 256), depths (3, 4, 4)."""
    return _create("lgt_aux_base", pretrained, **kwargs)
