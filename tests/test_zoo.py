"""A sample of the zoo sweep (benchmarks/zoo_sweep.py): one smallest timm model per family, transplanted as a
.pth file without --arch and as `timm:NAME`; the file's architecture must be identified, its plan must equal
the traced spec plan, and the output must load strictly and run. The full sweep (96 families, both --grouped
settings) is the script; this sample of 35 families (41 runs) takes minutes on 2 cores, so it is `slow`: run
by `.ci/run` and `pytest -m slow`, not by the default suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import zoo_sweep  # noqa: E402

SAMPLE = (
    "byobnet", "convnext", "cpubone", "cspnet", "cspnext", "deit", "densenet", "dla", "edgenext", "efficientnet",
    "efficientvim", "efficientvit_mit", "fasternet", "fastvit", "focalnet", "gcvit", "hardcorenas", "hgnet", "hrnet",
    "inception_next", "levit", "mambaout", "maxxvit", "mobilenetv3", "nfnet", "pit", "regnet", "resnest", "resnet",
    "resnetv2", "tiny_vit", "vision_transformer", "vision_transformer_hybrid", "vision_transformer_relpos", "xcit",
)
REFUSED = {"pit"}  # its patch embedding runs at stride 8: no conv at the bundle's strides 4 and 16
PROJECT = ("convnext", "edgenext", "efficientnet", "fasternet", "mobilenetv3", "regnet")  # depthwise/grouped nets


@pytest.fixture(scope="module")
def families() -> dict[str, str]:
    return zoo_sweep.load_families(save=False)  # never rewrites benchmarks/zoo_families.json


@pytest.mark.parametrize("grouped,family", [("skip", f) for f in SAMPLE] + [("project", f) for f in PROJECT])
def test_family_is_identified_and_planned_as_traced(families: dict[str, str], family: str, grouped: str,
                                                    tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.getbasetemp() / "zoo"
    r = zoo_sweep.sweep_model(family, families[family], work, grouped)
    want = "refused" if family in REFUSED else "pass"
    assert r.status == want, (r.status, r.detail, r.identification)
    if want == "pass":
        assert r.identification.startswith("identified as timm:")
        assert r.placed_file == r.placed_spec > 0
