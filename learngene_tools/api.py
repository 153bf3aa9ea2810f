"""The public Python API: the pipeline's steps as functions that take references wherever they take a file.

A reference is a local path, a shipped bundle (`lgt:NAME`) or a Hub file
(`hf://OWNER/REPO/FILE[@REVISION]`); a transplant target may also be a model spec
(`timm:NAME`, `torchvision:NAME`, `pkg.module:factory`). Failures raise `LgtError`
subclasses (`learngene_tools.errors`). The `lgt` command line is a thin layer over these.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from learngene_tools.errors import InvalidFileError, NotFoundError
from learngene_tools.refs import Ref, is_builtin_ref, resolve, resolve_target

__all__ = [
    "resolve", "read_bundle", "describe", "select", "distill", "extract", "plan_transplant", "apply_plan", "transplant",
    "evaluate",
]


def read_bundle(ref: Ref, *, tensors: bool = True, verify: bool = True) -> Any:
    """A validated `Bundle`; `tensors=False` reads the header only, `verify=False` skips the tensor hash."""
    from learngene_tools.io.bundle import read_bundle as read_full
    from learngene_tools.io.bundle import read_bundle_header

    path = resolve(ref, expect_bundle=True)
    return read_full(path) if tensors else read_bundle_header(path, verify=verify)


def describe(ref: Ref, *, verify: bool | None = None, arch: str | None = None, trust_pickle: bool = False,
             progress: bool | None = None) -> dict[str, Any]:
    """What `lgt inspect` shows: a bundle from its header, or a checkpoint's convs and what a transplant does with them.

    `verify` re-hashes a bundle's tensors (default: yes for a local file; a Hub bundle is read from its
    header alone by HTTP range requests unless `verify=True`, which downloads it).
    """
    from learngene_tools.hub import is_hf_ref, parse_hf_ref, read_remote_header
    from learngene_tools.io.bundle import bundle_from_header, bundle_summary, describe_bundle, is_bundle_file

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


def select(aux: Ref, out: str | Path, settings: Any = None, *, force: bool = False, trust_pickle: bool = False) -> Any:
    """Select the learngene of a trained auxiliary model into a bundle at `out`; returns the bundle's header."""
    from learngene_tools.extraction.config import SelectionSettings
    from learngene_tools.extraction.selection import select_from_file
    from learngene_tools.io.bundle import read_bundle_header
    from learngene_tools.io.files import check_output

    path = resolve(aux)
    if not path.exists():
        raise NotFoundError(f"{path}: no such file (the auxiliary model `lgt distill` writes as aux.safetensors)")
    check_output(Path(out), [path], force)
    select_from_file(path, out, settings or SelectionSettings(), trust_pickle=trust_pickle)
    return read_bundle_header(out, verify=False)


def distill(settings: Any, options: Any) -> dict[str, Any]:
    """Distil the auxiliary model from an ancestry (CLKG stage 1) into `options.work_dir`; returns a summary."""
    from learngene_tools.distillation.loop import distill as run

    return run(settings, _resolved_options(options))


def extract(settings: Any, options: Any, out: str | Path, selection: Any = None) -> dict[str, Any]:
    """Distil, then select the learngene into a bundle at `out` (distill + select); returns a summary."""
    from learngene_tools.extraction.config import SelectionSettings
    from learngene_tools.extraction.extract import extract as run

    return run(settings, _resolved_options(options), Path(out), selection or SelectionSettings())


def _resolved_options(options: Any) -> Any:
    if options.ancestry is None:
        return options
    return replace(options, ancestry=resolve(options.ancestry))


def plan_transplant(bundle: Ref, target: Ref, settings: Any = None, **overrides: Any) -> Any:
    """Plan where each learngene layer goes in the target and how it is adapted (nothing is written).

    `overrides` are `TransplantSettings` fields (`arch=`, `seed=`, `transfer_bn=`, `input_size=`, `trust_pickle=`).
    """
    from learngene_tools.transplantation.config import TransplantSettings
    from learngene_tools.transplantation.planner import plan_transplant as plan

    s = replace(settings or TransplantSettings(), **overrides)
    return plan(resolve(bundle, expect_bundle=True), resolve_target(target), s)


def apply_plan(plan: Any, out: str | Path, *, force: bool = False, recipe: dict[str, Any] | None = None) -> Path:
    """Write the descendant checkpoint a plan describes (atomically, in the target's own format); returns `out`."""
    from learngene_tools.transplantation.apply import apply_plan as apply

    return apply(plan, out, force=force, recipe=recipe)


def transplant(bundle: Ref, target: Ref, out: str | Path | None, settings: Any = None, *, force: bool = False,
               dry_run: bool = False, recipe: dict[str, Any] | None = None, **overrides: Any) -> Any:
    """Plan, then write the descendant to `out` (nothing is written with `dry_run` or `out=None`); returns the plan."""
    from learngene_tools.transplantation.apply import transplant as run

    return run(resolve(bundle, expect_bundle=True), resolve_target(target), out, settings, force=force,
               dry_run=dry_run, recipe=recipe, **overrides)


def evaluate(bundle: Ref | None, settings: Any = None, *, arms: list[Any] | None = None, teacher: Ref | None = None,
             out_dir: str | Path | None = None, name: str = "evaluation", resume: bool = False, force: bool = False,
             trust_pickle: bool = False, progress: Any = None, command: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Fine-tune a descendant from scratch and from the learngene over seeds and data fractions; returns the record.

    `overrides` are `EvaluationSettings` fields (`arch=`, `data=`, `seeds=`, `fractions=`, `epochs=`, `bn=`, ...).
    `arms` (a list of `learngene_tools.evaluation.config.Arm`) replaces the default comparison (scratch, CLKG per
    `bn` mode, KD with a `teacher`); their bundles may be references too. With `out_dir`, writes NAME.json (the
    record), NAME.md (the tables) and NAME.png (validation accuracy per epoch) there.
    """
    from learngene_tools.evaluation.config import EvaluationSettings
    from learngene_tools.evaluation.evaluate import evaluate as run

    s = replace(settings or EvaluationSettings(), **overrides)
    path = resolve(bundle, expect_bundle=True) if bundle is not None else None
    if arms is not None:
        arms = [a if a.bundle is None else replace(a, bundle=resolve(a.bundle, expect_bundle=True)) for a in arms]
    return run(path, s, arms=arms, teacher=resolve(teacher) if teacher is not None else None,
               out_dir=Path(out_dir) if out_dir is not None else None, name=name, resume=resume, force=force,
               trust_pickle=trust_pickle, progress=progress, command=command)
