"""The transplant planner: which target conv each learngene layer initialises, and how it is adapted.

Placement: the run that starts at the image (stage 1) goes to the target's first
eligible convs; every other run goes to eligible convs whose output stride equals the
run's, the first ones for a run anchored at its stage's start, the last ones for a run
anchored at its end. A run keeps its order and never skips an eligible conv.
The plan needs only the bundle header: kept kernels come from the recorded L2 norms.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from learngene_tools.errors import LgtError, ModelError, SettingsError
from learngene_tools.io.bundle import BN_PARTS, Bundle, LayerRecord, read_bundle
from learngene_tools.io.checkpoint import Checkpoint
from learngene_tools.reporting import advise
from learngene_tools.transplantation.adapt import keep_by_norm
from learngene_tools.transplantation.config import TransplantSettings
from learngene_tools.transplantation.convs import TargetConv, conv_kind
from learngene_tools.transplantation.target import (
    NOT_IDENTIFIED,
    Target,
    architectures,
    estimated_convs,
    note,
    open_target,
    traced_convs,
)


@dataclass(frozen=True)
class Assignment:
    """Where one learngene layer goes and every adaptation applied, or why it was left out."""

    layer: str
    stage: int
    target: str | None = None
    target_shape: tuple[int, ...] | None = None
    source_shape: tuple[int, ...] | None = None
    reduction: int | None = None
    keep: tuple[int | None, ...] = ()  # source kernel for each target kernel (None: drawn from N(0, 0.05^2))
    follow: str | None = None  # layer whose kept kernels give the input channels
    in_map: str | None = None  # "follow" | "identity" | "fold"
    bn: str | None = None  # target BN module that receives the learngene's BN
    groups: int = 1  # the target conv's groups: > 1 takes the block-diagonal part of the adapted dense kernel
    steps: tuple[str, ...] = ()
    params: int = 0
    reason: str | None = None

    @property
    def placed(self) -> bool:
        """True when the layer initialises a target conv."""
        return self.target is not None

    @property
    def dense_shape(self) -> tuple[int, ...] | None:
        """The dense kernel shape the learngene is adapted to (input channels times groups)."""
        if self.target_shape is None:
            return None
        n, c, kh, kw = self.target_shape
        return (n, c * self.groups, kh, kw)

    def changed_keys(self) -> list[str]:
        """Target keys this assignment rewrites."""
        if self.target is None:
            return []
        return [self.target] + ([f"{self.bn}.{p}" for p in BN_PARTS] if self.bn else [])


@dataclass(frozen=True)
class TransplantPlan:
    """The whole plan: assignments in bundle order, plus every target conv and its role."""

    bundle: str
    bundle_hash: str
    target: str
    target_format: str
    wrapper: str
    arch: str | None
    strides: str  # "traced" | "estimated"
    seed: int
    transfer_bn: bool
    assignments: tuple[Assignment, ...]
    convs: tuple[TargetConv, ...]
    identification: str = ""  # how the architecture is known, e.g. "identified as timm:resnet50 (exact key and shape match)"
    grouped: str = "skip"
    copies: tuple[str, ...] = ()  # every copy of the weights the output gets (model, EMA, folder weight files)
    optimizer_state: tuple[str, ...] = ()  # entries holding optimizer state in the target
    drop_optimizer: bool = False
    warnings: tuple[str, ...] = ()
    target_checkpoint: Checkpoint | None = field(default=None, compare=False, repr=False)  # the opened target
    loaded_bundle: Bundle | None = field(default=None, compare=False, repr=False)  # the bundle with its tensors
    target_model: Any = field(default=None, compare=False, repr=False)  # the model the plan was traced through
    target_module: Any = field(default=None, compare=False, repr=False)  # an nn.Module target, initialised in place
    rescale: bool = False  # kernels rescaled to the target conv's own standard deviation when applied
    control: str | None = None  # "random-matched" | "shuffled": a control transplant (transplantation/control.py)

    @property
    def in_memory(self) -> bool:
        """True for a plan made for an nn.Module or a state_dict (applied with `apply_plan(plan, None)`)."""
        ckpt = self.target_checkpoint
        return ckpt is not None and ckpt.fmt == "model" and ckpt.arch is None

    @property
    def placed(self) -> list[Assignment]:
        """Assignments that initialise a target conv."""
        return [a for a in self.assignments if a.placed]

    @property
    def params_initialised(self) -> int:
        """Target conv weight parameters that receive learngene values."""
        return sum(a.params for a in self.placed)

    def changed_keys(self) -> list[str]:
        """Every target key the transplant rewrites; all others stay byte-identical."""
        return [k for a in self.assignments for k in a.changed_keys()]

    def to_json(self) -> dict[str, Any]:
        """Machine-readable form (what `--json` prints)."""
        used = {a.target: a.layer for a in self.placed}
        return {
            "bundle": self.bundle, "bundle_hash": self.bundle_hash, "target": self.target,
            "target_format": self.target_format, "wrapper": self.wrapper, "arch": self.arch,
            "strides": self.strides, "identification": self.identification, "seed": self.seed,
            "transfer_bn": self.transfer_bn, "rescale": self.rescale, "control": self.control, "grouped": self.grouped,
            "copies": list(self.copies),
            "optimizer_state": {"entries": list(self.optimizer_state),
                                "action": "dropped" if self.drop_optimizer else "kept"} if self.optimizer_state else None,
            "warnings": list(self.warnings),
            "assignments": [{**asdict(a), "keep": list(a.keep)} for a in self.assignments],
            "convs": [
                {"key": c.key, "shape": list(c.shape), "reduction": c.reduction, "groups": c.groups, "bn": c.bn,
                 "eligible": c.eligible, "role": f"learngene {used[c.key]}" if c.key in used else c.reason}
                for c in self.convs
            ],
            "summary": {
                "layers_placed": len(self.placed), "layers_left_out": len(self.assignments) - len(self.placed),
                "params_initialised": self.params_initialised, "tensors_changed": len(self.changed_keys()),
            },
        }


def _kernel_steps(rec: LayerRecord, keep: list[int | None]) -> str:
    n1, n2 = rec.shape[0], len(keep)
    if n1 == n2:
        return f"kernels {n1} -> {n2}: copied as they are"
    if n1 > n2:
        return f"kernels {n1} -> {n2}: kept the {n2} with the largest L2 norm"
    return f"kernels {n1} -> {n2}: {n1} copied, {n2 - n1} drawn from N(0, 0.05^2)"


def _place(rec: LayerRecord, conv: TargetConv, prev: Assignment | None, transfer_bn: bool) -> Assignment:
    n2, cg, kh, kw = conv.shape
    c2 = cg * conv.groups  # the input channels a dense kernel would read
    c1 = rec.shape[1]
    keep = keep_by_norm(rec.l2_norms, n2)
    steps = [_kernel_steps(rec, keep)]
    if prev is not None and prev.target is not None and conv.producer == prev.target:
        in_map, follow = "follow", prev.layer
        steps.append(f"input channels follow the kernels {prev.layer} kept ({c1} -> {c2})")
    elif c1 == c2:
        in_map, follow = "identity", None
        steps.append(f"input channels {c1} -> {c2}: as they are")
    else:
        in_map, follow = "fold", None
        steps.append(f"input channels {c1} -> {c2}: bridged by a 1x1 fold map (Net2Net-style)")
    k = rec.shape[2]
    if (kh, kw) != (k, rec.shape[3]):
        top = (kh - k) // 2
        where = "centred" if (kh - k) % 2 == 0 else f"at offset {top} (even size has no centre)"
        steps.append(f"{k}x{k} kernel {where} in {kh}x{kw}, zeros around it")
    if conv.groups > 1:
        kind = conv_kind(conv.shape, conv.groups)
        part = "its diagonal (each kernel keeps the weights of its own input channel)" if cg == 1 else \
            f"its block-diagonal part ({conv.groups} groups of {cg} input channels)"
        steps.append(f"{kind} conv: adapted as a dense {n2}x{c2}x{kh}x{kw} kernel, then {part}")
    bn = conv.bn if (transfer_bn and rec.has_bn and conv.bn) else None
    if bn:
        steps.append(f"BN affine and running statistics -> {bn}")
    elif rec.has_bn and transfer_bn:
        steps.append("no BatchNorm follows this conv in the target: learngene BN not used")
    return Assignment(
        layer=rec.id, stage=rec.stage, target=conv.key, target_shape=conv.shape, source_shape=rec.shape,
        reduction=conv.reduction,
        keep=tuple(keep), follow=follow, in_map=in_map, bn=bn, groups=conv.groups, steps=tuple(steps),
        params=n2 * cg * kh * kw,
    )


def place_layers(
    bundle: Bundle,
    convs: list[TargetConv],
    *,
    target: str,
    target_format: str,
    wrapper: str,
    arch: str | None,
    seed: int = 0,
    transfer_bn: bool = True,
    grouped: str = "skip",
) -> TransplantPlan:
    """Plan where each learngene layer goes in the target and how it is adapted (`arch` None: estimated strides)."""
    if not convs:
        raise ModelError(f"{target}: has no conv layer (no 4-D weight); lgt transplants into CNN checkpoints")
    strides = "traced" if arch else "estimated"
    used: set[str] = set()
    assignments: list[Assignment] = []
    for run in bundle.runs():
        red = run[-1].reduction
        from_image = run[0].in_reduction == 1
        free = [c for c in convs if c.eligible and c.key not in used]
        if from_image:
            band = [c for c in free if c.reduction is not None and c.reduction <= red]
            where = f"at stride <= {red}"
        else:
            band = [c for c in free if c.reduction == red]
            where = f"at stride {red}"
        m = min(len(run), len(band))
        if run[0].anchor == "end":
            pairs = list(zip(run[len(run) - m :], band[len(band) - m :]))
            left = run[: len(run) - m]
        else:
            pairs = list(zip(run[:m], band[:m]))
            left = run[m:]
        placed: dict[str, Assignment] = {}
        for rec, conv in pairs:
            prev = placed.get(f"s{rec.stage}.{rec.position - 1}")
            placed[rec.id] = _place(rec, conv, prev, transfer_bn)
            used.add(conv.key)
        est = " (estimated from channel widths; pass --arch for exact strides)" if strides == "estimated" else ""
        kind = "dense or grouped" if grouped == "project" else "dense"
        why = f"the target has {len(band)} free {kind} conv(s) {where}{est} for this run of {len(run)}"
        reasons = {rec.id: Assignment(layer=rec.id, stage=rec.stage, reason=why) for rec in left}
        assignments += [placed.get(rec.id) or reasons[rec.id] for rec in run]
    plan = TransplantPlan(
        bundle=bundle.source, bundle_hash=str(bundle.provenance.get("tensor_hash", "")), target=target,
        target_format=target_format, wrapper=wrapper, arch=arch, strides=strides, seed=seed,
        transfer_bn=transfer_bn, assignments=tuple(assignments), convs=tuple(convs), grouped=grouped,
    )
    if not plan.placed:
        n_ok = sum(c.eligible for c in convs)
        raise ModelError(
            f"{target}: no learngene layer fits: {n_ok} of {len(convs)} conv(s) can take a 3x3 learngene kernel "
            f"and none sits at the strides the bundle needs ({', '.join(str(r[-1].reduction) for r in bundle.runs())}); "
            "`lgt inspect` on the target lists its convs"
        )
    return plan


def placement(plan: TransplantPlan) -> list[tuple]:
    """What a plan does, layer by layer (two plans that agree here write the same tensors)."""
    return [(a.layer, a.target, a.target_shape, a.keep, a.in_map, a.follow, a.bn, a.groups) for a in plan.assignments]


def _traced_plan(header: Bundle, ckpt: Checkpoint, options: list[Any], s: TransplantSettings,
                 place: Any) -> tuple[TransplantPlan | None, str, list[str]]:
    """The plan through the architecture(s), or (None, why); and warnings.

    Identified architectures with the same keys and shapes usually place the same (timm and torchvision
    ResNet-50). When they do not (ResNet-50 and its anti-aliased variants), the simplest one (fewest modules)
    is planned and the others are named in a warning.
    """
    results: list[tuple[Any, TransplantPlan | ModelError]] = []
    for arch in options:
        try:
            convs = traced_convs(ckpt, arch, s.input_size, s.grouped)
        except ModelError as e:
            if not arch.identified:
                raise  # the user's own model fails on the dummy input: say so
            if len(options) == 1:
                return None, f"{arch.spec} could not be traced: {e}", []
            continue
        try:
            results.append((arch, place(convs, arch.spec)))
        except ModelError as e:  # no layer fits: an answer too
            results.append((arch, e))
    if not results:
        return None, f"{', '.join(a.spec for a in options)} match its keys but could not be traced", []

    def outcome(r: TransplantPlan | ModelError) -> Any:
        return placement(r) if isinstance(r, TransplantPlan) else str(r)

    groups: dict[Any, list[tuple[Any, TransplantPlan | ModelError]]] = {}
    for arch, r in results:
        groups.setdefault(repr(outcome(r)), []).append((arch, r))
    chosen = min(groups.values(), key=lambda g: min(a.modules for a, _ in g))
    arch, result = chosen[0]
    arch.also = tuple(a.spec for a, _ in chosen[1:])
    others = [a.spec for a, _ in results if all(a is not b for b, _ in chosen)]
    warnings: list[str] = []
    if others:
        warnings.append(advise("its keys and shapes also match {others}, which would place the learngene differently; "
                               "planned as {spec}, the simplest of them (fewest modules): pass {arch} if the file holds "
                               "another", others=", ".join(others), spec=arch.spec))
    if isinstance(result, ModelError):
        raise result
    return replace(result, identification=arch.describe(), target_model=arch.model(True)), "", warnings


def plan_transplant(bundle: str | Path, target: Target, settings: TransplantSettings | None = None, *,
                   arch: Any = None) -> TransplantPlan:
    """Plan a transplant of a local bundle file into a target (nothing is written): a checkpoint file or folder, a
    model spec, an nn.Module (traced as it is) or a state_dict. `arch` (a spec or an nn.Module) overrides
    `settings.arch`.

    The plan keeps what it loaded (the bundle's tensors, the opened target, the model it traced), so that
    applying it reads nothing again.
    """
    s = settings or TransplantSettings()
    arch = s.arch if arch is None else arch
    header = read_bundle(bundle)  # verified once, tensors and all: apply_plan adapts these very tensors
    ckpt, model = open_target(target, seed=s.seed, trust_pickle=s.trust_pickle)
    if model is not None and ckpt.arch is None and arch is not None:
        raise SettingsError("arch= names the architecture of a state_dict or a file; an nn.Module target is traced "
                            "as it is: leave arch out")
    plan, warnings = _plan(header, ckpt, model, s, arch)
    left = [a for a in plan.assignments if not a.placed]
    if left and s.grouped == "skip" and any(c.groups > 1 for c in plan.convs):
        try:
            alt, _ = _plan(header, ckpt, model, replace(s, grouped="project"), arch)
        except LgtError:
            alt = None
        if alt is not None and len(alt.placed) > len(plan.placed):
            warnings.append(advise(
                "{placed} of {total} learngene layers placed: grouped or depthwise convs were skipped; "
                "{grouped_project} would place {more} (each takes the block-diagonal part of the learngene kernel)",
                placed=len(plan.placed), total=len(plan.assignments), more=len(alt.placed)))
    for run in header.runs():
        if not any(a.placed for a in plan.assignments if a.layer in {r.id for r in run}):
            red = run[-1].reduction
            where = f"at stride <= {red}" if run[0].in_reduction == 1 else f"at stride {red}"
            guessed = " (strides estimated, not traced)" if plan.strides == "estimated" else ""
            warnings.append(advise("no layer of stage {stage} ({n} at output stride {red}) was placed: the target "
                                   "has no free conv {where}{guessed}", stage=run[0].stage, n=len(run), red=red,
                                   where=where, guessed=guessed))
    if ckpt.optimizer_state and not s.drop_optimizer:
        warnings.append(advise("the target's optimizer state ({entries}) is kept as it was and no longer matches the "
                               "{n} rewritten tensors; {drop_optimizer} leaves it out",
                               entries=", ".join(ckpt.optimizer_state), n=len(plan.changed_keys())))
    return replace(plan, target_checkpoint=ckpt, loaded_bundle=header,
                   target_module=target if isinstance(target, nn.Module) else None,
                   copies=tuple(ckpt.copy_labels), optimizer_state=tuple(ckpt.optimizer_state),
                   drop_optimizer=s.drop_optimizer, warnings=tuple(warnings), rescale=s.rescale,
                   control=s.control)


def _plan(header: Bundle, ckpt: Checkpoint, model: Any, s: TransplantSettings, arch: Any) -> tuple[TransplantPlan, list[str]]:
    """The plan through the architecture (given, the target's own model, or identified), else on estimated strides."""
    options, why = architectures(ckpt, arch, model, s.seed, notify=note)

    def place(convs: list[TargetConv], arch: str | None) -> TransplantPlan:
        return place_layers(header, convs, target=ckpt.source, target_format=ckpt.fmt, wrapper=ckpt.wrapper_desc,
                            arch=arch, seed=s.seed, transfer_bn=s.transfer_bn, grouped=s.grouped)

    plan: TransplantPlan | None = None
    warnings: list[str] = []
    if options:
        plan, why, warnings = _traced_plan(header, ckpt, options, s, place)
    if plan is None:
        if s.require_traced:
            raise ModelError(advise("{source}: the architecture was not identified ({why}); pass {arch} "
                                    "(timm:NAME, torchvision:NAME or pkg.module:factory) to trace it",
                                    source=ckpt.source, why=why))
        plan = replace(place(estimated_convs(ckpt, s.grouped), None), identification=f"not identified: {why}")
        warnings.append(advise(NOT_IDENTIFIED, why=why))
    return plan, list(warnings)
