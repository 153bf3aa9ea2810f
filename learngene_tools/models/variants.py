"""The named variants of the models this project registers with timm, and their configs (standard library only).

One table for every family: the auxiliary models (`AuxConfig`) and the RepLKNet ancestries (`RepLKNetConfig`).
The command line builds its `--aux` choices from it without importing torch; `models.auxiliary` and
`models.replknet` register each name with timm.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from learngene_tools.errors import SettingsError
from learngene_tools.settings import coerce_fields, setting

C = TypeVar("C")


@dataclass(frozen=True)
class AuxConfig:
    """Widths and depths of the three stages; the first stage needs two layers to reach stride 4."""

    widths: tuple[int, int, int] = setting((64, 128, 256), "Override the variant's stage widths, e.g. 64,128,256.")
    depths: tuple[int, int, int] = setting((3, 4, 4), "Override the variant's stage depths, e.g. 3,4,4.")
    in_chans: int = setting(3, "Input channels.", cli=False, recipe=False)

    def __post_init__(self) -> None:
        coerce_fields(self)
        if len(self.widths) != 3 or len(self.depths) != 3:
            raise SettingsError("auxiliary model: widths and depths need exactly 3 entries (one per stage)")
        if self.depths[0] < 2 or min(self.depths) < 1 or min(self.widths) < 1:
            raise SettingsError("auxiliary model: stage 1 needs depth >= 2, every stage depth >= 1 and width >= 1")

    def layer_strides(self, stage: int) -> list[int]:
        """Stride of each conv in a stage (0-based stage index)."""
        first = [2, 2] if stage == 0 else [2]
        return (first + [1] * self.depths[stage])[: self.depths[stage]]

    def to_json(self) -> str:
        """Stable JSON for checkpoint and bundle metadata."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AuxConfig":
        """Inverse of `to_json`."""
        d = json.loads(text)
        return cls(widths=tuple(d["widths"]), depths=tuple(d["depths"]), in_chans=int(d.get("in_chans", 3)))


@dataclass(frozen=True)
class RepLKNetConfig:
    """Architecture of one RepLKNet variant: per-stage kernel sizes, block pairs and widths."""

    kernels: tuple[int, int, int, int]
    layers: tuple[int, int, int, int]
    channels: tuple[int, int, int, int]
    small_kernel: int | None = 5
    dw_ratio: float = 1.0
    ffn_ratio: float = 4.0

    def kwargs(self) -> dict[str, Any]:
        """Constructor arguments of `RepLKNet` for this config."""
        return dict(kernels=self.kernels, layers=self.layers, channels=self.channels,
                    small_kernel=self.small_kernel, dw_ratio=self.dw_ratio, ffn_ratio=self.ffn_ratio)


VARIANTS: dict[str, AuxConfig | RepLKNetConfig] = {
    "lgt_aux_tiny": AuxConfig(widths=(8, 16, 32), depths=(2, 2, 2)),
    "lgt_aux_small": AuxConfig(widths=(32, 64, 128), depths=(2, 3, 3)),
    "lgt_aux_base": AuxConfig(widths=(64, 128, 256), depths=(3, 4, 4)),
    "replknet_31b": RepLKNetConfig((31, 29, 27, 13), (2, 2, 18, 2), (128, 256, 512, 1024), small_kernel=5),
    "replknet_31l": RepLKNetConfig((31, 29, 27, 13), (2, 2, 18, 2), (192, 384, 768, 1536), small_kernel=5),
    "replknet_xl": RepLKNetConfig((27, 27, 27, 13), (2, 2, 18, 2), (256, 512, 1024, 2048), small_kernel=None,
                                  dw_ratio=1.5),
    # not a published model: a few thousand parameters for fast CPU tests
    "replknet_test_tiny": RepLKNetConfig((7, 5, 5, 3), (1, 1, 2, 1), (8, 16, 32, 64), small_kernel=3),
}


def variants_of(kind: type[C]) -> dict[str, C]:
    """The variants of one family, by its config type (e.g. `AuxConfig`: the auxiliary models)."""
    return {name: cfg for name, cfg in VARIANTS.items() if isinstance(cfg, kind)}
