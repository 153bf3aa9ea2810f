"""The checkpoint files users have, transplanted and loaded back by their own ecosystem's loader.

- ultralytics: `YOLO(...).save()`, the trainer's `last.pt` (`model` None, `ema` set, optimizer state) and a
  checkpoint with both `model` and `ema`: pickled DetectionModel objects, so --trust-pickle is needed;
  `YOLO(OUT)` loads, predicts and trains a step;
- timm training checkpoints (`state_dict`, `state_dict_ema`, `optimizer`, `arch`, `args`): every copy gets
  the plan, `timm.models.load_checkpoint` (EMA by default) runs the learngene;
- save_pretrained folders (transformers sharded, timm, smp): folder in, folder out, `from_pretrained` loads
  with no missing or unexpected key, shards rewritten only where a tensor changed.
Every test checks that the learngene tensors are what the loaded model runs with and that inputs are unchanged.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
from pathlib import Path

import pytest
import torch

from learngene_tools.errors import OutputError, UnsafeInputError
from learngene_tools.io.bundle import read_bundle
from learngene_tools.transplantation.apply import adapted_tensors, transplant
from learngene_tools.transplantation.planner import TransplantPlan

os.environ.setdefault("YOLO_VERBOSE", "False")


def _hashes(path: Path) -> dict[str, str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _expected(plan: TransplantPlan) -> dict[str, torch.Tensor]:
    """The rewritten tensors, computed from the plan (what the loaded model must run with)."""
    return adapted_tensors(plan, read_bundle(plan.bundle), plan.target_checkpoint)


def _assert_runs_with(named: dict[str, torch.Tensor], plan: TransplantPlan, rename=lambda k: k) -> None:
    want = _expected(plan)
    for a in plan.placed:
        got = named[rename(a.target)].detach().float()
        torch.testing.assert_close(got, want[a.target].float(), rtol=0, atol=1e-3 if want[a.target].dtype ==
                                   torch.float16 else 0)


# ultralytics -----------------------------------------------------------------------------------------------------


YOLO_PLACED = {"s1.0": "model.0.conv.weight", "s1.1": "model.1.conv.weight", "s3.0": "model.6.m.0.cv2.conv.weight",
               "s3.1": "model.6.m.1.cv1.conv.weight", "s3.2": "model.6.m.1.cv2.conv.weight"}


@pytest.fixture(scope="module")
def yolo_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("ultralytics")
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import convert_optimizer_state_dict_to_fp16

    d = tmp_path_factory.mktemp("yolo")
    torch.manual_seed(0)
    yolo = YOLO("yolov8n.yaml")
    yolo.save(d / "yolov8n.pt")  # `model` set, `ema` None
    model = yolo.model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    opt.zero_grad()
    sum(p.sum() for p in model.parameters()).backward()
    opt.step()
    ema = copy.deepcopy(model).half()
    common = {"epoch": 0, "best_fitness": None, "updates": 1, "train_args": {"imgsz": 64}, "date": "2026-11-25",
              "version": "8.4"}
    # the trainer's last.pt: model None, the EMA holds the weights, optimizer state (fp16) beside it
    torch.save({**common, "model": None, "ema": ema,
                "optimizer": convert_optimizer_state_dict_to_fp16(copy.deepcopy(opt.state_dict()))}, d / "last.pt")
    torch.save({**common, "model": copy.deepcopy(model).half(), "ema": ema}, d / "both.pt")
    return d


def test_yolo_file_needs_trust_pickle_and_says_so(yolo_files: Path, bundle_small: Path, tmp_path: Path):
    with pytest.raises(UnsafeInputError, match=r"yolov8n\.pt: is an ultralytics checkpoint: .* pass --trust-pickle"):
        transplant(bundle_small, str(yolo_files / "yolov8n.pt"), tmp_path / "out.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["yolov8n.pt", "last.pt", "both.pt"])
def test_yolo_checkpoint_loads_predicts_and_trains(yolo_files: Path, bundle_small: Path, tmp_path: Path, name: str):
    import numpy as np
    from test_descendants import _training_step
    from ultralytics import YOLO

    before = _hashes(yolo_files / name)
    out = tmp_path / f"lg_{name}"
    plan = transplant(bundle_small, str(yolo_files / name), out, trust_pickle=True, drop_optimizer=True)
    assert _hashes(yolo_files / name) == before
    assert {a.layer: a.target for a in plan.placed} == YOLO_PLACED
    assert plan.strides == "traced" and plan.arch == "ultralytics:yolov8n.yaml"
    assert plan.identification == "identified as ultralytics:yolov8n.yaml (the checkpoint's own DetectionModel object)"
    copies = {"yolov8n.pt": ["['model'] (DetectionModel)"], "last.pt": ["['ema'] (DetectionModel)"],
              "both.pt": ["['model'] (DetectionModel)", "['ema'] (DetectionModel)"]}[name]
    assert list(plan.copies) == copies

    written = torch.load(out, weights_only=False)
    original = torch.load(yolo_files / name, weights_only=False)
    assert set(written) == set(original) - {"optimizer"}  # --drop-optimizer
    for key in ("model", "ema"):
        if original[key] is None:
            assert written[key] is None
            continue
        assert type(written[key]) is type(original[key])
        a, b = original[key].state_dict(), written[key].state_dict()
        assert {k: (v.shape, v.dtype) for k, v in a.items()} == {k: (v.shape, v.dtype) for k, v in b.items()}
        changed = set(plan.changed_keys())
        assert all(torch.equal(a[k], b[k]) for k in a if k not in changed)
        _assert_runs_with(b, plan)

    yolo = YOLO(str(out))
    _assert_runs_with(yolo.model.state_dict(), plan)  # what the loader runs: `ema` or else `model`, as float
    results = yolo.predict(np.zeros((64, 64, 3), dtype=np.uint8), imgsz=64, verbose=False)
    assert len(results) == 1
    assert torch.isfinite(_training_step("yolov8n", yolo.model))


def test_yolo_optimizer_state_is_reported_and_kept_unless_dropped(yolo_files: Path, bundle_small: Path,
                                                                   tmp_path: Path):
    plan = transplant(bundle_small, str(yolo_files / "last.pt"), tmp_path / "out.pt", trust_pickle=True)
    assert plan.optimizer_state == ("optimizer",) and not plan.drop_optimizer
    assert any("optimizer state (optimizer)" in w and "--drop-optimizer" in w for w in plan.warnings)
    assert torch.load(tmp_path / "out.pt", weights_only=False)["optimizer"] is not None


# timm training checkpoint ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timm_training_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import timm
    from timm.utils import ModelEmaV3, get_state_dict

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    ema = ModelEmaV3(model, decay=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    opt.step()
    ema.update(model)
    path = tmp_path_factory.mktemp("timm") / "checkpoint-1.pth.tar"
    torch.save({"epoch": 1, "arch": "resnet18", "state_dict": get_state_dict(model), "optimizer": opt.state_dict(),
                "version": 2, "args": argparse.Namespace(model="resnet18", lr=0.1),
                "state_dict_ema": get_state_dict(ema)}, path)
    return path


def test_timm_training_checkpoint_every_copy_gets_the_plan(timm_training_checkpoint: Path, bundle_small: Path,
                                                            tmp_path: Path):
    import timm
    from timm.models import load_checkpoint

    before = _hashes(timm_training_checkpoint)
    out = tmp_path / "checkpoint-1_lg.pth.tar"
    plan = transplant(bundle_small, str(timm_training_checkpoint), out, trust_pickle=True)
    assert _hashes(timm_training_checkpoint) == before
    assert plan.identification == "identified as timm:resnet18 (the checkpoint's `arch` entry)"
    assert list(plan.copies) == ["['state_dict']", "['state_dict_ema']"]
    assert plan.optimizer_state == ("optimizer",) and any("--drop-optimizer" in w for w in plan.warnings)
    original = torch.load(timm_training_checkpoint, weights_only=False)
    written = torch.load(out, weights_only=False)
    assert list(written) == list(original) and written["args"] == original["args"]
    changed = set(plan.changed_keys())
    for copy_key in ("state_dict", "state_dict_ema"):
        a, b = original[copy_key], written[copy_key]
        assert all(torch.equal(a[k], b[k]) for k in a if k not in changed)
        assert all(not torch.equal(a[k], b[k]) for k in changed)
    # new kernels keep each copy's own BN values (the EMA's differ from the model's)
    kept = [t for t, s in enumerate(plan.placed[0].keep) if s is None]
    assert torch.equal(written["state_dict_ema"]["bn1.running_mean"][kept],
                       original["state_dict_ema"]["bn1.running_mean"][kept])
    model = timm.create_model("resnet18", num_classes=10)
    load_checkpoint(model, str(out), use_ema=True, weights_only=False)  # timm's default: the EMA
    _assert_runs_with(dict(model.state_dict()), plan)

    dropped = transplant(bundle_small, str(timm_training_checkpoint), tmp_path / "dropped.pth.tar",
                         trust_pickle=True, drop_optimizer=True)
    assert "optimizer" not in torch.load(tmp_path / "dropped.pth.tar", weights_only=False)
    assert not dropped.warnings


# save_pretrained folders -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("folders")
    pytest.importorskip("transformers")
    pytest.importorskip("segmentation_models_pytorch")
    import segmentation_models_pytorch as smp
    import timm
    from timm.models import save_for_hf
    from transformers import DetrConfig, DetrForObjectDetection

    torch.manual_seed(0)
    DetrForObjectDetection(DetrConfig(use_pretrained_backbone=False)).save_pretrained(d / "detr", max_shard_size="40MB")
    save_for_hf(timm.create_model("resnet18", num_classes=7), str(d / "timm_resnet18"), safe_serialization="both")
    smp.DeepLabV3Plus(encoder_name="resnet18", encoder_weights=None, classes=3).save_pretrained(str(d / "smp_dlv3p"))
    return d


def test_transformers_sharded_folder_in_folder_out(folders: Path, bundle_small: Path, tmp_path: Path):
    from transformers import DetrForObjectDetection

    src, out = folders / "detr", tmp_path / "detr_lg"
    before = _hashes(src)
    plan = transplant(bundle_small, str(src), out)
    assert _hashes(src) == before
    assert plan.identification.startswith("identified as transformers:DetrForObjectDetection (config.json")
    saved = "model.backbone.conv_encoder.model."
    assert {a.layer: a.target for a in plan.placed} == {
        "s1.0": f"{saved}conv1.weight", "s1.1": f"{saved}layer1.0.conv2.weight",
        **{f"s3.{i}": f"{saved}layer3.{i + 3}.conv2.weight" for i in range(3)}}
    assert plan.target_format == "folder" and len(plan.copies) == 1 and "shards" in plan.copies[0]
    shards = sorted(p.name for p in src.glob("model-*.safetensors"))
    assert len(shards) > 1
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir())  # nothing else left
    assert (out / "config.json").read_bytes() == (src / "config.json").read_bytes()
    from safetensors import safe_open

    changed = set(plan.changed_keys())
    for shard in shards:
        with safe_open(str(src / shard), "pt") as f:
            touched = bool(set(f.keys()) & changed)
        same = (out / shard).read_bytes() == (src / shard).read_bytes()
        assert same != touched, shard  # rewritten exactly where a tensor changed
    model, info = DetrForObjectDetection.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    _assert_runs_with(dict(model.state_dict()), plan, rename=lambda k: k.replace(saved, "model.backbone.model."))


def test_timm_folder_with_both_weight_files(folders: Path, bundle_small: Path, tmp_path: Path):
    import timm
    from safetensors.torch import load_file

    src, out = folders / "timm_resnet18", tmp_path / "timm_lg"
    plan = transplant(bundle_small, str(src), out)
    assert plan.identification == "identified as timm:resnet18 (config.json: architecture resnet18)"
    assert list(plan.copies) == ["model.safetensors", "pytorch_model.bin"]
    st, pt = load_file(str(out / "model.safetensors")), torch.load(out / "pytorch_model.bin", weights_only=True)
    assert all(torch.equal(st[k], pt[k]) for k in st)
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert model.fc.out_features == 7
    _assert_runs_with(dict(model.state_dict()), plan)


def test_smp_folder(folders: Path, bundle_small: Path, tmp_path: Path):
    import segmentation_models_pytorch as smp

    src, out = folders / "smp_dlv3p", tmp_path / "smp_lg"
    plan = transplant(bundle_small, str(src), out)
    assert plan.identification == "identified as smp:DeepLabV3Plus/resnet18 (config.json: _model_class DeepLabV3Plus)"
    model = smp.from_pretrained(str(out))
    _assert_runs_with(dict(model.state_dict()), plan)
    assert (out / "README.md").read_bytes() == (src / "README.md").read_bytes()


def test_folder_output_checks(folders: Path, bundle_small: Path, tmp_path: Path):
    src = folders / "smp_dlv3p"
    before = _hashes(src)
    with pytest.raises(OutputError, match="inside the input folder"):
        transplant(bundle_small, str(src), src / "out")
    with pytest.raises(OutputError, match="written back as one; give a folder name"):
        transplant(bundle_small, str(src), tmp_path / "out.safetensors")
    (tmp_path / "exists").mkdir()
    with pytest.raises(OutputError, match="already exists; pass --force"):
        transplant(bundle_small, str(src), tmp_path / "exists")
    with pytest.raises(OutputError, match="holds the input"):
        transplant(bundle_small, str(src), folders, force=True)
    assert _hashes(src) == before
    transplant(bundle_small, str(src), tmp_path / "exists", force=True)
    assert (tmp_path / "exists" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]  # no temporary folder left


def test_copies_that_differ_are_refused_before_anything_is_written(bundle_small: Path, tmp_path: Path):
    from learngene_tools.architectures.specs import build_model
    from learngene_tools.errors import InvalidFileError

    sd = build_model("timm:resnet18").state_dict()
    ema = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    torch.save({"state_dict": sd, "state_dict_ema": ema}, tmp_path / "odd.pth")
    with pytest.raises(InvalidFileError, match=r"weight copies differ \(\['state_dict'\]: 122 tensors, "
                                               r"\['state_dict_ema'\]: 120; e\.g\. fc\.bias\)"):
        transplant(bundle_small, str(tmp_path / "odd.pth"), tmp_path / "out.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.pth"]
