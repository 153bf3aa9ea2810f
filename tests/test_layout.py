"""The package's shape: every module sits in a layer and imports nothing above it.

Lower layers know nothing of the ones above: file formats and models know nothing of
training loops, the parts know nothing of the Hub, nothing but the CLI knows the CLI.
A new module must be placed here (the longest matching prefix gives its layer).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "learngene_tools"

LAYERS: dict[str, int] = {
    # 0: vocabulary shared by everything
    "errors": 0, "settings": 0, "reporting": 0,
    # 1: files, model specs, model-independent helpers
    "io": 1, "architectures": 1, "architectures.specs": 1, "descendants": 1, "architectures.tracing": 1, "architectures.keysets": 1,
    # the parts' settings (standard library only: the CLI builds its options from them without torch)
    "extraction.config": 1, "distillation.config": 1, "transplantation.config": 1, "evaluation.config": 1,
    # 2: the models and file formats of the parts
    "extraction.auxiliary": 2, "extraction.bundle": 2,
    "distillation.replknet": 2, "distillation.loss": 2, "distillation.data": 2, "architectures.index": 2,
    # 3: what reads and writes them, and the parts' own building blocks
    "extraction.aux_checkpoint": 3, "distillation.ancestry": 3, "distillation.teacher": 3,
    "distillation.distributed": 3, "distillation.depthwise": 2, "distillation.state": 3, "architectures.identify": 3,
    "transplantation.adapt": 3, "transplantation.convs": 3,
    # 4: the parts' steps
    "distillation": 4, "extraction": 4, "transplantation": 4, "evaluation": 7,
    # 5-6: the pipeline across parts, the Hub, reference resolution
    "pipeline": 5, "hub": 5, "refs": 6,
    "distillation.inputs": 6,  # a run's inputs checked before it runs: resolves references
    # 7: the public API and what is built on it
    "api": 7, "demo": 7, "commands": 7, "recipes": 7, "catalog": 7,
    # 8: the command line
    "cli": 8, "__main__": 8,
}


def _layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key]
    raise KeyError(module)


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


def test_every_module_has_a_layer():
    missing = [m for m in _modules() if not _is_placed(m)]
    assert not missing, f"place these modules in LAYERS: {missing}"


def _is_placed(module: str) -> bool:
    try:
        _layer(module)
    except KeyError:
        return False
    return True


@pytest.mark.parametrize("module", sorted(_modules()))
def test_no_module_imports_one_above_its_layer(module: str):
    mine = _layer(module)
    above = sorted(m for m in _imports(_modules()[module], module) if _is_placed(m) and _layer(m) > mine)
    assert not above, f"{module} (layer {mine}) imports {[(m, _layer(m)) for m in above]}"


def test_the_parts_are_packages():
    for part in ("io", "distillation", "extraction", "transplantation", "cli"):
        assert (PACKAGE / part / "__init__.py").is_file(), part
