"""The `lgt` command line: parses, calls the library, prints. Errors are one line and exit code 2.

Heavy imports (torch, timm) happen inside the commands that need them, so that
`lgt inspect BUNDLE` stays fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from . import __version__, render
from .errors import LgtError

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
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow arbitrary pickled objects (trusted files only)."),
    as_json: bool = typer.Option(False, "--json", help="Print the bundle description as JSON."),
) -> None:
    """Select a learngene from an auxiliary model and write it as a bundle."""
    from .checkpoint_io import check_output
    from .describe import describe_bundle
    from .selection import SelectionSettings, select_from_file

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
    bundle: Path = typer.Argument(..., help="Learngene bundle (.safetensors)."),
    target: str = typer.Argument(..., help="Target checkpoint file, or a model spec: timm:NAME, torchvision:NAME, pkg.module:factory."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Descendant checkpoint (default: <target>_lg.<ext> here)."),
    arch: Optional[str] = typer.Option(None, help="Model of the target (timm name or pkg.module:factory) for exact strides."),
    seed: int = typer.Option(0, help="Seed for every random draw."),
    bn: bool = typer.Option(True, "--bn/--no-bn", help="Carry the learngene's BatchNorm with its conv."),
    input_size: Optional[str] = typer.Option(None, help="Dummy input H,W for tracing --arch (default: the model's)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan and write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow arbitrary pickled objects (trusted files only)."),
) -> None:
    """Initialise a target checkpoint's convs from a learngene bundle."""
    from .transplant import default_output, transplant as run_transplant

    dest = None if dry_run else (output or default_output(target))
    with _status(f"transplanting {bundle} into {target}"):
        plan = run_transplant(
            bundle, target, dest, arch=arch, seed=seed, transfer_bn=bn, force=force, trust_pickle=trust_pickle,
            dry_run=dry_run, input_size=_parse_size(input_size),
        )
    if as_json:
        render.print_json({**plan.to_json(), "output": None if dest is None else str(dest)})
        return
    render.show_plan(out, plan)
    out.print("dry run: nothing written" if dest is None else f"wrote [bold]{dest}[/]")


@app.command()
@handles_errors
def inspect(
    file: str = typer.Argument(..., help="A bundle, a checkpoint, or a model spec (timm:NAME)."),
    arch: Optional[str] = typer.Option(None, help="Model of a checkpoint, for exact strides."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Re-hash a bundle's tensor bytes."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow arbitrary pickled objects (trusted files only)."),
) -> None:
    """Describe a bundle (from its header) or a checkpoint's conv layers."""
    from .describe import is_bundle_file

    path = Path(file)
    if path.is_file() and is_bundle_file(path):
        render.inspect_bundle(out, file, verify=verify, as_json=as_json)
        return
    from .describe import describe_checkpoint

    summary = describe_checkpoint(file, arch=arch, trust_pickle=trust_pickle)
    render.print_json(summary) if as_json else render.show_checkpoint(out, summary)


@app.command()
@handles_errors
def demo(
    out_dir: Path = typer.Option(Path("lgt-demo"), "--out-dir", help="Folder for the demo's files."),
    target: str = typer.Option("timm:resnet50", help="Model spec to transplant into."),
    force: bool = typer.Option(False, "--force", help="Overwrite files from an earlier demo."),
) -> None:
    """Run the whole pipeline on built-in models: auxiliary model -> learngene -> ResNet-50, printing each step."""
    from .demo import run_demo

    with _status("building models"):
        result = run_demo(out_dir, target=target, force=force)
    out.print(f"[bold]1.[/] auxiliary model {result['aux_variant']} (untrained: `lgt extract` distils a real one) -> {result['aux']}")
    out.print(f"[bold]2.[/] learngene selected from it (`lgt select`) -> {result['bundle']}")
    render.show_bundle(out, result["bundle_summary"])
    out.print(f"[bold]3.[/] transplant into {target}:")
    render.show_plan(out, result["plan"])
    out.print(f"wrote [bold]{result['output']}[/] (loads with strict=True into {target})")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
