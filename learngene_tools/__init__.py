"""learngene_tools: CLKG learngene extraction and transplantation.

Importing this package is cheap (no torch): the public API loads on first use, and
the auxiliary and RepLKNet models register with timm as soon as timm is imported (or at once,
if it already is), so ``timm.create_model("lgt_aux_base")`` works after
``import learngene_tools``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "AuxConfig": "extraction.auxiliary", "AuxNet": "extraction.auxiliary", "create_aux": "extraction.auxiliary",
    "save_aux": "extraction.aux_checkpoint",
    "Bundle": "extraction.bundle", "LayerRecord": "extraction.bundle", "read_bundle": "extraction.bundle",
    "write_bundle": "extraction.bundle",
    "Checkpoint": "io.checkpoint", "load_checkpoint": "io.checkpoint", "save_checkpoint": "io.checkpoint",
    "LgtError": "errors",
    "SelectionSettings": "extraction.selection", "select_learngene": "extraction.selection",
    "TransplantPlan": "transplantation.planner", "plan_transplant": "transplantation.planner",
    "transplant": "transplantation.apply", "apply_plan": "transplantation.apply",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _RegisterWithTimm(importlib.abc.MetaPathFinder):
    """Import hook: once `timm` has finished importing, register the auxiliary models with it."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            _register_models()

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def _register_models() -> None:
    """Import the modules that register models with timm: the auxiliary models and the RepLKNet ancestry."""
    for mod in ("extraction.auxiliary", "distillation.replknet"):
        importlib.import_module(f"{__name__}.{mod}")


if "timm" in sys.modules:
    _register_models()
elif not any(isinstance(f, _RegisterWithTimm) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithTimm())
