import pytest
import timm
import torch

import learngene_tools  # noqa: F401  (registers the lgt_aux_* models with timm)
from learngene_tools.errors import LgtError
from learngene_tools.io.reading import load_checkpoint
from learngene_tools.models.aux_checkpoint import save_aux
from learngene_tools.models.auxiliary import config_from_state_dict, create_aux
from learngene_tools.models.variants import AuxConfig


@pytest.mark.parametrize("name", ["lgt_aux_tiny", "lgt_aux_small", "lgt_aux_base"])
def test_registered_with_timm_and_features_at_strides_4_8_16(name):
    assert name in timm.list_models("*aux*")
    m = timm.create_model(name, features_only=True)
    assert m.feature_info.reduction() == [4, 8, 16]
    feats = m(torch.randn(2, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4]
    assert [f.shape[1] for f in feats] == m.feature_info.channels()


def test_all_convs_are_3x3_and_classifier_works():
    m = timm.create_model("lgt_aux_small", num_classes=7)
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert len(convs) == 2 + 3 + 3
    assert all(c.kernel_size == (3, 3) and c.groups == 1 for c in convs)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_save_and_load_keeps_config(tmp_path):
    cfg = AuxConfig(widths=(4, 6, 10), depths=(3, 1, 2), in_chans=1)
    model = create_aux(cfg)
    save_aux(model, tmp_path / "a.safetensors")
    ckpt = load_checkpoint(tmp_path / "a.safetensors")
    assert AuxConfig.from_json(ckpt.metadata["lgt.aux_config"]) == cfg
    assert config_from_state_dict(ckpt.state_dict()) == cfg
    again = create_aux(cfg)
    again.load_state_dict(ckpt.state_dict(), strict=True)


def test_bad_configs_are_clear_errors():
    with pytest.raises(LgtError, match="stage 1 needs depth >= 2"):
        AuxConfig(depths=(1, 2, 2))
    with pytest.raises(LgtError, match="AuxConfig.widths takes a list of 3 integers"):
        AuxConfig(widths=(8, 16))
    with pytest.raises(LgtError, match="not a learngene_tools auxiliary model"):
        config_from_state_dict({"conv.weight": torch.zeros(1, 1, 3, 3)})
