"""Recipes: TOML settings files for `lgt extract --recipe` / `lgt distill --recipe` / `lgt transplant --recipe`.

A recipe has a `[recipe]` table (name, description, source) and one `[extract]` or
`[transplant]` table whose keys are the command's option names (with underscores).
Options given on the command line win over the recipe. A recipe is checked on load:
an unknown table or key, or a value of the wrong type, is an error naming it.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learngene_tools.errors import LgtError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_NUM = (int, float)
_INT_LIST = ("list", int)
_FLOAT_LIST = ("list", _NUM)
_STR_LIST = ("list", str)

EXTRACT_KEYS: dict[str, Any] = {
    "arch": str, "ancestry": str, "data": str, "synthetic": bool, "aux": str, "widths": _INT_LIST,
    "depths": _INT_LIST, "img_size": int, "batch_size": int, "steps": int, "lr": _NUM, "weight_decay": _NUM,
    "warmup_steps": int, "grad_clip": _NUM, "precision": str, "channels_last": bool, "compile": bool,
    "merge_teacher": bool, "loss": str, "alphas": _FLOAT_LIST, "beta": _NUM, "taps": _STR_LIST, "seed": int,
    "stages": _INT_LIST, "run_length": int, "output": str, "work_dir": str, "ckpt_every": int, "log_every": int,
    "workers": int, "mean": _FLOAT_LIST, "std": _FLOAT_LIST,
}
TRANSPLANT_KEYS: dict[str, Any] = {
    "target": str, "arch": str, "seed": int, "bn": bool, "input_size": _INT_LIST, "output": str,
}
RECIPE_KEYS: dict[str, Any] = {"name": str, "description": str, "source": str, "notes": str}
SECTIONS = {"extract": EXTRACT_KEYS, "transplant": TRANSPLANT_KEYS}


@dataclass(frozen=True)
class Recipe:
    """A checked recipe: its header, the settings of one command, and where it came from."""

    path: Path
    kind: str
    header: dict[str, str]
    settings: dict[str, Any]
    sha256: str

    def provenance(self) -> dict[str, Any]:
        """What goes into a bundle's or checkpoint's metadata: name, file, hash and the settings used."""
        return {"name": self.header.get("name", self.path.stem), "file": self.path.name, "sha256": self.sha256,
                "kind": self.kind, "settings": self.settings}


def _type_ok(value: Any, spec: Any) -> bool:
    if isinstance(spec, tuple) and spec and spec[0] == "list":
        return isinstance(value, list) and all(_type_ok(v, spec[1]) for v in value)
    if spec is int or spec == (int,):
        return isinstance(value, int) and not isinstance(value, bool)
    if spec == _NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, spec)


def _type_name(spec: Any) -> str:
    if isinstance(spec, tuple) and spec and spec[0] == "list":
        return f"a list of {_type_name(spec[1])}"
    if spec == _NUM:
        return "a number"
    return {str: "a string", int: "an integer", bool: "true or false"}.get(spec, str(spec))


def _check_table(path: Path, table: str, values: Any, schema: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise LgtError(f"{path}: [{table}] must be a table")
    for key, value in values.items():
        if key not in schema:
            raise LgtError(f"{path}: unknown key {key!r} in [{table}]; known keys: {', '.join(sorted(schema))}")
        if not _type_ok(value, schema[key]):
            raise LgtError(f"{path}: [{table}] {key} must be {_type_name(schema[key])} (got {value!r})")
    return dict(values)


def load_recipe(path: str | Path, kind: str) -> Recipe:
    """Read and check a recipe for `kind` ("extract" or "transplant")."""
    path = Path(path)
    if not path.is_file():
        raise LgtError(f"{path}: no such recipe (recipes/ in the repository holds the shipped ones)")
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise LgtError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(data) - {"recipe", *SECTIONS})
    if unknown:
        raise LgtError(f"{path}: unknown table(s) {', '.join(unknown)}; a recipe has [recipe] and [extract] or [transplant]")
    if kind not in data:
        other = next((k for k in SECTIONS if k in data), None)
        hint = f"; it is a {other} recipe (use it with `lgt {other}`)" if other else ""
        raise LgtError(f"{path}: has no [{kind}] table{hint}")
    header = _check_table(path, "recipe", data.get("recipe", {}), RECIPE_KEYS)
    settings = _check_table(path, kind, data[kind], SECTIONS[kind])
    for key in ("widths", "depths", "alphas", "mean", "std"):
        if key in settings and len(settings[key]) != 3:
            raise LgtError(f"{path}: [{kind}] {key} needs 3 values (one per stage), got {len(settings[key])}")
    if "input_size" in settings and len(settings["input_size"]) != 2:
        raise LgtError(f"{path}: [transplant] input_size is [height, width]")
    return Recipe(path, kind, header, settings, "sha256:" + hashlib.sha256(raw).hexdigest())


def as_cli_value(key: str, value: Any) -> Any:
    """A recipe value in the form the matching CLI option takes (lists become comma-separated text)."""
    if key in ("widths", "depths", "alphas", "taps", "stages", "input_size", "mean", "std"):
        return ",".join(str(v) for v in value)
    if key in ("ancestry", "data", "output", "work_dir"):
        return Path(value)
    return value
