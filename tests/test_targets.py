"""Real third-party CNNs as transplant targets: placement, strict loading, untouched tensors, values, determinism.

Targets are built offline with random initialisation (timm and torchvision, no weights
downloaded), each once per module. The bundle is `bundle_small` (lgt_aux_small: widths
32/64/128, depths 2/3/3) with layers s1.0, s1.1 (stage 1, run from the image, reduction
4) and s3.0, s3.1, s3.2 (stage 3, run anchored at the stage's end, reduction 16): the
stage-1 run goes to the target's first dense convs, the stage-3 run to the last dense
convs of the target's stride-16 run.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from learngene_tools.architectures.specs import build_model
from learngene_tools.io.bundle import BN_PARTS, Bundle, read_bundle
from learngene_tools.io.header import read_header
from learngene_tools.transplantation.apply import TRANSPLANT_KEY, transplant
from learngene_tools.transplantation.planner import Assignment, TransplantPlan

STD = 0.05


@dataclass(frozen=True)
class Target:
    """What a transplant of bundle_small into one architecture must give."""

    placed: dict[str, str]  # learngene layer -> target conv weight key; layers not listed are left out
    params: int  # plan.params_initialised: elements of the target conv weights the learngene initialises
    follows: dict[str, str] = field(default_factory=dict)  # layer -> layer whose kept kernels feed its inputs
    bn: bool = True  # a BatchNorm follows every placed conv
    image: int = 32  # input side for the forward pass


def _resnet(prefix: str = "") -> dict[str, str]:
    return {
        "s1.0": f"{prefix}conv1.weight", "s1.1": f"{prefix}layer1.0.conv2.weight",
        **{f"s3.{i}": f"{prefix}layer3.{3 + i}.conv2.weight" for i in range(3)},
    }


RESNET50_PARAMS = 64 * 3 * 7 * 7 + 64 * 64 * 9 + 3 * 256 * 256 * 9

TARGETS = {
    "timm:resnet50": Target(_resnet(), RESNET50_PARAMS),
    "torchvision:resnet50": Target(_resnet(), RESNET50_PARAMS),
    # the dilated ResNet-50 (output stride 8) keeps the ResNet-50 layout: layer3 runs at nominal stride 16
    "torchvision:deeplabv3_resnet50": Target(_resnet("backbone."), RESNET50_PARAMS),
    "timm:vgg16_bn": Target(
        {"s1.0": "features.0.weight", "s1.1": "features.3.weight", "s3.0": "features.34.weight",
         "s3.1": "features.37.weight", "s3.2": "features.40.weight"},
        64 * 3 * 9 + 64 * 64 * 9 + 3 * 512 * 512 * 9,
        follows={"s1.1": "s1.0", "s3.1": "s3.0", "s3.2": "s3.1"},
    ),
    # tiered stem: three dense 3x3 convs; stride 16 has one dense 3x3 (stages.2.1 is self-attention)
    "timm:botnet26t_256": Target(
        {"s1.0": "stem.conv1.conv.weight", "s1.1": "stem.conv2.conv.weight", "s3.2": "stages.2.0.conv2_kxk.conv.weight"},
        24 * 3 * 9 + 32 * 24 * 9 + 256 * 256 * 9, follows={"s1.1": "s1.0"}, image=256,
    ),
    # inverted residuals are depthwise: only the stem and the MobileViT block's two dense 3x3 convs fit
    "timm:mobilevit_s": Target(
        {"s1.0": "stem.conv.weight", "s3.1": "stages.3.1.conv_kxk.conv.weight", "s3.2": "stages.3.1.conv_fusion.conv.weight"},
        16 * 3 * 9 + 128 * 128 * 9 + 128 * 256 * 9,
    ),
    # 4x4 patchify stem; downsamplers are 2x2, blocks depthwise 7x7 + linear layers
    "timm:convnext_tiny": Target({"s1.0": "stem.0.weight"}, 96 * 3 * 4 * 4, bn=False),
    "timm:repvgg_a0": Target(
        {"s1.0": "stem.conv_kxk.conv.weight", "s1.1": "stages.0.0.conv_kxk.conv.weight",
         **{f"s3.{i}": f"stages.2.{11 + i}.conv_kxk.conv.weight" for i in range(3)}},
        48 * 3 * 9 + 48 * 48 * 9 + 3 * 192 * 192 * 9,
    ),
}


@dataclass
class Case:
    """One target transplanted with seed 0, and the seed-0 model it came from."""

    spec: str
    plan: TransplantPlan
    out: Path
    original: dict[str, torch.Tensor]  # state_dict of the model built with the same seed
    model: torch.nn.Module

    @functools.cached_property
    def result(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.out))


@pytest.fixture(scope="module")
def learngene(bundle_small: Path) -> Bundle:
    return read_bundle(bundle_small)


# targets that tests of their own also use stay built for the whole module; the others are dropped after their turn
SHARED = ("timm:resnet50", "torchvision:resnet50", "timm:botnet26t_256", "torchvision:deeplabv3_resnet50")


class Cases:
    """Each target transplanted (and its model built) once per module."""

    def __init__(self, bundle: Path, tmp: pytest.TempPathFactory) -> None:
        self.bundle, self.tmp = bundle, tmp
        self.built: dict[str, Case] = {}

    def get(self, spec: str) -> Case:
        if spec not in self.built:
            out = self.tmp.mktemp(spec.replace(":", "_")) / "out.safetensors"
            plan = transplant(self.bundle, spec, out, seed=0)
            model = build_model(spec, seed=0)
            original = {k: v.clone() for k, v in model.state_dict().items()}
            self.built[spec] = Case(spec, plan, out, original, model)
        return self.built[spec]

    def release(self, spec: str) -> None:
        if spec not in SHARED and spec in self.built:
            self.built.pop(spec).out.unlink()


@pytest.fixture(scope="module")
def cases(bundle_small: Path, tmp_path_factory: pytest.TempPathFactory):
    registry = Cases(bundle_small, tmp_path_factory)
    yield registry
    for c in registry.built.values():
        c.out.unlink()


@pytest.fixture(scope="module", params=list(TARGETS))
def case(request: pytest.FixtureRequest, cases: Cases):
    yield cases.get(request.param)
    cases.release(request.param)


@pytest.fixture
def resnet50(cases: Cases) -> Case:
    return cases.get("timm:resnet50")


@pytest.fixture
def tv_resnet50(cases: Cases) -> Case:
    return cases.get("torchvision:resnet50")


@pytest.fixture
def botnet(cases: Cases) -> Case:
    return cases.get("timm:botnet26t_256")


@pytest.fixture
def deeplab(cases: Cases) -> Case:
    return cases.get("torchvision:deeplabv3_resnet50")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _expected_keep(norms: torch.Tensor, n2: int) -> list[int | None]:
    n1 = norms.numel()
    if n2 >= n1:
        return list(range(n1)) + [None] * (n2 - n1)
    return sorted(torch.topk(norms, n2).indices.tolist())


def _kernel_norms(w: torch.Tensor) -> torch.Tensor:
    return w.flatten(1).norm(dim=1)


def _expected_inputs(w: torch.Tensor, c2: int, in_map: str, prev_keep: tuple | None) -> tuple[torch.Tensor, list[int]]:
    """Input weights [n, c2, 3, 3] of kept kernels as the target must hold them, and the channels that are known."""
    n, c1 = w.shape[:2]
    out = torch.zeros(n, c2, *w.shape[2:])
    if in_map == "identity":
        assert c1 == c2
        return w.clone(), list(range(c2))
    if in_map == "follow":
        assert prev_keep is not None and len(prev_keep) == c2
        known = [j for j, s in enumerate(prev_keep) if s is not None]
        for j in known:
            out[:, j] = w[:, prev_keep[j]]
        return out, known
    assert in_map == "fold"
    if c2 <= c1:  # source channel c is summed onto c mod c2
        for c in range(c1):
            out[:, c % c2] += w[:, c]
    else:  # target channel t reads source channel t mod c1, shared among its readers
        readers = [sum(1 for t in range(c2) if t % c1 == c) for c in range(c1)]
        for t in range(c2):
            out[:, t] = w[:, t % c1] / readers[t % c1]
    return out, list(range(c2))


def _assert_drawn(values: torch.Tensor) -> None:
    """Values drawn from N(0, 0.05^2); the tolerance follows the sample size."""
    n = values.numel()
    assert n == 0 or values.abs().min() > 0
    if n >= 1000:
        tol = 0.003 if n >= 10_000 else 0.008
        assert abs(values.mean().item()) < tol and abs(values.std().item() - STD) < tol, (n, values.mean(), values.std())


# placement ---------------------------------------------------------------------------------------


def test_placements_and_params(case: Case):
    want = TARGETS[case.spec]
    assert {a.layer: a.target for a in case.plan.placed} == want.placed
    assert [a.layer for a in case.plan.assignments] == ["s1.0", "s1.1", "s3.0", "s3.1", "s3.2"]
    assert all(a.reason for a in case.plan.assignments if not a.placed)
    assert case.plan.params_initialised == want.params
    assert want.params == sum(case.original[t].numel() for t in want.placed.values())
    assert {a.layer: a.follow for a in case.plan.placed if a.in_map == "follow"} == want.follows
    assert all((a.bn is not None) == want.bn for a in case.plan.placed)
    assert case.plan.strides == "traced" and case.plan.arch == case.spec


def test_placement_follows_the_rule(case: Case):
    """Stage 1 takes the first dense convs (stride <= 4), stage 3 the last dense convs at stride 16, in order."""
    eligible = [c for c in case.plan.convs if c.eligible]
    by_stage: dict[int, list[Assignment]] = {}
    for a in case.plan.assignments:
        by_stage.setdefault(a.stage, []).append(a)
    first = [c.key for c in eligible if c.reduction <= 4]
    placed1 = [a.target for a in by_stage[1] if a.placed]
    assert placed1 == first[: len(placed1)] and len(placed1) == min(2, len(first))
    assert [a.layer for a in by_stage[1] if a.placed] == [f"s1.{i}" for i in range(len(placed1))]  # a prefix of the run
    at16 = [c.key for c in eligible if c.reduction == 16]
    placed3 = [a.target for a in by_stage[3] if a.placed]
    assert placed3 == at16[len(at16) - len(placed3) :] and len(placed3) == min(3, len(at16))
    assert [a.layer for a in by_stage[3] if a.placed] == [f"s3.{i}" for i in range(3 - len(placed3), 3)]  # a suffix
    assert all(a.reduction == 16 for a in case.plan.placed if a.stage == 3)


# the output checkpoint ---------------------------------------------------------------------------


def test_output_loads_strictly_and_runs(case: Case):
    got = case.result
    assert set(got) == set(case.original)
    for k, v in case.original.items():
        assert got[k].shape == v.shape and got[k].dtype == v.dtype, k
    record = json.loads(read_header(case.out).metadata[TRANSPLANT_KEY])
    assert record["layers"] == TARGETS[case.spec].placed and record["seed"] == 0
    case.model.load_state_dict(got, strict=True)
    side = TARGETS[case.spec].image
    with torch.no_grad():
        y = case.model.eval()(torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0)))
    y = y["out"] if isinstance(y, dict) else y
    assert y.shape[0] == 1 and torch.isfinite(y).all()


def test_untouched_tensors_are_byte_identical(case: Case):
    changed = set(case.plan.changed_keys())
    placed = case.plan.placed
    assert changed == {a.target for a in placed} | {f"{a.bn}.{p}" for a in placed if a.bn for p in BN_PARTS}
    for k, v in case.original.items():
        if k in changed:
            assert not torch.equal(case.result[k], v), k
        else:
            assert torch.equal(case.result[k], v), k


def test_weights_follow_the_adaptation_rules(case: Case, learngene: Bundle):
    """Every placed layer: top-n kernels by norm, input map, centring, new kernels drawn, BN carried."""
    keeps = {a.layer: a.keep for a in case.plan.placed}
    for a in case.plan.placed:
        w = learngene.tensors[f"{a.layer}.weight"]
        out, orig = case.result[a.target], case.original[a.target]
        n2, c2, k = orig.shape[0], orig.shape[1], orig.shape[2]
        keep = _expected_keep(_kernel_norms(w), n2)
        assert list(a.keep) == keep, a.layer
        kept = [t for t, s in enumerate(keep) if s is not None]
        new = [t for t, s in enumerate(keep) if s is None]
        src = w[[keep[t] for t in kept]]
        expected, known = _expected_inputs(src, c2, a.in_map, keeps.get(a.follow) if a.follow else None)
        off = (k - 3) // 2
        centre = out[kept][:, :, off : off + 3, off : off + 3]
        torch.testing.assert_close(centre[:, known], expected[:, known], rtol=1e-6, atol=1e-7)
        if k > 3:
            ring = torch.ones(k, k, dtype=torch.bool)
            ring[off : off + 3, off : off + 3] = False
            assert not out[kept][:, known][..., ring].any(), a.layer
        unknown = [j for j in range(c2) if j not in known]
        _assert_drawn(torch.cat([out[new].flatten(), centre[:, unknown].flatten()]))
        if a.bn:
            for p in BN_PARTS:
                got, before = case.result[f"{a.bn}.{p}"], case.original[f"{a.bn}.{p}"]
                assert torch.equal(got[kept], learngene.tensors[f"{a.layer}.bn.{p}"][[keep[t] for t in kept]]), (a.layer, p)
                assert torch.equal(got[new], before[new]), (a.layer, p)


def test_resnet50_values(resnet50: Case, learngene: Bundle):
    case = resnet50
    got, t = case.result, learngene.tensors
    # s1.0: 32 learngene kernels at the centre of the 7x7 stem conv, zeros around; 32 new kernels drawn
    conv1 = got["conv1.weight"]
    assert torch.equal(conv1[:32, :, 2:5, 2:5], t["s1.0.weight"])
    around = conv1[:32].clone()
    around[:, :, 2:5, 2:5] = 0
    assert not around.any()
    _assert_drawn(conv1[32:])  # 32 * 3 * 7 * 7 values, drawn over the whole 7x7
    assert conv1[32:, :, 0, 0].abs().min() > 0
    # its BN carries the learngene's BN for the kept channels, the target's own for the new ones
    for p in BN_PARTS:
        assert torch.equal(got[f"bn1.{p}"][:32], t[f"s1.0.bn.{p}"])
        assert torch.equal(got[f"bn1.{p}"][32:], case.original[f"bn1.{p}"][32:])
    assert torch.equal(got["bn1.running_var"][32:], torch.ones(32))
    # s3.0: 128 kernels reading 64 channels into 256 outputs x 256 inputs: each input read by 4 target channels
    w = got["layer3.3.conv2.weight"]
    src = t["s3.0.weight"]
    for j in (0, 63, 64, 255):
        torch.testing.assert_close(w[:128, j], src[:, j % 64] / 4, rtol=0, atol=1e-8)
    _assert_drawn(w[128:])
    # s3.1, s3.2: 128 -> 256 inputs, each read by 2
    torch.testing.assert_close(got["layer3.5.conv2.weight"][:128, 200], t["s3.2.weight"][:, 72] / 2, rtol=0, atol=1e-8)
    assert [a.bn for a in case.plan.placed] == ["bn1", "layer1.0.bn2", "layer3.3.bn2", "layer3.4.bn2", "layer3.5.bn2"]
    assert [a.in_map for a in case.plan.placed] == ["identity", "fold", "fold", "fold", "fold"]


def test_botnet_fewer_kernels_and_channels_that_follow(botnet: Case, learngene: Bundle):
    """24-wide stem conv keeps the 24 strongest of 32 kernels; the next conv reads exactly those channels."""
    got, t = botnet.result, learngene.tensors
    w0, w1 = t["s1.0.weight"], t["s1.1.weight"]
    kept = sorted(torch.topk(_kernel_norms(w0), 24).indices.tolist())
    assert len(kept) == 24 and kept == sorted(kept)
    assert torch.equal(got["stem.conv1.conv.weight"], w0[kept])
    for p in BN_PARTS:
        assert torch.equal(got[f"stem.conv1.bn.{p}"], t[f"s1.0.bn.{p}"][kept])
    assert torch.equal(got["stem.conv2.conv.weight"], w1[:, kept])  # 32 -> 32 kernels, inputs follow conv1
    # the pair computes the learngene pair's response on the kept channels
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    mid = torch.nn.functional.conv2d(x, w0, padding=1)
    mid[:, [c for c in range(32) if c not in kept]] = 0
    ref = torch.nn.functional.conv2d(mid, w1, padding=1)
    tgt = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, got["stem.conv1.conv.weight"], padding=1),
                                     got["stem.conv2.conv.weight"], padding=1)
    torch.testing.assert_close(tgt, ref, rtol=1e-5, atol=1e-5)


def test_dilated_backbone_keeps_nominal_strides(deeplab: Case):
    """Dilation replaces stride in layer3/layer4: their convs keep ResNet-50's nominal strides, inside the backbone."""
    reduction = {c.key.removeprefix("backbone."): c.reduction for c in deeplab.plan.convs if c.key.startswith("backbone.")}
    for stage, (before, after) in {3: (8, 16), 4: (16, 32)}.items():
        blocks = 6 if stage == 3 else 3
        assert reduction[f"layer{stage}.0.conv1.weight"] == before  # the 1x1 ahead of the stage's first 3x3
        assert reduction[f"layer{stage}.0.downsample.0.weight"] == after
        for b in range(blocks):
            assert [reduction[f"layer{stage}.{b}.conv{i}.weight"] for i in (2, 3)] == [after, after], (stage, b)
            if b:
                assert reduction[f"layer{stage}.{b}.conv1.weight"] == after, (stage, b)
    dense = [c for c in deeplab.plan.convs if c.key.startswith("backbone.layer") and c.key.endswith("conv2.weight")]
    assert len(dense) == 16 and all(c.eligible for c in dense), [c.key for c in dense if not c.eligible]
    assert not any(c.eligible for c in deeplab.plan.convs if c.key.startswith("classifier."))


# determinism -------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(resnet50: Case, bundle_small: Path, tmp_path: Path):
    again = tmp_path / "again.safetensors"
    transplant(bundle_small, "timm:resnet50", again, seed=0)
    assert _sha(again) == _sha(resnet50.out)


@dataclass
class FromFile:
    """timm resnet50 (seed 0) saved as a bare state_dict, transplanted without an architecture."""

    plans: dict[tuple[str, int], TransplantPlan]  # (format suffix, seed) -> plan
    outs: dict[tuple[str, int], Path]

    def result(self, suffix: str, seed: int) -> dict[str, torch.Tensor]:
        out = self.outs[suffix, seed]
        return load_file(str(out)) if suffix == "safetensors" else torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def from_file(bundle_small: Path, tmp_path_factory: pytest.TempPathFactory) -> FromFile:
    d = tmp_path_factory.mktemp("resnet50_file")
    state = build_model("timm:resnet50", seed=0).state_dict()
    save_file(state, str(d / "resnet50.safetensors"))
    torch.save(state, d / "resnet50.pth")
    plans, outs = {}, {}
    for suffix, seed in (("safetensors", 0), ("pth", 0), ("pth", 1)):
        outs[suffix, seed] = d / f"out{seed}.{suffix}"
        plans[suffix, seed] = transplant(bundle_small, str(d / f"resnet50.{suffix}"), outs[suffix, seed], seed=seed)
    return FromFile(plans, outs)


def _placement(plan: TransplantPlan) -> list[tuple]:
    """Short form of a plan, for readable failures."""
    return [(a.layer, a.target, a.bn, a.in_map) for a in plan.assignments]


def _plan_rows(plan: TransplantPlan) -> list[tuple]:
    return [(a.layer, a.target, a.target_shape, a.keep, a.in_map, a.follow, a.bn, a.params) for a in plan.assignments]


@pytest.mark.parametrize("suffix", ["pth", "safetensors"])
def test_file_without_arch_is_identified_and_planned_as_traced(resnet50: Case, from_file: FromFile, suffix: str):
    """A bare ResNet-50 state_dict is identified by its keys and shapes and gets the traced plan and bytes."""
    plan = from_file.plans[suffix, 0]
    assert plan.strides == "traced" and plan.arch == "timm:resnet50"
    assert plan.identification.startswith("identified as timm:resnet50 (exact key and shape match")
    assert "torchvision:resnet50" in plan.identification  # same keys, same placement
    assert any("timm:resnetaa50" in w and "--arch" in w for w in plan.warnings)  # same keys, other strides
    assert _placement(plan) == _placement(resnet50.plan)
    assert _plan_rows(plan) == _plan_rows(resnet50.plan)
    got = from_file.result(suffix, 0)
    assert set(got) == set(resnet50.result)
    for k, v in resnet50.result.items():
        assert torch.equal(got[k], v), k


def _estimated_plan(bundle: Path, target: Path) -> TransplantPlan:
    """The plan from names, shapes and order alone, as when nothing identifies the target."""
    from learngene_tools.io.bundle import read_bundle_header
    from learngene_tools.io.reading import load_checkpoint
    from learngene_tools.transplantation.planner import place_layers
    from learngene_tools.transplantation.target import estimated_convs

    ckpt = load_checkpoint(target)
    return place_layers(read_bundle_header(bundle), estimated_convs(ckpt), target=str(target), target_format=ckpt.fmt,
                        wrapper=ckpt.wrapper_desc, arch=None)


@pytest.mark.parametrize("suffix", ["pth", "safetensors"])
def test_estimated_plan_agrees_with_traced_on_resnet50(resnet50: Case, from_file: FromFile, bundle_small: Path,
                                                        suffix: str):
    """The fallback (names, shapes and order alone) still gives ResNet-50's traced plan, in either file order."""
    estimated = _estimated_plan(bundle_small, from_file.outs[suffix, 0].parent / f"resnet50.{suffix}")
    assert estimated.strides == "estimated" and estimated.arch is None
    assert [a.reduction for a in estimated.placed if a.stage == 3] == [16, 16, 16]
    assert _plan_rows(estimated) == _plan_rows(resnet50.plan)


def test_plan_does_not_depend_on_the_file_format(bundle_small: Path, tmp_path: Path):
    """The same tensors under the same names give the same plan from a .pth and from a .safetensors file, traced
    or estimated. (safetensors files store tensors by dtype and name, not in module order: stages.2.10 before
    stages.2.2.)"""
    state = build_model("timm:repvgg_a0", seed=0).state_dict()
    torch.save(state, tmp_path / "t.pth")
    save_file(state, str(tmp_path / "t.safetensors"))
    want = TARGETS["timm:repvgg_a0"].placed  # what the traced plan gives
    plans = {suffix: transplant(bundle_small, str(tmp_path / f"t.{suffix}"), None) for suffix in ("pth", "safetensors")}
    estimated = {suffix: _estimated_plan(bundle_small, tmp_path / f"t.{suffix}") for suffix in ("pth", "safetensors")}
    for suffix in ("pth", "safetensors"):
        assert plans[suffix].arch == "timm:repvgg_a0" and plans[suffix].strides == "traced"
        assert {a.layer: a.target for a in plans[suffix].placed} == want
        assert {a.layer: a.target for a in estimated[suffix].placed} == want
    assert _plan_rows(plans["safetensors"]) == _plan_rows(plans["pth"])
    assert _plan_rows(estimated["safetensors"]) == _plan_rows(estimated["pth"])


def test_other_seed_differs_only_in_drawn_values(from_file: FromFile):
    a, b = from_file.result("pth", 0), from_file.result("pth", 1)
    plan = from_file.plans["pth", 1]
    assert _plan_rows(plan) == _plan_rows(from_file.plans["pth", 0])
    drawn = {x.target: [t for t, s in enumerate(x.keep) if s is None] for x in plan.placed}
    assert all(x.in_map != "follow" for x in plan.placed)  # so kept kernels hold no drawn input channel
    for k in a:
        if k not in drawn:
            assert torch.equal(a[k], b[k]), k  # untouched tensors, and BN (bundle values or the target's own)
            continue
        differs = (a[k] != b[k]).flatten(1).any(dim=1)
        assert differs.nonzero().flatten().tolist() == drawn[k], k
        assert (a[k][drawn[k]] != b[k][drawn[k]]).all(), k


# pickle targets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "wrapped"])
def test_pickle_target_round_trips(tv_resnet50: Case, bundle_small: Path, tmp_path: Path, wrapped: bool):
    case = tv_resnet50
    target, out = tmp_path / "resnet50.pth", tmp_path / "resnet50_lg.pth"
    torch.save({"state_dict": case.original, "epoch": 3} if wrapped else case.original, target)
    before = _sha(target)
    plan = transplant(bundle_small, str(target), out, seed=0)
    assert _sha(target) == before
    assert plan.target_format == "pickle" and plan.strides == "traced" and plan.arch == "timm:resnet50"
    assert plan.wrapper == ("under ['state_dict']" if wrapped else "bare state_dict")
    assert _plan_rows(plan) == _plan_rows(case.plan)
    obj = torch.load(out, weights_only=True)
    if wrapped:
        assert list(obj) == ["state_dict", "epoch"] and obj["epoch"] == 3
        obj = obj["state_dict"]
    assert list(obj) == list(case.original)
    for k, v in obj.items():
        assert torch.equal(v, case.result[k]), k
    case.model.load_state_dict(obj, strict=True)
