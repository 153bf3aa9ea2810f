"""Benchmark (GPU): distillation throughput against the teacher's forward pass alone, and `lgt extract` end to end.

Run:  python benchmarks/bench_distill.py [--teacher replknet_31b] [--batch 128] [--img 224] [--iters 30]
                                         [--compile] [--e2e-steps 60] [--data DIR] [--workers 8] [--json]
      python benchmarks/bench_distill.py --cpu-smoke   (tiny models on CPU: checks the script, figures meaningless)

Everything runs through the code `lgt extract` runs, not a copy: the backend settings
(`speed_settings`), the teacher (`load_teacher`, `teacher_features`), the run's setup and step
(`Run.setup`, `Run.train_step`) and, end to end, `pipeline.extract` itself. Figures: teacher
forward images/s (training and merged form), distillation step images/s on GPU-resident random
images (no data loading: the model cost), their ratio (goal >= 0.75), peak GPU memory of the
step, and `lgt extract` images/s on synthetic images (and on --data DIR) after its first
metrics window, against the step rate (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

SMOKE = dict(teacher="replknet_test_tiny", aux="lgt_aux_tiny", batch=4, img=64, iters=2, warmup=1, e2e_steps=4, workers=0)
FULL = dict(teacher="replknet_31b", aux="lgt_aux_base", batch=128, img=224, iters=30, warmup=10, e2e_steps=60, workers=8)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], iters: int, warmup: int) -> float:
    """Seconds per call of `fn`, after `warmup` calls, with the GPU synchronised around the timing."""
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters


def rate(fn: Callable[[], Any], args: argparse.Namespace) -> float:
    """Images per second of `fn` on one batch."""
    return args.batch / timed(fn, args.iters, args.warmup)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher")
    parser.add_argument("--aux")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--img", type=int)
    parser.add_argument("--iters", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--e2e-steps", type=int, help="steps of the end-to-end `lgt extract` runs")
    parser.add_argument("--workers", type=int, help="data-loading workers of the end-to-end runs")
    parser.add_argument("--data", help="also run `lgt extract` end to end on this folder of images")
    parser.add_argument("--compile", action="store_true", help="torch.compile the student + loss")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    parser.add_argument("--cpu-smoke", action="store_true", help="run tiny models on CPU (checks the script; "
                                                                 "figures meaningless)")
    args = parser.parse_args()
    for k, v in (SMOKE if args.cpu_smoke else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def end_to_end(settings: Any, work: Path, args: argparse.Namespace) -> float:
    """`lgt extract` images/s over its metrics windows after the first (which includes warm-up)."""
    from learngene_tools.distillation.config import RunOptions
    from learngene_tools.extraction.config import SelectionSettings
    from learngene_tools.pipeline import extract

    records: list[dict[str, Any]] = []
    log_every = max(1, args.e2e_steps // 5)
    opts = RunOptions(work_dir=work, num_workers=args.workers, log_every=log_every, ckpt_every=10**9,
                      device="cpu" if args.cpu_smoke else None, progress=records.append)
    work.mkdir(parents=True)
    extract(settings, opts, work / "learngene.safetensors", SelectionSettings())
    windows = [(b["images_seen"] - a["images_seen"], b["images_per_s"]) for a, b in zip(records, records[1:])]
    if not windows:  # a single window: nothing to leave out
        windows = [(records[0]["images_seen"], records[0]["images_per_s"])]
    return sum(n for n, _ in windows) / sum(n / rate for n, rate in windows)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every figure, in one process on one device."""
    from learngene_tools.distillation.config import DistillSettings, RunOptions
    from learngene_tools.distillation.distributed import DistContext
    from learngene_tools.distillation.loop import (
        Run,
        load_teacher,
        memory_format_for,
        speed_settings,
        teacher_features,
        use_bf16,
    )
    from learngene_tools.extraction.config import VARIANTS

    ctx = DistContext.from_env("cpu" if args.cpu_smoke else "cuda")
    dev = ctx.device
    s = DistillSettings(arch=args.teacher, aux=VARIANTS[args.aux], img_size=args.img, batch_size=args.batch,
                        steps=max(args.e2e_steps, 1), warmup_steps=0, compile=args.compile,
                        synthetic_length=max(args.batch * args.e2e_steps, 1024))
    bf16 = use_bf16(s, dev)
    figures: dict[str, Any] = {"teacher": args.teacher, "aux": args.aux, "batch": args.batch, "img": args.img,
                               "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                               "torch": torch.__version__, "precision": "bf16" if bf16 else "fp32",
                               "compile": args.compile}
    x = torch.randn(args.batch, 3, args.img, args.img, device=dev).contiguous(memory_format=memory_format_for(s, dev))
    with speed_settings(dev, bf16), tempfile.TemporaryDirectory() as tmp:
        training_form, _ = load_teacher(replace(s, merged_teacher=False), RunOptions(), dev)
        figures["teacher_training_img_s"] = rate(partial(teacher_features, training_form, x, bf16), args)
        training_form = None  # free its memory before the run's merged teacher is built
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        run = Run.setup(s, RunOptions(work_dir=Path(tmp) / "step", device="cpu" if args.cpu_smoke else None), ctx)
        figures["teacher_merged_img_s"] = rate(partial(teacher_features, run.teacher, x, bf16), args)
        run.student.train()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        figures["distill_img_s"] = rate(partial(run.train_step, x), args)
        figures["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None
        run = None
        figures["extract_synthetic_img_s"] = end_to_end(s, Path(tmp) / "e2e", args)
        if args.data:
            figures["extract_data_img_s"] = end_to_end(replace(s, data=args.data), Path(tmp) / "e2e-data", args)
    figures["merged_speedup"] = figures["teacher_merged_img_s"] / figures["teacher_training_img_s"]
    figures["ratio_distill_over_teacher"] = figures["distill_img_s"] / figures["teacher_merged_img_s"]
    figures["ratio_extract_over_step"] = figures["extract_synthetic_img_s"] / figures["distill_img_s"]
    return figures


def report(f: dict[str, Any], args: argparse.Namespace) -> None:
    """The figures as a few readable lines."""
    print(f"{f['device']}, torch {f['torch']}, teacher {f['teacher']}, student {f['aux']}, batch {f['batch']} at "
          f"{f['img']} px, {f['precision']}, compile={f['compile']}")
    print(f"teacher forward only (merged):   {f['teacher_merged_img_s']:9.1f} img/s")
    print(f"teacher forward only (training): {f['teacher_training_img_s']:9.1f} img/s "
          f"-> merged speed-up {f['merged_speedup']:.2f}x")
    print(f"distillation step:               {f['distill_img_s']:9.1f} img/s "
          f"-> ratio {f['ratio_distill_over_teacher']:.2f} (goal >= 0.75)")
    print(f"lgt extract, synthetic images:   {f['extract_synthetic_img_s']:9.1f} img/s "
          f"-> ratio {f['ratio_extract_over_step']:.2f} of the step (goal >= 0.9; {args.e2e_steps} steps, "
          f"{args.workers} workers)")
    if "extract_data_img_s" in f:
        print(f"lgt extract, --data {args.data}: {f['extract_data_img_s']:9.1f} img/s")
    if f["peak_gpu_mem_gib"] is not None:
        print(f"peak GPU memory (distillation):  {f['peak_gpu_mem_gib']:9.2f} GiB")
    if args.json:
        print(json.dumps(f))


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available() and not args.cpu_smoke:
        sys.exit("bench_distill needs a CUDA device (--cpu-smoke only checks that the script runs)")
    report(measure(args), args)


if __name__ == "__main__":
    main()
