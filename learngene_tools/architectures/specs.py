"""Model specs: ``timm:NAME`` (or a bare timm name), ``torchvision:NAME``, ``package.module:factory``.

Any spec may end in keyword arguments with literal values, ``timm:resnet18(num_classes=10, in_chans=1)``:
they are read with `ast.literal_eval` (numbers, strings, True/False/None, tuples, lists, dicts), never
evaluated as code, and go to the model's constructor. Arguments that load weights (`pretrained`, a
checkpoint or file path, ...) are refused: a spec builds a randomly initialised model.

Every model is built with random initialisation; nothing is downloaded. A spec runs code, so:

- `timm:`, `torchvision:` (registry names) and the built-in descendants
  (`learngene_tools.descendants:NAME`) are always allowed;
- a `module:factory` spec must name a Python function (or an `nn.Module` subclass) of a package
  that is not the standard library (nor `builtins`, nor lgt's own internals), callable with no
  arguments, and its result must be an `nn.Module`;
- a `module:factory` spec that comes from a file (a recipe) is refused unless the user trusts
  the file (`--trust-code`); `check_spec(spec, source=...)` says so;
- the working directory is not searched for modules (`python -m` would put it first on
  `sys.path`; the package's `__init__` takes it off again), except for a module that a spec typed
  on the command line names, imported from there as `python -m` would. `lgt` and
  `python -m learngene_tools` behave the same.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from learngene_tools.errors import ModelError, UnsafeInputError

if TYPE_CHECKING:
    from torch import nn

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*(\(.*)?$", re.DOTALL)
_LOADS_WEIGHTS = ("pretrained", "checkpoint", "weights", "file", "path", "url", "download", "hub", "cache")
REGISTRY_PREFIXES = ("timm", "torchvision")
BUILTIN_MODULES = ("learngene_tools.descendants", "learngene_tools.models.descendants")
_REFUSED_TOPS = {"__main__", "builtins", "learngene_tools"}  # besides sys.stdlib_module_names
_COMMAND_LINE_MODULES: set[str] = set()  # modules named by specs typed on the command line


def is_model_spec(text: object) -> bool:
    """True for `prefix:name` (or `prefix:name(key=value, ...)`) strings that are not existing files."""
    if not isinstance(text, str) or not _SPEC.match(text):
        return False
    try:
        return not Path(text).exists()
    except (OSError, ValueError):  # e.g. a name too long to be a file
        return True


def split_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """(the spec without arguments, its keyword arguments): `timm:resnet18(num_classes=10)` ->
    (`timm:resnet18`, {"num_classes": 10}). Values must be literals; ModelError otherwise."""
    base, paren, rest = spec.partition("(")
    if not paren:
        return spec, {}
    if not rest.endswith(")"):
        raise ModelError(f"{spec}: arguments go in one pair of parentheses at the end, e.g. timm:resnet18(num_classes=10)")
    try:
        call = ast.parse(f"f({rest}", mode="eval").body
    except (SyntaxError, ValueError):
        raise ModelError(f"{spec}: cannot read its arguments; write key=value pairs with literal values, "
                         "e.g. timm:resnet18(num_classes=10, in_chans=1)") from None
    assert isinstance(call, ast.Call)
    if call.args or any(k.arg is None for k in call.keywords):
        raise ModelError(f"{spec}: arguments must be key=value pairs (no positional arguments, no **)")
    kwargs: dict[str, Any] = {}
    for k in call.keywords:
        assert k.arg is not None
        if k.arg in kwargs:
            raise ModelError(f"{spec}: {k.arg}= is given twice")
        if any(word in k.arg.lower() for word in _LOADS_WEIGHTS):
            raise ModelError(f"{spec}: {k.arg}= would load weights or files; a spec builds a randomly initialised "
                             "model (transplant into a checkpoint file to start from trained weights)")
        try:
            kwargs[k.arg] = ast.literal_eval(k.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise ModelError(f"{spec}: {k.arg}= must be a literal (a number, string, True/False/None, or a "
                             "tuple, list or dict of them), not an expression") from None
    return base, kwargs


def spec_name(spec: str) -> str:
    """The model name of a spec, without prefix and arguments (`timm:resnet18(num_classes=10)` -> `resnet18`)."""
    return _parts(spec)[1]


def _parts(spec: str) -> tuple[str, str]:
    spec = spec.partition("(")[0]
    prefix, _, name = spec.partition(":") if ":" in spec else ("timm", ":", spec)
    return prefix, name


def is_code_spec(spec: str) -> bool:
    """True for a `module:factory` spec that imports and calls code outside timm/torchvision/built-in descendants."""
    if not isinstance(spec, str) or not _SPEC.match(spec):
        return False
    prefix, _ = _parts(spec)
    return prefix not in REGISTRY_PREFIXES and prefix not in BUILTIN_MODULES and prefix not in ("lgt", "hf")


def _stdlib(module: str) -> bool:
    top = module.split(".")[0]
    return top in sys.stdlib_module_names or top in sys.builtin_module_names or top in _REFUSED_TOPS


def check_spec(spec: str, source: str | None = None) -> None:
    """Refuse a spec that must never run: one naming the standard library or builtins, or code from `source`.

    `source` names where the spec came from when the user did not type it (e.g. "recipe r.toml");
    such a `module:factory` spec is refused unless the caller trusts that source.
    """
    if not is_code_spec(spec):
        return
    prefix, _ = _parts(spec)
    if _stdlib(prefix):
        raise UnsafeInputError(
            f"{spec}: refusing a model spec from the Python standard library or builtins; a spec names a function "
            "of your own package that returns a torch.nn.Module (or timm:NAME / torchvision:NAME)")
    if source is not None:
        raise UnsafeInputError(
            f"{spec}: {source} names code to import and run (model spec {spec!r}); "
            "if you trust it, pass --trust-code")


def typed_on_command_line(spec: str) -> None:
    """Note that the user typed `spec`: its module may be imported from the working directory, as `python -m` does."""
    if is_code_spec(spec):
        _COMMAND_LINE_MODULES.add(_parts(spec)[0].split(".")[0])


@contextlib.contextmanager
def _import_path(module: str) -> Iterator[None]:
    """The working directory first on sys.path while importing a module a command-line spec named."""
    cwd = os.getcwd()
    add = module.split(".")[0] in _COMMAND_LINE_MODULES and cwd not in sys.path
    if add:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if add and cwd in sys.path:
            sys.path.remove(cwd)


def _what(obj: Any) -> str:
    if inspect.isbuiltin(obj) or inspect.ismethoddescriptor(obj):
        return "a builtin"
    if inspect.isclass(obj):
        return "a class that is not a torch.nn.Module"
    if inspect.ismodule(obj):
        return "a module"
    return "a callable object" if callable(obj) else f"a {type(obj).__name__}"


def _factory(spec: str, prefix: str, name: str) -> Any:
    """The function (or nn.Module class) a `module:factory` spec names, after every check that needs no call."""
    from torch import nn

    try:
        with _import_path(prefix):
            obj: Any = importlib.import_module(prefix)
    except ImportError as e:
        raise ModelError(f"{spec}: cannot import {e.name or prefix} ({e}); install it first") from None
    except Exception as e:  # noqa: BLE001 - the module itself failed while importing
        raise ModelError(f"{spec}: importing {prefix} failed ({type(e).__name__}: {str(e)[:160]})") from None
    for part in name.split("."):
        obj = getattr(obj, part, None)
    if obj is None:
        raise ModelError(f"{spec}: {prefix} has no function {name!r} (a spec names a function that returns a "
                         "torch.nn.Module)")
    if inspect.ismethod(obj) and inspect.isfunction(obj.__func__):
        func = obj.__func__
    elif inspect.isfunction(obj) or (inspect.isclass(obj) and issubclass(obj, nn.Module)):
        func = obj
    else:
        raise ModelError(f"{spec}: {name!r} is {_what(obj)}, not a function that returns a torch.nn.Module")
    home = getattr(func, "__module__", None) or ""
    if _stdlib(home) and not any(home == m or home.startswith(m + ".") for m in BUILTIN_MODULES):
        raise UnsafeInputError(f"{spec}: {name!r} comes from {home}, part of the Python standard library or "
                               "builtins; refusing to call it")
    return obj


def _call(spec: str, factory: Any, kwargs: dict[str, Any]) -> Any:
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        given = f"with {', '.join(kwargs)}" if kwargs else "without arguments"
        raise ModelError(f"{spec}: the factory cannot be called {given} ({e})") from None
    except ValueError:
        pass  # no signature to check
    try:
        return factory(**kwargs)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a factory's failure is one line, never an exit
        from learngene_tools.errors import LgtError

        if isinstance(e, LgtError):
            raise
        raise ModelError(f"{spec}: building the model failed ({type(e).__name__}: {str(e)[:160]})") from None


def build_model(spec: str, seed: int = 0, *, source: str | None = None, **kwargs: Any) -> "nn.Module":
    """Build a randomly initialised model from a spec (seeded, so the same spec gives the same weights).

    `kwargs` go to the model's constructor (timm: `create_model`; torchvision: the builder). `source`
    names the file a spec came from when the user did not type it: its code specs are refused.
    """
    import torch
    from torch import nn

    if not isinstance(spec, str):
        raise ModelError(f"a model spec is a string such as timm:resnet50 (got {type(spec).__name__})")
    check_spec(spec, source)
    base, given = split_spec(spec)
    kwargs = {**given, **kwargs}
    torch.manual_seed(seed)
    prefix, name = _parts(base)
    if prefix in ("lgt", "hf"):
        raise ModelError(f"{spec}: is a bundle reference, not a model spec (timm:NAME, torchvision:NAME, "
                         "pkg.module:factory)")
    try:
        if prefix == "timm":
            import timm  # importing learngene_tools registered lgt_aux_* and replknet_* with timm

            if not timm.is_model(name):
                raise ModelError(f"unknown timm model {name!r}; `python -c \"import timm; print(timm.list_models('*{name[:4]}*'))\"` lists near names")
            try:
                return timm.create_model(name, pretrained=False, **kwargs)
            except TypeError as e:
                if not kwargs:
                    raise
                raise ModelError(f"{spec}: timm's {name} does not take these arguments ({e})") from None
        if prefix == "torchvision":
            import torchvision

            try:
                builder = torchvision.models.get_model_builder(name)
            except ValueError:
                raise ModelError(f"unknown torchvision model {name!r}") from None
            try:
                try:
                    return builder(weights=None, weights_backbone=None, **kwargs)
                except TypeError:
                    return builder(weights=None, **kwargs)
            except (TypeError, ValueError) as e:
                if not kwargs:
                    raise
                raise ModelError(f"{spec}: torchvision's {name} does not take these arguments ({e})") from None
        model = _call(spec, _factory(spec, prefix, name), kwargs)
    except ImportError as e:
        raise ModelError(f"{spec}: cannot import {e.name or prefix} ({e}); install it first") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def default_input_size(model: "nn.Module", in_chans: int) -> tuple[int, int, int]:
    """(C, H, W) for a dummy forward pass: timm's pretrained_cfg input size when known, else 224."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if size and len(size) == 3:
        return (in_chans, int(size[1]), int(size[2]))
    return (in_chans, 224, 224)
