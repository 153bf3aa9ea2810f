"""The embedded default bundle: `lgt:default` works on a fresh install with no file of the user's."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_lgt

from learngene_tools.errors import LgtError
from learngene_tools.io.bundle import read_bundle
from learngene_tools.refs import DEFAULT_NAME, available, builtin_path

TESTS = str(Path(__file__).parent)


def test_default_bundle_is_shipped_small_and_from_a_real_ancestry() -> None:
    assert DEFAULT_NAME in available()
    path = builtin_path("lgt:default")
    assert path == builtin_path(f"lgt:{DEFAULT_NAME}") and path.stat().st_size <= 10 * 2**20
    prov = read_bundle(path).provenance  # validates records, shapes and the tensor hash
    assert prov["ancestry"]["arch"] == "torchvision:mobilenet_v2"
    assert prov["ancestry"]["checkpoint"] == "mobilenet_v2-b0353104.pth"
    assert prov["distillation"]["steps"] > 0 and prov["selection"]["stages"] == [1, 3]


def test_unknown_builtin_names_the_shipped_ones() -> None:
    try:
        builtin_path("lgt:nope")
    except LgtError as e:
        assert f"lgt:{DEFAULT_NAME}" in str(e)
    else:
        raise AssertionError("lgt:nope resolved")


def test_cli_inspect_and_transplant_with_the_default(tmp_path: Path) -> None:
    r = run_lgt("inspect", "lgt:default", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["hash_verified"] is True
    out = tmp_path / "tiny_lg.safetensors"
    r = run_lgt("transplant", "lgt:default", "tinymodels:tiny_vgg", "-o", str(out), env_extra={"PYTHONPATH": TESTS})
    assert r.returncode == 0, r.stderr
    assert out.is_file() and "wrote" in r.stdout
    r = run_lgt("inspect", "lgt:nope")
    assert r.returncode == 2 and "no such built-in bundle" in r.stderr
