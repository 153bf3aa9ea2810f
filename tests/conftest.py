"""Shared fixtures: tiny auxiliary models and bundles built on the fly (nothing is downloaded)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from learngene_tools.extraction.config import SelectionSettings
from learngene_tools.extraction.selection import select_from_file
from learngene_tools.models.aux_checkpoint import save_aux
from learngene_tools.models.auxiliary import create_aux
from learngene_tools.models.variants import VARIANTS, AuxConfig


def make_aux(config: AuxConfig, seed: int = 0) -> torch.nn.Module:
    """An auxiliary model with random weights and non-trivial BN statistics."""
    torch.manual_seed(seed)
    model = create_aux(config)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VGG teacher checkpoint, wrapped under `model` as training scripts save it."""
    from tinymodels import tiny_vgg

    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save({"model": tiny_vgg().state_dict(), "epoch": 3}, path)
    return path


@pytest.fixture(scope="session")
def aux_tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("aux") / "aux_tiny.safetensors"
    save_aux(make_aux(VARIANTS["lgt_aux_tiny"]), path)
    return path


@pytest.fixture(scope="session")
def bundle_tiny(tmp_path_factory: pytest.TempPathFactory, aux_tiny_file: Path) -> Path:
    """Bundle of lgt_aux_tiny (widths 8/16/32, depths 2/2/2): s1.0, s1.1 and s3.0, s3.1."""
    path = tmp_path_factory.mktemp("bundle") / "learngene.safetensors"
    select_from_file(aux_tiny_file, path, SelectionSettings())
    return path


@pytest.fixture(scope="session")
def bundle_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bundle of lgt_aux_small (widths 32/64/128, depths 2/3/3)."""
    d = tmp_path_factory.mktemp("bundle_small")
    save_aux(make_aux(VARIANTS["lgt_aux_small"], seed=1), d / "aux.safetensors")
    select_from_file(d / "aux.safetensors", d / "learngene.safetensors", SelectionSettings())
    return d / "learngene.safetensors"


def run_lgt(*args: str, cwd: Path | None = None, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real `lgt` entry point in a subprocess (as a user would)."""
    return subprocess.run(
        [sys.executable, "-m", "learngene_tools", *args], capture_output=True, text=True, cwd=cwd,
        env={**__import__("os").environ, "COLUMNS": "200", **(env_extra or {})},
    )
