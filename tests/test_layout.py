"""The package's shape: no module imports a part that comes after it in the pipeline.

Shared rooms (file formats, models, architectures, the Hub, references, errors, settings) import none of the
parts; each part imports only shared rooms and the parts before it (distillation -> extraction -> transplantation
-> evaluation); the public API and `lgt demo` sit on the parts, and only the command line imports the command
line. A module belongs to the room its first name says (`io.bundle` is in `io`); a new room must be listed here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "learngene_tools"

SHARED = ("errors", "settings", "reporting", "io", "models", "architectures", "hub", "refs", "catalog",
          "descendants")
PIPELINE = ("distillation", "extraction", "transplantation", "evaluation")
ON_TOP = ("api", "demo", "cli", "__main__")  # each may import the ones before it


def _position(room: str) -> int:
    """0 for a shared room, then the pipeline's parts and what sits on them, in order."""
    if room in SHARED:
        return 0
    order = PIPELINE + ON_TOP
    return 1 + order.index(room)


def _room(module: str) -> str:
    return module.split(".")[0]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        if parts:
            out[".".join(parts)] = path
    return out


def _imports(path: Path, module: str) -> set[str]:
    """learngene_tools modules imported anywhere in the file (inside functions too), without the package prefix."""
    found: set[str] = set()
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("learngene_tools.")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: max(0, len(package.split(".")) - node.level + 1)]
                base = ".".join(["learngene_tools", *anchor, *([base] if base else [])])
            if base == "learngene_tools":
                found |= {f"learngene_tools.{a.name}" for a in node.names if a.name != "__version__"}
            elif base.startswith("learngene_tools."):
                found.add(base)
    return {m.removeprefix("learngene_tools.") for m in found}


def _edges() -> dict[str, set[str]]:
    """Room -> the other rooms its modules import."""
    edges: dict[str, set[str]] = {}
    for module, path in _modules().items():
        edges.setdefault(_room(module), set()).update(_room(m) for m in _imports(path, module) if _room(m) != _room(module))
    return edges


def test_every_module_is_in_a_known_room():
    unknown = sorted({_room(m) for m in _modules()} - set(SHARED + PIPELINE + ON_TOP))
    assert not unknown, f"list these rooms in SHARED, PIPELINE or ON_TOP: {unknown}"


@pytest.mark.parametrize("module", sorted(_modules()))
def test_no_module_imports_a_later_part(module: str):
    mine = _position(_room(module))
    later = sorted(m for m in _imports(_modules()[module], module) if _position(_room(m)) > mine)
    assert not later, f"{module} ({_room(module)}) imports {later}, which come(s) after it in the pipeline"


def test_shared_rooms_import_no_part_and_form_no_cycle():
    edges = _edges()
    for room in SHARED:
        assert not (edges.get(room, set()) - set(SHARED)), f"{room} imports {edges[room] - set(SHARED)}"

    def visit(room: str, path: tuple[str, ...]) -> None:
        for nxt in sorted(edges.get(room, set()) & set(SHARED)):
            assert nxt not in path, f"import cycle between shared rooms: {' -> '.join((*path, nxt))}"
            visit(nxt, (*path, nxt))

    for room in SHARED:
        visit(room, (room,))


def test_the_rooms_follow_the_pipeline():
    """The order the rule checks is the pipeline's, and the graph it checks has the edges it should."""
    assert "io" in _edges()["transplantation"] and "models" in _edges()["distillation"]
    assert _position("distillation") < _position("extraction") < _position("transplantation") < _position("cli")
    assert _position("models") < _position("distillation")


def test_the_parts_are_packages():
    for part in ("io", "models", "architectures", "hub", *PIPELINE, "cli"):
        assert (PACKAGE / part / "__init__.py").is_file(), part
