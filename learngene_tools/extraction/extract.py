"""`lgt extract`: distil the auxiliary model from an ancestry, then select its learngene into a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from learngene_tools.distillation.config import DistillSettings, RunOptions
from learngene_tools.distillation.distributed import DistContext
from learngene_tools.distillation.loop import distill
from learngene_tools.extraction.config import SelectionSettings
from learngene_tools.extraction.selection import select_from_file


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


def describe_run(settings: DistillSettings, opts: RunOptions, out: Path | None = None,
                 identified: str | None = None) -> dict[str, Any]:
    """What `lgt distill`/`lgt extract` would run, without running it (`--dry-run`): the teacher is built on the
    meta device to find its taps; no weights are loaded and nothing is written."""
    import torch

    from learngene_tools.architectures.specs import build_model
    from learngene_tools.architectures.tracing import on_meta
    from learngene_tools.distillation.teacher import taps_from_feature_info, trace_taps
    from learngene_tools.models.variants import AuxConfig, variants_of

    arch = str(settings.arch)
    replknet = arch.split(":", 1)[-1].startswith("replknet")
    with on_meta():
        teacher = build_model(arch, seed=0, **({"merged": True} if replknet and settings.merged_teacher else {}))
    taps = list(settings.taps) if settings.taps else (
        taps_from_feature_info(teacher) or trace_taps(teacher, (3, settings.img_size, settings.img_size)))
    variant = next((name for name, cfg in variants_of(AuxConfig).items() if cfg == settings.aux), None)
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = settings.precision if settings.precision != "auto" else ("bf16" if device != "cpu" else "fp32")
    return {
        "dry_run": True,
        "ancestry": {"checkpoint": None if opts.ancestry is None else str(opts.ancestry), "arch": arch,
                     "identified": identified},
        "taps": taps,
        "auxiliary": {"variant": variant, "widths": list(settings.aux.widths), "depths": list(settings.aux.depths)},
        "steps": settings.steps, "batch_size": settings.batch_size, "img_size": settings.img_size, "lr": settings.lr,
        "warmup_steps": settings.warmup_steps, "loss": settings.loss.describe(),
        "data": settings.data or "procedural images (data-free; --data DIR distils on a folder of images)",
        "device": device, "precision": precision, "work_dir": str(opts.work_dir),
        "output": None if out is None else str(out),
    }
