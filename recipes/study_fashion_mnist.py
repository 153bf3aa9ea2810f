"""The pre-registered Fashion-MNIST study (results/study_fashion_mnist_plan.md), as calls of `lgt evaluate`'s function.

Run through `python recipes/compare_fashion_mnist.py study --work W`, which distils (or reuses) the
learngenes first. Phase 1 measures the transplant options on validation with the short MobileNetV2
learngene; the pre-registered rule (`choose`) picks the options; phase 2 compares the four
learngenes with the chosen options on validation and test.
"""

from __future__ import annotations

import json
import math
import shlex
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from learngene_tools import api
from learngene_tools.evaluation.progress import progress_printer
from learngene_tools.evaluation.settings import Arm, EvaluationSettings

FMNIST = "/usr/share/datasets/fashion-mnist"
SETTINGS = EvaluationSettings(
    arch="learngene_tools.descendants:small_vgg", data=FMNIST, val_fraction=0.05, split_seed=0, train_limit=1600,
    val_limit=500, test=False, test_limit=2000, seeds=3, fractions=(1.0, 0.1, 0.03), epochs=5, min_steps=50,
    batch_size=32, lr=0.05, weight_decay=5e-4, augment=True, bn_batches=8, device="cpu", jobs=2,
)
BASE = "clkg"  # phase 1's baseline arm: the transplant as `lgt transplant` did it before this study
PHASE1_OPTIONS = {  # option -> alternative arms (name -> Arm fields that differ from the baseline)
    "bn": {"clkg bn=target": {"bn": "target"}, "clkg bn=reestimate": {"bn": "reestimate"}},
    "rescale": {"clkg rescale": {"rescale": True}},
    "stages": {"clkg stage 1 only": {"stages": (1,)}},
}
PHASE2_LEARNGENES = ("mnv2-fmnist-short", "mnv2-fmnist-long", "mnv2-synthetic-short", "effl0-fmnist-short")


def phase1_arms(bundle: Path) -> list[Arm]:
    """Scratch, the baseline transplant, and one arm per alternative option value."""
    base = Arm(BASE, bundle)
    return [Arm("scratch"), base] + [replace(base, name=name, **fields)
                                     for alts in PHASE1_OPTIONS.values() for name, fields in alts.items()]


def paired(runs: list[dict[str, Any]], arm: str, against: str) -> tuple[float, float, int]:
    """Mean and standard error of final-validation differences arm - against over (fraction, seed) pairs."""
    by = {(r["arm"], r["fraction"], r["seed"]): r["val_acc"][-1] for r in runs}
    d = [v - by[(against, f, s)] for (a, f, s), v in by.items() if a == arm and (against, f, s) in by]
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.inf
    return statistics.mean(d), se, len(d)


def choose(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The pre-registered rule: per option, the alternative with the largest mean paired gain over the baseline
    (final validation accuracy, pooled over fractions and seeds) replaces it when that gain is > 0 and > 1 SE."""
    chosen: dict[str, Any] = {"bn": "transfer", "rescale": False, "stages": None}
    evidence = {}
    for option, alts in PHASE1_OPTIONS.items():
        scored = {name: paired(runs, name, BASE) for name in alts}
        evidence[option] = {name: {"delta": m, "se": se, "pairs": n} for name, (m, se, n) in scored.items()}
        best = max(scored, key=lambda k: scored[k][0])
        m, se, _ = scored[best]
        if m > 0 and m > se:
            chosen.update(alts[best])
            evidence[option]["adopted"] = best
        else:
            evidence[option]["adopted"] = None
    chosen["stages"] = list(chosen["stages"]) if chosen["stages"] else None
    return {"chosen": chosen, "evidence": evidence,
            "vs_scratch": {name: dict(zip(("delta", "se", "pairs"), paired(runs, name, "scratch")))
                           for name in [BASE] + [n for alts in PHASE1_OPTIONS.values() for n in alts]}}


def phase2_arms(bundles: dict[str, Path], chosen: dict[str, Any]) -> list[Arm]:
    """Scratch and every learngene with the chosen options (plus the short one as before, when the choice changed)."""
    opts = {"bn": chosen["bn"], "rescale": chosen["rescale"],
            "stages": tuple(chosen["stages"]) if chosen["stages"] else None}
    arms = [Arm("scratch")] + [Arm(name, bundles[name], **opts) for name in PHASE2_LEARNGENES]
    if opts != {"bn": "transfer", "rescale": False, "stages": None}:
        arms.append(Arm("mnv2-fmnist-short, before the study", bundles["mnv2-fmnist-short"]))
    return arms


def cli_equivalent(arm: Arm, s: EvaluationSettings, out: str) -> str:
    """The `lgt evaluate` command whose CLKG row is this arm (its scratch row is the phase's scratch)."""
    args = ["lgt", "evaluate", str(arm.bundle), "--arch", s.arch, "--data", s.data, "--val-fraction", f"{s.val_fraction:g}",
            "--train-limit", str(s.train_limit), "--val-limit", str(s.val_limit), "--seeds", str(s.seeds),
            "--fractions", ",".join(f"{f:g}" for f in s.fractions), "--epochs", str(s.epochs),
            "--min-steps", str(s.min_steps), "--batch-size", str(s.batch_size), "--lr", f"{s.lr:g}", "--bn", arm.bn,
            "--device", "cpu", "-o", out]
    args += ["--rescale"] if arm.rescale else []
    args += ["--stages", ",".join(map(str, arm.stages))] if arm.stages else []
    args += ["--test-limit", str(s.test_limit)] if s.test else ["--no-test"]
    return shlex.join(args)


def run_phase(name: str, arms: list[Arm], s: EvaluationSettings, results: Path, threads: int) -> dict[str, Any]:
    """One phase: api.evaluate over the arms, resumable; the record gets the per-arm CLI equivalents."""
    torch.set_num_threads(threads)
    t0 = time.time()
    commands = [cli_equivalent(a, s, str(results)) for a in arms if a.bundle is not None]
    record = api.evaluate(None, s, arms=arms, out_dir=results, name=f"study_fashion_mnist_{name}", resume=True,
                          progress=progress_printer(Console(stderr=True), plain=True),
                          command=f"python recipes/compare_fashion_mnist.py study  # {name}; per arm: " + " ; ".join(commands))
    print(f"[{name}] {(time.time() - t0) / 60:.1f} min", flush=True)
    return record


def run_study(work: Path, results: Path, bundles: dict[str, Path]) -> None:
    """Phase 1 (options, validation only), the choice, phase 2 (learngenes with the chosen options, validation + test)."""
    t0 = time.time()
    rec1 = run_phase("phase1", phase1_arms(bundles["mnv2-fmnist-short"]), SETTINGS, results, threads=2)
    choice = choose(rec1["runs"])
    (results / "study_fashion_mnist_choice.json").write_text(json.dumps(choice, indent=1))
    print(json.dumps(choice["chosen"]), flush=True)
    s2 = replace(SETTINGS, test=True)
    run_phase("phase2", phase2_arms(bundles, choice["chosen"]), s2, results, threads=2)
    print(f"[study] {(time.time() - t0) / 60:.1f} min", flush=True)


def run_large(work: Path, results: Path, bundles: dict[str, Path]) -> None:
    """Part C: phase 2 again with twice the training images, with the options phase 1 chose."""
    chosen = json.loads((results / "study_fashion_mnist_choice.json").read_text())["chosen"]
    s = replace(SETTINGS, test=True, train_limit=2 * SETTINGS.train_limit)  # type: ignore[operator]
    run_phase("phase2_large", phase2_arms(bundles, chosen), s, results, threads=2)
