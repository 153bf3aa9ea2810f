"""`lgt extract ANCESTRY` with no other flag: the ancestry identified from its checkpoint, data-free, and --dry-run.

The RepLKNet-31B file here has the released checkpoint's layout (`model`, `epoch`, `args`) and every
key and shape of the training form, but each tensor is one zero broadcast to its shape, so the file is
a few hundred kB: identification and --dry-run read names and shapes only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from conftest import run_lgt

from learngene_tools.architectures.specs import build_model
from learngene_tools.architectures.tracing import on_meta
from learngene_tools.io.bundle import read_bundle_header


def _broadcast_zeros(spec: str, **kwargs) -> dict[str, torch.Tensor]:
    with on_meta():
        model = build_model(spec, **kwargs)
    return {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def ancestries(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ancestry")
    torch.save({"model": _broadcast_zeros("timm:replknet_31b"), "epoch": 300,
                "args": argparse.Namespace(model="RepLKNet-31B")}, d / "RepLKNet-31B_ImageNet-1K_224.pth")
    torch.save(build_model("timm:resnet18", seed=0).state_dict(), d / "resnet18.pth")
    import tinymodels

    torch.save(tinymodels.tiny_vgg().state_dict(), d / "mine.pth")
    return d


def test_extract_dry_run_identifies_replknet_and_trains_nothing(ancestries: Path, tmp_path: Path):
    p = run_lgt("extract", str(ancestries / "RepLKNet-31B_ImageNet-1K_224.pth"), "--dry-run", cwd=tmp_path)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    text = p.stdout
    assert "replknet_31b, identified as replknet_31b (RepLKNet variant from its keys)" in text
    assert "taps (stride 4, 8, 16): stages.0, stages.1, stages.2" in text
    assert "auxiliary model: lgt_aux_base" in text and "10000 steps" in text
    assert "data: procedural images (data-free" in text and "dry run: nothing trained or written" in text
    assert list(tmp_path.iterdir()) == []

    p = run_lgt("distill", str(ancestries / "RepLKNet-31B_ImageNet-1K_224.pth"), "--dry-run", "--json",
                "--aux", "lgt_aux_small", "--data", str(tmp_path), cwd=tmp_path)
    d = json.loads(p.stdout)
    assert d["ancestry"]["arch"] == "replknet_31b" and d["taps"] == ["stages.0", "stages.1", "stages.2"]
    assert d["auxiliary"]["variant"] == "lgt_aux_small" and d["data"] == str(tmp_path) and d["output"] is None
    assert list(tmp_path.iterdir()) == []


def test_extract_without_arch_or_data_distils_the_identified_ancestry(ancestries: Path, tmp_path: Path):
    p = run_lgt("extract", str(ancestries / "resnet18.pth"), "--steps", "2", "--warmup-steps", "1", "--img-size", "32",
                "--batch-size", "2", "--aux", "lgt_aux_tiny", "--workers", "0", "--device", "cpu",
                "-o", "lg.safetensors", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    notes = [ln for ln in p.stderr.splitlines() if ln.startswith("note:")]
    assert notes[0] == "note: ancestry identified as timm:resnet18 (exact key and shape match)", p.stderr
    assert any("data-free on procedural images" in n and "--data DIR" in n for n in notes)
    header = read_bundle_header(tmp_path / "lg.safetensors")
    assert header.provenance["ancestry"]["arch"] == "timm:resnet18"


def test_unidentified_ancestry_asks_for_arch(ancestries: Path, tmp_path: Path):
    p = run_lgt("extract", str(ancestries / "mine.pth"), "--dry-run", cwd=tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and "ancestry's architecture was not identified" in lines[0] and "--arch" in lines[0]
    assert list(tmp_path.iterdir()) == []
