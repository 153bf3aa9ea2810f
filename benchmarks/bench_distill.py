"""Benchmark (GPU): the teacher's forward pass (native and fast depthwise convs), distillation, `lgt extract`.

Run:  python benchmarks/bench_distill.py [--teacher replknet_31b] [--batch 128] [--img 224] [--iters 30]
                                         [--compile] [--e2e-steps 60] [--data DIR] [--workers 8] [--json]
      python benchmarks/bench_distill.py --cpu-smoke   (tiny models on CPU: checks the script, figures meaningless)

Everything runs through the code `lgt extract` runs, not a copy: the backend settings
(`speed_settings`), the teacher (`load_teacher`, `teacher_features`, its large-kernel depthwise
convs as `--teacher-conv` runs them), the run's setup, step and data loader (`Run.setup`,
`Run.train_step`, `make_loader`) and, end to end, `pipeline.extract` itself. In one run it prints:

- teacher forward images/s, merged form with its depthwise convs in every `--teacher-conv` mode
  (native, contiguous, channels_last, fft, auto: see learngene_tools.distillation.depthwise), and
  training form native and auto,
  each with its TFLOP/s (2 FLOPs per multiply-add, counted by torch's FlopCounterMode) and share of
  the card's dense bf16 peak; the same for timm `convnext_base` (the same FLOPs class: the yardstick);
- what `auto` chose per input signature, with each candidate's time;
- the distillation step on GPU-resident images (no data loading: the model cost), its ratio to the
  teacher's forward (goal >= 0.75), and peak GPU memory;
- `lgt extract` end to end on synthetic images, and with --data DIR on a folder of images, against
  the step rate (goal >= 0.9), and the loader's decode throughput alone on that folder.
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

SMOKE = dict(teacher="replknet_test_tiny", aux="lgt_aux_tiny", batch=4, img=64, iters=2, warmup=1, e2e_steps=4,
             workers=0, yardstick="timm:convnext_atto")
FULL = dict(teacher="replknet_31b", aux="lgt_aux_base", batch=128, img=224, iters=30, warmup=10, e2e_steps=60,
            workers=8, yardstick="timm:convnext_base")
# Dense bf16 tensor-core peak (TFLOP/s, no sparsity) by device-name fragment; --peak-tflops overrides.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0}


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
    parser.add_argument("--yardstick", help="the model whose forward the teacher's is compared with")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak (default: from its name)")
    parser.add_argument("--decode-batches", type=int, default=20, help="batches of the decode-throughput run")
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
    from learngene_tools.extraction.extract import extract

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


def peak_tflops(device_name: str, override: float | None) -> float | None:
    """The card's dense bf16 peak in TFLOP/s, if known."""
    if override:
        return override
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)


def flops_per_image(model: torch.nn.Module, img: int, device: torch.device) -> float:
    """FLOPs of one forward pass of one image (2 per multiply-add), with every conv run natively."""
    from torch.utils.flop_counter import FlopCounterMode

    from learngene_tools.distillation.depthwise import teacher_conv_mode

    x = torch.randn(1, 3, img, img, device=device)
    with torch.inference_mode(), teacher_conv_mode(model, "native"), FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def forward_figures(name: str, model: torch.nn.Module, x: torch.Tensor, bf16: bool, args: argparse.Namespace,
                    figures: dict[str, Any], modes: tuple[str, ...]) -> None:
    """images/s and TFLOP/s of `model`'s forward on `x`, once per depthwise mode."""
    from learngene_tools.distillation.depthwise import teacher_conv_mode
    from learngene_tools.distillation.loop import teacher_features

    flops = flops_per_image(model, args.img, x.device)
    figures[f"{name}_gflops_per_img"] = flops / 1e9
    for mode in modes:
        with teacher_conv_mode(model, mode):
            ips = rate(partial(teacher_features, model, x, bf16), args)
        figures[f"{name}_{mode}_img_s"] = ips
        figures[f"{name}_{mode}_tflops"] = ips * flops / 1e12


def decode_rate(s: Any, ctx: Any, args: argparse.Namespace) -> float:
    """images/s the run's own loader delivers from --data with --workers processes (no model)."""
    from learngene_tools.distillation.data import IMAGENET_MEAN, IMAGENET_STD
    from learngene_tools.distillation.loop import make_loader

    s = replace(s, data=args.data, steps=args.decode_batches + 1, mean=s.mean or tuple(IMAGENET_MEAN),
                std=s.std or tuple(IMAGENET_STD))
    loader = make_loader(s, 0, ctx, args.workers)
    batches = iter(loader)
    next(batches)  # the workers' start-up is not decode time
    t0, n = time.perf_counter(), 0
    for x, _ in batches:
        n += x.shape[0]
    return n / (time.perf_counter() - t0)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every figure, in one process on one device."""
    from learngene_tools.architectures.specs import build_model
    from learngene_tools.distillation.config import TEACHER_CONV_MODES, DistillSettings, RunOptions
    from learngene_tools.distillation.depthwise import autotuned
    from learngene_tools.distillation.distributed import DistContext
    from learngene_tools.distillation.loop import Run, load_teacher, memory_format_for, speed_settings, use_bf16
    from learngene_tools.models.variants import VARIANTS

    ctx = DistContext.from_env("cpu" if args.cpu_smoke else "cuda")
    dev = ctx.device
    s = DistillSettings(arch=args.teacher, aux=VARIANTS[args.aux], img_size=args.img, batch_size=args.batch,
                        steps=max(args.e2e_steps, 1), warmup_steps=0, compile=args.compile,
                        synthetic_length=max(args.batch * args.e2e_steps, 1024))
    bf16 = use_bf16(s, dev)
    device_name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    figures: dict[str, Any] = {"teacher": args.teacher, "aux": args.aux, "batch": args.batch, "img": args.img,
                               "device": device_name, "torch": torch.__version__, "precision": "bf16" if bf16 else "fp32",
                               "compile": args.compile, "yardstick": args.yardstick,
                               "peak_bf16_tflops": peak_tflops(device_name, args.peak_tflops)}
    fmt = memory_format_for(s, dev)
    x = torch.randn(args.batch, 3, args.img, args.img, device=dev).contiguous(memory_format=fmt)
    with speed_settings(dev, bf16), tempfile.TemporaryDirectory() as tmp:
        training_form, _ = load_teacher(replace(s, merged_teacher=False), RunOptions(), dev)
        forward_figures("teacher_training", training_form, x, bf16, args, figures, ("native", "auto"))
        training_form = None  # free its memory before the run's merged teacher is built
        yardstick = build_model(args.yardstick, seed=0).eval().requires_grad_(False).to(dev, memory_format=fmt)
        forward_figures("yardstick", yardstick, x, bf16, args, figures, ("native",))
        yardstick = None
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        run = Run.setup(s, RunOptions(work_dir=Path(tmp) / "step", device="cpu" if args.cpu_smoke else None), ctx)
        forward_figures("teacher_merged", run.teacher, x, bf16, args, figures, TEACHER_CONV_MODES)
        run.student.train()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        figures["distill_img_s"] = rate(partial(run.train_step, x), args)
        figures["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None
        run = None
        figures["autotuned"] = {sig: {"chose": c.name, "ms": c.timings_ms} for sig, c in autotuned().items()}
        figures["extract_synthetic_img_s"] = end_to_end(s, Path(tmp) / "e2e", args)
        if args.data:
            figures["decode_img_s"] = decode_rate(s, ctx, args)
            figures["extract_data_img_s"] = end_to_end(replace(s, data=args.data), Path(tmp) / "e2e-data", args)
    by_mode = {m: figures[f"teacher_merged_{m}_img_s"] for m in TEACHER_CONV_MODES}
    figures["teacher_fastest_mode"] = max(by_mode, key=by_mode.__getitem__)
    figures["teacher_fast_speedup"] = max(by_mode.values()) / figures["teacher_merged_native_img_s"]
    figures["teacher_over_yardstick"] = max(by_mode.values()) / figures["yardstick_native_img_s"]
    figures["merged_speedup"] = figures["teacher_merged_auto_img_s"] / figures["teacher_training_auto_img_s"]
    figures["ratio_distill_over_teacher"] = figures["distill_img_s"] / figures["teacher_merged_auto_img_s"]
    figures["ratio_extract_over_step"] = figures["extract_synthetic_img_s"] / figures["distill_img_s"]
    if args.data:
        figures["ratio_extract_data_over_step"] = figures["extract_data_img_s"] / figures["distill_img_s"]
    return figures


def _forward_line(label: str, f: dict[str, Any], key: str) -> str:
    peak = f["peak_bf16_tflops"]
    share = f" = {100 * f[key + '_tflops'] / peak:5.1f} % of bf16 peak" if peak else ""
    return f"{label:<38}{f[key + '_img_s']:9.1f} img/s  {f[key + '_tflops']:7.1f} TFLOP/s{share}"


def report(f: dict[str, Any], args: argparse.Namespace) -> None:
    """The figures as a few readable lines."""
    print(f"{f['device']}, torch {f['torch']}, teacher {f['teacher']}, student {f['aux']}, batch {f['batch']} at "
          f"{f['img']} px, {f['precision']}, compile={f['compile']}")
    peak = f"{f['peak_bf16_tflops']:g} TFLOP/s" if f["peak_bf16_tflops"] else "unknown (--peak-tflops)"
    print(f"FLOPs per image (2 per multiply-add): teacher {f['teacher_merged_gflops_per_img']:.2f} G, "
          f"{f['yardstick']} {f['yardstick_gflops_per_img']:.2f} G; dense bf16 peak {peak}")
    print(_forward_line("teacher merged, native convs:", f, "teacher_merged_native"))
    for mode in ("contiguous", "channels_last", "fft"):
        print(_forward_line(f"teacher merged, {mode} convs:", f, f"teacher_merged_{mode}")
              + f"  -> {f[f'teacher_merged_{mode}_img_s'] / f['teacher_merged_native_img_s']:.2f}x native")
    print(_forward_line("teacher merged, auto convs:", f, "teacher_merged_auto")
          + f"  -> {f['teacher_merged_auto_img_s'] / f['teacher_merged_native_img_s']:.2f}x native")
    print(f"fastest teacher: --teacher-conv {f['teacher_fastest_mode']}, {f['teacher_fast_speedup']:.2f}x native "
          f"(goal >= 5), {f['teacher_over_yardstick']:.2f}x {f['yardstick']} (goal >= 1)")
    print(_forward_line("teacher training form, native:", f, "teacher_training_native"))
    print(_forward_line("teacher training form, auto:", f, "teacher_training_auto")
          + f"  -> merged speed-up {f['merged_speedup']:.2f}x")
    print(_forward_line(f"{f['yardstick']}:", f, "yardstick_native"))
    for sig, c in f["autotuned"].items():
        times = ", ".join(f"{k} {'disagrees' if v is None else f'{v:.2f} ms'}" for k, v in c["ms"].items())
        print(f"  auto chose {c['chose']:<13} for {sig}: {times}")
    print(f"{'distillation step:':<38}{f['distill_img_s']:9.1f} img/s  "
          f"-> ratio {f['ratio_distill_over_teacher']:.2f} of the teacher's forward (goal >= 0.75)")
    if f["peak_gpu_mem_gib"] is not None:
        print(f"{'peak GPU memory (distillation):':<38}{f['peak_gpu_mem_gib']:9.2f} GiB")
    print(f"{'lgt extract, synthetic images:':<38}{f['extract_synthetic_img_s']:9.1f} img/s  "
          f"-> ratio {f['ratio_extract_over_step']:.2f} of the step (goal >= 0.9; {args.e2e_steps} steps, "
          f"{args.workers} workers)")
    if "extract_data_img_s" in f:
        print(f"{'loader alone, --data (decode):':<38}{f['decode_img_s']:9.1f} img/s  "
              f"({args.workers} workers; {'keeps up' if f['decode_img_s'] >= f['distill_img_s'] else 'BOTTLENECK'} "
              "at the step rate)")
        print(f"{'lgt extract, --data:':<38}{f['extract_data_img_s']:9.1f} img/s  "
              f"-> ratio {f['ratio_extract_data_over_step']:.2f} of the step (goal >= 0.9)")
    if args.json:
        print(json.dumps(f))


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available() and not args.cpu_smoke:
        sys.exit("bench_distill needs a CUDA device (--cpu-smoke only checks that the script runs)")
    report(measure(args), args)


if __name__ == "__main__":
    main()
