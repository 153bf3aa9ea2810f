import pytest
import torch
from conftest import make_aux

from learngene_tools.errors import LgtError
from learngene_tools.extraction.config import SelectionSettings
from learngene_tools.extraction.selection import select_from_file, select_learngene
from learngene_tools.io.bundle import read_bundle
from learngene_tools.models.variants import VARIANTS, AuxConfig


def _select(settings, cfg=VARIANTS["lgt_aux_base"]):
    model = make_aux(cfg)
    return select_learngene(model.state_dict(), cfg, settings)


def test_default_is_first_and_last_stage_whole():
    records, tensors = _select(SelectionSettings())
    base = VARIANTS["lgt_aux_base"]  # depths 3, 4, 4
    assert [r.id for r in records] == ["s1.0", "s1.1", "s1.2", "s3.0", "s3.1", "s3.2", "s3.3"]
    assert [r.source_key for r in records][:3] == [f"stages.0.{j}.conv.weight" for j in range(3)]
    assert [r.source_key for r in records][3:] == [f"stages.2.{j}.conv.weight" for j in range(base.depths[2])]
    assert all(r.shape[2:] == (3, 3) for r in records)


def test_runs_are_contiguous_and_touch_the_edges():
    records, _ = _select(SelectionSettings(stages=(1, 2, 3), run_length=2))
    by_stage = {}
    for r in records:
        by_stage.setdefault(r.stage, []).append(int(r.source_key.split(".")[2]))
    assert by_stage == {1: [0, 1], 2: [0, 1], 3: [2, 3]}  # stage 3 (depth 4) ends with the stage
    assert [r.anchor for r in records] == ["start"] * 4 + ["end"] * 2
    # channels chain inside a run: each layer reads what the previous one wrote
    for a, b in zip(records, records[1:]):
        if a.stage == b.stage:
            assert b.shape[1] == a.shape[0] and b.in_reduction == a.reduction


def test_only_last_stage():
    records, _ = _select(SelectionSettings(stages=(3,), run_length=1))
    assert [(r.id, r.source_key, r.reduction) for r in records] == [("s3.0", "stages.2.3.conv.weight", 16)]


def test_bn_statistics_travel_with_their_conv():
    cfg = VARIANTS["lgt_aux_tiny"]
    model = make_aux(cfg)
    records, tensors = select_learngene(model.state_dict(), cfg, SelectionSettings())
    for r in records:
        prefix = r.source_key.removesuffix("conv.weight") + "bn."
        for part in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(tensors[r.bn_name(part)], model.state_dict()[prefix + part])


def test_bad_settings():
    with pytest.raises(LgtError, match="--stages"):
        SelectionSettings(stages=(0, 4))
    with pytest.raises(LgtError, match="--run-length 5 is longer than stage 1, which has 3 layers"):
        _select(SelectionSettings(run_length=5))


def test_select_from_pt_without_metadata(tmp_path):
    cfg = AuxConfig(widths=(4, 8, 12), depths=(2, 2, 3))
    model = make_aux(cfg)
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "aux.pth")
    select_from_file(tmp_path / "aux.pth", tmp_path / "lg.safetensors", SelectionSettings(stages=(1, 3), run_length=2))
    b = read_bundle(tmp_path / "lg.safetensors")
    assert [r.source_key for r in b.layers] == [
        "stages.0.0.conv.weight", "stages.0.1.conv.weight", "stages.2.1.conv.weight", "stages.2.2.conv.weight"]
    assert b.provenance["auxiliary"]["config"]["widths"] == [4, 8, 12]
