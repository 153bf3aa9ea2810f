"""The paper's detection/segmentation descendants from their own packages: YOLOv8n, DETR, DeepLabV3+.

Each is built offline with random init, receives the learngene, loads strictly, runs a forward
pass and one real training step (the package's own loss), and the initialised convs are the
backbone's: stage-1 learngene in the first convs, the last-stage run at the end of stride 16.
These packages come with `pip install -e ".[descendants]"` (CI installs it); without them the
tests are skipped. Full-size models training a step on CPU: `slow` (run by .ci/run and `pytest -m slow`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from learngene_tools.architectures.specs import build_model
from learngene_tools.transplantation.apply import transplant

os.environ.setdefault("YOLO_VERBOSE", "False")
pytestmark = pytest.mark.slow

CASES = {
    "yolov8n": dict(
        package="ultralytics",
        placed={"s1.0": "model.0.conv.weight", "s1.1": "model.1.conv.weight",
                "s3.0": "model.6.m.0.cv2.conv.weight", "s3.1": "model.6.m.1.cv1.conv.weight",
                "s3.2": "model.6.m.1.cv2.conv.weight"},
        params=16 * 3 * 9 + 32 * 16 * 9 + 3 * 64 * 64 * 9,
    ),
    "detr_resnet50": dict(
        package="transformers",
        placed={"s1.0": "model.backbone.model.conv1.weight", "s1.1": "model.backbone.model.layer1.0.conv2.weight",
                **{f"s3.{i}": f"model.backbone.model.layer3.{i + 3}.conv2.weight" for i in range(3)}},
        params=64 * 3 * 49 + 64 * 64 * 9 + 3 * 256 * 256 * 9,
    ),
    "deeplabv3plus_resnet50": dict(
        package="segmentation_models_pytorch",
        placed={"s1.0": "encoder.conv1.weight", "s1.1": "encoder.layer1.0.conv2.weight",
                **{f"s3.{i}": f"encoder.layer3.{i + 3}.conv2.weight" for i in range(3)}},
        params=64 * 3 * 49 + 64 * 64 * 9 + 3 * 256 * 256 * 9,
    ),
}


def _forward(name: str, model: torch.nn.Module) -> torch.Tensor:
    """The model's main output (YOLO's predictions, DETR's class logits, the segmentation mask) in eval mode."""
    model.eval()
    torch.manual_seed(0)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        y = model(pixel_values=x).logits if name == "detr_resnet50" else model(x)
    return y[0] if isinstance(y, (tuple, list)) else y


def _training_step(name: str, model: torch.nn.Module) -> torch.Tensor:
    """One optimiser step with the package's own loss on a random batch; returns the loss."""
    torch.manual_seed(0)
    model.train()
    x = torch.rand(2, 3, 224, 224)
    if name == "yolov8n":
        from ultralytics.cfg import get_cfg
        from ultralytics.utils import DEFAULT_CFG

        model.args = get_cfg(DEFAULT_CFG)
        batch = {"img": x, "batch_idx": torch.tensor([0.0, 1.0]), "cls": torch.tensor([[1.0], [3.0]]),
                 "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2]])}
        loss = model.loss(batch)[0].sum()
    elif name == "detr_resnet50":
        labels = [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}] * 2
        loss = model(pixel_values=x, labels=labels).loss
    else:
        loss = torch.nn.functional.cross_entropy(model(x), torch.randint(0, 1, (2, 224, 224)))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()


@pytest.mark.parametrize("name", list(CASES))
def test_descendant_takes_the_learngene(name: str, bundle_small: Path, tmp_path: Path) -> None:
    case = CASES[name]
    pytest.importorskip(case["package"])
    spec = f"learngene_tools.descendants:{name}"
    out = tmp_path / f"{name}_lg.safetensors"
    plan = transplant(bundle_small, spec, out, seed=0)

    assert {a.layer: a.target for a in plan.placed} == case["placed"]
    assert plan.params_initialised == case["params"]
    assert not any(a.target.split(".")[0] in ("head", "decoder", "segmentation_head") for a in plan.placed)

    original = build_model(spec, seed=0).state_dict()
    written = load_file(str(out))
    assert written.keys() == original.keys()
    changed = set(plan.changed_keys())
    assert {k for k in original if not torch.equal(original[k], written[k])} <= changed
    for k in original:
        if k not in changed:
            assert torch.equal(original[k], written[k]), k
    assert any(k.endswith("running_var") for k in changed), "BN statistics travel with their conv"

    model = build_model(spec, seed=1)
    model.load_state_dict(original, strict=True)  # the target as it was: only the plan's tensors differ from `written`
    before = _forward(name, model)
    model.load_state_dict(written, strict=True)
    after = _forward(name, model)
    assert after.shape == before.shape and after.shape[0] == 1 and torch.isfinite(after).all()
    if name == "deeplabv3plus_resnet50":
        assert after.shape[-2:] == (224, 224)  # a mask at the input's size
    assert not torch.equal(after, before), "the loaded learngene must change what the model computes"
    loss = _training_step(name, model)
    assert torch.isfinite(loss)
