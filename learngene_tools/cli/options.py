"""Typer commands built from settings classes: every option is derived from a `setting(...)` field.

`settings_command(app, name, classes)` turns a handler `fn(inputs: Inputs)` into a typer command whose
arguments and options are the flattened settings of `classes` (see `learngene_tools.settings`), plus
the options every command has (`--json`, `-q/--quiet`, `-v/--verbose`) and `--recipe` where the
command takes one. Values come from the command line, else the recipe, else the field's default.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from learngene_tools.cli.commands import COMMANDS
from learngene_tools.settings import Setting, build, settings_of

_GIVEN = ("COMMANDLINE", "ENVIRONMENT")


@dataclass
class Inputs:
    """What a command was given: its settings objects, and how to report."""

    settings: dict[type, Any]
    as_json: bool = False
    quiet: bool = False
    verbose: bool = False
    recipe: dict[str, Any] | None = None  # the recipe's provenance, when one was used
    given: set[str] = field(default_factory=set)  # setting names given on the command line or in the recipe

    def __getitem__(self, cls: type) -> Any:
        return self.settings[cls]


def common_params(with_recipe: bool = False) -> list[inspect.Parameter]:
    """The options of every command: --json, -q/--quiet, -v/--verbose (and --recipe where a command takes one)."""
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("as_json", kw, annotation=bool, default=typer.Option(
            False, "--json", help="Machine output: JSON on stdout (an error object on failure).", metavar="")),
        inspect.Parameter("quiet", kw, annotation=bool, default=typer.Option(
            False, "--quiet", "-q", help="Only the result and errors: no progress, notes or tables.", metavar="")),
        inspect.Parameter("verbose", kw, annotation=bool, default=typer.Option(
            False, "--verbose", "-v", help="More detail: every step of a plan, every log line.", metavar="")),
    ]
    if with_recipe:
        params.append(inspect.Parameter("recipe", kw, annotation=Optional[Path], default=typer.Option(
            None, "--recipe", help="TOML recipe (see recipes/); options given here win over it.", metavar="FILE")))
    return params


def _param(s: Setting) -> inspect.Parameter:
    """The typer parameter of one setting."""
    help_text = s.option.help
    if s.is_bool:
        two_way = s.default is True or s.optional
        decls = [f"{s.flag}/--no-{s.flag[2:]}" if two_way else s.flag]
        info: Any = typer.Option(None if s.optional else s.default, *decls, help=help_text, metavar="",
                                 show_default=False)
        return inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY,
                                 annotation=Optional[bool] if s.optional else bool, default=info)
    typ: Any = str
    if s.kind in (int, float) and not s.optional:
        typ = s.kind
    elif s.kind is Path:
        typ = Path
    if s.option.positional:
        required = s.default is MISSING
        info = typer.Argument(... if required else None, help=help_text, metavar=s.name.upper(),
                              show_default=False)
        return inspect.Parameter(s.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                 annotation=typ if required else Optional[typ], default=info)
    decls = [s.flag] + ([s.option.short] if s.option.short else [])
    metavar = s.option.metavar or ("|".join(s.option.choices) if s.option.choices else
                                   {int: "INT", float: "FLOAT", Path: "PATH"}.get(s.kind, "TEXT"))
    text = s.default_text()  # what the user would type: the default as typer shows it
    default = None if text is None else (s.default if typ is not str else text)
    info = typer.Option(default, *decls, help=help_text, metavar=metavar, show_default=text is not None)
    return inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[typ], default=info)


def _print_notice(message: str) -> None:
    from learngene_tools.cli import render

    render.console(stderr=True).print(f"note: {message}", soft_wrap=True, highlight=False, markup=False)


def command_settings(name: str) -> list[Setting]:
    """The command's settings shown on the command line, one per name (the first class that declares it wins)."""
    seen: dict[str, Setting] = {}
    for cls in COMMANDS[name]:
        for s in settings_of(cls):
            if s.option.cli and s.name not in seen:
                seen[s.name] = s
    shown = list(seen.values())
    return [s for s in shown if s.option.positional] + [s for s in shown if not s.option.positional]


def settings_command(
    app: typer.Typer, name: str, *, recipe_kind: str | None = None, help: str | None = None,
    guard: Callable[[Callable[[], Any], bool], Any] | None = None, examples: tuple[str, ...] = (),
) -> Callable[[Callable[[Inputs], None]], Callable[..., None]]:
    """Register `fn(inputs)` as command `name`, its options generated from `COMMANDS[name]`.

    `guard(body, as_json)` runs the body (reading the settings included), e.g. to turn errors into one line.
    `examples` (command lines, each maybe followed by `  # what it does`) end its `--help`.
    """
    shown = command_settings(name)

    def decorate(fn: Callable[[Inputs], None]) -> Callable[..., None]:
        def callback(ctx: typer.Context, **kwargs: Any) -> None:
            def body() -> None:
                from learngene_tools.reporting import notices_to

                silent = bool(kwargs.get("quiet") or kwargs.get("as_json"))
                with notices_to(None if silent else _print_notice):  # the library's notices, as `note:` lines
                    fn(gather(ctx, name, kwargs, shown, recipe_kind))

            (guard or (lambda b, _: b()))(body, bool(kwargs.get("as_json")))

        params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
        params += [_param(s) for s in shown] + common_params(with_recipe=recipe_kind is not None)
        callback.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        callback.__annotations__ = {p.name: p.annotation for p in params}
        callback.__doc__ = help or fn.__doc__
        callback.__name__ = name
        functools.update_wrapper(callback, fn, assigned=("__module__", "__qualname__"), updated=())
        epilog = "Examples:\n\n\b\n" + "\n".join(f"  {e}" for e in examples) if examples else None
        app.command(name=name, help=help or fn.__doc__, epilog=epilog)(callback)
        return callback

    return decorate


def _check_specs(values: dict[str, Any], typed: set[str], from_recipe: dict[str, Any], recipe: Any) -> None:
    """Model specs run code: the user's own may be imported (from the working directory too, as `python -m`
    would); a recipe's `module:factory` spec needs --trust-code."""
    from learngene_tools.architectures.specs import check_spec, is_model_spec, typed_on_command_line

    for key in typed:
        if isinstance(values[key], str):
            typed_on_command_line(values[key])
    if values.get("trust_code"):
        return
    for key, value in from_recipe.items():
        if key not in typed and isinstance(value, str) and is_model_spec(value):  # not a path that exists
            check_spec(value, source=f"recipe {recipe} ([{key}])")


def gather(ctx: typer.Context, name: str, kwargs: dict[str, Any], shown: list[Setting],
           recipe_kind: str | None) -> Inputs:
    """Settings objects from the command line, the recipe and the defaults, in that order of precedence."""
    values: dict[str, Any] = {}
    given: set[str] = set()
    recipe = kwargs.get("recipe")
    provenance = None
    loaded_values: dict[str, Any] = {}
    if recipe is not None and recipe_kind is not None:
        from learngene_tools.cli.recipes import load_recipe

        loaded = load_recipe(recipe, recipe_kind)
        names = {s.name for cls in COMMANDS[name] for s in settings_of(cls)}
        loaded_values = {k: v for k, v in loaded.values.items() if k in names}
        values.update(loaded_values)
        given.update(values)
        provenance = loaded.provenance()
    typed: set[str] = set()  # settings given on the command line (they win over the recipe)
    for s in shown:
        source = ctx.get_parameter_source(s.name)
        if s.option.positional:
            if kwargs.get(s.name) is not None:
                values[s.name] = s.parse(kwargs[s.name])
                typed.add(s.name)
        elif source is not None and source.name in _GIVEN and kwargs.get(s.name) is not None:
            values[s.name] = s.parse(kwargs[s.name])
            typed.add(s.name)
    given |= typed
    _check_specs(values, typed, loaded_values, recipe)
    settings = {}
    for cls in COMMANDS[name]:
        missing = [s for s in settings_of(cls) if s.default is MISSING and s.name not in values]
        if missing:
            from learngene_tools.errors import SettingsError

            raise SettingsError(f"give {missing[0].name.upper()} ({missing[0].option.help.rstrip('.')})")
        settings[cls] = build(cls, values)
    return Inputs(settings, as_json=kwargs.get("as_json", False), quiet=kwargs.get("quiet", False),
                  verbose=kwargs.get("verbose", False), recipe=provenance, given=given)
