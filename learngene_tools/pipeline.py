"""`lgt extract`: distil the auxiliary model from an ancestry, then select its learngene into a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from learngene_tools.distillation.config import DistillSettings, RunOptions
from learngene_tools.distillation.distributed import DistContext
from learngene_tools.distillation.loop import distill
from learngene_tools.extraction.selection import SelectionSettings, select_from_file


def extract(settings: DistillSettings, opts: RunOptions, out: Path, selection: SelectionSettings) -> dict[str, Any]:
    """Distil (or resume), then write the learngene bundle to `out` (by the main process only)."""
    from learngene_tools.io.files import check_output

    ctx = DistContext.from_env(opts.device)
    if ctx.is_main:
        check_output(out, [Path(p) for p in (opts.ancestry,) if p is not None], opts.force)
    summary = distill(settings, opts, ctx)
    if ctx.is_main:
        select_from_file(summary["aux_path"], out, selection)
    ctx.barrier()
    return {**summary, "bundle": out}
