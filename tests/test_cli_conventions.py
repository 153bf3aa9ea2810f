"""Conventions every `lgt` command follows: -h, --version, --json (errors too), -q, file arguments that take references."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import run_lgt
from typer.testing import CliRunner

from learngene_tools.cli.app import app
from learngene_tools.cli.commands import COMMANDS
from learngene_tools.settings import settings_of

runner = CliRunner()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_lists_every_setting_with_plain_flags(name: str):
    r = runner.invoke(app, [name, "-h"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "<bool>" not in r.output and "[default: (" not in r.output
    for cls in COMMANDS[name]:
        for s in settings_of(cls):
            if s.option.cli and not s.option.positional:
                assert s.flag in r.output, (name, s.flag)
    for flag in ("--json", "--quiet", "--verbose", "--help"):
        assert flag in r.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_file_arguments_say_they_take_references(name: str):
    for cls in COMMANDS[name]:
        for s in settings_of(cls):
            if (s.option.positional or s.name == "teacher") and s.name in ("aux", "bundle", "target", "file", "ancestry", "teacher"):
                assert "hf://" in s.option.help, (name, s.name)
                # a shipped bundle is offered only where a bundle fits: never as an ancestry, auxiliary model or target
                assert ("lgt:NAME" in s.option.help) == (s.name in ("bundle", "file")), (name, s.name)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_help_ends_with_examples_that_name_it(name: str):
    r = runner.invoke(app, [name, "--help"])
    assert r.exit_code == 0
    examples = r.output.split("Examples:", 1)[1].strip().splitlines()
    assert examples and all(line.strip().startswith(f"lgt {name}") for line in examples), r.output


def test_commands_are_listed_in_pipeline_order():
    r = runner.invoke(app, ["--help"])
    listed = [ln.split()[0] for ln in r.output.split("Commands:", 1)[1].splitlines() if ln.strip()]
    assert listed == ["distill", "select", "extract", "push", "pull", "list", "inspect", "transplant", "evaluate",
                      "demo"]


def test_top_level_help_and_version():
    r = runner.invoke(app, ["-h"])
    assert r.exit_code == 0 and "transplant" in r.output and "--install-completion" in r.output
    p = run_lgt("--version")
    assert p.returncode == 0 and re.fullmatch(r"lgt \S+\n", p.stdout)


def _fails(args: list[str], cwd: Path) -> dict:
    p = run_lgt(*args, cwd=cwd)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    if "--json" not in args:
        assert p.stdout == ""
        return {}
    error = json.loads(p.stdout)["error"]
    assert error["message"] == lines[0].removeprefix("error: ") and error["exit_code"] == 2
    return error


def test_every_command_fails_as_one_line_and_a_json_error_object(tmp_path: Path):
    missing = str(tmp_path / "missing.safetensors")
    calls = {
        "select": ["select", missing, "-o", str(tmp_path / "o.safetensors")],
        "transplant": ["transplant", missing, "timm:resnet18", "-o", str(tmp_path / "o.safetensors")],
        "inspect": ["inspect", missing],
        "pull": ["pull", "not a repo"],
        "push": ["push", missing, "owner/repo"],
        "demo": ["demo", "--target", "timm:no_such_model_anywhere", "--out-dir", str(tmp_path / "d")],
        "distill": ["distill", missing, "--arch", "timm:resnet18"],
        "extract": ["extract", missing, "--arch", "timm:resnet18"],
        "evaluate": ["evaluate", missing, "--arch", "timm:resnet18", "--data", "synthetic", "-o", str(tmp_path / "ev")],
    }
    assert set(calls) == set(COMMANDS) - {"list"}  # `lgt list` takes no input that can be wrong
    with ThreadPoolExecutor(max_workers=4) as pool:
        plain = dict(zip(calls, pool.map(lambda a: _fails(a, tmp_path), calls.values())))
        as_json = dict(zip(calls, pool.map(lambda a: _fails([*a, "--json"], tmp_path), calls.values())))
    assert all(v == {} for v in plain.values())
    kinds = {name: e["kind"] for name, e in as_json.items()}
    assert kinds["select"] == kinds["transplant"] == kinds["inspect"] == kinds["distill"] == "not_found", kinds
    assert kinds["evaluate"] == "not_found", kinds
    assert kinds["demo"] == "model", kinds
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written anywhere


def test_quiet_prints_only_the_result(bundle_tiny: Path, tmp_path: Path):
    out = tmp_path / "r.safetensors"
    p = run_lgt("transplant", str(bundle_tiny), "timm:resnet18", "-o", str(out), "-q")
    assert p.returncode == 0 and p.stderr == "" and p.stdout == f"{out}\n"
    p = run_lgt("inspect", str(bundle_tiny), "-q")
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 1 and "learngene bundle" in p.stdout


def test_verbose_shows_every_step(bundle_tiny: Path):
    p = run_lgt("transplant", str(bundle_tiny), "timm:resnet18", "--dry-run", "-v")
    assert p.returncode == 0
    assert "s1.0 -> conv1: kernels 8 -> 64" in p.stdout and "3x3 kernel centred in 7x7" in p.stdout
