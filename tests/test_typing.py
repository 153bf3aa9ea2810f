"""The public API is typed (`py.typed` ships): a script using it type-checks with mypy, and misuse does not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

GOOD = '''
from pathlib import Path

from torch import nn

import learngene_tools as lg


def use(model: nn.Module, sd: dict[str, object]) -> None:
    plan: lg.TransplantPlan = lg.transplant("lgt:default", model)
    placed: list[lg.Assignment] = plan.placed
    out: Path = lg.apply_plan(lg.plan_transplant("lgt:default", "timm:resnet18", seed=1), "out.safetensors")
    new = lg.apply_plan(lg.plan_transplant("lgt:default", sd, arch="timm:resnet18"), None)
    bundle: lg.Bundle = lg.read_bundle("lgt:default", tensors=False)
    settings = lg.TransplantSettings(seed=1, grouped="project")
    summary: dict[str, object] = lg.distill(lg.DistillSettings(), lg.RunOptions(ancestry="a.pth", work_dir=Path("w")))
    with lg.notices_to(print):
        print(placed, out, new, bundle, settings, summary, lg.list_bundles())
'''

BAD = '''
import learngene_tools as lg

n: int = lg.transplant("lgt:default", "timm:resnet18")
lg.apply_plan("not a plan", None)
'''


def _mypy(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    pytest.importorskip("mypy")
    (tmp_path / "script.py").write_text(code)
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                           "--follow-imports", "silent", "--cache-dir", str(tmp_path / ".mypy_cache"),
                           str(tmp_path / "script.py")], capture_output=True, text=True, cwd=ROOT)


def test_the_package_says_it_is_typed():
    assert (ROOT / "learngene_tools" / "py.typed").is_file()


def test_a_script_using_the_public_api_type_checks(tmp_path: Path):
    r = _mypy(tmp_path, GOOD)
    assert r.returncode == 0, r.stdout + r.stderr


def test_misuse_of_the_public_api_does_not(tmp_path: Path):
    r = _mypy(tmp_path, BAD)
    assert r.returncode == 1 and "script.py:4" in r.stdout and "script.py:5" in r.stdout, r.stdout + r.stderr
