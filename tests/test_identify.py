"""Identification and tracing of target files: the architecture found before any guess, placements in execution order.

Bugs this file was written against (issue 12): without --arch a VGG-16 file got stage 3 in block 3
(real stride 4) shown as stride 16; with --arch on a .safetensors file convs were ordered by name
(VGG-16's s1.1 in features.10, ResNet-101's stage-3 run in layer3.7-9 instead of layer3.20-22);
the dummy input took its channels from the file's first 4-D tensor; a Lightning `model.` prefix
or transformers' saved names were "not the right model".
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from learngene_tools.architectures.keysets import align_keys
from learngene_tools.architectures.specs import build_model
from learngene_tools.architectures.tracing import model_input_size, on_meta
from learngene_tools.errors import ModelError
from learngene_tools.io.checkpoint import checkpoint_from_state_dict
from learngene_tools.transplantation.apply import transplant
from learngene_tools.transplantation.planner import TransplantPlan, plan_transplant


def _placed(plan: TransplantPlan) -> dict[str, str]:
    return {a.layer: a.target for a in plan.placed}


def _rows(plan: TransplantPlan) -> list[tuple]:
    return [(a.layer, a.target, a.target_shape, a.keep, a.in_map, a.follow, a.bn, a.reduction) for a in plan.assignments]


def _state(spec: str, **kwargs) -> dict[str, torch.Tensor]:
    with on_meta():
        model = build_model(spec, **kwargs)
    return {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """State dicts as users save them (zeros: identification and tracing read names and shapes only)."""
    d = tmp_path_factory.mktemp("targets")
    save_file(_state("torchvision:vgg16"), str(d / "vgg16.safetensors"))
    torch.save(_state("torchvision:vgg16"), d / "vgg16.pth")
    save_file(_state("torchvision:resnet101"), str(d / "resnet101.safetensors"))
    torch.save(_state("timm:densenet121"), d / "densenet121.pth")
    torch.save(_state("timm:resnet50", num_classes=10), d / "resnet50_10classes.pth")
    torch.save({"state_dict": {f"model.{k}": v for k, v in _state("timm:resnet18").items()}, "epoch": 3},
               d / "lightning.ckpt")
    return d


# identification ------------------------------------------------------------------------------------------------


def test_vgg16_file_is_identified_and_stage3_sits_at_stride_16(bundle_small: Path, files: Path):
    for suffix in ("pth", "safetensors"):
        plan = plan_transplant(bundle_small, files / f"vgg16.{suffix}")
        assert plan.strides == "traced" and plan.arch == "torchvision:vgg16", suffix
        assert plan.identification == "identified as torchvision:vgg16 (exact key and shape match)"
        assert _placed(plan) == {"s1.0": "features.0.weight", "s1.1": "features.2.weight", "s3.0": "features.24.weight",
                                 "s3.1": "features.26.weight", "s3.2": "features.28.weight"}, suffix
        assert [a.reduction for a in plan.placed] == [1, 1, 16, 16, 16]
        assert not plan.warnings


def test_other_class_count_and_common_nets_are_identified(bundle_small: Path, files: Path):
    plan = plan_transplant(bundle_small, files / "resnet50_10classes.pth")
    assert plan.arch == "timm:resnet50" and plan.strides == "traced"
    plan = plan_transplant(bundle_small, files / "densenet121.pth")  # refused when its strides were guessed
    assert plan.strides == "traced" and plan.arch in ("timm:densenet121", "torchvision:densenet121")
    assert len(plan.placed) == 5


def test_lightning_prefix_is_identified_and_written_under_its_own_keys(bundle_small: Path, files: Path, tmp_path: Path):
    out = tmp_path / "out.ckpt"
    plan = transplant(bundle_small, str(files / "lightning.ckpt"), out)
    assert plan.arch == "timm:resnet18" and plan.strides == "traced"
    assert all(a.target.startswith("model.") for a in plan.placed)
    got = torch.load(out, weights_only=True)
    assert got["epoch"] == 3
    model = build_model("timm:resnet18")
    model.load_state_dict({k.removeprefix("model."): v for k, v in got["state_dict"].items()}, strict=True)
    assert torch.equal(model.conv1.weight, got["state_dict"]["model.conv1.weight"])


def test_unidentified_target_warns_estimates_and_require_traced_refuses(bundle_tiny: Path, tmp_path: Path):
    import tinymodels

    torch.save(tinymodels.tiny_vgg().state_dict(), tmp_path / "mine.pth")
    plan = plan_transplant(bundle_tiny, tmp_path / "mine.pth")
    assert plan.strides == "estimated" and plan.arch is None
    assert plan.identification.startswith("not identified: no model that timm, torchvision")
    assert len(plan.warnings) == 1 and "--arch" in plan.warnings[0] and "--require-traced" in plan.warnings[0]
    assert plan.to_json()["strides"] == "estimated"
    with pytest.raises(ModelError, match="architecture was not identified .* pass arch=SPEC") as e:
        transplant(bundle_tiny, str(tmp_path / "mine.pth"), tmp_path / "out.pth", require_traced=True)
    assert "pass --arch SPEC" in e.value.cli_text  # what `lgt` prints
    assert not (tmp_path / "out.pth").exists()
    traced = transplant(bundle_tiny, str(tmp_path / "mine.pth"), None, arch="tinymodels:tiny_vgg", require_traced=True)
    assert traced.strides == "traced" and not traced.warnings


def test_inspect_shows_the_identification(files: Path):
    from learngene_tools.transplantation.target import describe_target

    s = describe_target(files / "vgg16.safetensors")
    assert s["strides"] == "traced" and s["arch"] == "torchvision:vgg16"
    assert s["identification"]["text"] == "identified as torchvision:vgg16 (exact key and shape match)"
    assert [c["key"] for c in s["convs"]][:3] == ["features.0.weight", "features.2.weight", "features.5.weight"]


# tracing with --arch -------------------------------------------------------------------------------------------


def test_arch_on_safetensors_places_in_execution_order(bundle_small: Path, files: Path):
    """safetensors stores keys by name: features.10 before features.2, layer3.10 before layer3.2."""
    vgg = plan_transplant(bundle_small, files / "vgg16.safetensors", _settings(arch="torchvision:vgg16"))
    assert _placed(vgg)["s1.1"] == "features.2.weight"
    r101 = plan_transplant(bundle_small, files / "resnet101.safetensors", _settings(arch="torchvision:resnet101"))
    assert [_placed(r101)[f"s3.{i}"] for i in range(3)] == [f"layer3.{b}.conv2.weight" for b in (20, 21, 22)]
    assert [c.key for c in r101.convs][:3] == ["conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight"]
    assert r101.identification == "torchvision:resnet101 (given with --arch)"
    assert _rows(plan_transplant(bundle_small, files / "resnet101.safetensors")) == _rows(r101)  # identified: same


def _settings(**kw):
    from learngene_tools.transplantation.config import TransplantSettings

    return TransplantSettings(**kw)


@pytest.mark.parametrize("spec,channels,side", [
    ("timm:botnet26t_256", 3, 256), ("timm:mobilevit_s", 3, 256), ("timm:tresnet_m", 3, 224),
    ("timm:resnet50", 3, 224), ("torchvision:resnet18", 3, 224),
])
def test_dummy_input_comes_from_the_model(spec: str, channels: int, side: int):
    with on_meta():
        model = build_model(spec)
    assert model_input_size(model) == (channels, side, side)
    assert model_input_size(model, (2, 64, 96)) == (2, 64, 96) and model_input_size(model, (64, 96)) == (channels, 64, 96)


def test_arch_with_a_prefix_or_saved_names_aligns_and_other_keys_are_listed(files: Path):
    model = _state("timm:resnet18")
    ckpt = {f"model.backbone.{k}": tuple(v.shape) for k, v in model.items()}
    ckpt["model.head.weight"] = (5, 512)
    km = align_keys({k: tuple(v.shape) for k, v in model.items()}, ckpt)
    assert km.ckpt("conv1.weight") == "model.backbone.conv1.weight" and "prefix 'model.backbone.'" in km.how
    other = {k: tuple(v.shape) for k, v in _state("timm:resnet34").items()}
    with pytest.raises(ModelError) as e:
        align_keys(other, {k: tuple(v.shape) for k, v in model.items()}, what="the --arch model timm:resnet34")
    msg = str(e.value)
    assert "the --arch model timm:resnet34 does not match" in msg and "layer1.2.conv1.weight" in msg
    assert "not in the checkpoint" in msg


def test_arch_that_is_not_the_model_says_which_keys_differ(bundle_small: Path, files: Path):
    with pytest.raises(ModelError, match=r"timm:resnet34 does not match the checkpoint under prefix 'model.': .*e\.g\. layer1\.2\.") as e:
        plan_transplant(bundle_small, files / "lightning.ckpt", _settings(arch="timm:resnet34"))
    assert "right model" in str(e.value)


def test_identified_checkpoint_object_is_not_needed_for_a_spec(bundle_small: Path):
    ckpt = checkpoint_from_state_dict(_state("timm:resnet18"), "x")
    from learngene_tools.architectures.identify import identify

    found = identify(ckpt)
    assert [a.spec for a in found.candidates][:1] == ["timm:resnet18"]


@pytest.mark.parametrize("spec", ["learngene_tools.descendants:deeplabv3plus_resnet50", "timm:botnet26t_256",
                                  "timm:mobilevit_s"])
def test_arch_on_a_file_plans_as_the_spec(bundle_small: Path, tmp_path: Path, spec: str):
    """The dummy input came from the file's first 4-D tensor ([1, 2048, 224, 224] for smp DeepLabV3+): now from the
    model, so --arch on the model's own file plans exactly as the spec."""
    if spec.startswith("learngene_tools.descendants"):
        pytest.importorskip("segmentation_models_pytorch")
    model = build_model(spec)
    save_file(model.state_dict(), str(tmp_path / "t.safetensors"))
    by_spec = plan_transplant(bundle_small, spec)
    by_file = plan_transplant(bundle_small, tmp_path / "t.safetensors", _settings(arch=spec))
    assert by_file.strides == "traced" and _rows(by_file) == _rows(by_spec)
    assert [c.key for c in by_file.convs] == [c.key for c in by_spec.convs]  # execution order, whatever the file order
