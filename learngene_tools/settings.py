"""Settings schema: every setting is declared once, as a field of a frozen dataclass.

A field made with `setting(default, help, ...)` carries an `Option` in its metadata: the help
text, the name it has on the command line and in recipes when that differs from the field
name, and whether a recipe may set it. From these fields alone are derived

- the command-line options of every command (`learngene_tools.cli.options`),
- recipe validation (`learngene_tools.cli.recipes`): allowed keys and their types,
- the settings' JSON echo in checkpoints and bundles (`to_json`, the field names).

A field whose type is itself a settings dataclass is flattened: its own fields become options
of the command (`DistillSettings.loss` gives `--loss`, `--alphas`, `--beta`); with `presets`
the nested field is also an option naming a preset (`--aux lgt_aux_small`), which the nested
options then override. Adding a setting is adding one field.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from learngene_tools.errors import SettingsError

_KEY = "lgt"


@dataclass(frozen=True)
class Option:
    """How one setting appears to users: help text, name, and where it may be set."""

    help: str
    name: str | None = None  # command-line / recipe name (underscores), when it differs from the field name
    short: str | None = None  # e.g. "-o"
    positional: bool = False  # a command-line argument rather than an --option
    recipe: bool = True  # a recipe may set it
    cli: bool = True  # shown as a command-line option
    metavar: str | None = None
    presets: Callable[[], Mapping[str, Any]] | None = None  # nested settings: the named presets
    choices: tuple[str, ...] | None = None


def setting(default: Any = MISSING, help: str = "", **option: Any) -> Any:
    """A dataclass field declaring one setting (see `Option` for the keywords)."""
    return dataclasses.field(default=default, metadata={_KEY: Option(help=help, **option)})


@dataclass(frozen=True)
class Setting:
    """One flattened setting of a command: where it lives in its dataclass and how to read it from text."""

    owner: type  # the dataclass that declares the field
    path: tuple[str, ...]  # field names from the top-level dataclass, e.g. ("loss", "alphas")
    option: Option
    kind: Any  # the field's type, None removed
    optional: bool
    default: Any  # MISSING when required

    @property
    def name(self) -> str:
        """The command-line / recipe name with underscores (`merge_teacher`)."""
        return self.option.name or self.path[-1]

    @property
    def flag(self) -> str:
        """The command-line spelling (`--merge-teacher`)."""
        return "--" + self.name.replace("_", "-")

    @property
    def is_nested(self) -> bool:
        """True for a nested settings field with presets (its value on the command line is a preset name)."""
        return dataclasses.is_dataclass(self.kind)

    @property
    def is_bool(self) -> bool:
        """True for an on/off setting."""
        return self.kind is bool

    def default_text(self) -> str | None:
        """The default as a user would type it (None when there is none to show)."""
        if self.is_nested:
            presets = self.option.presets() if self.option.presets else {}
            return next((k for k, v in presets.items() if v == self.default), None)
        if self.default is MISSING or self.default is None:
            return None
        return format_value(self.default)

    def parse(self, text: Any) -> Any:
        """A command-line value (text, or bool/int/float already typed by the CLI) as the field's value."""
        if text is None:
            return None
        if self.is_nested:
            presets = self.option.presets() if self.option.presets else {}
            if text not in presets:
                raise SettingsError(f"{self.flag} must be one of {', '.join(presets)} (got {text!r})")
            return presets[text]
        return _coerce(self, text, from_text=isinstance(text, str))

    def from_recipe(self, value: Any, where: str) -> Any:
        """A recipe (TOML) value as the field's value; a value of the wrong type is a SettingsError."""
        if self.is_nested:
            return self.parse(value) if isinstance(value, str) else _bad(where, self, value)
        args = typing.get_args(self.kind)
        if typing.get_origin(self.kind) is tuple and isinstance(value, list) and Ellipsis not in args \
                and len(value) != len(args):
            raise SettingsError(f"{where} {self.name} needs {len(args)} values, got {len(value)}")
        try:
            return _coerce(self, value, from_text=False)
        except SettingsError:
            _bad(where, self, value)

    def type_name(self) -> str:
        """What a value must be, in words (for recipe errors)."""
        return _type_name(self.kind)


def _bad(where: str, s: Setting, value: Any) -> typing.NoReturn:
    raise SettingsError(f"{where} {s.name} must be {s.type_name()} (got {value!r})")


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), len(args) < len(typing.get_args(tp))
    return tp, False


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        item = _type_name(args[0]).removeprefix("an ").removeprefix("a ")
        n = "" if (len(args) == 2 and args[1] is Ellipsis) else f"{len(args)} "
        return f"a list of {n}{item}s"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _scalar(tp: Any, value: Any, from_text: bool) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_text and str(value).lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return str(value).lower() in ("1", "true", "yes", "on")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_text:
            try:
                f = float(value)
            except ValueError:
                f = math.nan
            if math.isfinite(f) and f == int(f):
                return int(f)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_text:
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, Path)):
            return str(value)
    elif tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    raise SettingsError(f"expected {_type_name(tp)}, got {value!r}")


def _coerce(s: Setting, value: Any, from_text: bool) -> Any:
    tp = s.kind
    try:
        if typing.get_origin(tp) is tuple:
            args = typing.get_args(tp)
            items = [v for v in value.replace(" ", "").split(",") if v] if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise SettingsError("not a list")
            fixed = not (len(args) == 2 and args[1] is Ellipsis)
            if fixed and len(items) != len(args):
                raise SettingsError(f"needs {len(args)} values")
            item_types = args if fixed else [args[0]] * len(items)
            return tuple(_scalar(t, v, from_text or isinstance(value, str)) for t, v in zip(item_types, items))
        result = _scalar(tp, value, from_text)
    except SettingsError:
        example = ",".join(["1"] * len(typing.get_args(tp))) if typing.get_origin(tp) is tuple else None
        hint = f" such as {example}" if example and from_text else ""
        raise SettingsError(f"{s.flag} takes {s.type_name()}{hint} (got {value!r})") from None
    if s.option.choices and result not in s.option.choices:
        raise SettingsError(f"{s.flag} must be one of {', '.join(s.option.choices)} (got {value!r})")
    return result


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_COERCIBLE = (bool, int, float, str, Path)


def coerce_fields(obj: Any) -> None:
    """Check and convert every declared setting of a settings object as it is built (call from `__post_init__`).

    A path given as a string becomes a `Path` (and a `Path` a string where the field is one), a list a tuple, an
    int a float; anything of the wrong type is a SettingsError naming the field (`TransplantSettings.seed`) for
    Python and the flag (`--seed`) for the command line.
    """
    from learngene_tools.reporting import Advice

    cls = type(obj)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        opt = f.metadata.get(_KEY)
        if opt is None:
            continue
        value = getattr(obj, f.name)
        kind, optional = _split_optional(hints[f.name])
        name = f"{cls.__name__}.{f.name}"
        flag = "--" + (opt.name or f.name).replace("_", "-")
        if value is None:
            if optional:
                continue
            raise SettingsError(Advice(f"{flag} needs a value", f"{name} cannot be None"))
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, kind):  # type: ignore[arg-type]
                raise SettingsError(f"{name} takes a {kind.__name__} (got {type(value).__name__} {value!r:.60})")
            continue
        if kind not in _COERCIBLE and typing.get_origin(kind) is not tuple:
            continue
        s = Setting(cls, (f.name,), opt, kind, optional, MISSING)
        try:
            new = _coerce(s, value, from_text=False)
        except SettingsError as e:
            raise SettingsError(Advice(str(e), str(e).replace(s.flag, name, 1))) from None
        if type(new) is not type(value) or new != value:
            object.__setattr__(obj, f.name, new)


def settings_of(cls: type, _path: tuple[str, ...] = ()) -> list[Setting]:
    """Every setting of a settings dataclass, nested ones flattened, in declaration order."""
    hints = typing.get_type_hints(cls)
    out: list[Setting] = []
    for f in dataclasses.fields(cls):
        opt = f.metadata.get(_KEY)
        if opt is None:
            continue
        kind, optional = _split_optional(hints[f.name])
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else MISSING)  # type: ignore[misc]
        path = (*_path, f.name)
        if dataclasses.is_dataclass(kind):
            if opt.presets is not None:
                out.append(Setting(cls, path, opt, kind, optional, default))
            out.extend(settings_of(kind, path))
        else:
            out.append(Setting(cls, path, opt, kind, optional, default))
    return out


def build(cls: type, values: Mapping[str, Any]) -> Any:
    """An instance of `cls` from flattened setting values by name (missing ones take their defaults).

    A preset (value of a nested field with presets) is the base its nested settings override.
    """
    return _build(cls, values, ())


def _build(cls: type, values: Mapping[str, Any], path: tuple[str, ...], base: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        opt = f.metadata.get(_KEY)
        if opt is None:
            continue
        name = opt.name or f.name
        kind, _ = _split_optional(hints[f.name])
        if dataclasses.is_dataclass(kind):
            preset = values.get(name) if opt.presets is not None else None
            start = preset if preset is not None else (getattr(base, f.name) if base is not None else None)
            kwargs[f.name] = _build(kind, values, (*path, f.name), start)
        elif name in values and values[name] is not None:
            kwargs[f.name] = values[name]
        elif base is not None:
            kwargs[f.name] = getattr(base, f.name)
    return cls(**kwargs)


def format_value(value: Any) -> str:
    """A value as the command line takes it (tuples comma-separated)."""
    if isinstance(value, (tuple, list)):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def to_json(obj: Any) -> Any:
    """JSON-ready form of a settings object (field names; tuples as lists, paths as strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_json(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def cache_dir() -> Path:
    """lgt's own cache folder (LGT_CACHE_DIR, else $XDG_CACHE_HOME/learngene_tools, else ~/.cache/learngene_tools);
    Hub downloads go to huggingface_hub's (`hub.hub_cache_dir`)."""
    env = os.environ.get("LGT_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "learngene_tools"
