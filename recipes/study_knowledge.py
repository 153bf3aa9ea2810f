"""Is it the knowledge? The pre-registered control-arm study (results/study_knowledge_plan.md).

    python recipes/study_knowledge.py run --work W [--part A|B]   # the runs (resumable), as lgt evaluate calls
    python recipes/study_knowledge.py report                      # results/study_knowledge.md from the records

Part A compares scratch, CLKG and its two controls (random-matched, shuffled) for the shipped `lgt:default`
in a VGG- and a ResNet-layout descendant; part B does CLKG and random-matched for two more learngenes
(distilled by `compare_fashion_mnist.py learngenes`). Needs: apt-get install dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from learngene_tools import api
from learngene_tools.evaluation.config import Arm, EvaluationSettings
from learngene_tools.evaluation.stats import correct, paired

FMNIST = "/usr/share/datasets/fashion-mnist"
RESULTS = Path(__file__).parent / "results"
SETTINGS = EvaluationSettings(
    data=FMNIST, val_fraction=0.05, split_seed=0, train_limit=1600, val_limit=1000, test=True, test_limit=2000,
    seeds=6, fractions=(1.0, 0.1), epochs=2, steps=100, batch_size=32, lr_grid=(0.02, 0.1), weight_decay=5e-4,
    augment=True, device="cpu", precision="fp32", jobs=2, arms=("scratch", "clkg", "random-matched", "shuffled"),
)
LAYOUTS = ("small_vgg", "small_resnet")
PART_B = ("mnv2-fmnist-short", "effl0-fmnist-short")
# the plan's levers, in its order: name -> (bundle in the work folder or lgt:default, stages)
LEVERS = {"L1 mnv2-fmnist-long": ("learngene_mnv2-fmnist-long.safetensors", None),
          "L2 stage 1 only": ("lgt:default", (1,)), "L3 stage 3 only": ("lgt:default", (3,))}


def records() -> dict[str, Path]:
    """Record name -> path of every evaluation of the study."""
    names = [f"study_knowledge_A_{layout}" for layout in LAYOUTS] + ["study_knowledge_B", "study_knowledge_levers"]
    return {n: RESULTS / f"{n}.json" for n in names}


def command(bundle: str, s: EvaluationSettings, name: str) -> str:
    """The `lgt evaluate` command a part-A evaluation equals."""
    return shlex.join([
        "lgt", "evaluate", bundle, "--arch", str(s.arch), "--data", str(s.data), "--val-fraction", f"{s.val_fraction:g}",
        "--split-seed", str(s.split_seed), "--train-limit", str(s.train_limit), "--val-limit", str(s.val_limit),
        "--test-limit", str(s.test_limit), "--seeds", str(s.seeds), "--fractions", ",".join(f"{f:g}" for f in s.fractions),
        "--epochs", str(s.epochs), "--steps", str(s.steps), "--batch-size", str(s.batch_size),
        "--lr-grid", ",".join(f"{x:g}" for x in s.lr_grid or ()), "--arms", ",".join(s.arms), "--device", "cpu",
        "--precision", "fp32", "--jobs", str(s.jobs), "-o", "recipes/results", "--name", name, "--resume"])


def run(work: Path, part: str | None) -> None:
    """Parts A then B (or one of them), each resumable from its record."""
    from rich.console import Console

    from learngene_tools.cli.progress import evaluation_progress

    torch.set_num_threads(2)
    progress = evaluation_progress(Console(stderr=True), plain=True)
    if part in (None, "A"):
        for layout in LAYOUTS:
            s = replace(SETTINGS, arch=f"learngene_tools.descendants:{layout}")
            name = f"study_knowledge_A_{layout}"
            t0 = time.time()
            api.evaluate("lgt:default", s, out_dir=RESULTS, name=name, resume=True, progress=progress,
                         command=command("lgt:default", s, name))
            print(f"[{name}] {(time.time() - t0) / 60:.1f} min", flush=True)
    if part in (None, "B"):
        s = replace(SETTINGS, arch="learngene_tools.descendants:small_vgg", fractions=(0.1,))
        arms = [Arm("scratch")]
        for name in PART_B:
            bundle = work / f"learngene_{name}.safetensors"
            arms += [Arm(f"{name} clkg", bundle), Arm(f"{name} random-matched", bundle, control="random-matched")]
        t0 = time.time()
        api.evaluate(None, s, arms=arms, out_dir=RESULTS, name="study_knowledge_B", resume=True, progress=progress,
                     command="python recipes/study_knowledge.py run --part B")
        print(f"[study_knowledge_B] {(time.time() - t0) / 60:.1f} min", flush=True)
    if part == "L":  # only when part A showed no knowledge effect (the plan's rule), run on its own
        s = replace(SETTINGS, arch="learngene_tools.descendants:small_vgg", fractions=(0.1,))
        arms = [Arm("scratch")]
        for name, (bundle, stages) in LEVERS.items():
            ref = bundle if bundle.startswith("lgt:") else str(work / bundle)
            arms += [Arm(f"{name} clkg", ref, stages=stages),
                     Arm(f"{name} random-matched", ref, stages=stages, control="random-matched")]
        t0 = time.time()
        api.evaluate(None, s, arms=arms, out_dir=RESULTS, name="study_knowledge_levers", resume=True,
                     progress=progress, command="python recipes/study_knowledge.py run --part L")
        print(f"[study_knowledge_levers] {(time.time() - t0) / 60:.1f} min", flush=True)


def _diffs(rec: dict[str, Any], arm: str, against: str, fraction: float, metric: str) -> list[float]:
    """Per-seed differences arm − against of the chosen runs (test or final validation top-1)."""
    get = (lambda r: r["test_acc"]) if metric == "test" else (lambda r: r["val_acc"][-1])
    by = {(r["arm"], r["seed"]): r for r in rec["runs"] if r["fraction"] == fraction and r.get("chosen", True)}
    seeds = sorted(sd for (a, sd) in by if a == arm and (against, sd) in by)
    return [get(by[(arm, sd)]) - get(by[(against, sd)]) for sd in seeds]


def _family(cells: list[tuple[str, dict[str, Any], float]], arm: str, against: str, metric: str) -> list[dict[str, Any]]:
    """One comparison over cells (label, record, fraction): per cell Holm-corrected over the cells, then pooled."""
    rows = [{"cell": label, "fraction": f, "arm": arm, "against": against, "metric": metric,
             **paired(_diffs(rec, arm, against, f, metric))} for label, rec, f in cells]
    rows = [r for r in rows if r["n"]]
    pooled = [d for label, rec, f in cells for d in _diffs(rec, arm, against, f, metric)]
    out = correct(rows)
    if pooled and len(rows) > 1:
        p = paired(pooled)
        out.append({"cell": "pooled", "fraction": None, "arm": arm, "against": against, "metric": metric, **p,
                    "p_holm": p["p_value"], "verdict": correct([{**p}])[0]["verdict"]})
    return out


def _table(rows: list[dict[str, Any]], title: str) -> list[str]:
    lines = [f"**{title}**", "", "| cell | n | Δ (points) | 95 % interval | p | p (Holm) | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = "n/a" if r["ci95"] is None else f"[{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}]"
        p = lambda v: "n/a" if v is None else (f"{v:.3f}" if v >= 0.001 else f"{v:.1e}")  # noqa: E731
        lines.append(f"| {r['cell']} | {r['n']} | {r['delta_mean']:+.2f} | {ci} | {p(r['p_value'])} | "
                     f"{p(r['p_holm'])} | {r['verdict']} |")
    return lines + [""]


def _per_learngene(rec: dict[str, Any], names: Any, metric: str) -> list[dict[str, Any]]:
    """K and G of each named learngene arm pair of a 10 % record, Holm-corrected over them all."""
    rows = []
    for name in names:
        rows += [{"cell": f"{name}: K = clkg − random-matched", "arm": f"{name} clkg",
                  "against": f"{name} random-matched"},
                 {"cell": f"{name}: G = clkg − scratch", "arm": f"{name} clkg", "against": "scratch"}]
    rows = [{**r, "fraction": 0.1, "metric": metric, **paired(_diffs(rec, r["arm"], r["against"], 0.1, metric))}
            for r in rows]
    return correct([r for r in rows if r["n"]])


def analyse() -> dict[str, Any]:
    """The plan's analysis over the records that exist: families per metric, and the accuracies per cell."""
    recs = {n: json.loads(p.read_text()) for n, p in records().items() if p.is_file()}
    recs = {n: rec for n, rec in recs.items() if "summary" in rec}  # finished evaluations only
    cells_a = [(f"{n.removeprefix('study_knowledge_A_')} {f * 100:g} %", rec, f)
               for n, rec in recs.items() if n.startswith("study_knowledge_A") for f in rec["settings"]["fractions"]]
    out: dict[str, Any] = {"A": {}, "B": {}, "accuracy": {}}
    for metric in ("test", "val"):
        out["A"][metric] = {
            "K = clkg − random-matched": _family(cells_a, "clkg", "random-matched", metric),
            "clkg − shuffled": _family(cells_a, "clkg", "shuffled", metric),
            "G = clkg − scratch": _family(cells_a, "clkg", "scratch", metric),
            "S = random-matched − scratch": _family(cells_a, "random-matched", "scratch", metric),
        }
        if "study_knowledge_B" in recs:
            out["B"][metric] = _per_learngene(recs["study_knowledge_B"], PART_B, metric)
        if "study_knowledge_levers" in recs:
            out.setdefault("levers", {})[metric] = _per_learngene(recs["study_knowledge_levers"], LEVERS, metric)
    for n, rec in recs.items():
        for c in rec["summary"]:
            out["accuracy"].setdefault(n, []).append(
                {"fraction": c["fraction"], "arm": c["arm"], "val": c["val_final"], "test": c.get("test_final"),
                 "seeds": c["seeds"]})
        out.setdefault("lr_choice", {})[n] = rec.get("lr_choice")
        out.setdefault("minutes", {})[n] = rec["environment"]["minutes"]
    return out


def report() -> Path:
    """results/study_knowledge.md (and .json): the plan's analysis, every number with its interval."""
    from learngene_tools.evaluation.report import render

    a = analyse()
    for path in records().values():  # each record's own report and figure, with the current report code
        if path.is_file() and "summary" in (rec := json.loads(path.read_text())):
            render(rec, path.with_suffix(".md"), path.with_suffix(".png"))
    (RESULTS / "study_knowledge.json").write_text(json.dumps(a, indent=1))
    lines = ["# Is it the knowledge? Results", "",
             "Pre-registered in `study_knowledge_plan.md`; made by `python recipes/study_knowledge.py run|report`. "
             "Records (every run, every rate, every validation): `study_knowledge_A_small_vgg.json`, "
             "`study_knowledge_A_small_resnet.json`, `study_knowledge_B.json`, each with its `lgt evaluate` "
             "report (.md) and figure (.png). Δ are top-1 points on the first 2,000 test images (validation below), "
             "paired by seed, at each arm's learning rate chosen on validation.", ""]
    lines += ["## Part A: `lgt:default` (test top-1)", ""]
    for title, rows in a["A"]["test"].items():
        lines += _table(rows, title)
    lines += ["## Part A on validation (the same comparisons, final validation top-1 on 1,000 images)", ""]
    for title, rows in a["A"]["val"].items():
        lines += _table(rows, title)
    if a["B"]:
        lines += ["## Part B: two more learngenes, `small_vgg`, 10 % (test top-1; Holm over these 4)", ""]
        lines += _table(a["B"]["test"], "test")
        lines += _table(a["B"]["val"], "validation")
    if a.get("levers"):
        lines += ["## Levers (`small_vgg`, 10 %; test top-1; Holm over these 6)", ""]
        lines += _table(a["levers"]["test"], "test")
        lines += _table(a["levers"]["val"], "validation")
    lines += ["## Accuracy per cell (mean ± std over seeds, chosen rate)", "",
              "| record | data | arm | val top-1 | test top-1 | lr kept |", "|---|---|---|---|---|---|"]
    for n, cells in a["accuracy"].items():
        lrs = {(c["arm"], c["fraction"]): c["lr"] for c in a["lr_choice"][n] or []}
        for c in cells:
            test = "" if c["test"] is None else f"{c['test'][0]:.2f} ± {c['test'][1]:.2f}"
            lines.append(f"| {n.removeprefix('study_knowledge_')} | {c['fraction'] * 100:g} % | {c['arm']} | "
                         f"{c['val'][0]:.2f} ± {c['val'][1]:.2f} | {test} | {lrs.get((c['arm'], c['fraction']), '')} |")
    lines += ["", "## Wall time", "", "| record | minutes |", "|---|---|"]
    lines += [f"| {n} | {m:.1f} |" for n, m in a["minutes"].items()]
    out = RESULTS / "study_knowledge.md"
    out.write_text("\n".join(lines) + "\n")
    update_readme(readme_block(a))
    return out


README = Path(__file__).parent.parent / "README.md"
START, END = "<!-- evidence:start", "<!-- evidence:end -->"
EARLIER = ("study_fashion_mnist_phase2", "study_fashion_mnist_phase2_large")


def _ci(r: dict[str, Any]) -> str:
    return "n/a" if r["ci95"] is None else f"[{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}]"


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "owed"
    p = "n/a" if r["p_holm"] is None else f"{r['p_holm']:.3f}"
    return f"{r['delta_mean']:+.2f} {_ci(r)}, p {p}: {r['verdict']}"


def _where(rows: list[dict[str, Any]], verdict: str) -> list[str]:
    return [r["cell"] for r in rows if r["verdict"] == verdict and r["cell"] != "pooled"]


def _sentence(name: str, rows: list[dict[str, Any]]) -> str:
    """What a family of comparisons shows, from its verdicts alone."""
    gain, harm = _where(rows, "gain"), _where(rows, "harm")
    pooled = next((r for r in rows if r["cell"] == "pooled"), None)
    parts = [f"evidence of a gain in {', '.join(gain)}" if gain else "no cell with evidence of a gain"]
    if harm:
        parts.append(f"evidence of harm in {', '.join(harm)}")
    if pooled is not None:
        parts.append(f"pooled over the cells {pooled['delta_mean']:+.2f} points {_ci(pooled)} "
                     f"(n = {pooled['n']}, p {pooled['p_value']:.3f}: {pooled['verdict']})")
    return f"- {name}: " + "; ".join(parts) + "."


def _earlier() -> list[str]:
    """The earlier 3-seed study's test cells, re-analysed with the statistics every report now has."""
    from learngene_tools.evaluation.report import comparisons

    lines = []
    for name in EARLIER:
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            continue
        rec = json.loads(path.read_text())
        rows = [c for c in comparisons(rec["runs"], rec["arms"], rec["settings"]["fractions"]) if c["metric"] == "test"]
        lowest = 2 / 2 ** min(r["n"] for r in rows)  # the exact sign-flip test's floor
        lines.append(f"- `{name}` ({rec['data']['train']} images = 100 %, 3 seeds): {len(rows)} test comparisons "
                     f"against scratch, Δ from {min(r['delta_mean'] for r in rows):+.2f} to "
                     f"{max(r['delta_mean'] for r in rows):+.2f}; with 3 seeds the smallest possible sign-flip p is "
                     f"{lowest:.2f}, so every cell reads "
                     f"{', '.join(sorted({r['verdict'] for r in rows}))} (its 95 % intervals are as wide as "
                     f"{max(r['ci95'][1] - r['ci95'][0] for r in rows):.1f} points).")
    return lines


def _answer(fam: dict[str, list[dict[str, Any]]]) -> str:
    """The study's answer to its question, chosen by the pooled verdicts alone (the plan's decision rules)."""
    pooled = {t: next((r for r in rows if r["cell"] == "pooled"), None) for t, rows in fam.items()}
    k, s, g = (pooled[t] for t in ("K = clkg − random-matched", "S = random-matched − scratch", "G = clkg − scratch"))
    if k is None or s is None or g is None:
        return "Answer: owed (part A did not finish)."
    cells = [r["cell"] for r in fam["K = clkg − random-matched"] if r["verdict"] == "gain" and r["cell"] != "pooled"]
    where = (f"it is real on its own in {', '.join(cells)}" if cells else
             "no single layout × data cell shows it after the correction with 6 seeds")
    share = ""
    if g["ci95"] is not None and (g["ci95"][0] > 0 or g["ci95"][1] < 0):
        share = f" (K / G = {k['delta_mean'] / g['delta_mean']:.2f})"
    if k["verdict"] == "gain" and s["verdict"] != "gain":
        return (f"**Answer:** at this scale the shipped learngene's gain over scratch is its knowledge, not its scale: pooled "
                f"over both layouts and both data sizes, CLKG beats its scale-matched control by {k['delta_mean']:+.2f} "
                f"points {_ci(k)}{share}, while the scale alone gives {s['delta_mean']:+.2f} {_ci(s)} ({s['verdict']}); "
                f"{where}.")
    if k["verdict"] != "gain" and s["verdict"] == "gain":
        return (f"**Answer:** at this scale CLKG's gain over scratch is explained by its scale: the scale-matched "
                f"control gains {s['delta_mean']:+.2f} {_ci(s)} and the knowledge adds {k['delta_mean']:+.2f} {_ci(k)} "
                f"({k['verdict']}).")
    return (f"**Answer:** pooled, the knowledge effect is {k['delta_mean']:+.2f} {_ci(k)} ({k['verdict']}) and the scale "
            f"effect {s['delta_mean']:+.2f} {_ci(s)} ({s['verdict']}); {where}.")


def readme_block(a: dict[str, Any]) -> str:
    """README's evidence section: the study's numbers with their intervals, and sentences from the verdicts only."""
    fam = a["A"]["test"]
    cells = [r["cell"] for r in fam["G = clkg − scratch"]]
    get = {(t, r["cell"]): r for t, rows in fam.items() for r in rows}
    scratch = {}
    for n, rows in a["accuracy"].items():
        for c in rows:
            if c["arm"] == "scratch" and c["test"] is not None and n.startswith("study_knowledge_A_"):
                scratch[f"{n.removeprefix('study_knowledge_A_')} {c['fraction'] * 100:g} %"] = c["test"]
    lines = [
        "A pre-registered study (`recipes/results/study_knowledge_plan.md`; results, validation figures and every",
        "record in `recipes/results/study_knowledge*`): the shipped `lgt:default` transplanted into a VGG-16-layout",
        "and a ResNet-18-layout CNN (`small_vgg`, `small_resnet`, 1 channel, 32 px), each trained for 100 SGD steps",
        "(batch 32) on 1,600 Fashion-MNIST images (100 %) or 160 (10 %), 6 paired seeds, every arm's learning rate",
        "chosen on validation from {0.02, 0.1}; test top-1 on the first 2,000 test images, once, for the chosen runs.",
        "Δ in points with its 95 % interval; p is the exact sign-flip p-value, Holm-corrected over the 4 cells of",
        "each column (the pooled row: all 24 pairs, uncorrected); verdict: gain or harm when p < 0.05, else no evidence.",
        "",
        "| cell | scratch test top-1 | G = clkg − scratch | S = random-matched − scratch | K = clkg − random-matched "
        "| clkg − shuffled |",
        "|---|---|---|---|---|---|",
    ]
    cols = ("G = clkg − scratch", "S = random-matched − scratch", "K = clkg − random-matched", "clkg − shuffled")
    for cell in cells:
        sc = scratch.get(cell)
        sc_text = "" if sc is None else f"{sc[0]:.2f} ± {sc[1]:.2f}"
        lines.append(f"| {cell} | {sc_text} | " + " | ".join(_cell(get.get((t, cell))) for t in cols) + " |")
    lines += ["", "What the verdicts say (G is CLKG's gain, S the gain of its scale alone, K what its knowledge adds):",
              ""]
    lines += [_sentence(t, fam[t]) for t in cols]
    lines += ["", _answer(fam)]
    kept = {c["lr"] for rows in a["lr_choice"].values() for c in rows or []}
    grid = SETTINGS.lr_grid or ()
    if kept and kept == {min(grid)}:
        lines += ["", f"Every arm of every record kept the grid's lowest rate ({min(grid):g} of "
                  f"{', '.join(f'{x:g}' for x in grid)}): the comparison is fair between arms, but a lower rate might "
                  "train all of them better, and nothing here says how the effect changes with longer training or "
                  "more data than 1,600 images."]
    if a["B"]:
        lines += ["", "Two more learngenes, distilled for 200 steps on Fashion-MNIST images from ImageNet MobileNetV2 "
                  "and EfficientNet-Lite0, in `small_vgg` at 10 % (6 seeds, the same budget and grid; Holm over these 4):",
                  "", "| comparison | test Δ (points) | 95 % interval | p (Holm) | verdict |", "|---|---|---|---|---|"]
        for r in a["B"]["test"]:
            p = "n/a" if r["p_holm"] is None else f"{r['p_holm']:.3f}"
            lines.append(f"| {r['cell']} | {r['delta_mean']:+.2f} | {_ci(r)} | {p} | {r['verdict']} |")
        verdicts = sorted({r["verdict"] for r in a["B"]["test"]})
        lines += ["", f"These two learngenes: {', '.join(verdicts)} in every comparison (Δ from "
                  f"{min(r['delta_mean'] for r in a['B']['test']):+.2f} to {max(r['delta_mean'] for r in a['B']['test']):+.2f}"
                  " points)." if len(verdicts) == 1 else
                  "These two learngenes: " + "; ".join(f"{r['cell']}: {r['verdict']}" for r in a["B"]["test"]) + "."]
    if a.get("levers"):
        lines += ["", "The plan's levers (`lgt:default` stage 1 only, stage 3 only, and a MobileNetV2 learngene distilled "
                  "for 800 steps instead of 200), in `small_vgg` at 10 % (6 seeds; Holm over these 6):", "",
                  "| comparison | test Δ (points) | 95 % interval | p (Holm) | verdict |", "|---|---|---|---|---|"]
        for r in a["levers"]["test"]:
            p = "n/a" if r["p_holm"] is None else f"{r['p_holm']:.3f}"
            lines.append(f"| {r['cell']} | {r['delta_mean']:+.2f} | {_ci(r)} | {p} | {r['verdict']} |")
    earlier = _earlier()
    if earlier:
        lines += ["", "The earlier study (`study_fashion_mnist*`: 5 epochs, a fixed learning rate, steps that shrank "
                  "with the data, 3 seeds), re-analysed with the same statistics:", ""] + earlier
    return "\n".join(lines)


def update_readme(block: str) -> None:
    """Put the generated block between README's evidence markers."""
    text = README.read_text()
    i, j = text.index(START), text.index(END)
    head = text[:i] + text[i:].split("\n", 1)[0] + "\n"
    README.write_text(head + block + "\n" + text[j:])


def readme_section() -> str:
    """What README holds between its evidence markers now."""
    text = README.read_text()
    i, j = text.index(START), text.index(END)
    return text[i:j].split("\n", 1)[1].rstrip("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("run", "report"))
    parser.add_argument("--work", type=Path, default=Path("lgt-fmnist-work"), help="where part B's learngenes are")
    parser.add_argument("--part", choices=("A", "B", "L"), default=None, help="L: the plan's levers (run on their own)")
    args = parser.parse_args()
    if args.what == "run":
        run(args.work, args.part)
    else:
        print(report().read_text())


if __name__ == "__main__":
    main()
