"""The grid of an evaluation: arms x fractions x seeds, run one after another or several at once, resumable.

A run is a pure function of (settings, arm, fraction, seed). With `jobs > 1` runs go to worker
processes (spawned; on CUDA they share the one GPU, which small models leave mostly idle; on
CPU the threads are split between them). The record is rewritten after every run, so an
interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import queue
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from learngene_tools.errors import ModelError
from learngene_tools.evaluation.config import Arm, EvaluationSettings
from learngene_tools.evaluation.data import TaskData, normalise, subset_for
from learngene_tools.evaluation.train import Device, Schedule, accuracy, fine_tune

Progress = Callable[[dict[str, Any]], None]

# settings that decide a run's numbers besides its learning rate, device and precision (jobs does not)
_KEYED = ("arch", "data", "img_size", "val_fraction", "split_seed", "train_limit", "val_limit", "test", "test_limit",
          "epochs", "steps", "min_steps", "batch_size", "weight_decay", "augment", "bn_batches", "kd_weight",
          "teacher_arch")


@dataclass(frozen=True)
class Context:
    """What every run of an evaluation shares (sent once to each worker process)."""

    settings: EvaluationSettings
    data: TaskData
    bundle_hashes: dict[str, str]  # bundle path -> tensor hash
    teacher: str | None = None
    teacher_arch: str | None = None
    trust_pickle: bool = False
    keep_dir: Path | None = None  # with a learning-rate grid: final weights wait here for the chosen runs' test


def run_key(ctx: Context, arm: Arm, fraction: float, seed: int, lr: float | None = None) -> str:
    """What identifies a run's result: the settings that decide it, the arm (bundle by content), fraction, seed,
    learning rate, and the device type and precision it runs in."""
    arm_desc = {**arm.describe(), "name": None,
                "bundle": ctx.bundle_hashes.get(str(arm.bundle)) if arm.bundle is not None else None,
                "teacher": ctx.teacher if arm.kd else None}
    blob = json.dumps({"settings": {**{k: getattr(ctx.settings, k) for k in _KEYED}, "lr": lr or ctx.settings.lr}, "arm": arm_desc,
                       "fraction": fraction, "seed": seed, "runs_on": runs_on(ctx.settings)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def runs_on(s: EvaluationSettings) -> str:
    """Device type and precision of an evaluation's runs, e.g. 'cpu fp32' or 'cuda bf16'."""
    dev = Device.pick(s.device, s.precision)
    return f"{dev.device.type} {'bf16' if dev.bf16 else 'fp32'}"


_BUNDLES: dict[str, Any] = {}


def _bundle(path: str) -> Any:
    from learngene_tools.io.bundle import read_bundle

    if path not in _BUNDLES:
        _BUNDLES[path] = read_bundle(path)
    return _BUNDLES[path]


def run_one(ctx: Context, arm: Arm, fraction: float, seed: int, lr: float | None = None,
            on_epoch: Progress | None = None, keep_dir: Path | None = None) -> dict[str, Any]:
    """Build the arm's initialisation for `seed`, fine-tune it on the fraction's images, and measure it.

    With `keep_dir` the test split is not touched: the final weights are kept there (KEY.pt) for `test_kept`,
    which measures only the runs a learning-rate choice keeps.
    """
    from learngene_tools.evaluation.initialise import (
        build_descendant,
        check_outputs,
        first_conv,
        reestimate_bn,
        select_stages,
        transplant_into,
        transplanted_bns,
    )
    from learngene_tools.evaluation.train import to_model_input

    s, data = ctx.settings, ctx.data
    lr = lr or s.lr
    t0 = time.perf_counter()
    dev = Device.pick(s.device, s.precision)
    num_classes, (h, w) = len(data.classes), data.size
    model = build_descendant(s.arch, seed, data.channels, num_classes)  # type: ignore[arg-type]
    in_chans = first_conv(model).in_channels
    if in_chans != data.channels and not (data.channels == 1 and in_chans == 3):
        raise ModelError(f"the descendant reads {in_chans}-channel images but the data has {data.channels} channels")
    check_outputs(model, in_chans, (h, w), num_classes)
    train = data.train.take(subset_for(len(data.train), fraction, seed))
    mean = torch.tensor(data.mean).view(1, -1, 1, 1).to(dev.device)
    std = torch.tensor(data.std).view(1, -1, 1, 1).to(dev.device)
    plan_info = None
    if arm.bundle is not None:
        bundle = select_stages(_bundle(str(arm.bundle)), arm.stages)
        plan = transplant_into(model, s.arch, bundle, seed, (in_chans, h, w),  # type: ignore[arg-type]
                               transfer_bn=arm.bn != "target", rescale=arm.rescale, control=arm.control)
        plan_info = {"layers_placed": len(plan.placed), "layers": len(plan.assignments),
                     "params_initialised": plan.params_initialised,
                     "targets": {a.layer: a.target for a in plan.placed}}
    kd = None
    if arm.kd:  # built on the CPU model (its taps are traced there), then moved with it
        from learngene_tools.evaluation.kd import build_kd

        kd = build_kd(model, ctx.teacher, ctx.teacher_arch, (in_chans, h, w), trust_pickle=ctx.trust_pickle)  # type: ignore[arg-type]
        kd = kd.to(dev.device)
    model = model.to(dev.device, memory_format=torch.channels_last if dev.channels_last else torch.preserve_format)
    if arm.bundle is not None and arm.bn == "reestimate":
        g = torch.Generator().manual_seed(1_000_003 + seed)
        order = torch.randperm(len(train), generator=g)
        batches = [dev.put(to_model_input(normalise(train.images[order[i : i + s.batch_size]].to(dev.device), mean, std),
                                          in_chans))
                   for i in range(0, min(len(train), s.bn_batches * s.batch_size), s.batch_size)]
        reestimate_bn(model, transplanted_bns(model, plan), batches)
    schedule = Schedule(s.epochs, s.batch_size, lr, s.weight_decay, s.augment, s.min_steps, s.steps)
    curve = fine_tune(model, train, data.val, schedule, seed, dev, mean, std, in_chans, kd=kd, kd_weight=s.kd_weight,
                      on_epoch=on_epoch)
    key = run_key(ctx, arm, fraction, seed, lr)
    test = None
    if data.test is not None and keep_dir is None:
        test = accuracy(model, data.test, mean, std, dev, in_chans)
    elif data.test is not None:
        keep_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, keep_dir / f"{key}.pt")  # type: ignore[operator]
    return {
        "arm": arm.name, "fraction": fraction, "seed": seed, "lr": lr, "key": key, "runs_on": runs_on(s),
        "train_images": len(train), "steps": schedule.epochs * schedule.steps_per_epoch(len(train)),
        "val_acc": [round(r["val_acc"], 4) for r in curve], "val_loss": [round(r["val_loss"], 5) for r in curve],
        "train_loss": [round(r["train_loss"], 5) for r in curve],
        "test_acc": None if test is None else round(test[0], 4), "test_loss": None if test is None else round(test[1], 5),
        "seconds": round(time.perf_counter() - t0, 2), "device": str(dev.device), "plan": plan_info,
    }


# ---- worker processes -------------------------------------------------------------------------

_CTX: Context | None = None
_QUEUE: Any = None

Job = tuple[Arm, float, int, float]  # arm, fraction, seed, learning rate


def _init_worker(ctx: Context, events: Any, threads: int) -> None:
    global _CTX, _QUEUE
    _CTX, _QUEUE = ctx, events
    if threads > 0:
        torch.set_num_threads(threads)


def _work(arm: Arm, fraction: float, seed: int, lr: float) -> dict[str, Any]:
    assert _CTX is not None
    label = run_label(_CTX, arm, fraction, seed, lr)

    def on_epoch(r: dict[str, Any]) -> None:
        _QUEUE.put({"kind": "epoch", "run": label, "epochs": _CTX.settings.epochs, **r})  # type: ignore[union-attr]

    return run_one(_CTX, arm, fraction, seed, lr, on_epoch, keep_dir=_CTX.keep_dir)


def run_label(ctx: Context, arm: Arm, fraction: float, seed: int, lr: float) -> str:
    """How progress lines name a run (its learning rate when there is a grid)."""
    grid = f" lr {lr:g}" if len(ctx.settings.learning_rates) > 1 else ""
    return f"{arm.name} {fraction * 100:g}% seed {seed}{grid}"


def run_grid(ctx: Context, arms: list[Arm], record_path: Path | None, previous: dict[str, dict[str, Any]],
             progress: Progress | None = None, jobs: int = 1) -> list[dict[str, Any]]:
    """Every (arm, fraction, seed, lr) run, reusing `previous` results by key; `record_path` gets the runs after each."""
    s = ctx.settings
    grid: list[Job] = [(arm, f, seed, lr) for f in s.fractions for seed in range(s.seeds) for lr in s.learning_rates
                       for arm in arms]
    emit = progress or (lambda _e: None)
    emit({"kind": "start", "runs": len(grid), "epochs": s.epochs, "reused": sum(
        run_key(ctx, *job) in previous for job in grid)})
    results: dict[tuple[str, float, int, float], dict[str, Any]] = {}
    todo: list[Job] = []
    for job in grid:
        arm, f, seed, lr = job
        old = previous.get(run_key(ctx, *job))
        if old is not None:
            results[(arm.name, f, seed, lr)] = {**old, "arm": arm.name}
            emit({"kind": "run", "run": run_label(ctx, *job), "reused": True, **_brief(old)})
        else:
            todo.append(job)

    def done(arm: Arm, f: float, seed: int, lr: float, r: dict[str, Any]) -> None:
        results[(arm.name, f, seed, lr)] = r
        if record_path is not None:
            _save_runs(record_path, list(results.values()))
        emit({"kind": "run", "run": run_label(ctx, arm, f, seed, lr), "reused": False, **_brief(r)})

    if jobs <= 1 or len(todo) <= 1:
        for job in todo:
            label = run_label(ctx, *job)
            r = run_one(ctx, *job, lambda e, label=label: emit({"kind": "epoch", "run": label, "epochs": s.epochs, **e}),
                        keep_dir=ctx.keep_dir)
            done(*job, r)
    else:
        _run_parallel(ctx, todo, jobs, emit, done)
    return [results[(a.name, f, sd, lr)] for a, f, sd, lr in grid]


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    return {"val_acc": r["val_acc"][-1], "test_acc": r.get("test_acc"), "seconds": r.get("seconds")}


def _run_parallel(ctx: Context, todo: list[Job], jobs: int, emit: Progress,
                  done: Callable[[Arm, float, int, float, dict[str, Any]], None]) -> None:
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    import torch.multiprocessing as tmp

    mp = tmp.get_context("spawn")
    cuda = Device.pick(ctx.settings.device, ctx.settings.precision).device.type == "cuda"
    threads = 0 if cuda else max(1, torch.get_num_threads() // jobs)
    with mp.Manager() as manager:
        events = manager.Queue()
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=mp, initializer=_init_worker,
                                 initargs=(ctx, events, threads)) as pool:
            pending = {pool.submit(_work, *job): job for job in todo}
            while pending:
                finished, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(events, emit)
                for fut in finished:
                    job = pending.pop(fut)
                    done(*job, fut.result())
            _drain(events, emit)


def _drain(events: Any, emit: Progress) -> None:
    while True:
        try:
            emit(events.get_nowait())
        except queue.Empty:
            return


def _save_runs(path: Path, runs: list[dict[str, Any]]) -> None:
    from learngene_tools.io.files import atomic_path

    old = json.loads(path.read_text()) if path.is_file() else {}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({**old, "runs": runs}, indent=1))


def previous_runs(path: Path) -> dict[str, dict[str, Any]]:
    """Runs of an earlier record at `path` by key (empty when there is none or it is not readable)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {r["key"]: r for r in record.get("runs", []) if isinstance(r, dict) and "key" in r}


def test_kept(ctx: Context, arm: Arm, run: dict[str, Any]) -> dict[str, Any]:
    """The run with its test accuracy, measured on the final weights `run_one` kept (the test split's one use)."""
    from learngene_tools.evaluation.initialise import build_descendant, first_conv
    from learngene_tools.evaluation.train import Device, accuracy

    s, data = ctx.settings, ctx.data
    assert ctx.keep_dir is not None and data.test is not None
    path = ctx.keep_dir / f"{run['key']}.pt"
    if not path.is_file():  # kept weights lost (e.g. removed between resumes): train the run again, with its test
        return {**run_one(ctx, arm, run["fraction"], run["seed"], run["lr"]), "arm": arm.name}
    dev = Device.pick(s.device, s.precision)
    model = build_descendant(s.arch, run["seed"], data.channels, len(data.classes))  # type: ignore[arg-type]
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model = model.to(dev.device, memory_format=torch.channels_last if dev.channels_last else torch.preserve_format)
    mean = torch.tensor(data.mean).view(1, -1, 1, 1).to(dev.device)
    std = torch.tensor(data.std).view(1, -1, 1, 1).to(dev.device)
    acc, loss = accuracy(model, data.test, mean, std, dev, first_conv(model).in_channels)
    return {**run, "test_acc": round(acc, 4), "test_loss": round(loss, 5)}


def choose_lrs(runs: list[dict[str, Any]], settings: EvaluationSettings) -> dict[tuple[str, float], float]:
    """Per (arm, fraction): the learning rate with the best mean final validation accuracy over seeds (ties: the
    first in the grid)."""
    by: dict[tuple[str, float, float], list[float]] = {}
    for r in runs:
        by.setdefault((r["arm"], r["fraction"], r.get("lr", settings.lr)), []).append(r["val_acc"][-1])
    choice: dict[tuple[str, float], float] = {}
    for lr in settings.learning_rates:
        for (arm, f, run_lr), accs in by.items():
            if run_lr != lr:
                continue
            best = choice.get((arm, f))
            if best is None or statistics.mean(accs) > statistics.mean(by[(arm, f, best)]):
                choice[(arm, f)] = lr
    return choice
