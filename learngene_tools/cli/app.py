"""The `lgt` command line: parses, calls the library (`learngene_tools.api`), prints.

Every command's arguments and options are generated from its settings classes
(`learngene_tools.cli.commands`); every command takes `--json`, `-q/--quiet` and `-v/--verbose`.
A failure is one line on stderr and exit code 2 (with `--json`, also an error object on stdout);
`LGT_DEBUG=1` shows the traceback. Heavy imports (torch, timm) happen inside the commands.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import typer
import typer.core

from learngene_tools import __version__
from learngene_tools.cli import render
from learngene_tools.cli.commands import (
    DemoCommand,
    DistillCommand,
    EvaluateCommand,
    ExtractCommand,
    InspectCommand,
    PullCommand,
    PushCommand,
    SelectCommand,
    TransplantCommand,
)
from learngene_tools.cli.options import Inputs, settings_command
from learngene_tools.cli.progress import distill_progress
from learngene_tools.errors import LgtError, SettingsError
from learngene_tools.reporting import PlanWarning

# the commands in the order of the pipeline: make a learngene, share it, look at it, use it, measure it
ORDER = ("distill", "select", "extract", "push", "pull", "list", "inspect", "transplant", "evaluate", "demo")


class _PipelineOrder(typer.core.TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))


EXAMPLES: dict[str, tuple[str, ...]] = {
    "distill": ("lgt distill RepLKNet-31B_ImageNet-1K_224.pth --data imagenet/train --work-dir run1",
                "lgt distill ancestry.pth --arch replknet_31b --steps 200 --device cpu  # a short data-free run"),
    "select": ("lgt select run1/aux.safetensors -o learngene.safetensors",
               "lgt select run1/aux.safetensors --stages 1 -o first-stage.safetensors"),
    "extract": ("lgt extract RepLKNet-31B_ImageNet-1K_224.pth --data imagenet/train -o learngene.safetensors",
                "lgt extract --recipe recipes/extract_replknet31b_imagenet.toml --dry-run  # what would run"),
    "push": ("lgt push learngene.safetensors alice/my-learngene --license mit",),
    "pull": ("lgt pull alice/my-learngene", "lgt pull alice/my-learngene --revision v1"),
    "list": ("lgt list", "lgt list --json"),
    "inspect": ("lgt inspect lgt:default", "lgt inspect resnet50.safetensors  # its convs and what a transplant does",
                "lgt inspect hf://alice/my-learngene  # reads the header only"),
    "transplant": ("lgt transplant lgt:default resnet50.pth -o resnet50_lg.pth",
                   "lgt transplant lgt:default 'timm:resnet18(num_classes=10)' -o resnet18_lg.safetensors",
                   "lgt transplant hf://alice/my-learngene my_model/ --dry-run  # a save_pretrained folder",
                   "lgt transplant lgt:default torchvision:mobilenet_v2 --grouped project -o mbv2_lg.safetensors"),
    "evaluate": ("lgt evaluate lgt:default --arch timm:resnet18 --data cifar10/ --seeds 3",),
    "demo": ("lgt demo", "lgt demo --target torchvision:vgg16 --out-dir demo-vgg"),
}

app = typer.Typer(
    cls=_PipelineOrder,
    name="lgt",
    help="CLKG learngene tools: distil a large CNN into a learngene, inspect it, transplant it into any CNN.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = render.console()
err = render.console(stderr=True)


def guarded(fn: Callable[[], Any], as_json: bool) -> Any:
    """Run a command body: LgtError -> one line + exit 2; anything unexpected -> one line + exit 1 (LGT_DEBUG: raise)."""
    try:
        return fn()
    except typer.Exit:
        raise
    except LgtError as e:
        if os.environ.get("LGT_DEBUG"):
            raise
        render.print_failure(err, getattr(e, "cli_text", "") or str(e), e.kind, 2, as_json)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        render.print_failure(err, "interrupted; nothing was written", "interrupted", 130, as_json)
        raise typer.Exit(130) from None
    except Exception as e:  # noqa: BLE001 - the CLI promises no traceback
        if os.environ.get("LGT_DEBUG"):
            raise
        message = f"internal error: {type(e).__name__}: {e} (set LGT_DEBUG=1 for the traceback and report it)"
        render.print_failure(err, message, "internal", 1, as_json)
        raise typer.Exit(1) from None


def _status(inputs: Inputs, message: str) -> Any:
    """A spinner on a terminal, nothing otherwise (or when quiet)."""
    return err.status(message) if err.is_terminal and not inputs.quiet else contextlib.nullcontext()


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def version_callback(value: bool) -> None:
    if value:
        out.print(f"lgt {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True, metavar="",
                                 help="Print the version."),
) -> None:
    """CLKG learngene tools."""


@settings_command(app, "select", guard=guarded, examples=EXAMPLES["select"])
def select(inputs: Inputs) -> None:
    """Select a learngene from a trained auxiliary model and write it as a bundle."""
    from learngene_tools import api
    from learngene_tools.extraction.config import SelectionSettings
    from learngene_tools.io.bundle import describe_bundle

    cmd: SelectCommand = inputs[SelectCommand]
    with _status(inputs, f"selecting learngene from {cmd.aux}"):
        api.select(cmd.aux, cmd.output, inputs[SelectionSettings], force=cmd.force, trust_pickle=cmd.trust_pickle)
    summary = describe_bundle(cmd.output)
    if inputs.as_json:
        render.print_json({**summary, "output": str(cmd.output)})
    elif inputs.quiet:
        out.print(str(cmd.output), soft_wrap=True)
    else:
        render.show_bundle(out, summary)
        out.print(f"wrote [bold]{cmd.output}[/]")


@settings_command(app, "transplant", recipe_kind="transplant", guard=guarded, examples=EXAMPLES["transplant"])
def transplant(inputs: Inputs) -> None:
    """Initialise a target checkpoint's convs from a learngene bundle."""
    from learngene_tools import api
    from learngene_tools.refs import resolve, resolve_target
    from learngene_tools.transplantation.config import TransplantSettings
    from learngene_tools.transplantation.target import default_output

    cmd: TransplantCommand = inputs[TransplantCommand]
    if cmd.target is None:
        raise SettingsError("give a TARGET (a checkpoint file or a model spec such as timm:resnet50), "
                            "or a --recipe that names one")
    target = resolve_target(cmd.target)
    if isinstance(target, Path):
        api.refuse_bundle_target(target, str(cmd.target), resolve(cmd.bundle), cmd.bundle)
    dest = None if cmd.dry_run else (cmd.output or default_output(target))
    with _status(inputs, f"transplanting {cmd.bundle} into {cmd.target}"), warnings.catch_warnings():
        warnings.simplefilter("ignore", PlanWarning)  # printed below in the command line's words
        plan = api.transplant(cmd.bundle, target, dest, inputs[TransplantSettings], force=cmd.force,
                              dry_run=cmd.dry_run, recipe=inputs.recipe)
    for w in plan.warnings:
        err.print(f"warning: {w}", soft_wrap=True, highlight=False)
    if inputs.as_json:
        render.print_json({**plan.to_json(), "output": None if dest is None else str(dest)})
    elif inputs.quiet:
        if dest is not None:
            out.print(str(dest), soft_wrap=True)
    else:
        render.show_plan(out, plan, verbose=inputs.verbose)
        out.print("dry run: nothing written" if dest is None else f"wrote [bold]{dest}[/]")


@settings_command(app, "inspect", guard=guarded, examples=EXAMPLES["inspect"])
def inspect(inputs: Inputs) -> None:
    """Describe a bundle (from its header alone) or a checkpoint's conv layers."""
    from learngene_tools.cli.inspect import inspect_file

    cmd: InspectCommand = inputs[InspectCommand]
    inspect_file(cmd.file, verify=cmd.verify, arch=cmd.arch, trust_pickle=cmd.trust_pickle, as_json=inputs.as_json,
                 quiet=inputs.quiet, out=out)


@settings_command(app, "pull", guard=guarded, examples=EXAMPLES["pull"])
def pull(inputs: Inputs) -> None:
    """Download a learngene bundle into the Hugging Face cache and print its local path."""
    from learngene_tools.hub import commit_of
    from learngene_tools.hub import pull as hub_pull

    cmd: PullCommand = inputs[PullCommand]
    path = hub_pull(cmd.repo, filename=cmd.filename, revision=cmd.revision, progress=None if not inputs.quiet else False)
    if inputs.as_json:
        render.print_json({"path": str(path), "repo": cmd.repo, "filename": path.name, "revision": cmd.revision,
                           "commit": commit_of(path)})
    else:
        sys.stdout.write(f"{path}\n")  # plain, never wrapped: `$(lgt pull …)` works


@settings_command(app, "push", guard=guarded, examples=EXAMPLES["push"])
def push(inputs: Inputs) -> None:
    """Upload a bundle with a generated model card (README.md) to a Hub model repo (needs HF_TOKEN)."""
    from learngene_tools.hub import DEFAULT_FILENAME
    from learngene_tools.hub import push as hub_push
    from learngene_tools.refs import resolve

    cmd: PushCommand = inputs[PushCommand]
    r = hub_push(
        resolve(cmd.bundle), cmd.repo, filename=cmd.filename, private=cmd.private, revision=cmd.revision,
        create_pr=cmd.create_pr, license=cmd.license, overwrite_card=cmd.overwrite_card, commit_message=cmd.message,
        progress=None if not inputs.quiet else False,
    )
    if inputs.as_json:
        render.print_json(r.to_json())
        return
    where = f"{r.repo_id}@{r.revision}"
    if inputs.quiet:
        out.print(r.pr_url or f"{where} {r.commit}", soft_wrap=True)
        return
    if r.pr_url:
        out.print(f"opened pull request {r.pr_url} on {where}: {r.filename} (commit {r.commit[:10]})")
    elif r.changed:
        created = " (new repo" + (", private)" if cmd.private else ")") if r.repo_created else ""
        out.print(f"pushed {r.filename} to {where}{created}, commit {r.commit[:10]}; model card {r.card}")
    else:
        out.print(f"nothing to push: {where} already has this {r.filename} and card (commit {r.commit[:10]})")
    rev = f" --revision {r.revision}" if r.revision != "main" else ""
    fname = f" --filename {r.filename}" if r.filename != DEFAULT_FILENAME else ""
    ref = f"hf://{r.repo_id}/{r.filename}" + (f"@{r.revision}" if rev else "")
    if not r.pr_url:
        out.print(f"use it with: lgt pull {r.repo_id}{fname}{rev}  |  lgt transplant {ref} TARGET -o OUT", soft_wrap=True)


@settings_command(app, "list", guard=guarded, examples=EXAMPLES["list"])
def list_(inputs: Inputs) -> None:
    """List the learngene bundles at hand: shipped with lgt, and pulled into the Hugging Face cache."""
    from learngene_tools.catalog import list_bundles

    bundles = list_bundles()
    if inputs.as_json:
        render.print_json({"bundles": bundles})
    elif inputs.quiet:
        for b in bundles:
            sys.stdout.write(f"{b['ref']}\n")
    else:
        render.show_bundle_list(out, bundles)


@settings_command(app, "demo", guard=guarded, examples=EXAMPLES["demo"])
def demo(inputs: Inputs) -> None:
    """Run the whole pipeline on built-in models: auxiliary model -> learngene -> ResNet-50, printing each step."""
    from learngene_tools.demo import run_demo

    cmd: DemoCommand = inputs[DemoCommand]
    with _status(inputs, "building models"):
        result = run_demo(cmd.out_dir, target=cmd.target, force=cmd.force)
    if inputs.as_json:
        render.print_json({**{k: str(v) for k, v in result.items() if k in ("aux", "bundle", "output", "aux_variant")},
                           "bundle_summary": result["bundle_summary"], "plan": result["plan"].to_json()})
        return
    if inputs.quiet:
        out.print(str(result["output"]), soft_wrap=True)
        return
    out.print(f"[bold]1.[/] auxiliary model {result['aux_variant']} (untrained: `lgt extract` distils a real one) "
              f"-> {result['aux']}")
    out.print(f"[bold]2.[/] learngene selected from it (`lgt select`) -> {result['bundle']}")
    render.show_bundle(out, result["bundle_summary"])
    out.print(f"[bold]3.[/] transplant into {cmd.target}:")
    render.show_plan(out, result["plan"], verbose=inputs.verbose)
    out.print(f"wrote [bold]{result['output']}[/] (loads with strict=True into {cmd.target})")


def _distill_args(inputs: Inputs, synthetic: bool) -> tuple[Any, Any, str | None]:
    """Settings and run options of distill/extract, checked and completed by the library (the ancestry's
    architecture identified from its checkpoint when --arch is not given), with the notes to print once it runs."""
    from dataclasses import replace

    from learngene_tools.distillation.config import DistillSettings, RunOptions
    from learngene_tools.distillation.inputs import prepare

    settings, opts, identified = prepare(inputs[DistillSettings], inputs[RunOptions], synthetic=synthetic)
    notes = []
    if identified and not inputs.quiet and _is_main_process():
        notes.append(f"note: ancestry {identified}")
    if settings.data is None and not synthetic and not inputs.quiet and _is_main_process():
        notes.append("note: no --data: distilling data-free on procedural images; give --data DIR (a folder of "
                     "images, e.g. ImageNet's train/) to distil on real ones")
    progress = None if (inputs.quiet or inputs.as_json) else distill_progress(err, settings.steps, plain=inputs.verbose)
    return settings, replace(opts, progress=_after_setup(notes, progress), recipe=inputs.recipe), identified


@contextlib.contextmanager
def _warnings_as_lines(inputs: Inputs) -> Iterator[None]:
    """Warnings raised while a command runs (e.g. an inconsistent schedule) as one `warning:` line each."""
    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        err.print(f"warning: {message}", soft_wrap=True, highlight=False)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if inputs.quiet else "default")
        warnings.showwarning = show
        yield


def _after_setup(notes: list[str], progress: Callable[[dict[str, Any]], None] | None) -> Any:
    """A progress callback that first prints `notes`: once training runs, so a setup error stays the only line."""
    if not notes:
        return progress

    def first_then_progress(record: dict[str, Any]) -> None:
        while notes:
            err.print(notes.pop(0), soft_wrap=True, highlight=False)
        if progress is not None:
            progress(record)
    return first_then_progress


def _show_dry_run(inputs: Inputs, settings: Any, opts: Any, output: Path | None, identified: str | None) -> None:
    """`--dry-run` of distill/extract: what would run, and nothing trained or written."""
    from learngene_tools.extraction.extract import describe_run

    d = describe_run(settings, opts, output, identified)
    if inputs.as_json:
        render.print_json(d)
    else:
        render.show_run_plan(out, d)


@settings_command(app, "distill", recipe_kind="extract", guard=guarded, examples=EXAMPLES["distill"])
def distill(inputs: Inputs) -> None:
    """Distil an auxiliary model from an ancestry (CLKG stage 1); writes WORK_DIR/aux.safetensors."""
    from learngene_tools import api

    settings, opts, identified = _distill_args(inputs, inputs[DistillCommand].synthetic)
    if inputs[DistillCommand].dry_run:
        _show_dry_run(inputs, settings, opts, None, identified)
        return
    with _warnings_as_lines(inputs):
        summary = api.distill(settings, opts)
    if not _is_main_process():
        return
    if inputs.as_json:
        render.print_json(summary)
    elif inputs.quiet:
        out.print(str(summary["aux_path"]), soft_wrap=True)
    else:
        render.show_distill_summary(out, summary)


@settings_command(app, "extract", recipe_kind="extract", guard=guarded, examples=EXAMPLES["extract"])
def extract(inputs: Inputs) -> None:
    """Distil an auxiliary model from an ancestry, then select its learngene into a bundle (distill + select)."""
    from learngene_tools import api
    from learngene_tools.extraction.config import SelectionSettings
    from learngene_tools.io.bundle import describe_bundle

    cmd: ExtractCommand = inputs[ExtractCommand]
    settings, opts, identified = _distill_args(inputs, cmd.synthetic)
    if cmd.dry_run:
        _show_dry_run(inputs, settings, opts, cmd.output, identified)
        return
    with _warnings_as_lines(inputs):
        summary = api.extract(settings, opts, cmd.output, inputs[SelectionSettings])
    if not _is_main_process():
        return
    if inputs.as_json:
        render.print_json({**summary, "bundle_summary": describe_bundle(cmd.output)})
    elif inputs.quiet:
        out.print(str(cmd.output), soft_wrap=True)
    else:
        render.show_distill_summary(out, summary)
        render.show_bundle(out, describe_bundle(cmd.output))
        out.print(f"wrote [bold]{cmd.output}[/]")


@settings_command(app, "evaluate", recipe_kind="evaluate", guard=guarded, examples=EXAMPLES["evaluate"])
def evaluate(inputs: Inputs) -> None:
    """Fine-tune a descendant from scratch and from the learngene (and KD with --teacher) over seeds and data fractions."""
    import shlex

    from learngene_tools import api
    from learngene_tools.cli.progress import evaluation_progress
    from learngene_tools.evaluation.config import EvaluationSettings

    cmd: EvaluateCommand = inputs[EvaluateCommand]
    progress = None if (inputs.quiet or inputs.as_json) else evaluation_progress(err, plain=inputs.verbose)
    record = api.evaluate(cmd.bundle, inputs[EvaluationSettings], teacher=cmd.teacher, out_dir=cmd.output_dir,
                          name=cmd.name, resume=cmd.resume, force=cmd.force, trust_pickle=cmd.trust_pickle,
                          progress=progress, command=shlex.join(["lgt", *sys.argv[1:]]))
    if inputs.as_json:
        render.print_json({k: record[k] for k in ("settings", "arms", "data", "environment", "lr_choice", "summary",
                                                  "comparisons", "outputs")})
    elif inputs.quiet:
        out.print(record["outputs"]["md"], soft_wrap=True)
    else:
        out.print(Path(record["outputs"]["md"]).read_text(), soft_wrap=True, highlight=False, markup=False)
        out.print(f"wrote [bold]{record['outputs']['json']}[/], {record['outputs']['md']}, {record['outputs']['png']}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
