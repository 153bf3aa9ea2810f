"""What an evaluation says: per-cell statistics, a Markdown table and a PNG of accuracy per epoch.

Every comparison is paired: an arm's run is compared with the scratch run of the same seed and
fraction (same init of everything the plan does not touch, same batches, same augmentation),
so Δ is the mean of per-seed differences and its standard error is their standard deviation
over sqrt(seeds).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

SCRATCH = "scratch"


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def _se(xs: list[float]) -> float:
    return statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0


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


def _pct(f: float) -> str:
    return f"{f * 100:g} %"


def _ms(v: tuple[float, float]) -> str:
    return f"{v[0]:.2f} ± {v[1]:.2f}"


def _delta(v: tuple[float, float] | None) -> str:
    return "" if v is None else f"{v[0]:+.2f} ± {v[1]:.2f}"


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
        f"images = 100 %, {info['val']} validation, {info['test']} test; {s['epochs']} epochs, batch {s['batch_size']}, "
        f"SGD lr {s['lr']:g} cosine, wd {s['weight_decay']:g}, augmentation {'on' if s['augment'] else 'off'}; "
        f"{s['seeds']} seeds. Ran on {env['device']} ({env['threads']} threads, {env['jobs']} job(s), torch "
        f"{env['torch']}) in {env['minutes']:.1f} min.", "",
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
    if any("test_final" in c for c in cells):
        lines += ["", "Test top-1 (%) of the final models, mean ± std over seeds:", "",
                  "| data | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
        for f in fractions:
            row = [_ms(get[(f, a)]["test_final"]) if "test_final" in get.get((f, a), {}) else "" for a in arms]
            lines.append(f"| {_pct(f)} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _arm_text(a: dict[str, Any]) -> str:
    if a["kd"]:
        return "scratch init, trained with CE + feature distillation from the teacher"
    if a["bundle"] is None:
        return ""
    stages = "all stages" if a["stages"] is None else "stages " + ",".join(map(str, a["stages"]))
    return f"`{Path(a['bundle']).name}`, {stages}, BN {a['bn']}" + (", rescaled" if a["rescale"] else "")


def plot(record: dict[str, Any], path: Path, title: str) -> None:
    """Validation accuracy per epoch, one panel per fraction: mean over seeds with a ±std band per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fractions = record["settings"]["fractions"]
    arms = [a["name"] for a in record["arms"]]
    fig, axes = plt.subplots(1, len(fractions), figsize=(5.2 * len(fractions), 3.9), squeeze=False)
    for ax, f in zip(axes[0], fractions):
        for i, arm in enumerate(arms):
            curves = [r["val_acc"] for r in record["runs"] if r["arm"] == arm and r["fraction"] == f]
            if not curves:
                continue
            epochs = range(1, len(curves[0]) + 1)
            mean = [statistics.mean(c[e] for c in curves) for e in range(len(curves[0]))]
            sd = [statistics.stdev(c[e] for c in curves) if len(curves) > 1 else 0.0 for e in range(len(curves[0]))]
            colour = "tab:grey" if arm == SCRATCH else f"C{i % 10}"
            ax.plot(epochs, mean, marker="o", ms=3, label=arm, color=colour, lw=2 if arm == SCRATCH else 1.4)
            ax.fill_between(epochs, [m - d for m, d in zip(mean, sd)], [m + d for m, d in zip(mean, sd)],
                            color=colour, alpha=0.12)
        ax.set_title(f"{_pct(f)} of the training data")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
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
