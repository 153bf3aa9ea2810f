"""`lgt evaluate`: data, the paired initialisations, the training loop, the grid, the report and the command.

Everything runs on tiny data the tests make themselves (the built-in synthetic task, idx files
and image folders written to tmp_path) and a tiny VGG-style descendant defined here
(`test_evaluate:tiny_cnn`, 16 px): no download, no dataset package.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import run_lgt
from torch import nn

from learngene_tools import api
from learngene_tools.errors import LgtError, ModelError, OutputError, SettingsError
from learngene_tools.evaluation.config import Arm, EvaluationSettings, default_arms
from learngene_tools.evaluation.data import (
    augment,
    carve,
    load_task,
    pad_or_resize,
    read_idx,
    subset_for,
    synthetic_task,
)
from learngene_tools.evaluation.initialise import (
    build_descendant,
    reestimate_bn,
    select_stages,
    transplant_into,
    transplanted_bns,
)
from learngene_tools.evaluation.report import epochs_to_reach, markdown, summarise
from learngene_tools.evaluation.runner import Context, run_grid, run_key, run_one
from learngene_tools.evaluation.train import Device, Schedule, fine_tune
from learngene_tools.io.bundle import read_bundle
from learngene_tools.models.descendants import small_vgg

TESTS = Path(__file__).parent
SPEC = "test_evaluate:tiny_cnn"
WITH_TESTS = {"PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p),
              "OMP_NUM_THREADS": "1"}


def tiny_cnn(in_chans: int = 3, num_classes: int = 4) -> nn.Module:
    """VGG-style: 3x3 convs with BN at strides 1, 2, 4, 8, 16 (widths 8-32), global pool, linear head."""
    return small_vgg(in_chans, num_classes, widths=(8, 8, 16, 16, 32), depths=(2, 1, 1, 1, 2))


def no_classes() -> nn.Module:
    """A factory without num_classes: always 10 logits."""
    return tiny_cnn(3, 10)


TINY = EvaluationSettings(arch=SPEC, data="synthetic", img_size=16, train_limit=96, val_limit=64, test_limit=64,
                          seeds=2, fractions=(1.0, 0.25), epochs=2, batch_size=16, lr=0.05, device="cpu",
                          arms=("scratch", "clkg"))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a loaded machine two OpenMP threads can run 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def task():
    return load_task("synthetic", 16, train_limit=96, val_limit=64, test_limit=64)


# ---- data ------------------------------------------------------------------------------------

def test_carve_is_a_fixed_disjoint_split_and_fractions_nest():
    tr, va = carve(100, 0.1, seed=3)
    assert len(va) == 10 and len(tr) == 90 and not set(tr.tolist()) & set(va.tolist())
    assert torch.equal(carve(100, 0.1, seed=3)[1], va) and not torch.equal(carve(100, 0.1, seed=4)[1], va)
    small, big = subset_for(50, 0.1, seed=1), subset_for(50, 0.5, seed=1)
    assert len(small) == 5 and len(big) == 25 and set(small.tolist()) <= set(big.tolist())
    assert len(subset_for(50, 0.03, seed=0)) == 2  # ceil: never an empty fraction
    with pytest.raises(SettingsError, match="val-fraction"):
        carve(5, 0.01, seed=0)


def _write_idx(path: Path, array: torch.Tensor, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.numpy().tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.fixture(scope="module")
def idx_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("idx")
    g = torch.Generator().manual_seed(0)
    for split, n, compress in (("train", 60, True), ("t10k", 20, False)):
        labels = torch.arange(n, dtype=torch.uint8) % 3
        images = (torch.rand(n, 28, 28, generator=g) * 60 + labels.view(-1, 1, 1).float() * 60).to(torch.uint8)
        suffix = ".gz" if compress else ""
        _write_idx(root / f"{split}-images-idx3-ubyte{suffix}", images, compress)
        _write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", labels, compress)
    return root


def test_idx_folder_is_read_padded_and_split(idx_folder: Path):
    assert read_idx(idx_folder / "t10k-images-idx3-ubyte").shape == (20, 28, 28)
    data = load_task(str(idx_folder), val_fraction=0.25, split_seed=0)
    assert data.size == (32, 32) and data.channels == 1 and data.classes == ("0", "1", "2")
    assert (len(data.train), len(data.val), len(data.test)) == (45, 15, 20)
    assert data.train.images[:, :, :2].sum() == 0  # zero padding 28 -> 32
    assert data.info["format"] == "idx" and "carved" in data.info["split"]
    limited = load_task(str(idx_folder), val_fraction=0.25, train_limit=10, val_limit=5, test_limit=4, with_test=True)
    assert (len(limited.train), len(limited.val), len(limited.test)) == (10, 5, 4)
    assert torch.equal(limited.train.images, data.train.images[:10])


def test_damaged_idx_file_is_one_clear_error(tmp_path: Path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + struct.pack(">III", 5, 28, 28) + b"\x00" * 10)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"\x00" * 5)
    with pytest.raises(LgtError, match="truncated idx file"):
        load_task(str(tmp_path))


def _image_folder(root: Path, classes: int = 2, per_class: int = 4) -> None:
    from PIL import Image

    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (20 + i, 24), (60 * c, 100, 30 * i)).save(root / f"class{c}" / f"{i}.png")


def test_image_folders_given_split_or_carved(tmp_path: Path):
    _image_folder(tmp_path / "given" / "train")
    _image_folder(tmp_path / "given" / "val", per_class=2)
    _image_folder(tmp_path / "given" / "test", per_class=1)
    data = load_task(str(tmp_path / "given"), img_size=16)
    assert (len(data.train), len(data.val), len(data.test)) == (8, 4, 2) and data.size == (16, 16)
    assert data.channels == 3 and data.info["split"] == "given (val/)"
    _image_folder(tmp_path / "flat", per_class=5)
    carved = load_task(str(tmp_path / "flat"), img_size=16, val_fraction=0.2)
    assert (len(carved.train), len(carved.val), carved.test) == (8, 2, None)
    with pytest.raises(LgtError, match="no such folder"):
        load_task(str(tmp_path / "missing"))


def test_synthetic_task_and_augmentation():
    train, val, test, names = synthetic_task(n_train=40, n_val=8, n_test=8, size=16, channels=1, num_classes=4)
    assert train.images.shape == (40, 1, 16, 16) and train.images.dtype == torch.uint8 and len(names) == 4
    assert set(train.labels.tolist()) == {0, 1, 2, 3}
    assert pad_or_resize(train.images, 16) is train.images and pad_or_resize(train.images, 20).shape[-1] == 20
    a = augment(train.images.float(), torch.Generator().manual_seed(1))
    b = augment(train.images.float(), torch.Generator().manual_seed(1))
    assert a.shape == train.images.shape and torch.equal(a, b) and not torch.equal(a, train.images.float())


# ---- initialisation ----------------------------------------------------------------------------

def test_scratch_and_clkg_share_every_tensor_the_plan_does_not_touch(bundle_tiny: Path):
    scratch = build_descendant(SPEC, seed=5, in_chans=3, num_classes=4)
    clkg = build_descendant(SPEC, seed=5, in_chans=3, num_classes=4)
    plan = transplant_into(clkg, SPEC, read_bundle(bundle_tiny), 5, (3, 16, 16), transfer_bn=True, rescale=False)
    changed = set(plan.changed_keys())
    assert changed and len(plan.placed) == 4
    a, b = scratch.state_dict(), clkg.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]) == (k not in changed), k
    other_seed = build_descendant(SPEC, seed=6, in_chans=3, num_classes=4).state_dict()
    assert not torch.equal(other_seed["3.weight"], a["3.weight"])


def test_bn_target_keeps_the_descendants_bn_and_stages_filter(bundle_tiny: Path):
    scratch = build_descendant(SPEC, 0, 3, 4).state_dict()
    model = build_descendant(SPEC, 0, 3, 4)
    bundle = select_stages(read_bundle(bundle_tiny), (1,))
    plan = transplant_into(model, SPEC, bundle, 0, (3, 16, 16), transfer_bn=False, rescale=False)
    assert {a.layer for a in plan.placed} == {"s1.0", "s1.1"} and all(a.bn is None for a in plan.placed)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, scratch[k])}
    assert changed == {a.target for a in plan.placed}  # the conv weights only: every BN is the descendant's own
    with pytest.raises(SettingsError, match="no stage 2"):
        select_stages(read_bundle(bundle_tiny), (2,))


def test_rescale_matches_the_init_std_and_leaves_the_bn_output_unchanged(bundle_tiny: Path):
    plain, scaled = build_descendant(SPEC, 0, 3, 4), build_descendant(SPEC, 0, 3, 4)
    init = {k: v.clone() for k, v in plain.state_dict().items()}
    p1 = transplant_into(plain, SPEC, read_bundle(bundle_tiny), 0, (3, 16, 16), transfer_bn=True, rescale=False)
    transplant_into(scaled, SPEC, read_bundle(bundle_tiny), 0, (3, 16, 16), transfer_bn=True, rescale=True)
    s = scaled.state_dict()
    for a in p1.placed:
        assert abs(float(s[a.target].std()) - float(init[a.target].std())) < 1e-4
    x = torch.randn(4, 3, 16, 16)
    plain.eval(), scaled.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), scaled(x), rtol=1e-4, atol=1e-4)  # BN statistics scaled with the kernels


def test_reestimate_sets_the_transplanted_bns_to_the_data_statistics_only(bundle_tiny: Path):
    model = build_descendant(SPEC, 0, 3, 4)
    plan = transplant_into(model, SPEC, read_bundle(bundle_tiny), 0, (3, 16, 16), transfer_bn=True, rescale=False)
    bns = transplanted_bns(model, plan)
    others = {n: m.running_mean.clone() for n, m in model.named_modules()
              if isinstance(m, nn.BatchNorm2d) and m not in bns}
    affine = [m.weight.detach().clone() for m in bns]
    x = torch.randn(8, 3, 16, 16) * 2 + 1
    reestimate_bn(model, bns, [x])
    first_bn = bns[0]  # after the first conv: its statistics are those of conv(x)
    conv_out = nn.functional.conv2d(x, model[0][0].weight, padding=1)
    torch.testing.assert_close(first_bn.running_mean, conv_out.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert all(torch.equal(m.weight, w) for m, w in zip(bns, affine)) and first_bn.momentum == 0.1
    assert all(torch.equal(dict(model.named_modules())[n].running_mean, v) for n, v in others.items())


def test_a_factory_without_num_classes_is_refused_with_the_reason(task):
    ctx = Context(replace(TINY, arch="test_evaluate:no_classes"), task, {})
    with pytest.raises(ModelError, match="not \\[2, 4\\] logits"):
        run_one(ctx, Arm("scratch"), 1.0, 0)


# ---- training ----------------------------------------------------------------------------------

def test_the_same_seed_gives_the_same_run_and_min_steps_repeats_small_data(task):
    dev = Device.pick("cpu")
    mean, std = torch.tensor(task.mean).view(1, -1, 1, 1), torch.tensor(task.std).view(1, -1, 1, 1)
    curves = []
    for _ in range(2):
        model = build_descendant(SPEC, 1, 3, 4)
        curves.append(fine_tune(model, task.train.take(torch.arange(20)), task.val, Schedule(2, 16, 0.05, 5e-4, True, 12),
                                1, dev, mean, std, 3))
    assert [r["val_acc"] for r in curves[0]] == [r["val_acc"] for r in curves[1]]
    assert Schedule(2, 16, 0.05, 5e-4, True, 12).steps_per_epoch(20) == 6  # 1 full batch per pass, 6 asked for
    assert Schedule(2, 16, 0.05, 5e-4, True, 0).steps_per_epoch(40) == 2


def test_device_falls_back_to_cpu_and_refuses_a_missing_gpu():
    dev = Device.pick("cpu")
    assert dev.device.type == "cpu" and not dev.bf16 and not dev.channels_last
    if not torch.cuda.is_available():
        assert Device.pick(None).device.type == "cpu"
        with pytest.raises(SettingsError, match="no CUDA device"):
            Device.pick("cuda")


# ---- the grid, the record, the report ------------------------------------------------------------

def test_grid_pairs_every_arm_with_scratch_and_resume_reuses_runs(task, bundle_tiny: Path, tmp_path: Path):
    settings = replace(TINY, bn=("transfer", "reestimate"))
    arms = default_arms(bundle_tiny, settings)
    assert [a.name for a in arms] == ["scratch", "clkg bn=transfer", "clkg bn=reestimate"]
    events: list[dict] = []
    record = api.evaluate(bundle_tiny, settings, out_dir=tmp_path, name="ev", progress=events.append)
    assert len(record["runs"]) == 3 * 2 * 2 and {e["kind"] for e in events} == {"start", "epoch", "run"}
    assert all(len(r["val_acc"]) == 2 and r["test_acc"] is not None for r in record["runs"])
    assert all(r["plan"]["layers_placed"] == 4 for r in record["runs"] if r["arm"] != "scratch")
    cells = {(c["fraction"], c["arm"]): c for c in record["summary"]}
    assert "delta_val_final" in cells[(1.0, "clkg bn=transfer")] and "delta_val_final" not in cells[(1.0, "scratch")]
    for suffix in ("json", "md", "png"):
        assert (tmp_path / f"ev.{suffix}").stat().st_size > 0
    md = (tmp_path / "ev.md").read_text()
    assert "| 100 % (96 img) |" in md and "Δ val, final" in md and "Test top-1" in md
    with pytest.raises(OutputError, match="--force"):
        api.evaluate(bundle_tiny, settings, out_dir=tmp_path, name="ev")
    events.clear()
    again = api.evaluate(bundle_tiny, settings, out_dir=tmp_path, name="ev", resume=True, progress=events.append)
    assert all(e["reused"] for e in events if e["kind"] == "run") and not [e for e in events if e["kind"] == "epoch"]
    assert [r["val_acc"] for r in again["runs"]] == [r["val_acc"] for r in record["runs"]]


def test_runs_in_parallel_processes_match_the_serial_ones(task, bundle_tiny: Path):
    s = replace(TINY, seeds=1, fractions=(1.0,), epochs=1)
    ctx = Context(s, task, {str(bundle_tiny): "h"})
    arms = [Arm("scratch"), Arm("clkg", bundle_tiny)]
    serial = run_grid(ctx, arms, None, {}, jobs=1)
    parallel = run_grid(ctx, arms, None, {}, jobs=2)
    assert [r["val_acc"] for r in parallel] == [r["val_acc"] for r in serial]


def test_kd_baseline_trains_with_a_teacher(task, tmp_path: Path):
    import tinymodels

    teacher = tmp_path / "teacher.pth"
    torch.save(tinymodels.tiny_vgg().state_dict(), teacher)
    s = replace(TINY, seeds=1, fractions=(1.0,), epochs=1, teacher_arch="tinymodels:tiny_vgg", kd_weight=0.5)
    record = api.evaluate(None, s, arms=[Arm("scratch"), Arm("kd", kd=True)], teacher=teacher)
    scratch, kd = record["runs"]
    assert kd["arm"] == "kd" and kd["train_loss"] != scratch["train_loss"]  # CE + 0.5 x feature loss
    with pytest.raises(SettingsError, match="needs --teacher"):
        api.evaluate(None, s, arms=[Arm("scratch"), Arm("kd", kd=True)])


def test_summary_is_paired_by_seed():
    def run(arm: str, seed: int, curve: list[float]) -> dict:
        return {"arm": arm, "fraction": 1.0, "seed": seed, "val_acc": curve, "test_acc": curve[-1] - 1,
                "train_images": 10}

    runs = [run("scratch", 0, [50, 60, 70]), run("scratch", 1, [40, 50, 80]),
            run("clkg", 0, [65, 71, 72]), run("clkg", 1, [45, 55, 81])]
    scratch, clkg = summarise(runs, ["scratch", "clkg"], [1.0])
    assert scratch["val_final"] == (75.0, pytest.approx(7.0711, abs=1e-3))
    assert clkg["delta_val_final"] == (1.5, pytest.approx(0.5))  # per-seed differences 2 and 1
    assert clkg["delta_val_epoch1"][0] == 10.0 and clkg["delta_test_final"][0] == 1.5
    assert clkg["epochs_to_scratch_final"] == [2, 3] and epochs_to_reach([1, 2], 3) is None
    record = {"summary": [scratch, clkg], "arms": [Arm("scratch").describe(), Arm("clkg", "b.safetensors").describe()],
              "settings": {**TINY.to_json(), "fractions": [1.0]}, "runs": runs,
              "data": {"data": "synthetic", "format": "synthetic", "split": "built-in", "train": 10, "val": 5, "test": 5},
              "environment": {"device": "cpu", "threads": 1, "jobs": 1, "torch": "x", "minutes": 0.1}}
    md = markdown(record, "t")
    assert "| 100 % | clkg | +10.00 ± 5.00 | +1.50 ± 0.50 | +1.50 ± 0.50 | 2, 3 |" in md


def test_settings_are_checked():
    with pytest.raises(SettingsError, match="--bn takes"):
        EvaluationSettings(bn=("transfer", "keep"))
    with pytest.raises(SettingsError, match="--fractions"):
        EvaluationSettings(fractions=(0.0,))
    with pytest.raises(SettingsError, match="--arch"):
        api.evaluate(None, EvaluationSettings(data="synthetic"), arms=[Arm("scratch")])


# ---- the command -------------------------------------------------------------------------------

def test_lgt_evaluate_as_a_user_runs_it(bundle_tiny: Path, tmp_path: Path):
    from concurrent.futures import ThreadPoolExecutor

    args = ["evaluate", str(bundle_tiny), "--arch", SPEC, "--data", "synthetic", "--img-size", "16", "--train-limit", "48",
            "--val-limit", "32", "--test-limit", "32", "--seeds", "1", "--fractions", "1", "--epochs", "2",
            "--batch-size", "16", "--device", "cpu", "-o", str(tmp_path / "out")]
    with ThreadPoolExecutor(1) as pool:  # a bad call beside the good one
        bad_bn = pool.submit(run_lgt, "evaluate", str(bundle_tiny), "--arch", SPEC, "--data", "synthetic", "--bn", "mine",
                             env_extra=WITH_TESTS)
        r = run_lgt(*args, env_extra=WITH_TESTS)
        assert r.returncode == 0, r.stderr
        assert "| 100 % (48 img) |" in r.stdout and "epoch 2/2" in r.stderr  # one line per epoch off a terminal
        record = json.loads((tmp_path / "out" / "evaluation.json").read_text())
        assert record["command"].startswith("lgt evaluate")
        assert [a["name"] for a in record["arms"]] == ["scratch", "clkg", "random-matched"]
        r = bad_bn.result()
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--bn takes transfer, target, reestimate" in r.stderr


def test_lgt_evaluate_resume_json_and_refusals(bundle_tiny: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from learngene_tools.cli.app import app

    args = ["evaluate", str(bundle_tiny), "--arch", SPEC, "--data", "synthetic", "--img-size", "16", "--train-limit", "32",
            "--val-limit", "16", "--no-test", "--seeds", "1", "--fractions", "1", "--epochs", "1", "--batch-size", "16",
            "--device", "cpu", "-o", str(tmp_path / "out")]
    cli = CliRunner()
    r = cli.invoke(app, [*args, "-q"])
    assert r.exit_code == 0 and r.stdout.strip().endswith("evaluation.md") and r.stderr == ""
    r = cli.invoke(app, [*args, "--resume", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["summary"][0]["arm"] == "scratch" and r.stderr == ""
    r = cli.invoke(app, args)  # outputs exist: refused, one line, exit 2
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "--force" in r.stderr and r.stdout == ""
    r = cli.invoke(app, ["evaluate", str(bundle_tiny), "--data", "synthetic", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--arch" in r.stderr and not (tmp_path / "x").exists()


def test_lgt_transplant_rescale_is_planned_written_and_recorded(bundle_tiny: Path, tmp_path: Path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    out = tmp_path / "tiny_lg.safetensors"
    plan = api.transplant(bundle_tiny, SPEC, out, arch=SPEC, input_size=(16, 16), rescale=True)
    assert plan.rescale and plan.to_json()["rescale"] is True
    with safe_open(str(out), framework="pt") as f:
        assert json.loads(f.metadata()["learngene.transplant"])["rescale"] is True
    written, init = load_file(str(out)), build_descendant(SPEC, 0, 3, 4).state_dict()
    for a in plan.placed:
        assert abs(float(written[a.target].std()) - float(init[a.target].std())) < 1e-4


def test_an_evaluate_recipe_sets_its_options(tmp_path: Path):
    from learngene_tools.cli.recipes import load_recipe

    path = tmp_path / "ev.toml"
    path.write_text('[recipe]\nname = "ev"\n[evaluate]\narch = "timm:resnet18"\ndata = "synthetic"\n'
                    'fractions = [1.0, 0.1]\nbn = ["transfer", "target"]\n')
    assert load_recipe(path, "evaluate").values["bn"] == ("transfer", "target")
    path.write_text('[evaluate]\narch = "timm:resnet18"\nfraction = [1.0]\n')
    with pytest.raises(LgtError, match="unknown key 'fraction'"):
        load_recipe(path, "evaluate")


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise(terminal: bool):
    import io

    from rich.console import Console

    from learngene_tools.cli.progress import evaluation_progress

    buf = io.StringIO()
    show = evaluation_progress(Console(file=buf, force_terminal=terminal, width=120))
    show({"kind": "start", "runs": 2, "epochs": 1, "reused": 1})
    show({"kind": "run", "run": "scratch 100% seed 0", "reused": True, "val_acc": 50.0, "test_acc": None, "seconds": 1})
    show({"kind": "epoch", "run": "clkg 100% seed 0", "epoch": 1, "epochs": 1, "val_acc": 61.5, "val_loss": 1.0,
          "train_loss": 1.2, "seconds": 0.5})
    show({"kind": "run", "run": "clkg 100% seed 0", "reused": False, "val_acc": 61.5, "test_acc": 60.0, "seconds": 2})
    text = buf.getvalue()
    assert "[2/2] clkg 100% seed 0: val 61.50 %, test 60.00 % (2 s)" in text and "(reused)" in text
    assert ("epoch 1/1: val 61.50 %" in text) != terminal  # per-epoch lines only off a terminal
    if not terminal:  # one printer serving a second evaluation counts its runs from 1 again (it said [3/1])
        show({"kind": "start", "runs": 1, "epochs": 1, "reused": 0})
        show({"kind": "run", "run": "scratch 10% seed 0", "reused": False, "val_acc": 40.0, "seconds": 1})
        assert "[1/1] scratch 10% seed 0" in buf.getvalue()


# ---- controls, fair budgets and statistics (issue 16) ----------------------------------------------

def test_control_arms_write_the_statistics_of_every_comparison(bundle_tiny: Path, tmp_path: Path):
    """The issue's check: a tiny `lgt evaluate --arms scratch,clkg,random-matched,shuffled --seeds 2`."""
    from typer.testing import CliRunner

    from learngene_tools.cli.app import app

    args = ["evaluate", str(bundle_tiny), "--arch", SPEC, "--data", "synthetic", "--img-size", "16", "--train-limit", "32",
            "--val-limit", "16", "--test-limit", "16", "--seeds", "2", "--fractions", "1", "--epochs", "1",
            "--batch-size", "16", "--device", "cpu", "--arms", "scratch,clkg,random-matched,shuffled",
            "-o", str(tmp_path / "out"), "-q"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert [(a["name"], a["control"]) for a in record["arms"]] == [
        ("scratch", None), ("clkg", None), ("random-matched", "random-matched"), ("shuffled", "shuffled")]
    pairs = {(c["metric"], c["arm"], c["against"]) for c in record["comparisons"]}
    for metric in ("val", "test"):
        assert pairs >= {(metric, "clkg", "scratch"), (metric, "random-matched", "scratch"),
                         (metric, "shuffled", "scratch"), (metric, "clkg", "random-matched"),
                         (metric, "clkg", "shuffled")}
    for c in record["comparisons"]:
        assert {"delta_mean", "ci95", "p_value", "p_holm", "n", "verdict"} <= c.keys() and c["n"] == 2
        assert len(c["ci95"]) == 2 and c["ci95"][0] <= c["delta_mean"] <= c["ci95"][1]
        assert c["p_value"] in (0.5, 1.0) and c["verdict"] == "no evidence"  # 2 pairs: 2/4 at least
    runs = {(r["arm"], r["seed"]): r for r in record["runs"]}
    for seed in (0, 1):  # controls follow the same plan: same placed layers, different training
        assert runs[("random-matched", seed)]["plan"] == runs[("clkg", seed)]["plan"]
        assert runs[("random-matched", seed)]["val_loss"] != runs[("clkg", seed)]["val_loss"]
    md = (tmp_path / "out" / "evaluation.md").read_text()
    assert "| 100 % | val | clkg − random-matched | 2 |" in md and "p (Holm)" in md and "control: each filter" in md


def test_one_seed_reports_n_a_not_a_zero_spread(bundle_tiny: Path):
    s = replace(TINY, seeds=1, fractions=(1.0,), epochs=1, test=False)
    record = api.evaluate(bundle_tiny, s)
    cell = next(c for c in record["summary"] if c["arm"] == "clkg")
    assert cell["val_final"][1] is None and cell["delta_val_final"][1] is None
    assert all(c["ci95"] is None and c["p_holm"] is None and c["verdict"] == "n/a (one seed)"
               for c in record["comparisons"])
    from learngene_tools.evaluation.report import markdown

    text = markdown({**record, "command": None}, "t")
    assert "± 0.00" not in text and "± n/a" in text and "1 seed." in text


def test_lr_grid_keeps_each_arms_best_rate_and_tests_only_it(bundle_tiny: Path, tmp_path: Path):
    s = replace(TINY, seeds=2, fractions=(1.0,), epochs=1, lr_grid=(0.5, 0.01))
    record = api.evaluate(bundle_tiny, s, out_dir=tmp_path, name="grid")
    assert len(record["runs"]) == 2 * 2 * 2  # arms x seeds x rates
    choice = {(c["arm"], c["fraction"]): c["lr"] for c in record["lr_choice"]}
    for arm in ("scratch", "clkg"):
        mean = {lr: sum(r["val_acc"][-1] for r in record["runs"] if r["arm"] == arm and r["lr"] == lr) / 2
                for lr in (0.5, 0.01)}
        assert choice[(arm, 1.0)] == max(mean, key=lambda lr: (mean[lr], lr == 0.5))
        for r in record["runs"]:
            if r["arm"] == arm:
                assert r["chosen"] == (r["lr"] == choice[(arm, 1.0)])
                assert (r["test_acc"] is not None) == r["chosen"]  # the test split is touched by the chosen runs only
    assert not (tmp_path / "grid.weights").exists()  # the kept weights are gone once tested
    assert "Learning rate kept per arm" in (tmp_path / "grid.md").read_text()


def test_default_arms_include_the_random_matched_control(bundle_tiny: Path):
    arms = default_arms(bundle_tiny, EvaluationSettings())
    assert [(a.name, a.control) for a in arms] == [("scratch", None), ("clkg", None),
                                                   ("random-matched", "random-matched")]
    arms = default_arms(bundle_tiny, EvaluationSettings(bn=("transfer", "target"), arms=("scratch", "shuffled")))
    assert [(a.name, a.bn, a.control) for a in arms] == [("scratch", "transfer", None),
                                                         ("shuffled bn=transfer", "transfer", "shuffled"),
                                                         ("shuffled bn=target", "target", "shuffled")]


def test_a_step_budget_is_the_same_for_every_fraction(bundle_tiny: Path):
    s = replace(TINY, seeds=1, fractions=(1.0, 0.25), epochs=2, steps=10, test=False)
    record = api.evaluate(None, s, arms=[Arm("scratch")])
    assert [r["steps"] for r in record["runs"]] == [10, 10] and [r["train_images"] for r in record["runs"]] == [96, 24]
    assert Schedule(3, 16, 0.05, 5e-4, True, 0, steps=10).steps_per_epoch(1000) == 4
    with pytest.raises(SettingsError, match="not both"):
        replace(TINY, steps=10, min_steps=5)
    with pytest.raises(SettingsError, match="--arms takes scratch"):
        replace(TINY, arms=("clkg",))
    with pytest.raises(SettingsError, match="--lr-grid"):
        replace(TINY, lr_grid=(0.1, 0.1))


def test_resume_refuses_runs_from_another_device_or_precision(bundle_tiny: Path, tmp_path: Path):
    s = replace(TINY, seeds=1, fractions=(1.0,), epochs=1, test=False)
    record = api.evaluate(None, s, arms=[Arm("scratch")], out_dir=tmp_path, name="ev")
    assert record["runs"][0]["runs_on"] == "cpu fp32"
    path = tmp_path / "ev.json"
    data = json.loads(path.read_text())
    data["runs"][0]["runs_on"] = "cuda bf16"
    path.write_text(json.dumps(data))
    with pytest.raises(SettingsError, match="holds runs on cuda bf16, this evaluation runs on cpu fp32"):
        api.evaluate(None, s, arms=[Arm("scratch")], out_dir=tmp_path, name="ev", resume=True)
    other = replace(s, precision="bf16")
    assert run_key(Context(s, None, {}), Arm("scratch"), 1.0, 0) != run_key(Context(other, None, {}), Arm("scratch"), 1.0, 0)


def test_paired_statistics():
    from learngene_tools.evaluation.stats import holm, paired, sign_flip_p, t975

    assert sign_flip_p([1.0] * 5) == 2 / 32 and sign_flip_p([1.0] * 6) == 2 / 64
    assert sign_flip_p([1.0, -1.0]) == 1.0
    assert sign_flip_p([3.0, 1.0, -1.0]) == 0.75  # 6 of the 8 sign patterns give |sum| >= 3
    assert sign_flip_p([0.5] * 25) < 1e-4  # the Monte Carlo branch
    p = paired([1.0, 2.0, 3.0])
    assert p["delta_mean"] == 2.0 and p["ci95"] == pytest.approx([2 - 4.303 / 3 ** 0.5, 2 + 4.303 / 3 ** 0.5], abs=1e-3)
    assert paired([1.5]) == {"delta_mean": 1.5, "ci95": None, "p_value": None, "n": 1}
    assert holm([0.01, 0.04, None, 0.03]) == [0.03, 0.06, None, 0.06]
    assert t975(2) == 4.303 and abs(t975(60) - 2.000) < 2e-3 and abs(t975(120) - 1.980) < 2e-3
