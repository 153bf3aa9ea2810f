"""Command-line frictions of issue 18: a bundle as TARGET, `lgt list`, the ambiguity note's wording."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_lgt

pytest.register_assert_rewrite("hubenv")
from hubenv import repo_with_bundle  # noqa: E402

from learngene_tools import hub  # noqa: E402
from learngene_tools.architectures.identify import Architecture  # noqa: E402

pytest_plugins = ["hubenv"]  # fake_hub, hub_env, work


def test_a_bundle_is_refused_as_the_target(tmp_path: Path):
    for target in ("lgt:default", str(Path(hub.__file__).parent.parent / "bundles" /
                                      "mobilenetv2-imagenet-synthetic.safetensors")):
        p = run_lgt("transplant", "lgt:default", target, cwd=tmp_path)
        lines = p.stderr.splitlines()
        assert p.returncode == 2 and len(lines) == 1 and "is a learngene bundle, not a target" in lines[0], p.stderr
    assert list(tmp_path.iterdir()) == []


def test_list_shows_shipped_and_cached_bundles(fake_hub, hub_env, bundle_small, work):
    p = run_lgt("list", "--json", cwd=work)
    shipped = json.loads(p.stdout)["bundles"]
    assert p.returncode == 0 and [b["source"] for b in shipped] == ["shipped"] and shipped[0]["default"]
    repo_with_bundle(fake_hub, "alice/lg", bundle_small.read_bytes())
    hub.pull("alice/lg")
    p = run_lgt("list", "--json", cwd=work)
    cached = [b for b in json.loads(p.stdout)["bundles"] if b["source"] == "hub cache"]
    assert len(cached) == 1 and cached[0]["ref"] == "hf://alice/lg/learngene.safetensors@main"
    assert cached[0]["layers"] > 0 and cached[0]["hash"].startswith("sha256:")
    p = run_lgt("list", cwd=work)
    assert p.returncode == 0 and "hf://alice/lg/learngene.safetensors@main" in p.stdout and "shipped" in p.stdout
    p = run_lgt("list", "-q", cwd=work)
    assert p.stdout.splitlines() == ["lgt:mobilenetv2-imagenet-synthetic", "hf://alice/lg/learngene.safetensors@main"]


def test_the_ambiguity_note_reads_plainly():
    a = Architecture("timm:resnet50", "exact key and shape match", build=lambda meta: None, also=("torchvision:resnet50",))
    assert a.describe().endswith("; torchvision:resnet50 also matches and places the same)")
    a.also = ("x:a", "x:b")
    assert "x:a, x:b also match and place the same" in a.describe()
