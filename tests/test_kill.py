"""A transplant killed with SIGKILL never leaves a half-written output, and the next run cleans up after it.

A real `lgt transplant` subprocess writes a ~96 MB descendant; the test watches the output folder
and kills the process at several points: before anything is written, as soon as the temporary
file appears, half-way through it, once it has its full size (the rename may or may not have
happened). After each kill the output is either absent or complete (byte-identical to an
uninterrupted run). A killed run leaves its `.OUT.lgt-tmp-<pid>-<hex>` file; the next
transplant writing the same output removes it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tinymodels
import torch

from learngene_tools.io.files import temp_pattern

pytestmark = pytest.mark.slow  # real processes killed at many points of a ~96 MB write: run by .ci/run, -m slow

TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)}
BIG = 24 * 2**20  # float32 elements of the padding tensor: ~96 MB


def _start(bundle: Path, target: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "learngene_tools", "transplant", str(bundle), str(target), "-o",
                             str(out), "--force", "-q"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _temps(out: Path) -> list[Path]:
    pattern = temp_pattern(out)
    return [p for p in out.parent.iterdir() if pattern.match(p.name)]


def _kill_when(proc: subprocess.Popen, out: Path, ready, timeout: float = 300) -> str:
    """SIGKILL `proc` as soon as `ready(temp sizes)` holds; returns what was seen (or 'exited' if it finished)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return "exited"
        sizes = []
        for p in (p for p in _temps(out) if f".lgt-tmp-{proc.pid}-" in p.name):  # this run's, not a dead one's
            try:
                sizes.append(p.stat().st_size)
            except FileNotFoundError:
                pass
        if ready(sizes):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return f"killed at temporary sizes {sizes}"
        time.sleep(0.0005)
    proc.kill()
    proc.wait()
    raise AssertionError("the transplant neither reached the kill point nor finished")


@pytest.fixture(scope="module")
def big_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("big")
    state = tinymodels.tiny_vgg().state_dict()
    state["padding"] = torch.arange(BIG, dtype=torch.float32)  # not a conv: copied as it is
    torch.save({"state_dict": state, "epoch": 3}, d / "target.pt")
    return d / "target.pt"


def test_sigkill_never_leaves_a_half_written_output_and_the_next_run_cleans_up(bundle_tiny: Path, big_target: Path,
                                                                               tmp_path: Path) -> None:
    ref_dir, work = tmp_path / "ref", tmp_path / "work"
    ref_dir.mkdir()
    work.mkdir()
    ref = ref_dir / "out.pt"
    done = _start(bundle_tiny, big_target, ref)
    assert done.wait(timeout=600) == 0, done.stderr.read()
    reference, full = ref.read_bytes(), ref.stat().st_size
    out = work / "out.pt"

    kill_points = {  # the last one leaves its temporary file for the final run to clean
        "before anything is written": lambda sizes: False,  # replaced below by a timed kill
        "temporary file complete": lambda sizes: any(s >= full for s in sizes),
        "temporary file just created": lambda sizes: len(sizes) > 0,
        "temporary file half written": lambda sizes: any(full * 0.3 <= s <= full * 0.7 for s in sizes),
    }
    seen = {}
    for name, ready in kill_points.items():
        proc = _start(bundle_tiny, big_target, out)
        if name == "before anything is written":
            time.sleep(0.3)  # interpreter start-up: long before any output
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            seen[name] = "killed during start-up"
        else:
            seen[name] = _kill_when(proc, out, ready)
        names = {p.name for p in work.iterdir()}
        # nothing but the output and at most one temporary file: each run removed the one its killed predecessor left
        assert len(names - {out.name}) <= 1 and names - {out.name} <= {p.name for p in _temps(out)}, (name, names)
        if out.exists():  # only if a kill came after the rename: then it is the whole file
            assert out.read_bytes() == reference, name
    assert _temps(out), seen  # the last killed writer left its temporary file behind

    proc = _start(bundle_tiny, big_target, out)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    assert [p.name for p in work.iterdir()] == [out.name], seen  # every stale temporary file is gone
    assert out.read_bytes() == reference


def test_sigkill_while_patching_a_safetensors_target(bundle_tiny: Path, tmp_path: Path) -> None:
    """The safetensors path copies the target's data in the kernel (copy_file_range): kill as soon as it starts."""
    from safetensors.torch import save_file

    state = tinymodels.tiny_vgg().state_dict()
    state["padding"] = torch.zeros(BIG // 2)
    save_file(state, str(tmp_path / "target.safetensors"))
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out.safetensors"
    proc = _start(bundle_tiny, tmp_path / "target.safetensors", out)
    what = _kill_when(proc, out, lambda sizes: len(sizes) > 0)
    if what != "exited":
        assert not out.exists()
    proc = _start(bundle_tiny, tmp_path / "target.safetensors", out)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    assert [p.name for p in work.iterdir()] == [out.name]
