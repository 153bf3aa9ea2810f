"""Progress on stderr while a long command runs: a rich bar on a terminal, else (or when `plain`) one line per event.

One mechanism for `lgt distill`/`lgt extract` (a record per log interval) and `lgt evaluate` (start, epoch and
run events); each command says what its events print.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable

from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress

Event = dict[str, Any]
Callback = Callable[[Event], None]


def _lines(err: Console, line: Callable[[Event], str | None]) -> Callback:
    """A callback printing `line(event)` when it says something."""
    def show(e: Event) -> None:
        text = line(e)
        if text is not None:
            err.print(text, soft_wrap=True, highlight=False)
    return show


def _bar(err: Console, first: str, *texts: str, transient: bool) -> Progress:
    """A bar: `first`, the bar, `texts` (rich column templates), elapsed and remaining time."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn(first), BarColumn(), *(TextColumn(t) for t in texts), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err, transient=transient)


def distill_progress(err: Console, total: int, plain: bool = False) -> Callback:
    """Distillation progress (one record per log interval); only the main process (RANK 0) reports."""
    if os.environ.get("RANK", "0") != "0":
        return lambda record: None
    if plain or not err.is_terminal:
        return _lines(err, lambda r: f"step {r['step']}/{r['steps']} loss {r['loss']:.4f} (stages "
                                     f"{' '.join(f'{v:.4f}' for v in r['stage_losses'])}) "
                                     f"{r['images_per_s']:.1f} img/s lr {r['lr']:.2e}")
    bar = _bar(err, "distilling", "{task.completed}/{task.total}", "loss {task.fields[loss]}",
               "{task.fields[speed]} img/s", transient=False)
    task = bar.add_task("distill", total=total, loss="-", speed="-")

    def update(r: Event) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=r["step"], loss=f"{r['loss']:.4f}", speed=f"{r['images_per_s']:.0f}")
        if r["step"] >= r["steps"]:
            bar.stop()
    return update


def evaluation_progress(err: Console, plain: bool = False) -> Callback:
    """`lgt evaluate` progress: the `run_grid` events start, epoch (one per epoch of a run) and run (a run done)."""
    state: dict[str, Any] = {"done": 0, "runs": 0, "epochs": 1}

    def start(e: Event) -> None:
        state.update(runs=e["runs"], epochs=e["epochs"], done=0)  # a printer may serve several evaluations

    def run_line(e: Event) -> str:
        state["done"] += 1
        test = f", test {e['test_acc']:.2f} %" if e.get("test_acc") is not None else ""
        how = "reused" if e["reused"] else f"{e['seconds']:.0f} s"
        return f"[{state['done']}/{state['runs']}] {e['run']}: val {e['val_acc']:.2f} %{test} ({how})"

    if plain or not err.is_terminal:
        def line(e: Event) -> str | None:
            if e["kind"] == "start":
                start(e)
                reused = f" ({e['reused']} reused from the earlier record)" if e["reused"] else ""
                return f"evaluating: {e['runs']} runs of {e['epochs']} epochs{reused}"
            if e["kind"] == "epoch":
                return (f"[{state['done'] + 1}/{state['runs']}] {e['run']} epoch {e['epoch']}/{e['epochs']}: "
                        f"val {e['val_acc']:.2f} % (loss {e['val_loss']:.3f}), train loss {e['train_loss']:.3f}, "
                        f"{e['seconds']:.1f} s")
            return run_line(e) if e["kind"] == "run" else None
        return _lines(err, line)
    bar = _bar(err, "{task.description}", "{task.completed}/{task.total} epochs", transient=True)
    task = bar.add_task("evaluating", total=1)

    def update(e: Event) -> None:
        if e["kind"] == "start":
            start(e)
            bar.update(task, total=e["runs"] * e["epochs"])
            bar.start()
        elif e["kind"] == "epoch":
            bar.update(task, advance=1, description=f"{e['run']}: val {e['val_acc']:.1f} %")
        elif e["kind"] == "run":
            if e["reused"]:
                bar.update(task, advance=state["epochs"])
            bar.console.print(run_line(e), soft_wrap=True, highlight=False)
            if state["done"] >= state["runs"]:
                bar.stop()
    return update
