"""What extraction is configured by: `SelectionSettings` (the auxiliary model's shape is `models.variants.AuxConfig`).

Standard library only, so that the command line can build its options without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from learngene_tools.errors import SettingsError
from learngene_tools.settings import coerce_fields, setting


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
