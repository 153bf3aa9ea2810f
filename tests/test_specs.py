"""Model specs run code: only the user's own, or explicitly trusted, are imported or called (issue 9, item 4).

- the standard library and builtins are never called (`os:system`, `os:abort`, `code:interact`,
  `builtins:breakpoint`, `http.server:test`, `tempfile:mkdtemp`), in-process and through the CLI;
- a `module:factory` spec must name a function whose result is an nn.Module;
- a recipe's `module:factory` spec needs --trust-code;
- `python -m learngene_tools` imports nothing from the working directory unless the user's own spec
  names that module, and then behaves exactly like `lgt`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from clichecks import one_line

from learngene_tools.architectures.specs import build_model, check_spec, is_code_spec
from learngene_tools.errors import ModelError, UnsafeInputError

TESTS = Path(__file__).parent
REPO = TESTS.parent
DANGEROUS = ["os:system", "os:abort", "code:interact", "builtins:breakpoint", "http.server:test", "tempfile:mkdtemp"]


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "COLUMNS": "200", "PYTHONPATH": path, **extra}


def _run(argv: list[str], cwd: Path, stdin: str = "", **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, input=stdin, capture_output=True, text=True, env=_env(**env), timeout=180)


# --- in-process: the dangerous callables are never reached ----------------------------------------------


@pytest.mark.parametrize("spec", DANGEROUS)
def test_stdlib_and_builtin_specs_are_refused_before_anything_is_called(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    module_name, attr = spec.split(":")
    module = importlib.import_module(module_name)
    calls = []
    monkeypatch.setattr(module, attr, lambda *a, **k: calls.append((a, k)))
    with pytest.raises(UnsafeInputError, match="standard library or builtins"):
        build_model(spec)
    assert calls == []


@pytest.fixture
def user_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user package with good factories and every kind of bad one."""
    (tmp_path / "userfactories.py").write_text(textwrap.dedent("""
        import functools
        from os import system
        from tempfile import mkdtemp

        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 8, 3)

        class NotAModule:
            pass

        def good():
            return Net()

        def needs_args(width):
            return Net()

        def returns_int():
            return 3

        def exits():
            raise SystemExit(0)

        def fails():
            raise RuntimeError("out of memory")

        partial_good = functools.partial(good)
        mkdtemp_alias = mkdtemp

        class Holder:
            @classmethod
            def create(cls):
                return Net()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmpdir"))
    (tmp_path / "tmpdir").mkdir()
    yield tmp_path
    sys.modules.pop("userfactories", None)


def test_user_factories_are_checked(user_modules: Path) -> None:

    # a function, an nn.Module class (a factory too) and a classmethod: each builds the user's own Net
    for spec in ("userfactories:good", "userfactories:Net", "userfactories:Holder.create"):
        m = build_model(spec)
        assert (type(m).__module__, type(m).__name__) == ("userfactories", "Net"), spec
        assert [tuple(p.shape) for p in m.parameters()] == [(8, 3, 3, 3), (8,)], spec
    for spec, error, fragment in [
        ("userfactories:needs_args", ModelError, "cannot be called without arguments"),
        ("userfactories:returns_int", ModelError, "returned int, not a torch.nn.Module"),
        ("userfactories:NotAModule", ModelError, "'NotAModule' is a class that is not a torch.nn.Module"),
        ("userfactories:partial_good", ModelError, "is a callable object, not a function"),
        ("userfactories:nothing", ModelError, "has no function 'nothing'"),
        ("userfactories:exits", ModelError, "building the model failed (SystemExit"),
        ("userfactories:fails", ModelError, "building the model failed (RuntimeError: out of memory)"),
        ("userfactories:system", ModelError, "'system' is a builtin"),  # os.system, imported into the module
        ("userfactories:mkdtemp", UnsafeInputError, "comes from tempfile"),  # a stdlib function re-exported
        ("userfactories:mkdtemp_alias", UnsafeInputError, "comes from tempfile"),
        ("learngene_tools.cli.app:main", UnsafeInputError, "standard library or builtins"),
        ("learngene_tools.models.descendants:os", ModelError, "'os' is a module"),
        ("lgt:default", ModelError, "is a bundle reference"),
    ]:
        with pytest.raises(error) as e:
            build_model(spec)
        assert fragment.lower() in str(e.value).lower(), (spec, str(e.value))
    assert list((user_modules / "tmpdir").iterdir()) == []  # mkdtemp never ran


def test_builtin_descendants_and_registries_are_always_allowed() -> None:
    import torch

    for spec in ("timm:resnet18", "torchvision:resnet18", "learngene_tools.descendants:small_vgg", "resnet18"):
        assert not is_code_spec(spec)
        check_spec(spec, source="recipe r.toml")  # no --trust-code needed
    assert is_code_spec("userfactories:good") and is_code_spec("os:system")
    with pytest.raises(UnsafeInputError, match="recipe r.toml names code to import and run.*pass --trust-code"):
        check_spec("userfactories:good", source="recipe r.toml")
    vgg = build_model("learngene_tools.descendants:small_vgg")  # VGG-16's 13 convs at small widths, 1 channel in
    assert sum(isinstance(m, torch.nn.Conv2d) for m in vgg.modules()) == 13
    assert vgg(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


# --- through the CLI --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory: pytest.TempPathFactory, bundle_tiny: Path) -> Path:
    return bundle_tiny


def test_dangerous_specs_through_the_cli_run_nothing(bundle_file: Path, tmp_path: Path) -> None:
    """What each did before: os:system ran a shell, os:abort killed lgt (134), code:interact and breakpoint ran
    commands from stdin, http.server:test listened on port 8000, tempfile:mkdtemp made a folder."""
    marker = tmp_path / "pwned"
    stdin = f"import os; os.mkdir({str(marker)!r})\nc\n"
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()

    def call(spec: str) -> subprocess.CompletedProcess:
        work = tmp_path / spec.replace(":", "_")
        work.mkdir()
        return _run([sys.executable, "-m", "learngene_tools", "transplant", str(bundle_file), spec, "-o",
                     str(work / "out.safetensors")], cwd=work, stdin=stdin, TMPDIR=str(tmpdir))

    with ThreadPoolExecutor(3) as pool:
        results = dict(zip(DANGEROUS, pool.map(call, DANGEROUS)))
    for spec, r in results.items():
        one_line(r, spec, "standard library or builtins")
        assert list((tmp_path / spec.replace(":", "_")).iterdir()) == []
    assert not marker.exists() and list(tmpdir.iterdir()) == []


def _recipe(path: Path, table: str, **values: str) -> Path:
    body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
    path.write_text(f'[recipe]\nname = "t"\n\n[{table}]\n{body}\n')
    return path


def test_a_recipe_spec_needs_trust_code(bundle_file: Path, tmp_path: Path) -> None:
    code_recipe = _recipe(tmp_path / "code.toml", "transplant", target="tinymodels:tiny_vgg")
    stdlib_recipe = _recipe(tmp_path / "stdlib.toml", "transplant", target="os:system")
    arch_recipe = _recipe(tmp_path / "arch.toml", "transplant", arch="tinymodels:tiny_vgg")
    extract_recipe = _recipe(tmp_path / "extract.toml", "extract", arch="tinymodels:tiny_vgg")
    b = str(bundle_file)
    calls = {
        "untrusted": ["transplant", b, "--recipe", str(code_recipe), "--dry-run", "--json"],
        "trusted": ["transplant", b, "--recipe", str(code_recipe), "--dry-run", "--json", "--trust-code"],
        "stdlib_trusted": ["transplant", b, "--recipe", str(stdlib_recipe), "--dry-run", "--trust-code"],
        "arch": ["transplant", b, "tinymodels:tiny_vgg", "--recipe", str(arch_recipe), "--dry-run"],
        "overridden": ["transplant", b, "learngene_tools.descendants:small_vgg", "--recipe", str(code_recipe),
                       "--dry-run", "--json"],
        "extract": ["distill", "--recipe", str(extract_recipe), "--synthetic", "--work-dir", str(tmp_path / "w"),
                    str(bundle_file)],
    }
    with ThreadPoolExecutor(3) as pool:
        r = dict(zip(calls, pool.map(lambda a: _run([sys.executable, "-m", "learngene_tools", *a], cwd=tmp_path),
                                     calls.values())))
    one_line(r["untrusted"], "tinymodels:tiny_vgg", "code.toml", "names code to import and run", "--trust-code")
    assert json.loads(r["untrusted"].stdout)["error"]["kind"] == "unsafe_input"
    assert r["trusted"].returncode == 0, r["trusted"].stderr
    assert json.loads(r["trusted"].stdout)["target"] == "tinymodels:tiny_vgg"
    one_line(r["stdlib_trusted"], "os:system", "standard library")
    one_line(r["arch"], "arch.toml", "([arch])", "--trust-code")
    assert r["overridden"].returncode == 0, r["overridden"].stderr  # the command line's TARGET wins: not the recipe's
    one_line(r["extract"], "extract.toml", "--trust-code")
    assert not (tmp_path / "w").exists()


# --- the working directory ------------------------------------------------------------------------------

EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")
{body}
"""
CONSOLE_SCRIPT = """
import re
import sys
from learngene_tools.__main__ import main
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit(main())
"""


def test_python_m_imports_nothing_from_the_working_directory(bundle_file: Path, tmp_path: Path) -> None:
    """A stray ./typing.py, ./torch.py or ./evilmod.py is never imported: the user named none of them."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("typing", "torch", "timm", "evilmod"):
        (work / f"{name}.py").write_text(EVIL.format(marker=str(tmp_path / f"{name}.imported"), body=""))
    evil_recipe = _recipe(work / "r.toml", "transplant", target="evilmod:factory")
    r = _run([sys.executable, "-m", "learngene_tools", "transplant", str(bundle_file), "tinymodels:tiny_vgg",
              "--dry-run", "--json"], cwd=work)
    assert r.returncode == 0, r.stderr
    r2 = _run([sys.executable, "-m", "learngene_tools", "transplant", str(bundle_file), "--recipe", str(evil_recipe),
               "--dry-run"], cwd=work)
    one_line(r2, "evilmod:factory", "--trust-code")
    assert sorted(p.name for p in tmp_path.glob("*.imported")) == []


def test_a_spec_the_user_typed_imports_from_the_working_directory_with_lgt_and_python_m(bundle_file: Path,
                                                                                          tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    body = "import tinymodels\ndef factory():\n    return tinymodels.tiny_vgg()\n"
    (work / "mymodel.py").write_text(EVIL.format(marker=str(tmp_path / "mymodel.imported"), body=body))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "lgt").write_text(CONSOLE_SCRIPT)
    args = ["transplant", str(bundle_file), "mymodel:factory", "--dry-run", "--json"]
    with ThreadPoolExecutor(2) as pool:
        as_module, as_script = pool.map(lambda argv: _run(argv, cwd=work),
                                        [[sys.executable, "-m", "learngene_tools", *args],
                                         [sys.executable, str(bin_dir / "lgt"), *args]])
    assert as_module.returncode == 0, as_module.stderr
    assert (as_module.returncode, as_module.stdout, as_module.stderr) == (as_script.returncode, as_script.stdout,
                                                                          as_script.stderr)
    assert json.loads(as_module.stdout)["target"] == "mymodel:factory"
    assert (tmp_path / "mymodel.imported").exists()
