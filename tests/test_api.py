"""The public Python API: every name `learngene_tools` exports, imported from the package and used."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import learngene_tools
from learngene_tools import (
    Arm,
    Assignment,
    AuxConfig,
    Bundle,
    Checkpoint,
    DistillSettings,
    EvaluationSettings,
    HubAuthError,
    HubConnectionError,
    HubError,
    HubNotFoundError,
    InvalidFileError,
    LayerRecord,
    LgtError,
    LgtWarning,
    LossSettings,
    ModelError,
    NotFoundError,
    OutputError,
    PlanWarning,
    RunOptions,
    SelectionSettings,
    SettingsError,
    TrainingError,
    TransplantPlan,
    TransplantSettings,
    UnsafeInputError,
    __version__,
    apply_plan,
    describe,
    distill,
    evaluate,
    extract,
    list_bundles,
    load_checkpoint,
    notices_to,
    plan_transplant,
    pull,
    push,
    read_bundle,
    resolve,
    select,
    transplant,
)

TESTS = Path(__file__).parent


def test_the_package_exports_exactly_these_names():
    exported = set(learngene_tools.__all__)
    used = {name for name in globals() if name in exported}
    assert exported == used, f"exported but not exercised here: {sorted(exported - used)}"
    assert callable(learngene_tools.transplant)  # the function, not a submodule
    importlib.import_module("learngene_tools.transplantation.apply")  # importing the part does not shadow it
    assert learngene_tools.transplant is transplant


def test_bundles_at_hand_warnings_and_notices():
    shipped = [b for b in list_bundles() if b["source"] == "shipped"]
    assert any(b["default"] and b["layers"] > 0 and b["hash"].startswith("sha256:") for b in shipped)
    assert issubclass(PlanWarning, LgtWarning) and issubclass(LgtWarning, UserWarning)
    got: list[str] = []
    with notices_to(got.append):
        from learngene_tools.reporting import notice

        notice("hello")
    assert got == ["hello"]


def test_resolve_and_read_bundle(bundle_tiny: Path):
    assert resolve(bundle_tiny) == bundle_tiny
    shipped = resolve("lgt:default")
    assert shipped.is_file() and shipped.suffix == ".safetensors"
    header = read_bundle("lgt:default", tensors=False)
    full = read_bundle(bundle_tiny)
    assert isinstance(header, Bundle) and isinstance(full, Bundle) and not header.tensors
    assert all(isinstance(r, LayerRecord) for r in full.layers)
    assert set(full.tensors) == {n for r in full.layers for n in r.tensor_names()}
    with pytest.raises(NotFoundError):
        resolve("lgt:no-such-bundle")


def test_select_from_an_aux_model_then_describe(aux_tiny_file: Path, tmp_path: Path, bundle_tiny: Path):
    out = tmp_path / "lg.safetensors"
    b = select(aux_tiny_file, out, SelectionSettings(stages=(1, 3)))
    assert b.stages == [1, 3] and out.read_bytes() == bundle_tiny.read_bytes()
    d = describe(out)
    assert d["kind"] == "learngene bundle" and d["hash_verified"]
    with pytest.raises(OutputError, match="already exists"):
        select(aux_tiny_file, out)
    with pytest.raises(SettingsError):
        SelectionSettings(stages=(4,))


@pytest.fixture
def tests_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/ on sys.path: specs such as `tinymodels:tiny_vgg` name a module of the tests."""
    monkeypatch.syspath_prepend(str(TESTS))


def test_plan_apply_and_transplant(bundle_tiny: Path, tmp_path: Path, tests_importable: None):
    import tinymodels

    target = tmp_path / "vgg.pth"
    torch.save(tinymodels.tiny_vgg().state_dict(), target)
    plan = plan_transplant(bundle_tiny, target, TransplantSettings(seed=1))
    assert isinstance(plan, TransplantPlan) and all(isinstance(a, Assignment) for a in plan.assignments)
    assert plan.placed and plan.seed == 1
    out = apply_plan(plan, tmp_path / "vgg_lg.pth")
    ckpt = load_checkpoint(out)
    assert isinstance(ckpt, Checkpoint) and set(ckpt.shapes) == set(torch.load(target, weights_only=True))
    (tmp_path / "again").mkdir()
    again = transplant(bundle_tiny, target, tmp_path / "again" / "vgg_lg.pth", seed=1)
    assert again.assignments == plan.assignments
    assert (tmp_path / "again" / "vgg_lg.pth").read_bytes() == out.read_bytes()  # same inputs, same bytes
    d = describe(target)
    assert d["kind"] == "checkpoint" and d["convs"]
    with pytest.raises(ModelError):
        plan_transplant(bundle_tiny, "timm:no_such_model_anywhere")
    with pytest.raises(InvalidFileError):
        plan_transplant(target, target)  # a checkpoint where the bundle goes


def test_distill_and_extract_on_cpu(tmp_path: Path, tests_importable: None):
    import tinymodels

    teacher = tmp_path / "teacher.pth"
    torch.save(tinymodels.tiny_vgg().state_dict(), teacher)
    settings = DistillSettings(arch="tinymodels:tiny_vgg", aux=AuxConfig(widths=(8, 16, 32), depths=(2, 2, 2)),
                               loss=LossSettings(alphas=(1.0, 0.0, 1.0)), img_size=32, batch_size=4, steps=2,
                               warmup_steps=1, synthetic_length=16)
    summary = distill(settings, RunOptions(ancestry=str(teacher), work_dir=tmp_path / "w", num_workers=0))
    assert summary["steps"] == 2 and Path(summary["aux_path"]).is_file()
    out = extract(settings, RunOptions(ancestry=str(teacher), work_dir=tmp_path / "w2", num_workers=0),
                  tmp_path / "lg.safetensors")
    assert out["bundle"] == tmp_path / "lg.safetensors" and read_bundle(out["bundle"]).layers


def test_settings_and_errors_are_typed():
    with pytest.raises(SettingsError):
        DistillSettings(img_size=30)
    with pytest.raises(SettingsError):
        LossSettings(kind="cosine")
    for cls in (NotFoundError, InvalidFileError, UnsafeInputError, OutputError, SettingsError, ModelError,
                TrainingError, HubError, HubNotFoundError, HubAuthError, HubConnectionError):
        assert issubclass(cls, LgtError) and cls("x").kind not in ("", "error")
    assert issubclass(HubNotFoundError, NotFoundError) and issubclass(HubNotFoundError, HubError)
    assert __version__ == learngene_tools.__version__


def test_pull_and_push_against_a_loopback_hub(bundle_tiny: Path, tmp_path: Path):
    """In a fresh process, so that huggingface_hub reads the fake Hub's address at import like a user's would."""
    from fakehub import FakeHub

    hub = FakeHub().start()
    try:
        hub.add_user("alice", "hf_alice")
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_alice",
               "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
        env.pop("HF_HUB_OFFLINE", None)
        code = textwrap.dedent(f"""
            from learngene_tools import HubNotFoundError, push, pull
            r = push({str(bundle_tiny)!r}, "alice/lg")
            assert r.changed and r.repo_created
            path = pull("alice/lg", filename="learngene.safetensors")
            assert open(path, "rb").read() == open({str(bundle_tiny)!r}, "rb").read()
            try:
                pull("alice/nothing-here")
            except HubNotFoundError:
                pass
            else:
                raise SystemExit("no HubNotFoundError")
        """)
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    finally:
        hub.stop()
    assert callable(pull) and callable(push)


def test_evaluate_compares_scratch_and_the_learngene(bundle_tiny: Path):
    settings = EvaluationSettings(arch="learngene_tools.descendants:small_vgg", data="synthetic", img_size=16,
                                  train_limit=32, val_limit=16, test=False, seeds=1, fractions=(1.0,), epochs=1,
                                  batch_size=16, device="cpu")
    record = evaluate(bundle_tiny, settings, arms=[Arm("scratch"), Arm("clkg", bundle_tiny, bn="target")])
    assert [r["arm"] for r in record["runs"]] == ["scratch", "clkg"] and record["runs"][1]["plan"]["layers_placed"] > 0
    assert "delta_val_final" in record["summary"][1]
    with pytest.raises(SettingsError, match="--arch"):
        evaluate(bundle_tiny, EvaluationSettings(data="synthetic"))
