"""`lgt evaluate`: fine-tune a descendant from scratch and from a learngene, and say by how much the learngene helps."""

from __future__ import annotations

import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from learngene_tools import __version__
from learngene_tools.errors import OutputError, SettingsError
from learngene_tools.evaluation.config import Arm, EvaluationSettings, default_arms
from learngene_tools.evaluation.runner import (
    Context,
    Progress,
    choose_lrs,
    previous_runs,
    run_grid,
    runs_on,
    test_kept,
)

OUTPUT_SUFFIXES = (".json", ".md", ".png")


def output_paths(out_dir: Path, name: str) -> dict[str, Path]:
    """Where the record, the report and the figure go: OUT_DIR/NAME.{json,md,png}."""
    return {s[1:]: out_dir / f"{name}{s}" for s in OUTPUT_SUFFIXES}


def evaluate(
    bundle: Path | None,
    settings: EvaluationSettings,
    *,
    arms: list[Arm] | None = None,
    teacher: Path | None = None,
    out_dir: Path | None = None,
    name: str = "evaluation",
    resume: bool = False,
    force: bool = False,
    trust_pickle: bool = False,
    progress: Progress | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Run every arm x fraction x seed, then write NAME.json/.md/.png into `out_dir` (nothing when None); returns the record."""
    from learngene_tools.evaluation.data import load_task
    from learngene_tools.evaluation.report import comparisons, render, summarise
    from learngene_tools.io.bundle import read_bundle_header

    s = settings
    if s.arch is None or s.data is None:
        raise SettingsError("give the descendant (--arch SPEC) and the data (--data DIR, or --data synthetic)")
    arms = arms if arms is not None else default_arms(bundle, s, teacher=teacher is not None)  # type: ignore[arg-type]
    names = [a.name for a in arms]
    if len(set(names)) != len(names) or "scratch" not in names:
        raise SettingsError(f"arms need distinct names and one named scratch (got {', '.join(names)})")
    if any(a.kd for a in arms) and teacher is None:
        raise SettingsError("the KD baseline needs --teacher (the ancestry checkpoint)")
    paths = output_paths(out_dir, name) if out_dir is not None else None
    if paths is not None:
        if out_dir.exists() and not out_dir.is_dir():  # type: ignore[union-attr]
            raise OutputError(f"{out_dir}: is a file; --output-dir takes a folder")
        there = [p for p in paths.values() if p.exists()]
        if there and not (force or resume):
            raise OutputError(f"{there[0]}: already exists; pass --force to overwrite it or --resume to continue it")
    headers = {str(a.bundle): read_bundle_header(a.bundle) for a in arms if a.bundle is not None}
    teacher_arch = s.teacher_arch or next(filter(None, (_ancestry_arch(h.provenance) for h in headers.values())), None)
    if teacher is not None and teacher_arch is None:
        raise SettingsError("give --teacher-arch (the teacher's model spec): no bundle names its ancestry")
    if paths is not None:
        out_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
    t0 = time.perf_counter()
    data = load_task(s.data, s.img_size, s.val_fraction, s.split_seed, s.train_limit, with_test=s.test,
                     val_limit=s.val_limit, test_limit=s.test_limit)
    grid = len(s.learning_rates) > 1 and data.test is not None  # the test waits for the learning-rate choice
    keep_dir = None
    if grid:
        keep_dir = paths["json"].with_suffix(".weights") if paths is not None else Path(tempfile.mkdtemp(prefix="lgt-eval-"))
    ctx = Context(s, data, {p: str(h.provenance.get("tensor_hash", "")) for p, h in headers.items()},
                  teacher=None if teacher is None else str(teacher), teacher_arch=teacher_arch, trust_pickle=trust_pickle,
                  keep_dir=keep_dir)
    previous = previous_runs(paths["json"]) if (paths is not None and resume) else {}
    here = runs_on(s)
    # runs recorded before runs_on existed say nothing of their precision: they are not taken as this one's
    mixed = sorted({r.get("runs_on") or "an unrecorded device and precision" for r in previous.values()} - {here})
    if mixed:
        raise SettingsError(f"{paths['json']}: holds runs on {', '.join(mixed)}, this evaluation runs on {here}; "  # type: ignore[index]
                            "resume it where it ran (--device, --precision), or write another --name")
    runs = run_grid(ctx, arms, paths["json"] if paths is not None else None, previous, progress, jobs=s.jobs)
    choice = choose_lrs(runs, s)
    for i, r in enumerate(runs):
        chosen = choice[(r["arm"], r["fraction"])] == r.get("lr", s.lr)
        runs[i] = r = {**r, "chosen": chosen}
        if grid and chosen and r.get("test_acc") is None:
            runs[i] = test_kept(ctx, next(a for a in arms if a.name == r["arm"]), r)
    if keep_dir is not None:
        shutil.rmtree(keep_dir, ignore_errors=True)
    from learngene_tools.evaluation.train import Device

    dev = Device.pick(s.device, s.precision)
    record: dict[str, Any] = {
        "tool": {"name": "learngene_tools", "version": __version__},
        "command": command,
        "settings": s.to_json(),
        "arms": [a.describe() for a in arms],
        "bundles": {p: {"tensor_hash": h.provenance.get("tensor_hash"), "ancestry": h.provenance.get("ancestry"),
                        "distillation_steps": (h.provenance.get("distillation") or {}).get("steps")}
                    for p, h in headers.items()},
        "teacher": None if teacher is None else {"checkpoint": str(teacher), "arch": teacher_arch},
        "data": {**data.info, "mean": list(data.mean), "std": list(data.std)},
        "environment": {
            "device": torch.cuda.get_device_name(dev.device) if dev.device.type == "cuda" else
            f"cpu ({platform.machine()})", "precision": "bf16" if dev.bf16 else "fp32",
            "threads": torch.get_num_threads(), "jobs": s.jobs, "torch": torch.__version__,
            "minutes": (time.perf_counter() - t0) / 60,
            "run_seconds": round(sum(r.get("seconds") or 0 for r in runs), 1),
        },
        "runs": runs,
    }
    reported = [r for r in runs if r["chosen"]]
    record["lr_choice"] = [{"arm": a, "fraction": f, "lr": lr} for (a, f), lr in choice.items()]
    record["summary"] = summarise(reported, names, list(s.fractions))
    record["comparisons"] = comparisons(reported, record["arms"], list(s.fractions))
    if paths is not None:
        import json

        from learngene_tools.io.files import atomic_path

        with atomic_path(paths["json"]) as tmp:
            tmp.write_text(json.dumps(record, indent=1))
        render(record, paths["md"], paths["png"])
        record["outputs"] = {k: str(v) for k, v in paths.items()}
    return record


def _ancestry_arch(provenance: dict[str, Any]) -> str | None:
    """The ancestry's model spec a bundle records (None for a bundle of an untrained auxiliary model)."""
    ancestry = provenance.get("ancestry")
    return ancestry.get("arch") if isinstance(ancestry, dict) else None
