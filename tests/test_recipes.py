"""Recipes: every shipped recipe is valid; bad ones are refused; the recipe used is echoed into the output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_lgt

from learngene_tools.cli.recipes import load_recipe
from learngene_tools.errors import LgtError
from learngene_tools.io.bundle import read_bundle
from learngene_tools.io.header import read_header

RECIPES = Path(__file__).parent.parent / "recipes"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path: Path) -> None:
    kind = "extract" if path.name.startswith("extract_") else "transplant"
    recipe = load_recipe(path, kind)
    assert recipe.header["name"] and recipe.header["description"]
    assert recipe.settings.get("arch" if kind == "extract" else "target")


def test_the_paper_recipes_are_shipped() -> None:
    names = {p.name for p in RECIPES.glob("*.toml")}
    assert {"extract_replknet31b_imagenet.toml", "extract_replknet_xl_imagenet.toml"} <= names
    for family in ("vgg16", "resnet50", "botnet", "mobilevit", "yolov8n", "detr", "deeplabv3plus"):
        assert f"transplant_{family}.toml" in names


@pytest.mark.parametrize("body,message", [
    ('[transplant]\ntarget = "timm:resnet50"\nsed = 1\n', "unknown key 'sed' in [transplant]"),
    ('[transplant]\ntarget = "timm:resnet50"\nseed = "one"\n', "seed must be an integer"),
    ('[transplant]\ntarget = "timm:resnet50"\nbn = 1\n', "bn must be true or false"),
    ('[transplant]\ninput_size = [224]\n', "--input-size takes H,W or C,H,W"),
    ('[transplant]\ntarget = 5\n', "target must be a string"),
    ('[extract]\narch = "x"\n', "no [transplant] table; it is a extract recipe"),
    ('[transplants]\ntarget = "x"\n', "unknown table(s) transplants"),
    ('[transplant\n', "not valid TOML"),
])
def test_bad_recipes_are_refused(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "r.toml"
    path.write_text(body)
    with pytest.raises(LgtError) as e:
        load_recipe(path, "transplant")
    assert message in str(e.value)


def test_extract_recipe_checks_list_lengths_and_types(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text('[extract]\narch = "timm:resnet18"\nalphas = [1.0, 0.5]\n')
    with pytest.raises(LgtError, match="alphas needs 3 values"):
        load_recipe(path, "extract")
    path.write_text('[extract]\narch = "timm:resnet18"\nalphas = [1, "a", 1]\n')
    with pytest.raises(LgtError, match="alphas must be a list of 3 numbers"):
        load_recipe(path, "extract")


def test_transplant_recipe_is_used_and_echoed(tmp_path: Path, bundle_tiny: Path) -> None:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text('[recipe]\nname = "tiny"\n[transplant]\ntarget = "tinymodels:tiny_vgg"\nseed = 3\n'
                      f'output = "{tmp_path / "out.safetensors"}"\n')
    # the recipe's target is a module:factory spec: code a recipe may only run with --trust-code
    r = run_lgt("transplant", str(bundle_tiny), "--recipe", str(recipe), "--json", "--trust-code",
                env_extra={"PYTHONPATH": str(Path(__file__).parent)})
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["seed"] == 3 and plan["output"] == str(tmp_path / "out.safetensors")
    meta = read_header(tmp_path / "out.safetensors").metadata
    record = json.loads(meta["learngene.transplant"])
    assert record["recipe"]["name"] == "tiny" and record["recipe"]["settings"]["seed"] == 3
    assert record["recipe"]["sha256"].startswith("sha256:")
    # an option on the command line wins over the recipe
    r = run_lgt("transplant", str(bundle_tiny), "--recipe", str(recipe), "--seed", "5", "--dry-run", "--json",
                "--trust-code", env_extra={"PYTHONPATH": str(Path(__file__).parent)})
    assert r.returncode == 0, r.stderr and json.loads(r.stdout)["seed"] == 5
    assert json.loads(r.stdout)["seed"] == 5


def test_extract_recipe_is_echoed_into_the_bundle(tmp_path: Path) -> None:
    import torch
    from tinymodels import tiny_vgg

    teacher = tmp_path / "teacher.pth"
    torch.save(tiny_vgg().state_dict(), teacher)
    recipe = tmp_path / "ex.toml"
    recipe.write_text('[recipe]\nname = "tiny-extract"\n[extract]\narch = "tinymodels:tiny_vgg"\nsynthetic = true\n'
                      'aux = "lgt_aux_tiny"\nimg_size = 32\nbatch_size = 4\nsteps = 3\nwarmup_steps = 1\n'
                      f'alphas = [0.0, 1.0, 1.0]\nworkers = 0\nwork_dir = "{tmp_path / "w"}"\n')
    out = tmp_path / "lg.safetensors"
    r = run_lgt("extract", str(teacher), "--recipe", str(recipe), "--steps", "2", "-o", str(out), "--device", "cpu",
                "--trust-code", env_extra={"PYTHONPATH": str(Path(__file__).parent)})
    assert r.returncode == 0, r.stderr
    dist = read_bundle(out).provenance["distillation"]
    assert dist["steps"] == 2  # the command line won over the recipe's 3
    assert dist["settings"]["loss"]["alphas"] == [0.0, 1.0, 1.0] and dist["settings"]["img_size"] == 32
    assert dist["recipe"]["name"] == "tiny-extract" and dist["recipe"]["settings"]["steps"] == 3
