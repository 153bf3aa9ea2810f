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
    "AuxConfig": "auxiliary", "AuxNet": "auxiliary", "create_aux": "auxiliary", "save_aux": "auxiliary",
    "Bundle": "bundle", "LayerRecord": "bundle", "read_bundle": "bundle", "write_bundle": "bundle",
    "Checkpoint": "checkpoint_io", "load_checkpoint": "checkpoint_io", "save_checkpoint": "checkpoint_io",
    "LgtError": "errors",
    "SelectionSettings": "selection", "select_learngene": "selection",
    "TransplantPlan": "plan", "plan_transplant": "plan",
    "transplant": "transplant", "apply_plan": "transplant",
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
    for mod in ("auxiliary", "replknet"):
        importlib.import_module(f"{__name__}.{mod}")


if "timm" in sys.modules:
    _register_models()
elif not any(isinstance(f, _RegisterWithTimm) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithTimm())
