"""Writes that never clobber: two transplants to one output started together give one output and one one-line
refusal (an existing output needs --force, even one that appeared while the other ran), and no temporary file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from clichecks import one_line
from safetensors.torch import save_file
from tinymodels import tiny_vgg

from learngene_tools.errors import OutputError
from learngene_tools.io import files, folders
from learngene_tools.transplantation.apply import transplant

TESTS = Path(__file__).parent
ARCH = "tinymodels:tiny_vgg"


def _race(monkeypatch: pytest.MonkeyPatch, module, run, n: int = 2) -> list[BaseException | None]:
    """Run `run(i)` in `n` threads that all wait at a barrier right before publishing their output."""
    barrier = threading.Barrier(n, timeout=120)
    real = files.publish

    def at_once(tmp, out, replace):
        barrier.wait()
        return real(tmp, out, replace)

    def one(i):
        try:
            run(i)
        except BaseException as e:  # noqa: BLE001 - collected for the assertions
            return e
        return None

    with monkeypatch.context() as m, ThreadPoolExecutor(n) as pool:
        m.setattr(module, "publish", at_once)
        return list(pool.map(one, range(n)))


def _refused_once(results: list[BaseException | None]) -> str:
    errors = [e for e in results if e is not None]
    assert len(errors) == 1 and isinstance(errors[0], OutputError), results
    line = str(errors[0])
    assert "\n" not in line and "already exists" in line and "--force" in line
    return line


@pytest.fixture(scope="module")
def vgg_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("publish") / "vgg.pt"
    torch.save(tiny_vgg().state_dict(), path)
    return path


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "link"])
def test_two_transplants_to_one_file_one_wins(tmp_path, bundle_tiny, vgg_pt, monkeypatch, renameat2):
    if not renameat2:  # the portable way: link(2) never replaces
        monkeypatch.setattr(files, "_renameat2_noreplace", lambda src, dst: False)
    out = tmp_path / "same.pt"
    results = _race(monkeypatch, files, lambda i: transplant(bundle_tiny, str(vgg_pt), out, arch=ARCH, seed=i))
    _refused_once(results)
    winner = results.index(None)
    transplant(bundle_tiny, str(vgg_pt), tmp_path / "expected.pt", arch=ARCH, seed=winner)
    assert sorted(os.listdir(tmp_path)) == ["expected.pt", "same.pt"]  # no temporary file left
    got, want = torch.load(out, weights_only=True), torch.load(tmp_path / "expected.pt", weights_only=True)
    assert all(torch.equal(got[k], want[k]) for k in want)  # the output is the winner's, whole


def test_with_force_the_last_writer_replaces(tmp_path, bundle_tiny, vgg_pt, monkeypatch):
    out = tmp_path / "same.pt"
    results = _race(monkeypatch, files, lambda i: transplant(bundle_tiny, str(vgg_pt), out, arch=ARCH, force=True))
    assert results == [None, None] and os.listdir(tmp_path) == ["same.pt"]


def _folder(path: Path) -> Path:
    path.mkdir()
    save_file(tiny_vgg().state_dict(), str(path / "model.safetensors"))
    (path / "config.json").write_text("{}")
    return path


def test_two_transplants_to_one_folder_one_wins(tmp_path, bundle_tiny, monkeypatch):
    target = _folder(tmp_path / "target")
    out = tmp_path / "out"
    results = _race(monkeypatch, folders, lambda i: transplant(bundle_tiny, str(target), out, arch=ARCH))
    _refused_once(results)
    assert sorted(os.listdir(tmp_path)) == ["out", "target"]  # no temporary folder left
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("existing", ["empty folder", "folder", "file"])
def test_a_folder_is_never_published_over_what_appeared_meanwhile(tmp_path, existing):
    out = tmp_path / "out"
    if existing == "file":
        out.write_text("someone else's")
    else:
        out.mkdir()
        if existing == "folder":
            (out / "theirs.txt").write_text("someone else's")
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else out.read_text()
    with pytest.raises(OutputError, match="already exists"):
        with folders.atomic_folder(out, replace=False) as tmp:
            (tmp / "mine.txt").write_text("mine")
    assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else out.read_text()) == before
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_two_lgt_processes_to_one_output(tmp_path, bundle_tiny, vgg_pt):
    """The command line: both started at once; one exits 0, the other 2 with one line, whichever way they overlap."""
    shutil.copyfile(vgg_pt, tmp_path / "vgg.pt")
    out = tmp_path / "same.pt"
    env = {**os.environ, "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)}
    cmd = [sys.executable, "-m", "learngene_tools", "transplant", str(bundle_tiny), str(tmp_path / "vgg.pt"),
           "-o", str(out), "--arch", ARCH, "-q"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    done = [subprocess.CompletedProcess(cmd, p.returncode, *o) for p, o in zip(procs, outputs)]
    assert sorted(p.returncode for p in done) == [0, 2], done
    one_line(next(p for p in done if p.returncode), "same.pt", "already exists", "--force")
    assert sorted(os.listdir(tmp_path)) == ["same.pt", "vgg.pt"]
    tiny_vgg().load_state_dict(torch.load(out, weights_only=True), strict=True)
