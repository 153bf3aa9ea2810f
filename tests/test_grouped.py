"""--grouped project: grouped and depthwise convs take the block-diagonal part of the adapted dense kernel.

A grouped conv initialised so computes exactly the dense learngene conv's same-group contributions
(the dense conv with every weight outside its output's group zeroed); a depthwise conv keeps the
diagonal. The default (skip) leaves them alone, as before. Also here: squeeze-and-excitation convs
on pooled maps no longer end the backbone (SE-ResNet-50 got no stage-3 layer).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from learngene_tools.architectures.specs import build_model
from learngene_tools.io.bundle import read_bundle
from learngene_tools.transplantation.adapt import adapt_weight, block_diagonal, layer_generator
from learngene_tools.transplantation.apply import transplant


@pytest.mark.parametrize("n,c,groups", [(8, 8, 8), (16, 8, 8), (12, 6, 3), (6, 4, 2), (5, 5, 1)])
def test_block_diagonal_computes_the_same_group_part_of_the_dense_conv(n: int, c: int, groups: int):
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(n, c, 3, 3, generator=g)
    x = torch.randn(2, c, 9, 9, generator=g)
    w = block_diagonal(dense, groups)
    assert w.shape == (n, c // groups, 3, 3)
    mask = torch.zeros(n, c, 1, 1)
    for o in range(n):
        grp = o // (n // groups)
        mask[o, grp * (c // groups):(grp + 1) * (c // groups)] = 1
    torch.testing.assert_close(F.conv2d(x, w, padding=1, groups=groups), F.conv2d(x, dense * mask, padding=1))


def test_depthwise_keeps_the_diagonal():
    dense = torch.arange(4 * 4 * 9, dtype=torch.float32).reshape(4, 4, 3, 3)
    w = block_diagonal(dense, 4)
    assert all(torch.equal(w[i, 0], dense[i, i]) for i in range(4))


@pytest.fixture(scope="module")
def mobilenet(bundle_small: Path, tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("grouped")
    plans = {g: transplant(bundle_small, "torchvision:mobilenet_v2", d / f"{g}.safetensors", grouped=g)
             for g in ("skip", "project")}
    return d, plans


def test_skip_is_the_default_and_project_places_more(mobilenet, bundle_small: Path):
    d, plans = mobilenet
    assert plans["skip"] == transplant(bundle_small, "torchvision:mobilenet_v2", None)  # the default
    assert [a.layer for a in plans["skip"].placed] == ["s1.0"]
    assert {a.layer: (a.target, a.groups) for a in plans["project"].placed} == {
        "s1.0": ("features.0.0.weight", 1), "s1.1": ("features.1.conv.0.0.weight", 32),
        "s3.0": ("features.11.conv.1.0.weight", 384), "s3.1": ("features.12.conv.1.0.weight", 576),
        "s3.2": ("features.13.conv.1.0.weight", 576)}
    skipped = next(c for c in plans["skip"].convs if c.key == "features.1.conv.0.0.weight")
    assert "depthwise" in skipped.reason and "--grouped project" in skipped.reason
    a = next(a for a in plans["project"].placed if a.layer == "s3.0")
    assert any("depthwise conv: adapted as a dense 384x384x3x3 kernel, then its diagonal" in s for s in a.steps)
    assert a.params == 384 * 9


def test_project_output_loads_and_holds_the_diagonal_of_the_adapted_kernel(mobilenet, bundle_small: Path):
    d, plans = mobilenet
    plan = plans["project"]
    got = load_file(str(d / "project.safetensors"))
    model = build_model("torchvision:mobilenet_v2", seed=1)
    model.load_state_dict(got, strict=True)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.rand(1, 3, 64, 64))).all()
    bundle = read_bundle(bundle_small)
    keeps = {x.layer: list(x.keep) for x in plan.placed}
    for a in plan.placed:
        if a.groups == 1:
            continue
        follow = keeps[a.follow] if a.in_map == "follow" and a.follow else None
        dense = adapt_weight(bundle.tensors[f"{a.layer}.weight"], a.dense_shape, keeps[a.layer], follow,
                             layer_generator(plan.seed, a.layer))
        assert torch.equal(got[a.target], torch.stack([dense[o, o] for o in range(dense.shape[0])])[:, None]), a.layer
        kept = [t for t, s in enumerate(a.keep) if s is not None]
        # a kept kernel's diagonal weight is the learngene's, read through the 1x1 fold map of its input channels
        assert got[a.target][kept].abs().sum() > 0


def test_squeeze_excitation_does_not_end_the_backbone(bundle_small: Path):
    plan = transplant(bundle_small, "timm:seresnet50", None)
    assert {a.layer: a.target for a in plan.placed if a.stage == 3} == {
        f"s3.{i}": f"layer3.{3 + i}.conv2.weight" for i in range(3)}
    se = [c for c in plan.convs if ".se." in c.key]
    assert se and all("after the backbone" not in c.reason for c in se)
