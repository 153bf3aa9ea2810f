"""Benchmark: `lgt transplant` into ~1 GB targets against a plain load + save, and `lgt inspect` wall time.

Run:  python benchmarks/bench_transplant.py [--model resnetv2_152x2_bit] [--repeat 3] [--workdir DIR] [--no-ema]

Every figure is measured in this run, each command in its own process (time = wall clock,
peak RSS = the child's ru_maxrss), the median of --repeat runs. Targets: the model's state_dict as
.safetensors and as .pt, and a training checkpoint .pt holding the model and an EMA copy (twice the
size). Goals (issue 2): transplant time / plain load+save <= 1.3, peak RSS / target size <= 1.5,
`lgt inspect BUNDLE` <= 0.3 s; (issue 17) peak RSS <= the imports' + 0.3 x the target size, where
"the imports" is a process that imports what `lgt transplant` imports (torch, timm, safetensors, the
package) and does nothing else.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE_ST = (
    "import sys; from safetensors.torch import load_file, save_file; "
    "sd = load_file(sys.argv[1]); save_file(sd, sys.argv[2])"
)
BASELINE_PT = "import sys, torch; sd = torch.load(sys.argv[1], weights_only=True); torch.save(sd, sys.argv[2])"
IMPORTS = "import torch, timm, safetensors.torch, learngene_tools.cli.app, learngene_tools.transplantation.apply"


def run_measured(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process; fails loudly if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{stderr}")
    return wall, usage.ru_maxrss * 1024


def median_of(cmd: list[str], repeat: int, cleanup: Path | None = None) -> tuple[float, int]:
    """Median wall time and median peak RSS over `repeat` runs (removing `cleanup` between runs)."""
    walls, rss = [], []
    for _ in range(repeat):
        if cleanup is not None and cleanup.exists():
            cleanup.unlink()
        w, r = run_measured(cmd)
        walls.append(w)
        rss.append(r)
    return statistics.median(walls), int(statistics.median(rss))


def build_inputs(workdir: Path, model_name: str, ema: bool = True) -> tuple[Path, Path, Path]:
    """A learngene bundle, the target's state_dict as .safetensors and .pt, and (`ema`) a .pt training
    checkpoint with the model and an EMA copy."""
    import timm
    import torch
    from safetensors.torch import save_file

    from learngene_tools.extraction.config import SelectionSettings
    from learngene_tools.extraction.selection import select_from_file
    from learngene_tools.models.aux_checkpoint import save_aux
    from learngene_tools.models.auxiliary import create_aux
    from learngene_tools.models.variants import VARIANTS

    torch.manual_seed(0)
    save_aux(create_aux(VARIANTS["lgt_aux_small"]), workdir / "aux.safetensors")
    bundle = workdir / "learngene.safetensors"
    select_from_file(workdir / "aux.safetensors", bundle, SelectionSettings())
    state = timm.create_model(model_name, pretrained=False).state_dict()
    state = {k: v.contiguous() for k, v in state.items()}
    st, pt = workdir / "target.safetensors", workdir / "target.pt"
    save_file(state, str(st))
    torch.save(state, pt)
    if ema:
        torch.save({"state_dict": state, "state_dict_ema": {k: v.clone() for k, v in state.items()}, "epoch": 1},
                   workdir / "target_ema.pt")
    return bundle, st, pt


def _torch_version() -> str:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    return out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnetv2_152x2_bit", help="timm model whose random init is the target (~0.95 GB)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="where the ~4 GB of temporary files go")
    parser.add_argument("--no-ema", action="store_true", help="skip the model + EMA training checkpoint (2x size)")
    parser.add_argument("--build-into", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_into is not None:
        build_inputs(args.build_into, args.model, ema=not args.no_ema)
        return

    workdir = Path(tempfile.mkdtemp(prefix="lgt-bench-", dir=args.workdir))
    py, lgt = sys.executable, [sys.executable, "-m", "learngene_tools"]
    try:
        print(f"building {args.model} and a learngene bundle in {workdir} ...", flush=True)
        # built in a child: a fork of a parent holding the model would inherit its peak RSS
        subprocess.run([py, __file__, "--build-into", str(workdir), "--model", args.model,
                        *(["--no-ema"] if args.no_ema else [])], check=True)
        bundle, st, pt = workdir / "learngene.safetensors", workdir / "target.safetensors", workdir / "target.pt"
        targets = [("safetensors", st, BASELINE_ST), ("pt", pt, BASELINE_PT)]
        if not args.no_ema:
            targets.append(("pt+EMA", workdir / "target_ema.pt", BASELINE_PT))
        rows = []
        for fmt, target, baseline in targets:
            size = target.stat().st_size
            out_base, out_lgt = workdir / f"base_{target.name}", workdir / f"lgt_{target.name}"
            # one untimed pass of each warms the page cache, so both sides read from memory
            run_measured([py, "-c", baseline, str(target), str(out_base)])
            base_t, base_rss = median_of([py, "-c", baseline, str(target), str(out_base)], args.repeat, out_base)
            cmd = [*lgt, "transplant", str(bundle), str(target), "-o", str(out_lgt), "--force"]
            lgt_t, lgt_rss = median_of(cmd, args.repeat, out_lgt)
            rows.append((fmt, size, base_t, base_rss, lgt_t, lgt_rss))
        _, torch_rss = median_of([py, "-c", IMPORTS], args.repeat)
        inspect_t, _ = median_of([*lgt, "inspect", str(bundle)], max(5, args.repeat))
        bare_t, _ = median_of([py, "-c", "pass"], max(5, args.repeat))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\ntarget: timm {args.model} random init; median of {args.repeat} runs; python {sys.version.split()[0]}")
    print(f"{'format':<12} {'size':>8} {'load+save':>10} {'lgt':>8} {'time ratio':>10} {'lgt peak RSS':>13} {'RSS/size':>9}"
          f" {'baseline RSS/size':>18} {'(lgt RSS - imports)/size':>25}")
    for fmt, size, base_t, base_rss, lgt_t, lgt_rss in rows:
        print(f"{fmt:<12} {size / 1e9:>6.2f}GB {base_t:>9.2f}s {lgt_t:>7.2f}s {lgt_t / base_t:>10.2f} "
              f"{lgt_rss / 1e9:>11.2f}GB {lgt_rss / size:>9.2f} {base_rss / size:>18.2f} {(lgt_rss - torch_rss) / size:>25.2f}")
    print(f"peak RSS of the imports alone ({IMPORTS.removeprefix('import ')}): {torch_rss / 1e9:.2f} GB "
          f"(torch {_torch_version()})")
    print(f"lgt inspect BUNDLE: {inspect_t:.3f} s wall (bare `python -c pass`: {bare_t:.3f} s)")
    print("goals: time ratio <= 1.3, RSS/size <= 1.5, inspect <= 0.3 s, (lgt RSS - imports)/size <= 0.3")


if __name__ == "__main__":
    main()
