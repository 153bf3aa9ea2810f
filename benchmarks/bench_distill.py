"""Benchmark (GPU): distillation throughput against the teacher's forward pass alone, in one run.

Run:  python benchmarks/bench_distill.py [--teacher replknet_31b] [--batch 128] [--img 224] [--iters 30] [--compile]

Measures, with the project's own train_step on GPU-resident random images (no data loading,
so the figures are the model cost): distillation images/s, teacher-forward-only images/s
(merged teacher, inference_mode, bf16, channels_last), their ratio (goal >= 0.75), peak GPU
memory of the distillation step, and the speed-up of the merged teacher over its training form.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, iters: int, warmup: int) -> float:
    """Seconds per call of `fn`, after `warmup` calls, with the GPU synchronised around the timing."""
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="replknet_31b")
    parser.add_argument("--aux", default="lgt_aux_base")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="torch.compile the student + loss")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    parser.add_argument("--cpu-smoke", action="store_true", help="run on CPU (checks the script; figures meaningless)")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.cpu_smoke:
        sys.exit("bench_distill needs a CUDA device (--cpu-smoke only checks that the script runs)")

    from learngene_tools.distillation.config import DistillSettings
    from learngene_tools.distillation.loop import Student, make_optimizer, train_step
    from learngene_tools.distillation.loss import DistillLoss, LossSettings
    from learngene_tools.distillation.teacher import build_teacher
    from learngene_tools.extraction.auxiliary import VARIANTS, create_aux

    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = torch.device("cpu" if args.cpu_smoke else "cuda")
    cl = torch.channels_last
    x = torch.randn(args.batch, 3, args.img, args.img, device=dev).contiguous(memory_format=cl)
    s = DistillSettings(arch=args.teacher, aux=VARIANTS[args.aux], img_size=args.img, batch_size=args.batch)
    bf16 = torch.autocast(dev.type, dtype=torch.bfloat16)

    figures: dict[str, float | str] = {"teacher": args.teacher, "aux": args.aux, "batch": args.batch, "img": args.img,
                                       "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__}
    for merged in (False, True):
        teacher, _ = build_teacher(args.teacher, None, merged=merged, img_size=args.img)
        teacher = teacher.to(dev, memory_format=cl)

        def forward_only() -> None:
            with torch.inference_mode(), bf16:
                teacher(x)

        figures[f"teacher_{'merged' if merged else 'training'}_img_s"] = args.batch / timed(forward_only, args.iters, args.warmup)
        if not merged:
            del teacher
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    figures["merged_speedup"] = figures["teacher_merged_img_s"] / figures["teacher_training_img_s"]  # type: ignore[operator]

    with torch.inference_mode(), bf16:
        t_chs = [f.shape[1] for f in teacher(x[:1])]
    torch.manual_seed(0)
    student = Student(create_aux(s.aux), DistillLoss(list(s.aux.widths), t_chs, LossSettings())).to(dev, memory_format=cl)
    fwd = torch.compile(student) if args.compile else student
    opt = make_optimizer(student, s, dev)
    student.train()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        train_step(teacher, student, fwd, opt, x, 1e-4, 1.0, bf16=dev.type == "cuda")

    figures["distill_img_s"] = args.batch / timed(step, args.iters, args.warmup)
    figures["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
    figures["ratio_distill_over_teacher"] = figures["distill_img_s"] / figures["teacher_merged_img_s"]  # type: ignore[operator]
    figures["compile"] = str(args.compile)

    print(f"{figures['device']}, torch {figures['torch']}, teacher {args.teacher}, student {args.aux}, "
          f"batch {args.batch} at {args.img} px, bf16, channels_last, compile={args.compile}")
    print(f"teacher forward only (merged):   {figures['teacher_merged_img_s']:9.1f} img/s")
    print(f"teacher forward only (training): {figures['teacher_training_img_s']:9.1f} img/s "
          f"-> merged speed-up {figures['merged_speedup']:.2f}x")
    print(f"distillation step:               {figures['distill_img_s']:9.1f} img/s "
          f"-> ratio {figures['ratio_distill_over_teacher']:.2f} (goal >= 0.75)")
    print(f"peak GPU memory (distillation):  {figures['peak_gpu_mem_gib']:9.2f} GiB")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
