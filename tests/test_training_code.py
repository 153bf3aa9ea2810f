"""README "In your training code": each recipe there, run with the real package on CPU, random weights, nothing
downloaded: timm (`create_model(..., pretrained_cfg_overlay=dict(file=...))`), a PyTorch Lightning callback that
transplants at fit start, the Hugging Face `Trainer` on a transplanted `save_pretrained` folder, and ultralytics
`YOLO(out).train(...)` for one epoch on two images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import learngene_tools as lg

os.environ.setdefault("YOLO_VERBOSE", "False")


def _changed(plan: lg.TransplantPlan) -> list[str]:
    return [a.target for a in plan.placed]


def test_timm_create_model_from_a_transplanted_file(tmp_path: Path):
    import timm
    from safetensors.torch import load_file

    plan = lg.transplant("lgt:default", "timm:resnet18(num_classes=10)", tmp_path / "resnet18_lg.safetensors")
    model = timm.create_model("resnet18", num_classes=10, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "resnet18_lg.safetensors"), num_classes=10))
    written = load_file(str(tmp_path / "resnet18_lg.safetensors"))
    state = model.state_dict()
    assert _changed(plan) and all(torch.equal(state[k], written[k]) for k in written)


def test_lightning_callback_transplants_at_fit_start(tmp_path: Path):
    L = pytest.importorskip("lightning.pytorch")
    import timm

    class Learngene(L.Callback):  # the callback README shows
        def __init__(self, bundle: str = "lgt:default", **settings):
            self.bundle, self.settings = bundle, settings

        def on_fit_start(self, trainer, pl_module):
            if not trainer.ckpt_path:  # a resumed run keeps its trained weights
                self.plan = lg.transplant(self.bundle, pl_module.model, **self.settings)

    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = timm.create_model("resnet18", num_classes=3)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    module = Classifier()
    expected = lg.apply_plan(lg.plan_transplant("lgt:default", module.model.state_dict(), arch="timm:resnet18"), None)
    seen = {}

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.update({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})

    data = torch.utils.data.TensorDataset(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    callback = Learngene()
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback, Spy()],
                        default_root_dir=tmp_path)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))
    assert _changed(callback.plan)
    assert all(torch.equal(seen[k], expected[k]) for k in callback.plan.changed_keys())  # the first step starts there


def test_hf_trainer_on_a_transplanted_folder(tmp_path: Path):
    transformers = pytest.importorskip("transformers")
    from transformers import ResNetConfig, ResNetForImageClassification, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=3)
    ResNetForImageClassification(config).save_pretrained(tmp_path / "resnet")
    plan = lg.transplant("lgt:default", tmp_path / "resnet", tmp_path / "resnet_lg")
    assert plan.strides == "traced" and _changed(plan)
    model = ResNetForImageClassification.from_pretrained(tmp_path / "resnet_lg")
    data = [{"pixel_values": torch.randn(3, 32, 32), "labels": i % 3} for i in range(4)]
    args = TrainingArguments(str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, use_cpu=True,
                             report_to=[], save_strategy="no", logging_strategy="no", dataloader_num_workers=0)
    result = Trainer(model=model, args=args, train_dataset=data).train()
    assert np.isfinite(result.training_loss) and transformers.__version__


def test_ultralytics_trains_from_a_transplanted_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("ultralytics")
    from PIL import Image
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for split in ("train",):
        (tmp_path / "data" / "images" / split).mkdir(parents=True)
        (tmp_path / "data" / "labels" / split).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
                tmp_path / "data" / "images" / split / f"{i}.jpg")
            (tmp_path / "data" / "labels" / split / f"{i}.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    (tmp_path / "data.yaml").write_text(f"path: {tmp_path / 'data'}\ntrain: images/train\nval: images/train\n"
                                        "names:\n  0: thing\n")
    YOLO("yolov8n.yaml").save(tmp_path / "yolov8n.pt")
    plan = lg.transplant("lgt:default", "yolov8n.pt", "yolov8n_lg.pt", trust_pickle=True)
    assert plan.strides == "traced" and _changed(plan)
    YOLO("yolov8n_lg.pt").train(data=str(tmp_path / "data.yaml"), epochs=1, imgsz=64, batch=2, device="cpu",
                                workers=0, plots=False, val=False, amp=False, project=str(tmp_path / "runs"),
                                name="lg", exist_ok=True)
    assert (tmp_path / "runs" / "lg" / "weights" / "last.pt").is_file()
