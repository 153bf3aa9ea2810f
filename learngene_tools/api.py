"""The public Python API: the pipeline's steps as functions that take references wherever they take a file.

A reference is a local path, a shipped bundle (`lgt:NAME`) or a Hub file
(`hf://OWNER/REPO/FILE[@REVISION]`); a transplant target may also be a model spec
(`timm:NAME`, `torchvision:NAME(num_classes=10)`, `pkg.module:factory`), an `nn.Module` (initialised
in place) or a state_dict (a new one is returned). Every wrong or wrongly typed argument and every
failure raises an `LgtError` subclass (`learngene_tools.errors`) with a one-line message; a plan that
may not do what you expect emits a `learngene_tools.reporting.PlanWarning`. The `lgt` command
line is a thin layer over these.
"""

from __future__ import annotations

import os
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar, Union, overload

from learngene_tools.errors import InvalidFileError, NotFoundError, SettingsError
from learngene_tools.refs import Ref, is_builtin_ref, resolve, resolve_target

if TYPE_CHECKING:
    from torch import nn

    from learngene_tools.distillation.config import DistillSettings, RunOptions
    from learngene_tools.evaluation.config import Arm, EvaluationSettings
    from learngene_tools.extraction.config import SelectionSettings
    from learngene_tools.io.bundle import Bundle
    from learngene_tools.transplantation.config import TransplantSettings
    from learngene_tools.transplantation.planner import TransplantPlan

    Target = Union[str, os.PathLike[str], nn.Module, Mapping[str, Any]]
    StateDict = dict[str, Any]

__all__ = [
    "resolve", "read_bundle", "describe", "select", "distill", "extract", "plan_transplant", "apply_plan", "transplant",
    "evaluate",
]

_S = TypeVar("_S")


def _what(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _ref(name: str, value: object) -> Ref:
    if isinstance(value, (str, os.PathLike)) and str(os.fspath(value)):
        return value  # type: ignore[return-value]
    raise SettingsError(f"{name}= takes a path, lgt:NAME or hf://OWNER/REPO/FILE reference (got {_what(value)})")


def _path(name: str, value: object, *, optional: bool = False) -> Path | None:
    if value is None and optional:
        return None
    if isinstance(value, (str, os.PathLike)) and str(os.fspath(value)):
        return Path(value)
    raise SettingsError(f"{name}= takes a path{' or None' if optional else ''} (got {_what(value)})")


def _flag(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise SettingsError(f"{name}= takes True or False (got {_what(value)})")


def _settings(name: str, value: object, cls: Callable[..., _S], overrides: Mapping[str, Any] | None = None) -> _S:
    """A settings object from None (the defaults), an instance or a dict of its fields, with `overrides` applied."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    bad = sorted(set(overrides or {}) - known)
    if bad:
        raise SettingsError(f"{bad[0]}= is not a setting of {cls.__name__} (it has {', '.join(sorted(known))})")  # type: ignore[attr-defined]
    if value is None:
        value = cls()
    elif isinstance(value, Mapping):
        unknown = sorted(set(value) - known)
        if unknown:
            raise SettingsError(f"{name}: {unknown[0]!r} is not a setting of {cls.__name__}")  # type: ignore[attr-defined]
        value = cls(**value)
    elif not isinstance(value, cls):  # type: ignore[arg-type]
        raise SettingsError(f"{name}= takes a {cls.__name__}, a dict of its fields or None (got {_what(value)})")  # type: ignore[attr-defined]
    return replace(value, **overrides) if overrides else value  # type: ignore[type-var,return-value]


def _target(value: object, bundle: Path | None = None, bundle_label: str = "") -> Any:
    """A transplant target: a reference or model spec (resolved), an nn.Module or a state_dict (as they are)."""
    if isinstance(value, (str, os.PathLike)) and str(os.fspath(value)):
        resolved = resolve_target(value)
        if isinstance(resolved, Path):
            refuse_bundle_target(resolved, os.fspath(value), bundle, bundle_label)
        return resolved
    from collections.abc import Mapping as AnyMapping

    from torch import nn

    if isinstance(value, (nn.Module, AnyMapping)):
        return value
    raise SettingsError(f"target= takes a checkpoint path, a model spec (timm:NAME), an nn.Module or a state_dict "
                        f"(got {_what(value)})")


def _is_bundle(path: Path) -> bool:
    from learngene_tools.io.bundle import is_bundle_file

    if not os.path.isfile(path):
        return False
    try:
        return is_bundle_file(path)
    except Exception:  # noqa: BLE001 - not a readable safetensors header: the checkpoint reader says why
        return False


def refuse_bundle_target(path: Path, label: str, bundle: Path | None = None, bundle_label: str = "") -> None:
    """A bundle is what is transplanted, never where: a bundle given as the target is refused (and when the
    bundle argument is a checkpoint, the two were swapped: say so)."""
    from learngene_tools.reporting import Advice

    if _is_bundle(path):
        if bundle is not None and os.path.isfile(bundle) and not _is_bundle(bundle):
            raise SettingsError(Advice(
                f"{bundle_label}: is not a learngene bundle and {label} is: BUNDLE and TARGET look swapped "
                "(lgt transplant BUNDLE TARGET)",
                f"{bundle_label}: is not a learngene bundle and {label} is: bundle and target look swapped "
                "(transplant(bundle, target, ...))"))
        raise SettingsError(Advice(
            f"{label}: is a learngene bundle, not a target; TARGET is the checkpoint (or model spec such as "
            "timm:resnet50) the bundle goes into",
            f"{label}: is a learngene bundle, not a target; target= is the checkpoint, model spec, nn.Module or "
            "state_dict the bundle goes into"))


def _arch(value: object) -> Any:
    if value is None or isinstance(value, str):
        return value
    from torch import nn

    if isinstance(value, nn.Module):
        return value
    raise SettingsError(f"arch= takes a model spec (timm:NAME, torchvision:NAME(...), pkg.module:factory) or an "
                        f"nn.Module (got {_what(value)})")


def read_bundle(ref: Ref, *, tensors: bool = True, verify: bool = True) -> Bundle:
    """A validated `Bundle`; `tensors=False` reads the header only, `verify=False` skips the tensor hash."""
    from learngene_tools.io.bundle import read_bundle as read_full
    from learngene_tools.io.bundle import read_bundle_header

    path = resolve(_ref("ref", ref), expect_bundle=True)
    return read_full(path) if _flag("tensors", tensors) else read_bundle_header(path, verify=_flag("verify", verify))


def describe(ref: Ref, *, verify: bool | None = None, arch: str | None = None, trust_pickle: bool = False,
             progress: bool | None = None) -> dict[str, Any]:
    """What `lgt inspect` shows: a bundle from its header, or a checkpoint's convs and what a transplant does with them.

    `verify` re-hashes a bundle's tensors (default: yes for a local file; a Hub bundle is read from its
    header alone by HTTP range requests unless `verify=True`, which downloads it).
    """
    from learngene_tools.hub import is_hf_ref, parse_hf_ref, read_remote_header
    from learngene_tools.io.bundle import bundle_from_header, bundle_summary, describe_bundle, is_bundle_file

    _ref("ref", ref)
    if verify is not None:
        _flag("verify", verify)
    if arch is not None and not isinstance(arch, str):
        raise SettingsError(f"arch= takes a model spec string (got {_what(arch)})")
    _flag("trust_pickle", trust_pickle)
    if is_hf_ref(ref):
        hf_ref = parse_hf_ref(str(ref))
        if not verify and hf_ref.filename.endswith(".safetensors"):
            header = read_remote_header(hf_ref)
            if is_bundle_header(header.metadata):
                return bundle_summary(bundle_from_header(header), verified=False)
        path = resolve(ref, progress=progress)
        summary = _describe_local(path, verify, arch, trust_pickle, label=str(hf_ref))
        summary["file"] = str(hf_ref)
        return summary
    target = resolve_target(ref) if not is_builtin_ref(ref) else resolve(ref)
    if isinstance(target, Path) and target.is_file() and is_bundle_file(target):
        return describe_bundle(target, verify=verify is not False)
    from learngene_tools.transplantation.target import describe_target  # torch: only for a checkpoint

    return describe_target(target, arch=arch, trust_pickle=trust_pickle)


def is_bundle_header(metadata: dict[str, str]) -> bool:
    """True when safetensors metadata marks a learngene bundle."""
    from learngene_tools.io.bundle import SCHEMA_KEY

    return SCHEMA_KEY in metadata


def _describe_local(path: Path, verify: bool | None, arch: str | None, trust_pickle: bool, label: str) -> dict[str, Any]:
    from learngene_tools.io.bundle import describe_bundle, is_bundle_file
    from learngene_tools.transplantation.target import describe_target

    try:
        if is_bundle_file(path):
            return describe_bundle(path, verify=verify is not False)
        return describe_target(path, arch=arch, trust_pickle=trust_pickle)
    except InvalidFileError as e:
        raise type(e)(str(e).replace(str(path), label)) from None


def select(aux: Ref, out: str | os.PathLike[str], settings: SelectionSettings | Mapping[str, Any] | None = None, *,
           force: bool = False, trust_pickle: bool = False) -> Bundle:
    """Select the learngene of a trained auxiliary model into a bundle at `out`; returns the bundle's header."""
    from learngene_tools.extraction.config import SelectionSettings
    from learngene_tools.extraction.selection import select_from_file
    from learngene_tools.io.bundle import read_bundle_header
    from learngene_tools.io.files import check_output

    path = resolve(_ref("aux", aux))
    dest = _path("out", out)
    assert dest is not None
    s = _settings("settings", settings, SelectionSettings)
    if not path.exists():
        raise NotFoundError(f"{path}: no such file (the auxiliary model `lgt distill` writes as aux.safetensors)")
    check_output(dest, [path], _flag("force", force))
    select_from_file(path, dest, s, trust_pickle=_flag("trust_pickle", trust_pickle))
    return read_bundle_header(dest, verify=False)


def distill(settings: DistillSettings | Mapping[str, Any] | None, options: RunOptions | Mapping[str, Any]
            ) -> dict[str, Any]:
    """Distil the auxiliary model from an ancestry (CLKG stage 1) into `options.work_dir`; returns a summary.

    Paths may be plain strings. Without `settings.arch`, the ancestry's architecture is identified from its
    checkpoint (as `lgt distill` does; the summary's `identified` says how).
    """
    from learngene_tools.distillation.loop import distill as run

    s, opts, identified = _prepared(settings, options)
    summary = run(s, opts)
    return {**summary, "identified": identified} if isinstance(summary, dict) else summary


def extract(settings: DistillSettings | Mapping[str, Any] | None, options: RunOptions | Mapping[str, Any],
            out: str | os.PathLike[str], selection: SelectionSettings | Mapping[str, Any] | None = None
            ) -> dict[str, Any]:
    """Distil, then select the learngene into a bundle at `out` (distill + select); returns a summary."""
    from learngene_tools.extraction.config import SelectionSettings
    from learngene_tools.extraction.extract import extract as run

    dest = _path("out", out)
    assert dest is not None
    sel = _settings("selection", selection, SelectionSettings)
    s, opts, identified = _prepared(settings, options)
    summary = run(s, opts, dest, sel)
    return {**summary, "identified": identified} if isinstance(summary, dict) else summary


def _prepared(settings: object, options: object) -> tuple[DistillSettings, RunOptions, str | None]:
    from learngene_tools.distillation.config import DistillSettings, RunOptions
    from learngene_tools.distillation.inputs import prepare
    from learngene_tools.reporting import notice

    if options is None:
        raise SettingsError("options= takes a RunOptions naming the ancestry, e.g. RunOptions(ancestry='a.pth')")
    s, opts, identified = prepare(_settings("settings", settings, DistillSettings),
                                  _settings("options", options, RunOptions))
    if identified:
        notice(f"ancestry {identified}")
    assert opts.ancestry is not None
    return s, replace(opts, ancestry=str(resolve(opts.ancestry))), identified


def plan_transplant(bundle: Ref, target: Target, settings: TransplantSettings | Mapping[str, Any] | None = None, *,
                    arch: str | nn.Module | None = None, **overrides: Any) -> TransplantPlan:
    """Plan where each learngene layer goes in the target and how it is adapted (nothing is written).

    `target`: a checkpoint path or reference, a model spec, an `nn.Module` (traced as it is) or a state_dict
    (its architecture from `arch`, else identified from its keys). `arch`: a spec or an `nn.Module` of the
    target's architecture. `overrides` are `TransplantSettings` fields (`seed=`, `transfer_bn=`, `input_size=`,
    `grouped=`, `require_traced=`, `trust_pickle=`, ...). The plan's warnings are emitted as `PlanWarning`s.
    """
    from learngene_tools.reporting import emit
    from learngene_tools.transplantation.config import TransplantSettings
    from learngene_tools.transplantation.planner import plan_transplant as plan

    b = resolve(_ref("bundle", bundle), expect_bundle=True)
    t = _target(target, b, os.fspath(bundle))
    s = _settings("settings", settings, TransplantSettings, overrides)
    result = plan(b, t, s, arch=_arch(arch))
    emit(result.warnings)
    return result


@overload
def apply_plan(plan: TransplantPlan, out: str | os.PathLike[str], *, force: bool = ...,
               recipe: dict[str, Any] | None = ...) -> Path: ...
@overload
def apply_plan(plan: TransplantPlan, out: None, *, force: bool = ...,
               recipe: dict[str, Any] | None = ...) -> nn.Module | StateDict: ...
def apply_plan(plan: TransplantPlan, out: str | os.PathLike[str] | None, *, force: bool = False,
               recipe: dict[str, Any] | None = None) -> Path | nn.Module | StateDict:
    """Carry out a plan. With `out`: write the descendant checkpoint there (atomically, in the target's own format)
    and return its path. With `out=None` (a plan for an in-memory target): initialise the nn.Module in place and
    return it, or return the new state_dict (the one planned for is not modified)."""
    from learngene_tools.transplantation.apply import apply_plan as apply
    from learngene_tools.transplantation.planner import TransplantPlan

    if not isinstance(plan, TransplantPlan):
        raise SettingsError(f"plan= takes the TransplantPlan plan_transplant returns (got {_what(plan)})")
    dest = _path("out", out, optional=True)
    if recipe is not None and not isinstance(recipe, dict):
        raise SettingsError(f"recipe= takes a dict or None (got {_what(recipe)})")
    return apply(plan, dest, force=_flag("force", force), recipe=recipe)  # type: ignore[no-any-return]


def transplant(bundle: Ref, target: Target, out: str | os.PathLike[str] | None = None,
               settings: TransplantSettings | Mapping[str, Any] | None = None, *, force: bool = False,
               dry_run: bool = False, recipe: dict[str, Any] | None = None, arch: str | nn.Module | None = None,
               **overrides: Any) -> TransplantPlan:
    """Plan, then carry the plan out; returns the plan.

    A file or spec target is written to `out` (nothing is written with `dry_run` or `out=None`); an `nn.Module`
    target with `out=None` is initialised in place (its tensors keep their devices and dtypes). For a state_dict,
    use `apply_plan(plan_transplant(...), None)`, which returns the new one. See `plan_transplant` for the rest.
    """
    from learngene_tools.reporting import emit
    from learngene_tools.transplantation.apply import transplant as run
    from learngene_tools.transplantation.config import TransplantSettings

    b = resolve(_ref("bundle", bundle), expect_bundle=True)
    t = _target(target, b, os.fspath(bundle))
    dest = _path("out", out, optional=True)
    s = _settings("settings", settings, TransplantSettings, overrides)
    if recipe is not None and not isinstance(recipe, dict):
        raise SettingsError(f"recipe= takes a dict or None (got {_what(recipe)})")
    plan = run(b, t, dest, s, force=_flag("force", force), dry_run=_flag("dry_run", dry_run), recipe=recipe,
               arch=_arch(arch))
    emit(plan.warnings)
    return plan  # type: ignore[no-any-return]


def evaluate(bundle: Ref | None, settings: EvaluationSettings | Mapping[str, Any] | None = None, *,
             arms: list[Arm] | None = None, teacher: Ref | None = None, out_dir: str | os.PathLike[str] | None = None,
             name: str = "evaluation", resume: bool = False, force: bool = False, trust_pickle: bool = False,
             progress: Callable[[dict[str, Any]], None] | None = None, command: str | None = None,
             **overrides: Any) -> dict[str, Any]:
    """Fine-tune a descendant from scratch and from the learngene over seeds and data fractions; returns the record.

    `overrides` are `EvaluationSettings` fields (`arch=`, `data=`, `seeds=`, `fractions=`, `epochs=`, `bn=`, ...).
    `arms` (a list of `learngene_tools.evaluation.config.Arm`) replaces the default comparison (scratch, CLKG per
    `bn` mode, KD with a `teacher`); their bundles may be references too. With `out_dir`, writes NAME.json (the
    record), NAME.md (the tables) and NAME.png (validation accuracy per epoch) there.
    """
    from learngene_tools.evaluation.config import Arm, EvaluationSettings
    from learngene_tools.evaluation.evaluate import evaluate as run

    s = _settings("settings", settings, EvaluationSettings, overrides)
    path = resolve(_ref("bundle", bundle), expect_bundle=True) if bundle is not None else None
    if arms is not None:
        if not isinstance(arms, (list, tuple)) or not all(isinstance(a, Arm) for a in arms):
            raise SettingsError(f"arms= takes a list of Arm (got {_what(arms)})")
        arms = [a if a.bundle is None else replace(a, bundle=resolve(a.bundle, expect_bundle=True)) for a in arms]
    if not isinstance(name, str) or not name:
        raise SettingsError(f"name= takes a non-empty string (got {_what(name)})")
    return run(path, s, arms=arms, teacher=resolve(_ref("teacher", teacher)) if teacher is not None else None,  # type: ignore[no-any-return]
               out_dir=_path("out_dir", out_dir, optional=True), name=name, resume=_flag("resume", resume),
               force=_flag("force", force), trust_pickle=_flag("trust_pickle", trust_pickle), progress=progress,
               command=command)
