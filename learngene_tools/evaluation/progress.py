"""What `lgt evaluate` shows while it runs: a rich bar on a terminal, else one line per epoch and per run."""

from __future__ import annotations

from typing import Any, Callable

from rich.console import Console


def progress_printer(err: Console, plain: bool = False) -> Callable[[dict[str, Any]], None]:
    """A progress callback for `run_grid` events (start, epoch, run) printing to `err`."""
    state: dict[str, Any] = {"done": 0, "runs": 0, "epochs": 1}
    if plain or not err.is_terminal:
        def line(e: dict[str, Any]) -> None:
            if e["kind"] == "start":
                state.update(runs=e["runs"], epochs=e["epochs"])
                reused = f" ({e['reused']} reused from the earlier record)" if e["reused"] else ""
                err.print(f"evaluating: {e['runs']} runs of {e['epochs']} epochs{reused}", highlight=False)
            elif e["kind"] == "epoch":
                err.print(f"[{state['done'] + 1}/{state['runs']}] {e['run']} epoch {e['epoch']}/{e['epochs']}: "
                          f"val {e['val_acc']:.2f} % (loss {e['val_loss']:.3f}), train loss {e['train_loss']:.3f}, "
                          f"{e['seconds']:.1f} s", soft_wrap=True, highlight=False)
            elif e["kind"] == "run":
                state["done"] += 1
                err.print(_run_line(e, state), soft_wrap=True, highlight=False)
        return line
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} epochs"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True)
    task = bar.add_task("evaluating", total=1)

    def update(e: dict[str, Any]) -> None:
        if e["kind"] == "start":
            state.update(runs=e["runs"], epochs=e["epochs"])
            bar.update(task, total=e["runs"] * e["epochs"])
            bar.start()
        elif e["kind"] == "epoch":
            bar.update(task, advance=1, description=f"{e['run']}: val {e['val_acc']:.1f} %")
        elif e["kind"] == "run":
            state["done"] += 1
            if e["reused"]:
                bar.update(task, advance=state["epochs"])
            bar.console.print(_run_line(e, state), soft_wrap=True, highlight=False)
            if state["done"] >= state["runs"]:
                bar.stop()
    return update


def _run_line(e: dict[str, Any], state: dict[str, Any]) -> str:
    test = f", test {e['test_acc']:.2f} %" if e.get("test_acc") is not None else ""
    how = "reused" if e["reused"] else f"{e['seconds']:.0f} s"
    return f"[{state['done']}/{state['runs']}] {e['run']}: val {e['val_acc']:.2f} %{test} ({how})"
