"""What an evaluation says: per-cell statistics, the paired comparisons, a Markdown report and a PNG per epoch.

Every comparison is paired: an arm's run is compared with the scratch run of the same seed and
fraction (same init of everything the plan does not touch, same batches, same augmentation),
so Δ is the mean of per-seed differences. Each comparison has its 95 % interval, an exact
sign-flip p-value and Holm's correction across the report (`evaluation/stats.py`); a control arm
is also compared with its CLKG arm: that difference is what the learngene's knowledge adds.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

SCRATCH = "scratch"


def _mean_sd(xs: list[float]) -> tuple[float, float | None]:
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else None


def _se(xs: list[float]) -> float | None:
    return statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None


def epochs_to_reach(curve: list[float], target: float) -> int | None:
    """First epoch (1-based) whose accuracy is at least `target`; None when none is."""
    return next((e + 1 for e, a in enumerate(curve) if a >= target - 1e-9), None)


def summarise(runs: list[dict[str, Any]], arms: list[str], fractions: list[float]) -> list[dict[str, Any]]:
    """One entry per (fraction, arm): accuracy statistics and, for arms other than scratch, paired differences."""
    by = {(r["arm"], r["fraction"], r["seed"]): r for r in runs}
    out = []
    for f in fractions:
        for arm in arms:
            mine = sorted((r for r in runs if r["arm"] == arm and r["fraction"] == f), key=lambda r: r["seed"])
            if not mine:
                continue
            finals = [r["val_acc"][-1] for r in mine]
            firsts = [r["val_acc"][0] for r in mine]
            cell: dict[str, Any] = {
                "fraction": f, "arm": arm, "seeds": len(mine), "train_images": mine[0]["train_images"],
                "val_final": _mean_sd(finals), "val_epoch1": _mean_sd(firsts),
                "val_curve": [statistics.mean(r["val_acc"][e] for r in mine) for e in range(len(mine[0]["val_acc"]))],
            }
            tests = [r["test_acc"] for r in mine if r.get("test_acc") is not None]
            if len(tests) == len(mine):
                cell["test_final"] = _mean_sd(tests)
            base = [by.get((SCRATCH, f, r["seed"])) for r in mine]
            if arm != SCRATCH and all(b is not None for b in base):
                d_final = [r["val_acc"][-1] - b["val_acc"][-1] for r, b in zip(mine, base)]  # type: ignore[index]
                d_first = [r["val_acc"][0] - b["val_acc"][0] for r, b in zip(mine, base)]  # type: ignore[index]
                cell["delta_val_final"] = (statistics.mean(d_final), _se(d_final))
                cell["delta_val_epoch1"] = (statistics.mean(d_first), _se(d_first))
                cell["epochs_to_scratch_final"] = [epochs_to_reach(r["val_acc"], b["val_acc"][-1])  # type: ignore[index]
                                                   for r, b in zip(mine, base)]
                if "test_final" in cell and all(b.get("test_acc") is not None for b in base):  # type: ignore[union-attr]
                    d_test = [r["test_acc"] - b["test_acc"] for r, b in zip(mine, base)]  # type: ignore[index]
                    cell["delta_test_final"] = (statistics.mean(d_test), _se(d_test))
            out.append(cell)
    return out


def comparisons(runs: list[dict[str, Any]], arms: list[dict[str, Any]], fractions: list[float]) -> list[dict[str, Any]]:
    """Every paired comparison of a report, per fraction and metric (final validation, test when measured):
    each arm against scratch, and each control against its CLKG arm (the knowledge effect); Holm-corrected
    within each metric over all the report's comparisons."""
    from learngene_tools.evaluation.stats import correct, paired

    pairs = [(a["name"], SCRATCH, "against scratch") for a in arms if a["name"] != SCRATCH]
    for c in (a for a in arms if a.get("control")):
        base = next((a for a in arms if not a.get("control") and not a["kd"] and a["bundle"] is not None
                     and all(a[k] == c[k] for k in ("bundle", "bn", "rescale", "stages"))), None)
        if base is not None:
            pairs.append((base["name"], c["name"], "knowledge (CLKG against its control)"))
    by = {(r["arm"], r["fraction"], r["seed"]): r for r in runs}
    metrics = {"val": lambda r: r["val_acc"][-1], "test": lambda r: r.get("test_acc")}
    out: list[dict[str, Any]] = []
    for metric, get in metrics.items():
        rows = []
        for f in fractions:
            for arm, against, kind in pairs:
                seeds = sorted(sd for (a, fr, sd) in by if a == arm and fr == f and (against, f, sd) in by)
                diffs = [get(by[(arm, f, sd)]) - get(by[(against, f, sd)]) for sd in seeds  # type: ignore[operator]
                         if get(by[(arm, f, sd)]) is not None and get(by[(against, f, sd)]) is not None]
                if diffs:
                    rows.append({"fraction": f, "arm": arm, "against": against, "kind": kind, "metric": metric,
                                 **paired(diffs)})
        out += correct(rows)
    return out


def _pct(f: float) -> str:
    return f"{f * 100:g} %"


def _ms(v: tuple[float, float | None]) -> str:
    return f"{v[0]:.2f} ± {'n/a' if v[1] is None else f'{v[1]:.2f}'}"


def _delta(v: tuple[float, float | None] | None) -> str:
    return "" if v is None else f"{v[0]:+.2f} ± {'n/a' if v[1] is None else f'{v[1]:.2f}'}"


def _ci(c: dict[str, Any]) -> str:
    return "n/a" if c["ci95"] is None else f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"


def _p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def comparison_lines(record: dict[str, Any]) -> list[str]:
    """The comparisons table: Δ, 95 % interval, sign-flip p, Holm-corrected p and the verdict of each."""
    comps = record.get("comparisons") or []
    if not comps:
        return []
    lines = ["", "Paired comparisons (per seed: same init outside the plan, same batches and augmentation). Δ = mean "
             "of per-seed differences in top-1 points; 95 % t interval; p = exact sign-flip test; p (Holm) corrected "
             "over all comparisons of this report on the same metric; verdict: gain or harm when p (Holm) < 0.05, "
             "else no evidence:", "",
             "| data | metric | comparison | n | Δ | 95 % interval | p | p (Holm) | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in comps:
        lines.append(f"| {_pct(c['fraction'])} | {c['metric']} | {c['arm']} − {c['against']} | {c['n']} | "
                     f"{c['delta_mean']:+.2f} | {_ci(c)} | {_p(c['p_value'])} | {_p(c['p_holm'])} | {c['verdict']} |")
    return lines


def markdown(record: dict[str, Any], title: str) -> str:
    """The Markdown report: final accuracy per cell, paired differences, epochs to reach scratch, test numbers."""
    cells, arms = record["summary"], [a["name"] for a in record["arms"]]
    fractions = record["settings"]["fractions"]
    s, info = record["settings"], record["data"]
    get = {(c["fraction"], c["arm"]): c for c in cells}
    lines = [f"# {title}", ""]
    if record.get("command"):
        lines += [f"Command: `{record['command']}`", ""]
    env = record["environment"]
    lines += [
        f"Descendant `{s['arch']}`; data `{info['data']}` ({info['format']}, {info['split']}): {info['train']} training "
        f"images = 100 %, {info['val']} validation, {info['test']} test; {_budget_text(s)}, batch {s['batch_size']}, "
        f"SGD {_lr_text(s)}, cosine, wd {s['weight_decay']:g}, augmentation {'on' if s['augment'] else 'off'}; "
        f"{s['seeds']} seed{'s' if s['seeds'] != 1 else ''}. Ran on {env['device']} in {env.get('precision', 'fp32')} "
        f"({env['threads']} threads, {env['jobs']} job(s), torch {env['torch']}) in {env['minutes']:.1f} min.", "",
        "Arms: " + "; ".join(f"**{a['name']}**" + (f" = {_arm_text(a)}" if _arm_text(a) else "") for a in record["arms"]),
        "",
        "Validation top-1 (%) after the last epoch, mean ± std over seeds:", "",
        "| data | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms),
    ]
    for f in fractions:
        row = [_ms(get[(f, a)]["val_final"]) if (f, a) in get else "" for a in arms]
        n = next((get[(f, a)]["train_images"] for a in arms if (f, a) in get), 0)
        lines.append(f"| {_pct(f)} ({n} img) | " + " | ".join(row) + " |")
    others = [a for a in arms if a != SCRATCH]
    has_test = any("delta_test_final" in c for c in cells)
    if others:
        lines += ["", "Paired against scratch (same seed: same init outside the plan, same batches and augmentation); "
                  "Δ = mean of per-seed differences ± its standard error; epochs = first epoch at which the run reaches "
                  f"its seed's scratch accuracy after epoch {s['epochs']} ('-': not within the schedule):", "",
                  "| data | arm | Δ val, epoch 1 | Δ val, final | " + ("Δ test, final | " if has_test else "")
                  + "epochs to reach scratch |", "|---|---|---|---|" + ("---|" if has_test else "") + "---|"]
        for f in fractions:
            for a in others:
                c = get.get((f, a))
                if c is None or "delta_val_final" not in c:
                    continue
                reach = ", ".join("-" if e is None else str(e) for e in c["epochs_to_scratch_final"])
                test = f"{_delta(c.get('delta_test_final'))} | " if has_test else ""
                lines.append(f"| {_pct(f)} | {a} | {_delta(c['delta_val_epoch1'])} | {_delta(c['delta_val_final'])} | "
                             f"{test}{reach} |")
    lines += comparison_lines(record)
    if record.get("lr_choice") and len((s.get("lr_grid") or [])) > 1:
        lines += ["", "Learning rate kept per arm and data (best mean final validation accuracy of the grid "
                  f"{', '.join(f'{x:g}' for x in s['lr_grid'])}; only these runs are reported and measured on test):", "",
                  "| data | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
        lrs = {(c["fraction"], c["arm"]): c["lr"] for c in record["lr_choice"]}
        for f in fractions:
            lines.append(f"| {_pct(f)} | " + " | ".join(f"{lrs[(f, a)]:g}" if (f, a) in lrs else "" for a in arms) + " |")
    if any("test_final" in c for c in cells):
        lines += ["", "Test top-1 (%) of the final models, mean ± std over seeds:", "",
                  "| data | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
        for f in fractions:
            row = [_ms(get[(f, a)]["test_final"]) if "test_final" in get.get((f, a), {}) else "" for a in arms]
            lines.append(f"| {_pct(f)} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _budget_text(s: dict[str, Any]) -> str:
    if s.get("steps"):
        return f"{s['steps']} optimiser steps for every fraction, validated {s['epochs']} times"
    floor = f" (at least {s['min_steps']} steps)" if s.get("min_steps") else ""
    return f"{s['epochs']} epochs{floor}"


def _lr_text(s: dict[str, Any]) -> str:
    grid = s.get("lr_grid")
    return f"lr {s['lr']:g}" if not grid else f"lr chosen per arm and data on validation from {', '.join(f'{x:g}' for x in grid)}"


def _arm_text(a: dict[str, Any]) -> str:
    if a["kd"]:
        return "scratch init, trained with CE + feature distillation from the teacher"
    if a["bundle"] is None:
        return ""
    stages = "all stages" if a["stages"] is None else "stages " + ",".join(map(str, a["stages"]))
    control = {"random-matched": ", control: each filter random with its norm",
               "shuffled": ", control: each filter's values permuted"}.get(a.get("control") or "", "")
    return f"`{Path(a['bundle']).name}`, {stages}, BN {a['bn']}" + (", rescaled" if a["rescale"] else "") + control


def plot(record: dict[str, Any], path: Path, title: str) -> None:
    """Validation accuracy per epoch, one panel per fraction: mean over seeds with a ±std band per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fractions = record["settings"]["fractions"]
    steps = record["settings"].get("steps")
    arms = [a["name"] for a in record["arms"]]
    import textwrap

    from matplotlib.patches import Patch

    fig, axes = plt.subplots(1, len(fractions), figsize=(5.2 * len(fractions), 4.2), squeeze=False)
    for ax, f in zip(axes[0], fractions):
        for i, arm in enumerate(arms):
            curves = [r["val_acc"] for r in record["runs"]
                      if r["arm"] == arm and r["fraction"] == f and r.get("chosen", True)]
            if not curves:
                continue
            per = math.ceil(steps / len(curves[0])) if steps else 1
            epochs = [per * e for e in range(1, len(curves[0]) + 1)]
            mean = [statistics.mean(c[e] for c in curves) for e in range(len(curves[0]))]
            sd = [statistics.stdev(c[e] for c in curves) if len(curves) > 1 else 0.0 for e in range(len(curves[0]))]
            colour = "tab:grey" if arm == SCRATCH else f"C{i % 10}"
            ax.plot(epochs, mean, marker="o", ms=3, label=arm, color=colour, lw=2 if arm == SCRATCH else 1.4)
            ax.fill_between(epochs, [m - d for m, d in zip(mean, sd)], [m + d for m, d in zip(mean, sd)],
                            color=colour, alpha=0.12)
        ax.set_title(f"{_pct(f)} of the training data")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("optimiser steps" if steps else "epoch")
        ax.set_ylabel("validation top-1 (%)")
        ax.grid(alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(handles=handles + [Patch(color="grey", alpha=0.2, label="band: ± 1 std over seeds")], fontsize=7)
    width_chars = int(5.2 * len(fractions) * 13)
    fig.suptitle("\n".join(textwrap.wrap(title, width_chars)), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97 if len(title) <= width_chars else 0.92))
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def title_of(record: dict[str, Any]) -> str:
    """A short title: the bundle (or how many), the descendant and the data."""
    names = sorted({Path(p).name for p in record.get("bundles", {})})
    what = names[0] if len(names) == 1 else f"{len(names)} learngenes" if names else "scratch"
    arch = str(record["settings"]["arch"]).rsplit(":", 1)[-1]
    return f"lgt evaluate: {what} in {arch} on {Path(str(record['settings']['data'])).name}"


def render(record: dict[str, Any], md_path: Path, png_path: Path) -> None:
    """Write the Markdown report and the figure of a record (atomically)."""
    from learngene_tools.io.files import atomic_path

    title = title_of(record)
    with atomic_path(md_path) as tmp:
        tmp.write_text(markdown(record, title))
    with atomic_path(png_path) as tmp:
        plot(record, tmp, title)
