"""Shared fixtures: tiny auxiliary models and bundles built on the fly (nothing is downloaded)."""

from __future__ import annotations

import os
import subprocess as _subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from learngene_tools.extraction.config import SelectionSettings
from learngene_tools.extraction.selection import select_from_file
from learngene_tools.models.aux_checkpoint import save_aux
from learngene_tools.models.auxiliary import create_aux
from learngene_tools.models.variants import VARIANTS, AuxConfig

# Every cache a test (or an `lgt` subprocess it starts) could write, by the variable that moves it.
CACHE_VARS = {
    "LGT_CACHE_DIR": "learngene_tools", "XDG_CACHE_HOME": "xdg-cache", "XDG_CONFIG_HOME": "xdg-config",
    "HF_HOME": "huggingface", "HF_HUB_CACHE": "huggingface/hub", "TORCH_HOME": "torch", "MPLCONFIGDIR": "matplotlib",
    "YOLO_CONFIG_DIR": "ultralytics", "TORCHINDUCTOR_CACHE_DIR": "torchinductor", "TRITON_CACHE_DIR": "triton",
}


@pytest.fixture(scope="session", autouse=True)
def caches_in_the_session_tmp(tmp_path_factory: pytest.TempPathFactory):
    """Caches and settings go under the session's temporary folder, never into the user's home: the variables
    for this process and every subprocess, and huggingface_hub's copies made when it was imported."""
    root = tmp_path_factory.mktemp("caches")
    mp = pytest.MonkeyPatch()
    for var, sub in CACHE_VARS.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        mp.setenv(var, str(root / sub))
    import huggingface_hub.constants as hf

    home = root / "huggingface"
    for name, path in {"HF_HOME": home, "HF_HUB_CACHE": home / "hub", "HUGGINGFACE_HUB_CACHE": home / "hub",
                       "HF_ASSETS_CACHE": home / "assets", "HUGGINGFACE_ASSETS_CACHE": home / "assets",
                       "HF_TOKEN_PATH": home / "token", "HF_STORED_TOKENS_PATH": home / "stored_tokens",
                       "HF_XET_CACHE": home / "xet", "CHECK_FOR_UPDATE_DONE_PATH": home / ".check_for_update_done"}.items():
        if hasattr(hf, name):
            mp.setattr(hf, name, str(path))
    from learngene_tools.architectures.index import load_index

    load_index()  # what a used machine has cached: the index of installed versions the package does not ship
    yield root
    mp.undo()


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


@pytest.fixture(scope="session")
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


_IN_PROCESS = threading.Lock()  # one in-process call at a time: it swaps the process's cwd, environment, streams


def run_lgt(*args: str, cwd: Path | None = None, env_extra: dict[str, str] | None = None,
            subprocess: bool = False, typer_app: bool = False) -> _subprocess.CompletedProcess:
    """Run `lgt ARGS` as `python -m learngene_tools ARGS` would: exit code, stdout and stderr.

    By default in this process (the entry point `learngene_tools.__main__.main`, with `cwd` as the working folder,
    `env_extra` in the environment and the streams captured), which saves the 2-6 s of importing torch and timm
    a subprocess costs. `subprocess=True` starts the real process: for the contract itself (exit codes, one-line
    errors, nothing imported beforehand, signals), and wherever a setting is only read at import time.
    `typer_app=True` (in this process) runs the typer app itself, without the fast `inspect` path of `__main__`.
    """
    argv = [sys.executable, "-m", "learngene_tools", *args]
    if subprocess or any(k.startswith("HF_") for k in env_extra or {}):  # huggingface_hub reads these at import
        return _subprocess.run(argv, capture_output=True, text=True, cwd=cwd,
                               env={**os.environ, "COLUMNS": "200", **(env_extra or {})})
    with _IN_PROCESS:
        return _run_in_process(argv, cwd, env_extra or {}, typer_app)


def _run_in_process(argv: list[str], cwd: Path | None, env_extra: dict[str, str],
                    typer_app: bool = False) -> _subprocess.CompletedProcess:
    import contextlib
    import io
    import traceback

    from learngene_tools import __main__ as entry
    from learngene_tools.cli import render

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, saved_argv, saved_path = dict(os.environ), os.getcwd(), sys.argv, list(sys.path)
    mp = pytest.MonkeyPatch()
    try:
        os.environ.update({"COLUMNS": "200", **{k: str(v) for k, v in env_extra.items()}})
        for p in reversed(str(env_extra.get("PYTHONPATH", "")).split(os.pathsep)):
            if p and p not in sys.path:
                sys.path.insert(0, p)
        if cwd is not None:
            os.chdir(cwd)
        sys.argv = ["lgt", *argv[3:]]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            import learngene_tools.cli.app as app  # consoles made now: 200 columns, as the subprocess gets them

            mp.setattr(app, "out", render.console())
            mp.setattr(app, "err", render.console(stderr=True))
            try:
                (app.main if typer_app else entry.main)()
                code = 0
            except SystemExit as e:
                if e.code is None or isinstance(e.code, int):
                    code = e.code or 0
                else:
                    print(e.code, file=sys.stderr)
                    code = 1
            except Exception:  # noqa: BLE001 - what the interpreter would print and exit with
                traceback.print_exc()
                code = 1
    finally:
        mp.undo()
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv, sys.path[:] = saved_argv, saved_path
    return _subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
