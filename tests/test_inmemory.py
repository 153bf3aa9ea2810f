"""The library inside a training script: in-memory targets, arguments checked as the CLI checks them, warnings
where Python users look, specs with arguments.

The in-memory routes (an nn.Module initialised in place, a state_dict returned anew) must give exactly the plan
and the tensors of the file route for the same weights and seed.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
from conftest import run_lgt
from safetensors.torch import load_file, save_file

import learngene_tools as lg
from learngene_tools.architectures.specs import build_model
from learngene_tools.reporting import LgtWarning, PlanWarning, notice, notices_to
from learngene_tools.transplantation.planner import placement

TESTS = Path(__file__).parent


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize("spec, grouped", [
    ("timm:resnet18(num_classes=10)", "skip"),
    ("torchvision:mobilenet_v2(num_classes=10)", "project"),
    ("timm:regnetx_002", "project"),
])
def test_module_and_state_dict_give_the_file_routes_plan_and_tensors(spec: str, grouped: str, tmp_path: Path):
    model = build_model(spec, seed=3)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    before = copy.deepcopy(sd)
    target = _save(sd, tmp_path / "m.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PlanWarning)
        by_file = lg.transplant("lgt:default", target, tmp_path / "out.safetensors", seed=5, grouped=grouped)
        written = load_file(str(tmp_path / "out.safetensors"))
        by_state = lg.plan_transplant("lgt:default", sd, arch=spec, seed=5, grouped=grouped)
        new_sd = lg.apply_plan(by_state, None)
        by_module = lg.transplant("lgt:default", model, seed=5, grouped=grouped)
    assert by_file.placed and placement(by_state) == placement(by_file) == placement(by_module)
    assert by_module.changed_keys() == by_file.changed_keys()
    assert isinstance(new_sd, dict) and set(new_sd) == set(sd)
    live = model.state_dict()
    for k in written:
        assert torch.equal(new_sd[k], written[k]), k
        assert torch.equal(live[k], written[k]), k
    assert all(torch.equal(sd[k], before[k]) for k in sd)  # the state_dict given is not modified
    assert any(not torch.equal(before[k], written[k]) for k in by_file.changed_keys())


def test_the_cli_writes_what_the_module_route_sets(tmp_path: Path):
    """Done-when of issue 18: `lg.transplant('lgt:default', m)` == `lgt transplant lgt:default m.safetensors`."""
    m = build_model("timm:resnet18(num_classes=10)", seed=0)
    target = _save(m.state_dict(), tmp_path / "m.safetensors")
    p = run_lgt("transplant", "lgt:default", str(target), "-o", str(tmp_path / "m_lg.safetensors"), "-q")
    assert p.returncode == 0, p.stderr
    lg.transplant("lgt:default", m)
    written = load_file(str(tmp_path / "m_lg.safetensors"))
    live = m.state_dict()
    assert all(torch.equal(live[k], written[k]) for k in written)


def test_a_module_keeps_its_parameters_dtype_and_modes(tmp_path: Path):
    model = build_model("timm:resnet18(num_classes=10)", seed=1).to(torch.bfloat16)
    target = _save(model.state_dict(), tmp_path / "bf16.safetensors")
    model.train()
    model.bn1.eval()  # a frozen BN stays frozen
    weight = model.conv1.weight
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    plan = lg.transplant("lgt:default", model)
    assert model.conv1.weight is weight and optimizer.param_groups[0]["params"][0] is weight
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.training and not model.bn1.training
    lg.transplant("lgt:default", target, tmp_path / "bf16_lg.safetensors")
    written = load_file(str(tmp_path / "bf16_lg.safetensors"))
    assert all(torch.equal(model.state_dict()[k], written[k]) for k in plan.changed_keys())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_a_cuda_module_stays_on_its_device():
    model = build_model("timm:resnet18", seed=0)
    cpu = copy.deepcopy(model)
    model = model.cuda()
    lg.transplant("lgt:default", model)
    lg.transplant("lgt:default", cpu)
    assert all(p.is_cuda for p in model.parameters())
    assert all(torch.equal(a.cpu(), b) for a, b in zip(model.state_dict().values(), cpu.state_dict().values()))


def test_a_wrapped_state_dict_comes_back_in_its_form(tmp_path: Path):
    model = build_model("timm:resnet18", seed=2)
    sd = {"module." + k: v for k, v in model.state_dict().items()}  # saved from DataParallel
    ckpt = {"state_dict": sd, "epoch": 7}
    plan = lg.plan_transplant("lgt:default", ckpt)  # identified from its keys, as a file would be
    assert "timm:resnet18" in plan.identification
    new = lg.apply_plan(plan, None)
    assert new["epoch"] == 7 and set(new["state_dict"]) == set(sd)
    assert new["state_dict"] is not sd and ckpt["state_dict"] is sd
    key = "module." + plan.placed[0].target
    assert not torch.equal(new["state_dict"][key], sd[key])


def test_arch_may_be_a_module_instance_for_a_state_dict():
    model = build_model("timm:resnet18", seed=0)
    plan = lg.plan_transplant("lgt:default", model.state_dict(), arch=build_model("timm:resnet18", seed=9))
    assert plan.placed and plan.strides == "traced"


@pytest.mark.parametrize("call", [
    lambda: lg.transplant("lgt:default", 42),
    lambda: lg.plan_transplant(42, "timm:resnet18"),
    lambda: lg.plan_transplant("lgt:default", {"a": 1}),
    lambda: lg.plan_transplant("lgt:default", "timm:resnet18", arch=lambda: None),
    lambda: lg.plan_transplant("lgt:default", build_model("timm:resnet18"), arch="timm:resnet18"),
    lambda: lg.plan_transplant("lgt:default", "timm:resnet18", seeds=3),
    lambda: lg.plan_transplant("lgt:default", "timm:resnet18", seed="three"),
    lambda: lg.plan_transplant("lgt:default", "timm:resnet18", settings="fast"),
    lambda: lg.transplant("lgt:default", "timm:resnet18", out=3.5),
    lambda: lg.transplant("lgt:default", "timm:resnet18", force="yes"),
    lambda: lg.apply_plan("plan", None),
    lambda: lg.apply_plan(lg.plan_transplant("lgt:default", "timm:resnet18"), None),
    lambda: lg.transplant("lgt:default", "lgt:default", None),
    lambda: lg.read_bundle(None),
    lambda: lg.describe(3),
    lambda: lg.select(3, "out.safetensors"),
    lambda: lg.distill(None, None),
    lambda: lg.distill(None, lg.RunOptions()),
    lambda: lg.RunOptions(work_dir=3),
    lambda: lg.TransplantSettings(input_size="big"),
    lambda: lg.evaluate(None, epochs="ten"),
])
def test_every_wrong_argument_is_one_line_lgt_error(call, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(lg.LgtError) as e:
        call()
    assert str(e.value) and "\n" not in str(e.value)


def test_api_errors_name_arguments_and_the_cli_names_flags():
    with pytest.raises(lg.SettingsError) as e:
        lg.TransplantSettings(transfer_bn="maybe")
    assert "TransplantSettings.transfer_bn" in str(e.value) and "--bn" in e.value.cli_text
    with pytest.raises(lg.SettingsError, match="target= is the checkpoint"):
        lg.transplant("lgt:default", "lgt:default")


def test_a_guessed_plan_warns_in_python_with_argument_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(TESTS))
    import tinymodels

    target = tmp_path / "net.pth"
    torch.save(tinymodels.tiny_vgg().state_dict(), target)
    with pytest.warns(PlanWarning) as caught:
        plan = lg.plan_transplant("lgt:default", target)
    assert plan.strides == "estimated" and issubclass(PlanWarning, LgtWarning)
    texts = [str(w.message) for w in caught]
    assert any("arch=SPEC" in t and "require_traced=True" in t for t in texts), texts
    assert not any("--" in t for t in texts), texts
    assert any("--arch SPEC" in w for w in plan.warnings)  # the plan itself keeps the command line's wording
    p = run_lgt("transplant", "lgt:default", str(target), "--dry-run")
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("warning:")]
    assert p.returncode == 0 and any("--arch SPEC" in ln for ln in lines) and "PlanWarning" not in p.stderr


def _six_convs() -> torch.nn.Module:
    """A CNN no package builds: as a file it can only be guessed; as a module it is traced."""
    layers: list[torch.nn.Module] = []
    for c_in, c_out, stride in ((3, 16, 2), (16, 16, 2), (16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1)):
        layers += [torch.nn.Conv2d(c_in, c_out, 3, stride, 1), torch.nn.BatchNorm2d(c_out), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers)


def test_a_module_is_traced_where_its_file_is_guessed(tmp_path: Path):
    torch.manual_seed(0)
    net = _six_convs()
    torch.save(net.state_dict(), tmp_path / "net.pth")
    with pytest.warns(PlanWarning, match="estimated"):
        guessed = lg.plan_transplant("lgt:default", tmp_path / "net.pth")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = lg.plan_transplant("lgt:default", net)
    assert guessed.strides == "estimated" and traced.strides == "traced"
    assert not any("estimated" in str(w.message) for w in caught)
    assert "traced as it is" in traced.identification


def test_mobilenet_hints_at_grouped_project():
    with pytest.warns(PlanWarning, match=r"grouped='project' would place 5"):
        plan = lg.plan_transplant("lgt:default", "torchvision:mobilenet_v2")
    assert len(plan.placed) == 1
    assert any("--grouped project would place 5" in w for w in plan.warnings)


def test_notices_go_through_one_channel(monkeypatch: pytest.MonkeyPatch):
    from learngene_tools.transplantation import target

    got: list[str] = []
    with notices_to(got.append):
        notice("one")
        target.note("two")  # what the planner uses (building the architecture index)
    with notices_to(None):
        notice("dropped")
    assert got == ["one", "two"]


def test_specs_take_literal_arguments_never_code(tmp_path: Path):
    plan = lg.plan_transplant("lgt:default", "timm:resnet18(num_classes=10, in_chans=1)")
    assert plan.placed and plan.target == "timm:resnet18(num_classes=10, in_chans=1)"
    assert plan.placed[0].target_shape[1] == 1
    p = run_lgt("transplant", "lgt:default", "torchvision:resnet18(num_classes=7)", "--dry-run", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["target"] == "torchvision:resnet18(num_classes=7)"
    for bad in ('timm:resnet18(num_classes=__import__("os").system("touch pwned"))', "timm:resnet18(pretrained=True)",
                "timm:resnet18(1)", "timm:resnet18(num_classes=10"):
        p = run_lgt("transplant", "lgt:default", bad, "--dry-run", cwd=tmp_path)
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, (bad, p.stderr)
    assert list(tmp_path.iterdir()) == []


def test_distill_from_python_with_plain_strings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No arch given: the ancestry is identified from its checkpoint, as `lgt distill` does; paths are strings."""
    monkeypatch.chdir(tmp_path)
    _save(build_model("timm:resnet18", seed=0).state_dict(), tmp_path / "ancestry.safetensors")
    settings = lg.DistillSettings(aux=lg.AuxConfig(widths=(8, 16, 32), depths=(2, 2, 2)), img_size=32, batch_size=2,
                                  steps=1, warmup_steps=0, synthetic_length=4)
    got: list[str] = []
    with notices_to(got.append):
        summary = lg.distill(settings, lg.RunOptions(ancestry="ancestry.safetensors", work_dir="w", num_workers=0))
    assert summary["identified"].startswith("identified as timm:resnet18") and any("timm:resnet18" in g for g in got)
    assert Path(summary["aux_path"]).is_file() and Path(summary["aux_path"]).resolve().parent == tmp_path / "w"
    with pytest.raises(lg.NotFoundError):
        lg.distill(settings, lg.RunOptions(ancestry="missing.pth", work_dir="w2"))
