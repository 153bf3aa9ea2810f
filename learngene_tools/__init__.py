"""learngene_tools: CLKG learngene extraction and transplantation.

The public API (see README "Python API"): `resolve`, `read_bundle`, `describe`, `select`, `distill`,
`extract`, `plan_transplant`, `apply_plan`, `transplant`, `evaluate`, `pull`, `push`, `list_bundles`, their
settings classes and result types, the warning categories and `notices_to`, and the error types. Importing this package is cheap (no torch): names load on
first use. The auxiliary and RepLKNet models register with timm as soon as timm is imported (or
at once, if it already is), so ``timm.create_model("lgt_aux_base")`` works after
``import learngene_tools``.
"""

from __future__ import annotations

import os as _os
import sys

if sys.argv[:1] == ["-m"] and sys.path[:1] == [_os.getcwd()]:
    # `python -m learngene_tools` put the working directory first on sys.path: a stray ./typing.py or
    # ./evilmod.py would be imported. Take it off, as `lgt` never has it (see specs.typed_on_command_line).
    del sys.path[0]

import importlib
import importlib.abc
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_LAZY = {
    # steps of the pipeline, taking references (path, lgt:NAME, hf://...) wherever they take a file
    "resolve": "api", "read_bundle": "api", "describe": "api", "select": "api", "distill": "api", "extract": "api",
    "plan_transplant": "api", "apply_plan": "api", "transplant": "api", "evaluate": "api",
    "pull": "hub", "push": "hub", "list_bundles": "catalog",
    # settings
    "AuxConfig": "models.variants", "LossSettings": "distillation.config",
    "DistillSettings": "distillation.config", "RunOptions": "distillation.config",
    "SelectionSettings": "extraction.config", "TransplantSettings": "transplantation.config",
    "EvaluationSettings": "evaluation.config", "Arm": "evaluation.config",
    # results and file types
    "Bundle": "io.bundle", "LayerRecord": "io.bundle",
    "TransplantPlan": "transplantation.planner", "Assignment": "transplantation.planner",
    "Checkpoint": "io.checkpoint", "load_checkpoint": "io.reading",
    # warnings and notices
    "LgtWarning": "reporting", "PlanWarning": "reporting", "notices_to": "reporting",
    # errors
    "LgtError": "errors", "NotFoundError": "errors", "InvalidFileError": "errors", "UnsafeInputError": "errors",
    "OutputError": "errors", "SettingsError": "errors", "ModelError": "errors", "TrainingError": "errors",
    "HubError": "errors", "HubNotFoundError": "errors", "HubAuthError": "errors", "HubConnectionError": "errors",
}
__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # what type checkers see; at run time the names load on first use (`__getattr__`)
    from learngene_tools.api import (
        apply_plan,
        describe,
        distill,
        evaluate,
        extract,
        plan_transplant,
        read_bundle,
        resolve,
        select,
        transplant,
    )
    from learngene_tools.catalog import list_bundles
    from learngene_tools.distillation.config import DistillSettings, LossSettings, RunOptions
    from learngene_tools.errors import (
        HubAuthError,
        HubConnectionError,
        HubError,
        HubNotFoundError,
        InvalidFileError,
        LgtError,
        ModelError,
        NotFoundError,
        OutputError,
        SettingsError,
        TrainingError,
        UnsafeInputError,
    )
    from learngene_tools.evaluation.config import Arm, EvaluationSettings
    from learngene_tools.extraction.config import SelectionSettings
    from learngene_tools.hub import pull, push
    from learngene_tools.io.bundle import Bundle, LayerRecord
    from learngene_tools.io.checkpoint import Checkpoint
    from learngene_tools.io.reading import load_checkpoint
    from learngene_tools.models.variants import AuxConfig
    from learngene_tools.reporting import LgtWarning, PlanWarning, notices_to
    from learngene_tools.transplantation.config import TransplantSettings
    from learngene_tools.transplantation.planner import Assignment, TransplantPlan


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # a submodule import can no longer shadow it
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
    for mod in ("models.auxiliary", "models.replknet"):
        importlib.import_module(f"{__name__}.{mod}")


if "timm" in sys.modules:
    _register_models()
elif not any(isinstance(f, _RegisterWithTimm) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithTimm())
