"""Control transplants: the same plan and changed tensors as the plain transplant, the filters' values replaced."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from learngene_tools import SettingsError, TransplantSettings, transplant
from learngene_tools.transplantation.control import control_weight


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, torch.Tensor]]:
    """lgt:default into timm:resnet18: the plain transplant, both controls, and the target itself (seed 0)."""
    d = tmp_path_factory.mktemp("controls")
    files = {}
    for control in (None, "random-matched", "shuffled"):
        out = d / f"{control or 'plain'}.safetensors"
        plan = transplant("lgt:default", "timm:resnet18", out, TransplantSettings(control=control))
        assert plan.control == control
        files[control or "plain"] = load_file(out)
    import timm

    torch.manual_seed(0)
    files["target"] = {k: v for k, v in timm.create_model("resnet18").state_dict().items()}
    files["changed"] = plan.changed_keys()  # type: ignore[assignment]
    files["convs"] = [a.target for a in plan.placed]  # type: ignore[assignment]
    return files


@pytest.mark.parametrize("control", ["random-matched", "shuffled"])
def test_control_changes_exactly_the_plain_transplants_tensors(outputs: dict, control: str) -> None:
    plain, ctl = outputs["plain"], outputs[control]
    assert plain.keys() == ctl.keys()
    convs = set(outputs["convs"])
    assert convs and convs < set(outputs["changed"])
    for key in plain:
        if key in convs:
            p, c = plain[key].double().flatten(1), ctl[key].double().flatten(1)
            rel = ((c.norm(dim=1) - p.norm(dim=1)).abs() / p.norm(dim=1).clamp_min(1e-12)).max()
            assert rel <= 1e-5, key
            assert not torch.equal(p, c), key
            if control == "shuffled":
                assert torch.equal(p.sort(dim=1).values, c.sort(dim=1).values), key
            else:
                assert not torch.equal(p.sort(dim=1).values, c.sort(dim=1).values), key
        else:
            assert torch.equal(plain[key], ctl[key]), key  # BN tensors the plan writes, and all the rest


def test_plain_transplant_changes_the_planned_tensors_only(outputs: dict) -> None:
    """The control's baseline: what the plain transplant changes (so the test above compares the right set)."""
    plain, target = outputs["plain"], outputs["target"]
    changed = {k for k in plain if not torch.equal(plain[k], target[k])}
    assert changed <= set(outputs["changed"]) and set(outputs["convs"]) <= changed


def test_control_values_are_seeded_and_per_filter() -> None:
    w = torch.randn(8, 4, 3, 3)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    for control in ("random-matched", "shuffled"):
        a, b = control_weight(w, control, g()), control_weight(w, control, g())
        assert torch.equal(a, b) and a.shape == w.shape
    zero = control_weight(torch.zeros(2, 3, 3, 3), "random-matched", g())
    assert torch.equal(zero, torch.zeros_like(zero))  # a zero filter stays zero: its norm is 0


def test_control_is_validated_and_recorded(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="TransplantSettings.control must be one of random-matched, shuffled"):
        TransplantSettings(control="random")
    import json

    from typer.testing import CliRunner

    from learngene_tools.cli.app import app

    lgt = CliRunner()
    r = lgt.invoke(app, ["transplant", "lgt:default", "timm:resnet18", "--control", "shuffled", "--json", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["control"] == "shuffled"
    r = lgt.invoke(app, ["transplant", "lgt:default", "timm:resnet18", "--control", "random-matched",
                         "-o", str(tmp_path / "c.safetensors")], env={"COLUMNS": "300"})
    assert r.exit_code == 0 and "control transplant (random-matched)" in r.stdout, r.output
    from safetensors import safe_open

    with safe_open(str(tmp_path / "c.safetensors"), "pt") as f:
        assert '"control": "random-matched"' in f.metadata()["learngene.transplant"]
