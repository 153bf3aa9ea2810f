"""The distillation run's machinery on CPU: distributed context, backend settings, schedule warnings,
the teacher's forward_intermediates path, damaged state files, resume (in process and after a
SIGKILL of a real `lgt distill`), and the benchmark's CPU smoke mode."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from learngene_tools.distillation.config import DistillSettings, RunOptions
from learngene_tools.distillation.distributed import AllReduceBatchNorm, DistContext, sync_batchnorm
from learngene_tools.distillation.loop import (
    AUX_FILE,
    METRICS_FILE,
    STATE_FILE,
    ScheduleWarning,
    distill,
    speed_settings,
)
from learngene_tools.distillation.state import SavedState, load_state, restart_metrics, save_state
from learngene_tools.distillation.teacher import Teacher, build_teacher
from learngene_tools.errors import InvalidFileError, LgtError, SettingsError
from learngene_tools.extraction.config import SelectionSettings
from learngene_tools.extraction.extract import extract
from learngene_tools.extraction.selection import select_from_file
from learngene_tools.models.variants import VARIANTS

TESTS = Path(__file__).parent
ROOT = TESTS.parent
TEACHER = "tinymodels:tiny_vgg"


def settings(**kw) -> DistillSettings:
    base = dict(arch=TEACHER, aux=VARIANTS["lgt_aux_tiny"], img_size=32, batch_size=8, steps=12, lr=3e-3,
                warmup_steps=2, seed=0, synthetic_length=64)
    return DistillSettings(**{**base, **kw})


def options(work: Path, teacher: Path, **kw) -> RunOptions:
    return RunOptions(**{**dict(work_dir=work, ancestry=teacher, ckpt_every=4, log_every=2, num_workers=0), **kw})


def metrics(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / METRICS_FILE).read_text().splitlines()]


def step_lines(records: list[dict]) -> list[dict]:
    """The metrics step records without their timings (which differ from run to run)."""
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "elapsed_s")} for r in records if "step" in r]


# --- distributed context


def test_single_process_context_is_main_and_collectives_are_no_ops() -> None:
    ctx = DistContext.from_env("cpu")
    assert ctx.is_main and not ctx.distributed and ctx.world_size == 1 and ctx.device == torch.device("cpu")
    t = torch.tensor([3.0])
    assert ctx.all_reduce_sum(t) is t and ctx.all_reduce_mean(t).item() == 3.0
    assert ctx.sum_int(5) == 5 and ctx.any(torch.tensor(True)) and not ctx.any(torch.tensor(False))
    ctx.barrier()


@pytest.mark.parametrize("hint", ["mps", "cuda:x"])
def test_bad_device_hint_is_a_settings_error(hint: str) -> None:
    with pytest.raises(SettingsError, match="--device"):
        DistContext.from_env(hint)


def test_batchnorm_sync_by_backend() -> None:
    def model() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()))

    alone = model()
    assert sync_batchnorm(alone, DistContext()) is alone and type(alone[1][0]) is nn.BatchNorm2d
    names = set(model().state_dict())
    gloo = sync_batchnorm(model(), DistContext(world_size=2, backend="gloo"))
    nccl = sync_batchnorm(model(), DistContext(world_size=2, backend="nccl"))
    assert type(gloo[1][0]) is AllReduceBatchNorm and type(nccl[1][0]) is nn.SyncBatchNorm
    assert set(gloo.state_dict()) == set(nccl.state_dict()) == names


# --- backend speed settings and schedule warnings


def test_speed_settings_only_on_cuda_and_restored() -> None:
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    with speed_settings(torch.device("cpu"), bf16=True):
        assert (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32) == before
    with speed_settings(torch.device("cuda"), bf16=True):  # flags only: no GPU needed
        assert cudnn.benchmark and cudnn.allow_tf32 and matmul.allow_tf32
    with speed_settings(torch.device("cuda"), bf16=False):
        assert cudnn.benchmark and matmul.allow_tf32 == before[2]  # fp32 runs keep torch's TF32 defaults
    assert (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32) == before


def test_inconsistent_schedule_warns_once(tmp_path: Path, teacher_file: Path) -> None:
    with pytest.warns(ScheduleWarning, match="never reaches") as caught:
        distill(settings(steps=4, warmup_steps=4), options(tmp_path / "w", teacher_file))
    assert len([w for w in caught if issubclass(w.category, ScheduleWarning)]) == 1


def test_consistent_schedule_does_not_warn(tmp_path: Path, teacher_file: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScheduleWarning)
        distill(settings(steps=4, warmup_steps=1), options(tmp_path / "w", teacher_file))


def test_schedule_warning_comes_after_setup_errors(tmp_path: Path, teacher_file: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScheduleWarning)
        with pytest.raises(LgtError, match="nothing to resume"):
            distill(settings(steps=4, warmup_steps=4), options(tmp_path / "w", teacher_file, resume=True))


# --- the teacher


@pytest.mark.parametrize("arch,size", [("timm:resnet18", 64), ("replknet_test_tiny", 64)])
def test_timm_teacher_runs_forward_intermediates_and_matches_hooks(arch: str, size: int) -> None:
    teacher, desc = build_teacher(arch, None, img_size=size)
    assert teacher.indices is not None and desc["taps"] == teacher.taps
    x = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        fast = teacher(x)
        hooked = Teacher(teacher.model, teacher.taps)(x)  # hooks on the same model, added after the fast call
    assert [f.shape[-1] for f in fast] == [size // 4, size // 8, size // 16]
    assert all(torch.equal(a, b) for a, b in zip(fast, hooked))


def test_user_taps_and_plain_models_use_hooks() -> None:
    teacher, desc = build_teacher("timm:resnet18", None, taps=["layer1", "layer2", "layer3"], img_size=64)
    assert teacher.indices is None and desc["taps"] == ["layer1", "layer2", "layer3"]
    teacher, _ = build_teacher(TEACHER, None, img_size=32)
    assert teacher.indices is None


# --- damaged state files


def _good_state(path: Path) -> None:
    save_state(path, SavedState('{"a": 1}', {"w": torch.randn(64, 64)}, {"state": {}, "param_groups": []}, 4, 32, 0))


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x10
    return bytes(b)


def _foreign_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"student": os.getcwd}))


def _wrong_content(path: Path) -> None:
    torch.save({"student": {}, "step": 3}, path)


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "bit-flipped data": lambda p: p.write_bytes(_flip(p.read_bytes(), p.stat().st_size // 2)),
    "bit-flipped end": lambda p: p.write_bytes(_flip(p.read_bytes(), p.stat().st_size - 30)),
    "empty": lambda p: p.write_bytes(b""),
    "text": lambda p: p.write_text("step: 4\nthis is not a checkpoint\n"),
    "foreign global": _foreign_pickle,
    "other content": _wrong_content,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_state_is_one_invalid_file_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / STATE_FILE
    _good_state(path)
    assert load_state(path).step == 4
    DAMAGE[damage](path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torch warning before the line either
        with pytest.raises(InvalidFileError) as e:
            load_state(path)
    message = str(e.value)
    assert "\n" not in message and "damaged distillation checkpoint" in message and "--force" in message


def test_cli_resume_of_a_damaged_state_is_one_line(tmp_path: Path, teacher_file: Path) -> None:
    from conftest import run_lgt

    work = tmp_path / "w"
    distill(settings(steps=4), options(work, teacher_file))
    (work / STATE_FILE).write_bytes((work / STATE_FILE).read_bytes()[:100])
    r = run_lgt("distill", str(teacher_file), "--arch", TEACHER, "--synthetic", "--aux", "lgt_aux_tiny", "--img-size",
                "32", "--batch-size", "8", "--steps", "6", "--lr", "3e-3", "--warmup-steps", "2", "--synthetic-length", "64",
                "--workers", "0", "--device", "cpu", "--work-dir", str(work), "--resume",
                env_extra={"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "damaged distillation checkpoint" in lines[0] and "--force" in lines[0], r.stderr
    assert "internal error" not in r.stderr


# --- resume


def test_restart_metrics_cuts_back_to_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / METRICS_FILE
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (2, 4, 6, 8, 10)) + '{"step": 1')
    restart_metrics(path, 6)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r.get("step") for r in records] == [2, 4, 6, None] and records[-1]["event"] == "resumed"
    assert records[-1]["from_step"] == 6
    restart_metrics(path, None)
    assert not path.exists()


def test_resumed_extract_writes_the_same_bytes(tmp_path: Path, teacher_file: Path) -> None:
    s = settings(steps=12)
    full = extract(s, options(tmp_path / "full", teacher_file), tmp_path / "full.safetensors", SelectionSettings())

    class Crash(Exception):
        pass

    def crash_at_10(record: dict) -> None:
        if record["step"] == 10:
            raise Crash

    with pytest.raises(Crash):
        extract(s, options(tmp_path / "crashed", teacher_file, progress=crash_at_10), tmp_path / "resumed.safetensors",
                SelectionSettings())
    resumed = extract(s, options(tmp_path / "crashed", teacher_file, resume=True), tmp_path / "resumed.safetensors",
                      SelectionSettings())
    assert resumed["resumed_from_step"] == 8 and full["resumed_from_step"] is None
    assert (tmp_path / "crashed" / AUX_FILE).read_bytes() == (tmp_path / "full" / AUX_FILE).read_bytes()
    assert (tmp_path / "resumed.safetensors").read_bytes() == (tmp_path / "full.safetensors").read_bytes()
    got, want = metrics(tmp_path / "crashed"), metrics(tmp_path / "full")
    assert step_lines(got) == step_lines(want)
    assert [r for r in got if "event" in r] == [{"event": "resumed", "from_step": 8, "tool_version": got[4]["tool_version"]}]


def _cli_distill(work: Path, teacher: Path, resume: bool = False, hang_at: int | None = None) -> subprocess.Popen:
    args = ["distill", str(teacher), "--arch", "hangmodels:hanging_vgg", "--synthetic", "--aux", "lgt_aux_tiny",
            "--img-size", "32", "--batch-size", "8", "--steps", "16", "--warmup-steps", "2", "--synthetic-length",
            "64", "--ckpt-every", "4", "--log-every", "2", "--workers", "0", "--device", "cpu", "--work-dir", str(work),
            *(["--resume"] if resume else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    if hang_at is not None:
        env.update(LGT_TEST_HANG_AT=str(hang_at), LGT_TEST_HANG_MARKER=str(work.parent / "hanging"))
    return subprocess.Popen([sys.executable, "-m", "learngene_tools", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen) -> None:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err


@pytest.mark.slow  # three real distillation processes, one SIGKILLed
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkilled_distill_resumes_to_the_same_bytes(tmp_path: Path, teacher_file: Path) -> None:
    teacher = teacher_file  # tiny_vgg's weights: hanging_vgg has the same names
    full = _cli_distill(tmp_path / "full", teacher)
    killed = _cli_distill(tmp_path / "killed", teacher, hang_at=11)  # steps 1-10 done, checkpoint at 8
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "hanging").exists():
            assert killed.poll() is None, killed.communicate()[1]
            assert time.monotonic() < deadline, "the run never reached step 11"
            time.sleep(0.05)
        assert [r["step"] for r in metrics(tmp_path / "killed")] == [2, 4, 6, 8, 10]
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert load_state(tmp_path / "killed" / STATE_FILE).step == 8
    _finish(full)
    _finish(_cli_distill(tmp_path / "killed", teacher, resume=True))

    got, want = metrics(tmp_path / "killed"), metrics(tmp_path / "full")
    assert [r.get("step") for r in got] == [2, 4, 6, 8, None, 10, 12, 14, 16]  # step 10 once: the killed one is gone
    assert got[4]["event"] == "resumed" and got[4]["from_step"] == 8
    assert step_lines(got) == step_lines(want)
    assert (tmp_path / "killed" / AUX_FILE).read_bytes() == (tmp_path / "full" / AUX_FILE).read_bytes()
    for name in ("full", "killed"):
        select_from_file(tmp_path / name / AUX_FILE, tmp_path / f"{name}.safetensors", SelectionSettings())
    assert (tmp_path / "killed.safetensors").read_bytes() == (tmp_path / "full.safetensors").read_bytes()


# --- the benchmark


def test_benchmark_cpu_smoke_runs_the_real_code_path() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_distill.py"), "--cpu-smoke", "--json"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("teacher_merged_native_img_s", "teacher_merged_auto_img_s", "teacher_training_native_img_s",
                "teacher_training_auto_img_s", "yardstick_native_img_s", "distill_img_s", "extract_synthetic_img_s",
                "teacher_merged_gflops_per_img", "yardstick_gflops_per_img"):
        assert figures[key] > 0, key
    assert figures["device"] == "cpu" and "lgt extract, synthetic images" in r.stdout
    assert "teacher merged, auto convs" in r.stdout and "timm:convnext_atto" in r.stdout


# --- a full disk while checkpointing


class _FullDisk:
    """A file that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, path: Path, room: int) -> None:
        self._f = open(path, "wb")  # noqa: SIM115 - closed by __exit__
        self._room = room

    def write(self, data: bytes) -> int:
        if len(data) > self._room:
            raise OSError(28, "No space left on device")
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self) -> "_FullDisk":
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_state(tmp_path, monkeypatch):
    from learngene_tools.errors import OutputError
    from learngene_tools.io import writing as checkpoint_io

    path = tmp_path / "distill-state.pt"
    good = SavedState(settings_json="{}", student={"w": torch.ones(3)}, optimizer={}, step=5, images_seen=40,
                      skipped_images=0)
    save_state(path, good)
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint_io, "open", lambda p, mode="r": _FullDisk(Path(p), 100), raising=False)
    big = SavedState(settings_json="{}", student={"w": torch.randn(1000)}, optimizer={}, step=10, images_seen=80,
                     skipped_images=0)
    with pytest.raises(OutputError, match="No space left on device|no space"):
        save_state(path, big)
    assert path.read_bytes() == before and load_state(path).step == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["distill-state.pt"]  # no temporary file left
