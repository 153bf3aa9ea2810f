"""Recipes: TOML settings files for `lgt extract --recipe` / `lgt distill --recipe` / `lgt transplant --recipe`.

A recipe has a `[recipe]` table (name, description, source, notes) and one `[extract]` or
`[transplant]` table whose keys are the command's option names (with underscores). The keys
and their types are derived from the command's settings classes (`learngene_tools.cli.commands`),
so every recipe-settable option is a recipe key and nothing else is. Options given on the
command line win over the recipe. A recipe is checked on load: an unknown table or key, a
value of the wrong type or an invalid combination is an error naming it.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

from learngene_tools.cli.commands import COMMANDS, RECIPE_KINDS
from learngene_tools.errors import NotFoundError, SettingsError
from learngene_tools.settings import Setting, build, settings_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

RECIPE_KEYS = ("name", "description", "source", "notes")


@dataclass(frozen=True)
class Recipe:
    """A checked recipe: its header, the settings of one command (as written, and as values), and its hash."""

    path: Path
    kind: str
    header: dict[str, str]
    settings: dict[str, Any]  # as written in the file (echoed into outputs)
    values: dict[str, Any]  # by setting name, converted to the settings' types
    sha256: str

    def provenance(self) -> dict[str, Any]:
        """What goes into a bundle's or checkpoint's metadata: name, file, hash and the settings used."""
        return {"name": self.header.get("name", self.path.stem), "file": self.path.name, "sha256": self.sha256,
                "kind": self.kind, "settings": self.settings}


def recipe_settings(kind: str) -> dict[str, Setting]:
    """The settings a recipe of `kind` may set, by name."""
    out: dict[str, Setting] = {}
    for cls in COMMANDS[RECIPE_KINDS[kind]]:
        for s in settings_of(cls):
            if s.option.recipe:
                out.setdefault(s.name, s)
    return out


def load_recipe(path: str | Path, kind: str) -> Recipe:
    """Read and check a recipe for `kind` ("extract" or "transplant")."""
    from learngene_tools.io.files import read_input_bytes

    path = Path(path)
    try:
        raw = read_input_bytes(path, limit=1 << 20)  # a regular file only: never blocks on a FIFO
    except NotFoundError:
        raise NotFoundError(f"{path}: no such recipe (recipes/ in the repository holds the shipped ones)") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise SettingsError(f"{path}: not valid TOML ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    unknown = sorted(set(data) - {"recipe", *RECIPE_KINDS})
    if unknown:
        raise SettingsError(f"{path}: unknown table(s) {', '.join(unknown)}; a recipe has [recipe] and [extract] or "
                            "[transplant]")
    if kind not in data:
        other = next((k for k in RECIPE_KINDS if k in data), None)
        hint = f"; it is a {other} recipe (use it with `lgt {other}`)" if other else ""
        raise SettingsError(f"{path}: has no [{kind}] table{hint}")
    header = data.get("recipe", {})
    if not isinstance(header, dict) or any(k not in RECIPE_KEYS or not isinstance(v, str) for k, v in header.items()):
        raise SettingsError(f"{path}: [recipe] holds text keys {', '.join(RECIPE_KEYS)} only")
    table = data[kind]
    if not isinstance(table, dict):
        raise SettingsError(f"{path}: [{kind}] must be a table")
    known = recipe_settings(kind)
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise SettingsError(f"{path}: unknown key {key!r} in [{kind}]; known keys: {', '.join(sorted(known))}")
        values[key] = known[key].from_recipe(value, f"{path}: [{kind}]")
    for cls in COMMANDS[RECIPE_KINDS[kind]]:  # combinations are checked by the settings themselves
        if all(s.default is not MISSING or s.name in values for s in settings_of(cls)):
            try:
                build(cls, values)
            except SettingsError as e:
                raise SettingsError(f"{path}: [{kind}] {e}") from None
    return Recipe(path, kind, dict(header), dict(table), values, "sha256:" + hashlib.sha256(raw).hexdigest())
