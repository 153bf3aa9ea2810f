"""What extraction is configured by: the auxiliary model's shape (`AuxConfig`, its variants) and `SelectionSettings`.

Standard library only, so that the command line can build its options without importing torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from learngene_tools.errors import SettingsError
from learngene_tools.settings import coerce_fields, setting


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


VARIANTS = {
    "lgt_aux_tiny": AuxConfig(widths=(8, 16, 32), depths=(2, 2, 2)),
    "lgt_aux_small": AuxConfig(widths=(32, 64, 128), depths=(2, 3, 3)),
    "lgt_aux_base": AuxConfig(widths=(64, 128, 256), depths=(3, 4, 4)),
}


@dataclass(frozen=True)
class SelectionSettings:
    """Which stages (1-based) give a run, and how long each run is (None: the whole stage)."""

    stages: tuple[int, ...] = setting((1, 3), "Auxiliary stages that give a run (edge kernels: first and last).")
    run_length: int | None = setting(None, "Layers per run (default: the whole stage).")

    def __post_init__(self) -> None:
        coerce_fields(self)
        if not self.stages or any(s not in (1, 2, 3) for s in self.stages) or len(set(self.stages)) != len(self.stages):
            raise SettingsError(f"--stages must be distinct values among 1, 2, 3 (got {list(self.stages)})")
        if self.run_length is not None and self.run_length < 1:
            raise SettingsError(f"--run-length must be at least 1 (got {self.run_length})")
