"""`lgt extract`: distil the auxiliary model from an ancestry, then select its learngene into a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from learngene_tools.distillation.loop import DistillSettings, RunOptions, distill
from learngene_tools.extraction.selection import SelectionSettings, select_from_file


def extract(settings: DistillSettings, opts: RunOptions, out: Path, selection: SelectionSettings) -> dict[str, Any]:
    """Distil (or resume), then write the learngene bundle to `out` (by the main process only)."""
    from learngene_tools.distillation.loop import _barrier, _init_distributed
    from learngene_tools.io.files import check_output

    d, _ = _init_distributed(opts.device)
    if d.main:
        check_output(out, [Path(p) for p in (opts.ancestry,) if p is not None], opts.force)
    summary = distill(settings, opts)
    if d.main:
        select_from_file(summary["aux_path"], out, selection)
    _barrier(d)
    return {**summary, "bundle": out}
