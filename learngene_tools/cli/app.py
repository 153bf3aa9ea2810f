"""The `lgt` command line: parses, calls the library, prints. Errors are one line and exit code 2.

Heavy imports (torch, timm) happen inside the commands that need them, so that
`lgt inspect BUNDLE` stays fast.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from learngene_tools import __version__
from learngene_tools.cli import render
from learngene_tools.errors import LgtError

app = typer.Typer(
    name="lgt",
    help="CLKG learngene tools: select a learngene from an auxiliary CNN, inspect it, transplant it into any CNN.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
)
out = render.console()
err = render.console(stderr=True)

# options shared by several commands (mostly `lgt distill` and `lgt extract`)
_O_DATA = typer.Option(None, help="Folder of training images (recursive; labels unused).")
_O_SYNTHETIC = typer.Option(False, "--synthetic", help="Use procedural images instead of --data.")
_O_AUX = typer.Option("lgt_aux_base", help="Auxiliary model variant: lgt_aux_tiny, lgt_aux_small, lgt_aux_base.")
_O_WIDTHS = typer.Option(None, help="Override the variant's stage widths, e.g. 64,128,256.")
_O_DEPTHS = typer.Option(None, help="Override the variant's stage depths, e.g. 3,4,4.")
_O_IMG_SIZE = typer.Option(224, help="Training image size (a multiple of 16).")
_O_BATCH_SIZE = typer.Option(128, help="Global batch size over all processes.")
_O_STEPS = typer.Option(10_000, help="Optimiser steps.")
_O_LR = typer.Option(1e-3, help="Peak AdamW learning rate.")
_O_WEIGHT_DECAY = typer.Option(0.05, help="AdamW weight decay (conv and projection weights only).")
_O_WARMUP_STEPS = typer.Option(500, help="Linear warm-up steps before the cosine decay.")
_O_GRAD_CLIP = typer.Option(1.0, help="Gradient-norm clip (0: off).")
_O_PRECISION = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), bf16 or fp32.")
_O_CHANNELS_LAST = typer.Option(True, "--channels-last/--no-channels-last", help="channels_last memory on GPU.")
_O_COMPILE = typer.Option(False, "--compile", help="torch.compile the student and loss.")
_O_MERGE_TEACHER = typer.Option(True, "--merge-teacher/--no-merge-teacher", help="Run RepLKNet in its merged (re-parameterised) form.")
_O_LOSS = typer.Option("smoothl1", help="smoothl1 (reference, beta 2), l2, or paper (Eq. 2 literally).")
_O_ALPHAS = typer.Option("1,1,1", help="Stage weights alpha_1..3; 0,0,1 = last stage only, 1,0,1 = first + last.")
_O_BETA = typer.Option(2.0, help="SmoothL1 beta.")
_O_MEAN = typer.Option(None, help="Input normalisation mean, e.g. 0.5,0.5,0.5 (default: the teacher's, else ImageNet's).")
_O_STD = typer.Option(None, help="Input normalisation std (default: the teacher's, else ImageNet's).")
_O_TAPS = typer.Option(None, help="Teacher module names giving the stride 4,8,16 maps (default: found automatically).")
_O_SEED = typer.Option(0, help="Seed of the student's init and the data order.")
_O_WORK_DIR = typer.Option(Path("lgt-distill"), help="Folder for checkpoints, metrics.jsonl and aux.safetensors.")
_O_RESUME = typer.Option(False, "--resume", help="Continue the run saved in --work-dir.")
_O_CKPT_EVERY = typer.Option(500, help="Steps between checkpoints.")
_O_LOG_EVERY = typer.Option(20, help="Steps between metrics lines.")
_O_WORKERS = typer.Option(4, help="Data-loading worker processes per GPU.")
_O_TRUST_PICKLE = typer.Option(False, "--trust-pickle", help="Allow arbitrary pickled objects (trusted files only).")
_O_DEVICE = typer.Option(None, help="cpu or cuda (default: cuda when available).")


def _fail(message: str, code: int) -> None:
    render.print_error(err, message)
    raise typer.Exit(code)


def handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn LgtError into one line + exit 2, anything unexpected into one line + exit 1 (LGT_DEBUG=1: traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except LgtError as e:
            if os.environ.get("LGT_DEBUG"):
                raise
            _fail(str(e), 2)
        except KeyboardInterrupt:
            _fail("interrupted; nothing was written", 130)
        except Exception as e:  # noqa: BLE001 - the CLI promises no traceback
            if os.environ.get("LGT_DEBUG"):
                raise
            _fail(f"internal error: {type(e).__name__}: {e} (set LGT_DEBUG=1 for the traceback and report it)", 1)

    return wrapper


def _status(message: str) -> Any:
    """A spinner on a terminal, nothing otherwise."""
    import contextlib

    return err.status(message) if err.is_terminal else contextlib.nullcontext()


def _parse_stages(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        raise LgtError(f"--stages takes comma-separated stage numbers such as 1,3 (got {text!r})") from None


def _parse_size(text: Optional[str]) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.lower().replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 8:
        raise LgtError(f"--input-size takes H,W or one size of at least 8 (got {text!r})")
    return (parts[0], parts[-1])


def version_callback(value: bool) -> None:
    if value:
        out.print(f"lgt {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True, help="Print the version."),
) -> None:
    """CLKG learngene tools."""


@app.command()
@handles_errors
def select(
    aux: Path = typer.Argument(..., help="Trained auxiliary model checkpoint (.safetensors/.pt)."),
    output: Path = typer.Option(Path("learngene.safetensors"), "-o", "--output", help="Bundle to write."),
    stages: str = typer.Option("1,3", help="Auxiliary stages that give a run (edge kernels: first and last)."),
    run_length: Optional[int] = typer.Option(None, help="Layers per run (default: the whole stage)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    trust_pickle: bool = _O_TRUST_PICKLE,
    as_json: bool = typer.Option(False, "--json", help="Print the bundle description as JSON."),
) -> None:
    """Select a learngene from an auxiliary model and write it as a bundle."""
    from learngene_tools.describe import describe_bundle
    from learngene_tools.extraction.selection import SelectionSettings, select_from_file
    from learngene_tools.io.files import check_output

    settings = SelectionSettings(stages=_parse_stages(stages), run_length=run_length)
    check_output(output, [aux], force)
    with _status(f"selecting learngene from {aux}"):
        select_from_file(aux, output, settings, trust_pickle=trust_pickle)
    summary = describe_bundle(output)
    if as_json:
        render.print_json(summary)
    else:
        render.show_bundle(out, summary)
        out.print(f"wrote [bold]{output}[/]")


@app.command()
@handles_errors
def transplant(
    ctx: typer.Context,
    bundle: str = typer.Argument(..., help="Learngene bundle: a .safetensors file or hf://OWNER/REPO/FILE[@REVISION]."),
    target: Optional[str] = typer.Argument(None, help="Target checkpoint file (or hf://OWNER/REPO/FILE[@REVISION]), or a model spec: timm:NAME, torchvision:NAME, pkg.module:factory."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Descendant checkpoint (default: <target>_lg.<ext> here)."),
    arch: Optional[str] = typer.Option(None, help="Model of the target (timm name or pkg.module:factory) for exact strides."),
    seed: int = typer.Option(0, help="Seed for every random draw."),
    bn: bool = typer.Option(True, "--bn/--no-bn", help="Carry the learngene's BatchNorm with its conv."),
    input_size: Optional[str] = typer.Option(None, help="Dummy input H,W for tracing --arch (default: the model's)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan and write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    trust_pickle: bool = _O_TRUST_PICKLE,
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="TOML transplant recipe (see recipes/); options given here win over it."),
) -> None:
    """Initialise a target checkpoint's convs from a learngene bundle."""
    args = _with_recipe(ctx, {"target": target, "output": output, "arch": arch, "seed": seed, "bn": bn,
                              "input_size": input_size, "recipe": recipe}, "transplant")
    target, output, arch, seed, bn, input_size = (args[k] for k in ("target", "output", "arch", "seed", "bn", "input_size"))
    if target is None:
        raise LgtError("give a TARGET (a checkpoint file or a model spec such as timm:resnet50), or a --recipe that names one")
    from learngene_tools.hub import is_hf_ref, resolve_file
    from learngene_tools.transplantation.apply import transplant as run_transplant
    from learngene_tools.transplantation.target import default_output

    bundle = str(resolve_file(bundle, expect_bundle=True))  # hf:// references: downloaded into the HF cache
    target = str(resolve_file(target)) if is_hf_ref(target) else target
    dest = None if dry_run else (output or default_output(target))
    with _status(f"transplanting {bundle} into {target}"):
        plan = run_transplant(
            bundle, target, dest, arch=arch, seed=seed, transfer_bn=bn, force=force, trust_pickle=trust_pickle,
            dry_run=dry_run, input_size=_parse_size(input_size), recipe=args["recipe"],
        )
    if as_json:
        render.print_json({**plan.to_json(), "output": None if dest is None else str(dest)})
        return
    render.show_plan(out, plan)
    out.print("dry run: nothing written" if dest is None else f"wrote [bold]{dest}[/]")


@app.command()
@handles_errors
def inspect(
    file: str = typer.Argument(..., help="A bundle, a checkpoint, a model spec (timm:NAME), or hf://OWNER/REPO/FILE[@REVISION]."),
    arch: Optional[str] = typer.Option(None, help="Model of a checkpoint, for exact strides."),
    verify: Optional[bool] = typer.Option(None, "--verify/--no-verify", help="Re-hash a bundle's tensor bytes (default: yes for a local file; a Hub bundle is read from its header alone, --verify downloads it)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    trust_pickle: bool = _O_TRUST_PICKLE,
) -> None:
    """Describe a bundle (from its header) or a checkpoint's conv layers."""
    from learngene_tools.describe import is_bundle_file
    from learngene_tools.hub import describe_hub_file, is_hf_ref
    from learngene_tools.refs import builtin_path, is_builtin_ref

    if is_builtin_ref(file):
        file = str(builtin_path(file))
    if is_hf_ref(file):
        summary = describe_hub_file(file, verify=verify, arch=arch, trust_pickle=trust_pickle)
        if as_json:
            render.print_json(summary)
        else:
            (render.show_bundle if summary["kind"] == "learngene bundle" else render.show_checkpoint)(out, summary)
        return
    path = Path(file)
    if path.is_file() and is_bundle_file(path):
        render.inspect_bundle(out, file, verify=verify is not False, as_json=as_json)
        return
    from learngene_tools.describe import describe_checkpoint

    summary = describe_checkpoint(file, arch=arch, trust_pickle=trust_pickle)
    render.print_json(summary) if as_json else render.show_checkpoint(out, summary)


@app.command()
@handles_errors
def pull(
    repo: str = typer.Argument(..., help="OWNER/REPO on the Hub (or hf://OWNER/REPO/FILE[@REVISION])."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit (default: main)."),
    filename: Optional[str] = typer.Option(None, "--filename", help="Bundle file in the repo (default: learngene.safetensors)."),
    as_json: bool = typer.Option(False, "--json", help="Print the path, repo, file and commit as JSON."),
) -> None:
    """Download a learngene bundle into the Hugging Face cache and print its local path."""
    from learngene_tools.hub import commit_of
    from learngene_tools.hub import pull as hub_pull

    path = hub_pull(repo, filename=filename, revision=revision)
    if as_json:
        render.print_json({"path": str(path), "repo": repo, "filename": path.name, "revision": revision, "commit": commit_of(path)})
    else:
        sys.stdout.write(f"{path}\n")  # plain, never wrapped: `$(lgt pull …)` works


@app.command()
@handles_errors
def push(
    bundle: Path = typer.Argument(..., help="Learngene bundle to upload (.safetensors)."),
    repo: str = typer.Argument(..., help="OWNER/REPO on the Hub; created if it does not exist."),
    private: bool = typer.Option(False, "--private", help="Create the repo as private."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch to push to (created from main if needed)."),
    create_pr: bool = typer.Option(False, "--create-pr", help="Open a pull request instead of committing to the branch."),
    filename: Optional[str] = typer.Option(None, "--filename", help="Name in the repo (default: the bundle's file name)."),
    license_: Optional[str] = typer.Option(None, "--license", help="License id for the model card, e.g. mit or apache-2.0."),
    overwrite_card: bool = typer.Option(False, "--overwrite-card", help="Replace an existing README.md with a generated card."),
    message: Optional[str] = typer.Option(None, "-m", "--message", help="Commit message."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Upload a bundle with a generated model card (README.md) to a Hub model repo (needs HF_TOKEN)."""
    from learngene_tools.hub import DEFAULT_FILENAME
    from learngene_tools.hub import push as hub_push

    r = hub_push(
        bundle, repo, filename=filename, private=private, revision=revision, create_pr=create_pr, license=license_,
        overwrite_card=overwrite_card, commit_message=message,
    )
    if as_json:
        render.print_json(r.to_json())
        return
    where = f"{r.repo_id}@{r.revision}"
    if r.pr_url:
        out.print(f"opened pull request {r.pr_url} on {where}: {r.filename} (commit {r.commit[:10]})")
    elif r.changed:
        created = " (new repo" + (", private)" if private else ")") if r.repo_created else ""
        out.print(f"pushed {r.filename} to {where}{created}, commit {r.commit[:10]}; model card {r.card}")
    else:
        out.print(f"nothing to push: {where} already has this {r.filename} and card (commit {r.commit[:10]})")
    rev = f" --revision {r.revision}" if r.revision != "main" else ""
    fname = f" --filename {r.filename}" if r.filename != DEFAULT_FILENAME else ""
    ref = f"hf://{r.repo_id}/{r.filename}" + (f"@{r.revision}" if rev else "")
    if not r.pr_url:
        out.print(f"use it with: lgt pull {r.repo_id}{fname}{rev}  |  lgt transplant {ref} TARGET -o OUT", soft_wrap=True)


@app.command()
@handles_errors
def demo(
    out_dir: Path = typer.Option(Path("lgt-demo"), "--out-dir", help="Folder for the demo's files."),
    target: str = typer.Option("timm:resnet50", help="Model spec to transplant into."),
    force: bool = typer.Option(False, "--force", help="Overwrite files from an earlier demo."),
) -> None:
    """Run the whole pipeline on built-in models: auxiliary model -> learngene -> ResNet-50, printing each step."""
    from learngene_tools.demo import run_demo

    with _status("building models"):
        result = run_demo(out_dir, target=target, force=force)
    out.print(f"[bold]1.[/] auxiliary model {result['aux_variant']} (untrained: `lgt extract` distils a real one) -> {result['aux']}")
    out.print(f"[bold]2.[/] learngene selected from it (`lgt select`) -> {result['bundle']}")
    render.show_bundle(out, result["bundle_summary"])
    out.print(f"[bold]3.[/] transplant into {target}:")
    render.show_plan(out, result["plan"])
    out.print(f"wrote [bold]{result['output']}[/] (loads with strict=True into {target})")


def _parse_floats(text: str, name: str, n: int) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise LgtError(f"{name} takes {n} comma-separated numbers (got {text!r})")
    return vals


def _parse_ints(text: str, name: str, n: int) -> tuple[int, ...]:
    vals = _parse_floats(text, name, n)
    if any(v != int(v) for v in vals):
        raise LgtError(f"{name} takes {n} comma-separated whole numbers (got {text!r})")
    return tuple(int(v) for v in vals)


def _distill_inputs(
    ancestry: Optional[Path], arch: Optional[str], recipe: Optional[dict], data: Optional[Path], synthetic: bool, aux: str, widths: Optional[str],
    depths: Optional[str], img_size: int, batch_size: int, steps: int, lr: float, weight_decay: float,
    warmup_steps: int, grad_clip: float, precision: str, channels_last: bool, compile_: bool, merge_teacher: bool,
    loss: str, alphas: str, beta: float, mean: Optional[str], std: Optional[str], taps: Optional[str], seed: int, work_dir: Path, resume: bool, force: bool,
    ckpt_every: int, log_every: int, workers: int, trust_pickle: bool, device: Optional[str],
):
    """Settings and run options from the shared distill/extract options."""
    from learngene_tools.distillation.config import DistillSettings, RunOptions
    from learngene_tools.distillation.loss import LossSettings
    from learngene_tools.extraction.auxiliary import VARIANTS, AuxConfig

    if ancestry is None or arch is None:
        raise LgtError("give the ancestry checkpoint and --arch (or a --recipe that names them)")
    if (data is None) == (not synthetic):
        raise LgtError("give exactly one of --data DIR (a folder of images) and --synthetic (procedural images)")
    if data is not None and not data.is_dir():
        raise LgtError(f"{data}: no such folder of images")
    if not ancestry.is_file():
        raise LgtError(f"{ancestry}: no such ancestry checkpoint")
    if aux not in VARIANTS:
        raise LgtError(f"--aux must be one of {', '.join(VARIANTS)} (got {aux!r})")
    base = VARIANTS[aux]
    config = AuxConfig(
        widths=_parse_ints(widths, "--widths", 3) if widths else base.widths,  # type: ignore[arg-type]
        depths=_parse_ints(depths, "--depths", 3) if depths else base.depths,  # type: ignore[arg-type]
    )
    settings = DistillSettings(
        arch=arch, aux=config, loss=LossSettings(loss, _parse_floats(alphas, "--alphas", 3), beta),  # type: ignore[arg-type]
        data=str(data) if data else None, img_size=img_size, batch_size=batch_size, steps=steps, lr=lr,
        weight_decay=weight_decay, warmup_steps=warmup_steps, grad_clip=grad_clip, precision=precision,
        channels_last=channels_last, compile=compile_, merged_teacher=merge_teacher,
        taps=tuple(t for t in taps.split(",") if t) if taps else None, seed=seed,
        mean=_parse_floats(mean, "--mean", 3) if mean else None, std=_parse_floats(std, "--std", 3) if std else None,  # type: ignore[arg-type]
    )
    opts = RunOptions(
        work_dir=work_dir, ancestry=ancestry, resume=resume, force=force, ckpt_every=ckpt_every, log_every=log_every,
        num_workers=workers, trust_pickle=trust_pickle, device=device, progress=_progress_printer(steps), recipe=recipe,
    )
    return settings, opts


def _with_recipe(ctx: typer.Context, args: dict[str, Any], kind: str) -> dict[str, Any]:
    """Fill options not given on the command line from --recipe; `recipe` becomes the recipe's provenance."""
    path = args.get("recipe")
    if path is None:
        return args
    from learngene_tools.recipes import as_cli_value, load_recipe

    loaded = load_recipe(path, kind)
    for key, value in loaded.settings.items():
        param = "compile_" if key == "compile" else key
        if param not in args:
            continue  # e.g. `output` for `lgt distill`, which writes into --work-dir
        source = ctx.get_parameter_source(param)
        if source is None or source.name not in ("COMMANDLINE", "ENVIRONMENT"):
            args[param] = as_cli_value(key, value)
    args["recipe"] = loaded.provenance()
    return args


def _progress_printer(total: int) -> Callable[[dict[str, Any]], None]:
    """A rich progress bar on a terminal (rank 0 only); one plain line per log interval otherwise."""
    if os.environ.get("RANK", "0") != "0":
        return lambda record: None
    if not err.is_terminal:
        def plain(r: dict[str, Any]) -> None:
            stages = " ".join(f"{v:.4f}" for v in r["stage_losses"])
            err.print(f"step {r['step']}/{r['steps']} loss {r['loss']:.4f} (stages {stages}) "
                      f"{r['images_per_s']:.1f} img/s lr {r['lr']:.2e}", soft_wrap=True, highlight=False)
        return plain
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("distilling"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} img/s"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False)
    task = bar.add_task("distill", total=total, loss="-", speed="-")

    def update(r: dict[str, Any]) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=r["step"], loss=f"{r['loss']:.4f}", speed=f"{r['images_per_s']:.0f}")
        if r["step"] >= r["steps"]:
            bar.stop()
    return update


_ANCESTRY = typer.Argument(None, help="Ancestry (teacher) checkpoint: .pth/.pt/.safetensors, e.g. RepLKNet-31B_ImageNet-1K_224.pth.")
_ARCH = typer.Option(None, "--arch", help="Teacher architecture: replknet_31b/_31l/_xl, any timm name, torchvision:NAME or pkg.module:factory.")
_RECIPE = typer.Option(None, "--recipe", help="TOML recipe (see recipes/); options given here win over it.")


@app.command()
@handles_errors
def distill(
    ctx: typer.Context,
    ancestry: Optional[Path] = _ANCESTRY,
    arch: Optional[str] = _ARCH,
    recipe: Optional[Path] = _RECIPE,
    data: Optional[Path] = _O_DATA,
    synthetic: bool = _O_SYNTHETIC,
    aux: str = _O_AUX,
    widths: Optional[str] = _O_WIDTHS,
    depths: Optional[str] = _O_DEPTHS,
    img_size: int = _O_IMG_SIZE,
    batch_size: int = _O_BATCH_SIZE,
    steps: int = _O_STEPS,
    lr: float = _O_LR,
    weight_decay: float = _O_WEIGHT_DECAY,
    warmup_steps: int = _O_WARMUP_STEPS,
    grad_clip: float = _O_GRAD_CLIP,
    precision: str = _O_PRECISION,
    channels_last: bool = _O_CHANNELS_LAST,
    compile_: bool = _O_COMPILE,
    merge_teacher: bool = _O_MERGE_TEACHER,
    loss: str = _O_LOSS,
    alphas: str = _O_ALPHAS,
    beta: float = _O_BETA,
    mean: Optional[str] = _O_MEAN,
    std: Optional[str] = _O_STD,
    taps: Optional[str] = _O_TAPS,
    seed: int = _O_SEED,
    work_dir: Path = _O_WORK_DIR,
    resume: bool = _O_RESUME,
    force: bool = typer.Option(False, "--force", help="Start over even if --work-dir holds a run."),
    ckpt_every: int = _O_CKPT_EVERY,
    log_every: int = _O_LOG_EVERY,
    workers: int = _O_WORKERS,
    trust_pickle: bool = _O_TRUST_PICKLE,
    device: Optional[str] = _O_DEVICE,
) -> None:
    """Distil an auxiliary model from an ancestry (CLKG stage 1); writes WORK_DIR/aux.safetensors."""
    args = _with_recipe(ctx, {k: v for k, v in locals().items() if k != "ctx"}, "extract")
    settings, opts = _distill_inputs(**args)
    from learngene_tools.distillation.loop import distill as run_distill

    summary = run_distill(settings, opts)
    _print_distill_summary(summary)


@app.command()
@handles_errors
def extract(
    ctx: typer.Context,
    ancestry: Optional[Path] = _ANCESTRY,
    arch: Optional[str] = _ARCH,
    recipe: Optional[Path] = _RECIPE,
    output: Path = typer.Option(Path("learngene.safetensors"), "-o", "--output", help="Bundle to write."),
    stages: str = typer.Option("1,3", help="Auxiliary stages that give a run (edge kernels: first and last)."),
    run_length: Optional[int] = typer.Option(None, help="Layers per run (default: the whole stage)."),
    data: Optional[Path] = _O_DATA,
    synthetic: bool = _O_SYNTHETIC,
    aux: str = _O_AUX,
    widths: Optional[str] = _O_WIDTHS,
    depths: Optional[str] = _O_DEPTHS,
    img_size: int = _O_IMG_SIZE,
    batch_size: int = _O_BATCH_SIZE,
    steps: int = _O_STEPS,
    lr: float = _O_LR,
    weight_decay: float = _O_WEIGHT_DECAY,
    warmup_steps: int = _O_WARMUP_STEPS,
    grad_clip: float = _O_GRAD_CLIP,
    precision: str = _O_PRECISION,
    channels_last: bool = _O_CHANNELS_LAST,
    compile_: bool = _O_COMPILE,
    merge_teacher: bool = _O_MERGE_TEACHER,
    loss: str = _O_LOSS,
    alphas: str = _O_ALPHAS,
    beta: float = _O_BETA,
    mean: Optional[str] = _O_MEAN,
    std: Optional[str] = _O_STD,
    taps: Optional[str] = _O_TAPS,
    seed: int = _O_SEED,
    work_dir: Path = _O_WORK_DIR,
    resume: bool = _O_RESUME,
    force: bool = typer.Option(False, "--force", help="Start over / overwrite the bundle."),
    ckpt_every: int = _O_CKPT_EVERY,
    log_every: int = _O_LOG_EVERY,
    workers: int = _O_WORKERS,
    trust_pickle: bool = _O_TRUST_PICKLE,
    device: Optional[str] = _O_DEVICE,
) -> None:
    """Distil an auxiliary model from an ancestry, then select its learngene into a bundle (distill + select)."""
    args = _with_recipe(ctx, {k: v for k, v in locals().items() if k != "ctx"}, "extract")
    from learngene_tools.extraction.selection import SelectionSettings
    from learngene_tools.pipeline import extract as run_extract

    selection = SelectionSettings(stages=_parse_stages(args.pop("stages")), run_length=args.pop("run_length"))
    output = args.pop("output")
    settings, opts = _distill_inputs(**args)
    summary = run_extract(settings, opts, output, selection)
    _print_distill_summary(summary)
    if os.environ.get("RANK", "0") == "0":
        from learngene_tools.describe import describe_bundle

        render.show_bundle(out, describe_bundle(output))
        out.print(f"wrote [bold]{output}[/]")


def _print_distill_summary(summary: dict[str, Any]) -> None:
    if os.environ.get("RANK", "0") != "0":
        return
    losses = summary["final_stage_losses"] or []
    out.print(f"distilled {summary['steps']} steps, {summary['images_seen']:,} images "
              f"({summary['skipped_images']} unreadable skipped) on {summary['world_size']} {summary['device']} "
              f"process(es), {summary['precision']}; final loss {summary['final_loss']:.4f} "
              f"(stages {', '.join(f'{v:.4f}' for v in losses)}) -> {summary['aux_path']}", soft_wrap=True)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
