"""Distillation on CPU with a tiny teacher and a tiny auxiliary model: loss, resume, DDP (gloo), data, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from learngene_tools.distillation.config import DistillSettings, LossSettings, RunOptions, lr_at
from learngene_tools.distillation.data import ImageFolder, StepSampler, SyntheticImages
from learngene_tools.distillation.loop import AUX_FILE, METRICS_FILE, STATE_FILE, Student, distill
from learngene_tools.distillation.loss import DistillLoss, whiten
from learngene_tools.distillation.teacher import build_teacher, trace_taps
from learngene_tools.errors import LgtError
from learngene_tools.extraction.config import SelectionSettings
from learngene_tools.extraction.extract import extract
from learngene_tools.io.bundle import read_bundle
from learngene_tools.models.auxiliary import create_aux
from learngene_tools.models.variants import VARIANTS

TESTS = Path(__file__).parent
TEACHER = "tinymodels:tiny_vgg"


def settings(**kw) -> DistillSettings:
    base = dict(arch=TEACHER, aux=VARIANTS["lgt_aux_tiny"], img_size=32, batch_size=8, steps=12, lr=3e-3,
                warmup_steps=2, seed=0)
    return DistillSettings(**{**base, **kw})


def options(work: Path, teacher: Path, **kw) -> RunOptions:
    return RunOptions(**{**dict(work_dir=work, ancestry=teacher, ckpt_every=4, log_every=2, num_workers=0), **kw})


def test_teacher_taps_at_strides_4_8_16(teacher_file: Path) -> None:
    teacher, desc = build_teacher(TEACHER, teacher_file, img_size=32)
    feats = teacher(torch.zeros(2, 3, 32, 32))
    assert [f.shape[-1] for f in feats] == [8, 4, 2]
    assert [f.shape[1] for f in feats] == [24, 32, 40]
    from tinymodels import tiny_vgg

    assert desc["taps"] == trace_taps(tiny_vgg(), (3, 32, 32)) == ["0.19", "0.26", "0"]
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.model.training


def test_traced_taps_are_the_outermost_stage_modules() -> None:
    import torchvision

    # the last module at stride 4 is the next block's 1x1 expansion; the stage output is features.3
    assert trace_taps(torchvision.models.mobilenet_v2(weights=None), (3, 64, 64)) == ["features.3", "features.6", "features.13"]


def test_timm_teacher_uses_feature_info() -> None:
    teacher, desc = build_teacher("timm:resnet18", None, img_size=64)
    assert desc["taps"] == ["layer1", "layer2", "layer3"]


def test_whiten_is_a_layer_norm_over_channels() -> None:
    x = torch.randn(2, 5, 3, 4) * 3 + 1
    w = whiten(x)
    assert torch.allclose(w.mean(1), torch.zeros(2, 3, 4), atol=1e-5)
    assert torch.allclose(w.var(1, unbiased=False), torch.ones(2, 3, 4), atol=1e-3)
    ref = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (5,), eps=1e-6).permute(0, 3, 1, 2)
    assert torch.allclose(w, ref, atol=1e-5)


@pytest.mark.parametrize("kind,ratio", [("smoothl1", 0.6), ("l2", 0.6), ("paper", 0.95)])
def test_loss_goes_down_on_a_fixed_batch(kind: str, ratio: float, teacher_file: Path) -> None:
    # the paper's un-squared L2 norm has a constant-size gradient, so it falls more slowly
    teacher, _ = build_teacher(TEACHER, teacher_file, img_size=32)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    with torch.inference_mode():
        t = teacher(x)
    loss_fn = DistillLoss([8, 16, 32], [f.shape[1] for f in t], LossSettings(kind))
    student = Student(create_aux(VARIANTS["lgt_aux_tiny"]), loss_fn)
    targets = [None if v is None else v.clone() for v in loss_fn.teacher_targets([f.clone() for f in t])]
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, per = student(x, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < ratio * losses[0], losses
    assert all(b < a * 1.02 for a, b in zip(losses, losses[1:])), losses
    assert per.shape == (3,) and (per > 0).all()


def test_alphas_select_stages_and_unused_stages_have_no_projection() -> None:
    loss_fn = DistillLoss([8, 16, 32], [24, 32, 40], LossSettings(alphas=(0.0, 0.0, 1.0)))
    assert list(loss_fn.proj) == ["2"]
    feats = [torch.randn(2, c, s, s) for c, s in ((8, 8), (16, 4), (32, 2))]
    tfeats = [torch.randn(2, c, s, s) for c, s in ((24, 8), (32, 4), (40, 2))]
    total, per = loss_fn(feats, loss_fn.teacher_targets(tfeats))
    assert per[0] == 0 and per[1] == 0 and per[2] > 0 and torch.isclose(total, per[2])


@pytest.mark.parametrize("bad", [dict(kind="cosine"), dict(alphas=(0.0, 0.0, 0.0)), dict(alphas=(1.0, -1.0, 1.0)),
                                 dict(beta=0.0)])
def test_bad_loss_settings(bad: dict) -> None:
    with pytest.raises(LgtError):
        LossSettings(**bad)


def test_lr_schedule_warms_up_then_decays() -> None:
    s = settings(steps=100, warmup_steps=10, lr=1.0)
    lrs = [lr_at(i, s) for i in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.02


def test_sampler_is_a_function_of_the_step() -> None:
    full = list(StepSampler(20, 4, seed=1, total_steps=12))
    assert len(full) == 48
    assert list(StepSampler(20, 4, seed=1, start_step=7, total_steps=12)) == full[28:]
    rank0 = list(StepSampler(20, 4, seed=1, total_steps=12, rank=0, world=2))
    rank1 = list(StepSampler(20, 4, seed=1, total_steps=12, rank=1, world=2))
    for step in range(12):
        assert rank0[2 * step : 2 * step + 2] + rank1[2 * step : 2 * step + 2] == full[4 * step : 4 * step + 4]
    epoch0 = [i for i, _ in full[:20]]
    assert sorted(epoch0) == list(range(20))
    with pytest.raises(LgtError, match="fewer than one global batch"):
        StepSampler(3, 4, seed=0)


def test_synthetic_images_are_deterministic_and_varied() -> None:
    ds = SyntheticImages(32, length=10)
    a, b = ds[(0, 123)], ds[(0, 123)]
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, ds[(0, 124)])
    assert a.std() > 0.1


def test_image_folder_recursive_and_corrupt_images_skipped(tmp_path: Path, teacher_file: Path) -> None:
    from PIL import Image

    for i in range(10):
        d = tmp_path / "imgs" / f"class{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy()).save(d / f"{i}.png")
    (tmp_path / "imgs" / "class0" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "imgs" / "notes.txt").write_text("ignored")
    ds = ImageFolder(tmp_path / "imgs", 32)
    assert len(ds) == 11
    assert ds[(0, 5)].shape == (3, 32, 32) and torch.equal(ds[(0, 5)], ds[(0, 5)])
    broken = [i for i, f in enumerate(ds.files) if f.name == "broken.jpg"][0]
    assert ds[(broken, 0)] is None
    out = distill(settings(data=str(tmp_path / "imgs"), steps=8, batch_size=4),
                  options(tmp_path / "work", teacher_file))
    assert out["skipped_images"] >= 1 and out["images_seen"] == 32
    lines = [json.loads(x) for x in (tmp_path / "work" / METRICS_FILE).read_text().splitlines()]
    assert lines[-1]["skipped_images"] == out["skipped_images"]


def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path, teacher_file: Path) -> None:
    s = settings(steps=12, synthetic_length=64)
    full = distill(s, options(tmp_path / "full", teacher_file))
    ref = load_file(str(full["aux_path"]))

    class Crash(Exception):
        pass

    def crash_at_10(record: dict) -> None:
        if record["step"] == 10:
            raise Crash

    with pytest.raises(Crash):
        distill(s, options(tmp_path / "crashed", teacher_file, progress=crash_at_10))
    state = torch.load(tmp_path / "crashed" / STATE_FILE, weights_only=True)
    assert state["step"] == 8  # at most one checkpoint interval (4 steps) lost
    resumed = distill(s, options(tmp_path / "crashed", teacher_file, resume=True))
    assert resumed["resumed_from_step"] == 8 and resumed["steps"] == 12 and resumed["images_seen"] == 96
    got = load_file(str(resumed["aux_path"]))
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


def test_work_dir_guards(tmp_path: Path, teacher_file: Path) -> None:
    s = settings(steps=4)
    with pytest.raises(LgtError, match="nothing to resume"):
        distill(s, options(tmp_path / "w", teacher_file, resume=True))
    distill(s, options(tmp_path / "w", teacher_file))
    with pytest.raises(LgtError, match="pass --resume"):
        distill(s, options(tmp_path / "w", teacher_file))
    with pytest.raises(LgtError, match="settings differ .* lr"):
        distill(replace(s, lr=0.5), options(tmp_path / "w", teacher_file, resume=True))
    with pytest.raises(LgtError, match="already reached step 4"):
        distill(s, options(tmp_path / "w", teacher_file, resume=True))
    more = distill(replace(s, steps=6), options(tmp_path / "w", teacher_file, resume=True))
    assert more["steps"] == 6


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, teacher_file: Path) -> None:
    s = settings(steps=12, lr=1e30, grad_clip=0.0, warmup_steps=0)
    with pytest.raises(LgtError, match="NaN/inf") as e:
        distill(s, options(tmp_path / "w", teacher_file, ckpt_every=1, log_every=1))
    assert "--resume" in str(e.value)
    state = torch.load(tmp_path / "w" / STATE_FILE, weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())
    assert not (tmp_path / "w" / AUX_FILE).exists()


def test_extract_writes_a_bundle_with_full_provenance(tmp_path: Path, teacher_file: Path) -> None:
    out = tmp_path / "learngene.safetensors"
    summary = extract(settings(steps=6, loss=LossSettings("l2", (1.0, 0.0, 1.0))), options(tmp_path / "w", teacher_file),
                      out, SelectionSettings())
    bundle = read_bundle(out)
    prov = bundle.provenance
    assert prov["ancestry"]["arch"] == TEACHER and prov["ancestry"]["checkpoint"] == "teacher.pth"
    assert prov["ancestry"]["checkpoint_sha256"].startswith("sha256:") or len(prov["ancestry"]["checkpoint_sha256"]) >= 64
    dist_ = prov["distillation"]
    assert dist_["steps"] == 6 and dist_["images_seen"] == 48
    assert dist_["settings"]["loss"]["kind"] == "l2" and dist_["settings"]["loss"]["alphas"] == [1.0, 0.0, 1.0]
    assert dist_["settings"]["loss"]["projected"] == "student" and dist_["settings"]["loss"]["whitened"] == "teacher"
    assert len(dist_["final_stage_losses"]) == 3 and dist_["final_stage_losses"][1] == 0.0
    assert prov["auxiliary"]["config"]["widths"] == [8, 16, 32]
    assert summary["bundle"] == out
    lines = (tmp_path / "w" / METRICS_FILE).read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [2, 4, 6]


def _run_cli_distill(work: Path, teacher: Path, nproc: int) -> subprocess.CompletedProcess:
    common = ["distill", str(teacher), "--arch", TEACHER, "--synthetic", "--aux", "lgt_aux_tiny", "--img-size", "32",
              "--batch-size", "8", "--steps", "6", "--warmup-steps", "1", "--ckpt-every", "3", "--log-every", "3",
              "--workers", "0", "--device", "cpu", "--work-dir", str(work)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "learngene_tools", *common]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "learngene_tools.cli.app", *common]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.skipif(shutil.which("true") is None, reason="needs a POSIX system")
@pytest.mark.slow  # torchrun: three interpreters and a rendezvous
def test_torchrun_gloo_two_processes_equal_one(tmp_path: Path, teacher_file: Path) -> None:
    one = _run_cli_distill(tmp_path / "one", teacher_file, 1)
    assert one.returncode == 0, one.stderr
    two = _run_cli_distill(tmp_path / "two", teacher_file, 2)
    if two.returncode != 0:  # one retry: a loaded CI machine can miss torchrun's rendezvous; a second failure is real
        shutil.rmtree(tmp_path / "two", ignore_errors=True)
        two = _run_cli_distill(tmp_path / "two", teacher_file, 2)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("distilled 6 steps") == 1 and "on 2 cpu process(es)" in two.stdout
    a, b = load_file(str(tmp_path / "one" / AUX_FILE)), load_file(str(tmp_path / "two" / AUX_FILE))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=2e-5, rtol=1e-4), (k, (a[k] - b[k]).abs().max())
    m1 = [json.loads(x) for x in (tmp_path / "one" / METRICS_FILE).read_text().splitlines()]
    m2 = [json.loads(x) for x in (tmp_path / "two" / METRICS_FILE).read_text().splitlines()]
    assert [r["loss"] for r in m1] == pytest.approx([r["loss"] for r in m2], rel=1e-4)


def test_cli_errors_are_one_line(tmp_path: Path, teacher_file: Path) -> None:
    from conftest import run_lgt

    r = run_lgt("distill", str(teacher_file), "--arch", TEACHER, "--work-dir", str(tmp_path / "w"), "--synthetic",
                "--data", str(tmp_path))
    assert r.returncode == 2 and "--data DIR" in r.stderr and "not both" in r.stderr and "Traceback" not in r.stderr
    r = run_lgt("distill", str(tmp_path / "nope.pth"), "--arch", TEACHER, "--synthetic")
    assert r.returncode == 2 and "no such ancestry checkpoint" in r.stderr
    r = run_lgt("extract", str(teacher_file), "--arch", TEACHER, "--synthetic", "--loss", "cosine",
                "-o", str(tmp_path / "b.safetensors"))
    assert r.returncode == 2 and "--loss must be one of" in r.stderr
    assert not (tmp_path / "b.safetensors").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_bf16_channels_last_run(tmp_path: Path, teacher_file: Path) -> None:
    out = distill(settings(steps=6, img_size=64), options(tmp_path / "w", teacher_file))
    assert out["device"] == "cuda" and out["precision"] == "bf16" and out["final_loss"] > 0
