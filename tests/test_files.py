"""Inputs and outputs that are not plain files, OS errors, and temporary files (issue 9, items 2 and 3).

Inputs: a FIFO must not hang any command; device nodes, sockets, /proc pseudo-files, folders
and empty files are refused before they are opened. Outputs: an existing path that is not a
regular file is refused even with --force (`-o /dev/full` stays a device); permission denied,
a read-only folder, a full disk and a name too long are one line. Temporary files are named
`.OUT.lgt-tmp-<pid>-<hex>`, removed on every handled failure, and the next write to the same
output removes those of dead processes.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tinymodels
import torch
from clichecks import one_line
from safetensors.torch import save_file

from learngene_tools.errors import InvalidFileError, NotFoundError, OutputError
from learngene_tools.io import files
from learngene_tools.io.files import atomic_path, check_input, check_output, remove_stale_temps, temp_pattern
from learngene_tools.io.header import read_header
from learngene_tools.io.reading import load_checkpoint

TESTS = Path(__file__).parent
ENV = {**os.environ, "COLUMNS": "200",
       "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)}
TIMEOUT = 180  # a hang is a failure, not a stuck test run


def lgt(*args: str, cwd: Path | None = None, fsize: int | None = None) -> subprocess.CompletedProcess:
    """`python -m learngene_tools ARGS`, with a time limit (and a file-size limit standing in for a full disk)."""
    def limit() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", "learngene_tools", *args], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=TIMEOUT, stdin=subprocess.DEVNULL, preexec_fn=limit)


@pytest.fixture(scope="module")
def specials(tmp_path_factory: pytest.TempPathFactory, bundle_tiny: Path, aux_tiny_file: Path) -> dict[str, Path]:
    """A FIFO, a socket, an empty file, a folder, a good target and a good bundle, in one folder."""
    d = tmp_path_factory.mktemp("specials")
    os.mkfifo(d / "fifo.safetensors")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock.safetensors"))
    (d / "empty.safetensors").write_bytes(b"")
    (d / "folder.safetensors").mkdir()
    save_file(tinymodels.tiny_vgg().state_dict(), str(d / "vgg.safetensors"))
    torch.save(tinymodels.tiny_vgg().state_dict(), d / "vgg.pt")
    (d / "learngene.safetensors").write_bytes(bundle_tiny.read_bytes())
    (d / "aux.safetensors").write_bytes(aux_tiny_file.read_bytes())
    yield {p.name.split(".")[0] + ("_pt" if p.suffix == ".pt" else ""): p for p in d.iterdir()} | {
        "dir": d, "null": Path("/dev/null"), "zero": Path("/dev/zero"), "mem": Path("/proc/self/mem")}
    sock.close()


NOT_REGULAR = {"fifo": "a fifo", "sock": "a socket", "null": "a character device", "zero": "a character device",
               "mem": "is empty", "empty": "is empty", "folder": "directory"}


@pytest.mark.parametrize("name", sorted(NOT_REGULAR))
def test_api_refuses_inputs_that_are_not_regular_files(specials: dict[str, Path], name: str) -> None:
    path = specials[name]
    for read in (check_input, read_header, load_checkpoint):
        with pytest.raises(InvalidFileError) as e:
            read(path)
        # a folder is a checkpoint to load_checkpoint when it holds save_pretrained weights; this one holds none
        expected = "folder without weights" if (name, read) == ("folder", load_checkpoint) else NOT_REGULAR[name]
        assert expected in str(e.value).lower(), (read, str(e.value))


def test_the_cli_never_hangs_on_or_opens_a_special_input(specials: dict[str, Path], tmp_path: Path) -> None:
    """Every kind of special file through the real CLI, each in another of the places a file goes (a call imports
    torch: the API test above covers every kind with every reader)."""
    b, t = str(specials["learngene"]), str(specials["vgg"])
    places = [lambda p, n: ("inspect", p), lambda p, n: ("transplant", p, t, "-o", str(tmp_path / f"{n}.safetensors")),
              lambda p, n: ("transplant", b, p, "-o", str(tmp_path / f"{n}.safetensors")),
              lambda p, n: ("select", p, "-o", str(tmp_path / f"{n}.safetensors")),
              lambda p, n: ("transplant", b, "timm:resnet18", "--recipe", p, "--dry-run")]
    calls = [places[i % len(places)](str(specials[name]), name) for i, name in enumerate(sorted(NOT_REGULAR))]
    calls += [("inspect", str(specials["fifo"]), "--json"), ("select", str(specials["fifo"]), "-o", str(tmp_path / "x"))]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda a: lgt(*a, cwd=tmp_path), calls))
    for args, r in zip(calls, results):
        name = next(n for n in NOT_REGULAR if str(specials[n]) in args)
        # a folder is a valid target when it holds save_pretrained weights; this one holds none
        target_folder = name == "folder" and args[0] == "transplant" and args[2] == str(specials[name])
        one_line(r, str(specials[name]), "folder without weights" if target_folder else NOT_REGULAR[name])
    assert list(tmp_path.iterdir()) == []


def test_a_missing_input_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such file"):
        check_input(tmp_path / "nope.pt")
    with pytest.raises(NotFoundError, match="no such file"):
        check_input(tmp_path / "nope.pt" / "deeper.pt")
    with pytest.raises(InvalidFileError, match="cannot read"):
        check_input(tmp_path / ("x" * 300))


# --- outputs --------------------------------------------------------------------------------------------


def test_outputs_that_are_not_regular_files_are_refused_even_with_force(specials: dict[str, Path]) -> None:
    for name in ("fifo", "sock", "null", "zero"):
        with pytest.raises(OutputError, match="lgt writes only regular files"):
            check_output(specials[name], [], force=True)
    with pytest.raises(OutputError, match="is a directory"):
        check_output(specials["folder"], [], force=True)
    with pytest.raises(OutputError, match="is an input"):
        check_output(specials["dir"] / ".." / specials["dir"].name / "vgg.pt", [specials["vgg_pt"]], force=True)
    hardlink = specials["dir"] / "hardlink.pt"
    os.link(specials["vgg"], hardlink)
    try:  # the same file under another name is still the input
        with pytest.raises(OutputError, match="is an input"):
            check_output(hardlink, [specials["vgg"]], force=True)
    finally:
        hardlink.unlink()


def test_dev_full_with_force_stays_a_device(specials: dict[str, Path]) -> None:
    before = os.stat("/dev/full")
    r = lgt("transplant", str(specials["learngene"]), str(specials["vgg"]), "-o", "/dev/full", "--force")
    one_line(r, "/dev/full", "is a character device", "even with --force")
    after = os.stat("/dev/full")
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


OUTPUT_ERRORS = {
    "missing_folder": ("{d}/nope/out.safetensors", "output folder does not exist"),
    "file_as_folder": ("{d}/vgg.pt/out.safetensors", "not a folder"),
    "name_too_long": ("{d}/" + "n" * 300 + ".safetensors", "file name too long"),
    "sysfs": ("/sys/kernel/lgt-out.safetensors", "cannot write"),
    "procfs": ("/proc/lgt-out.safetensors", "cannot write"),
}


def test_output_os_errors_are_one_line(specials: dict[str, Path], tmp_path: Path) -> None:
    calls = {name: ("transplant", str(specials["learngene"]), str(specials["vgg"]), "-o", out.format(d=specials["dir"]))
             for name, (out, _) in OUTPUT_ERRORS.items()}
    if os.geteuid() != 0:  # root writes through permission bits
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        calls["read_only_folder"] = ("select", str(specials["aux"]), "-o", str(ro / "lg.safetensors"))
    with ThreadPoolExecutor(4) as pool:
        results = dict(zip(calls, pool.map(lambda a: lgt(*a), calls.values())))
    for name, r in results.items():
        one_line(r, OUTPUT_ERRORS[name][1] if name in OUTPUT_ERRORS else "not writable")
    assert not any(p.name.startswith(".") for p in Path(specials["dir"]).iterdir())


@pytest.mark.parametrize("target", ["vgg.safetensors", "vgg.pt"])
def test_a_full_disk_is_one_line_and_leaves_nothing(specials: dict[str, Path], tmp_path: Path, target: str) -> None:
    """RLIMIT_FSIZE makes every write past 20 kB fail (EFBIG), as a full disk fails with ENOSPC."""
    out = tmp_path / f"out{Path(target).suffix}"
    r = lgt("transplant", str(specials["learngene"]), str(specials["dir"] / target), "-o", str(out), fsize=20_000)
    one_line(r, str(out), "cannot write", "nothing was written")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_writing_a_bundle_removes_the_temporary_file(aux_tiny_file: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from learngene_tools.extraction.config import SelectionSettings
    from learngene_tools.extraction.selection import select_from_file

    def full(self: Path, data: bytes) -> int:
        with open(self, "wb") as f:
            f.write(data[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OutputError, match="lg.safetensors: cannot write .No space left on device."):
        select_from_file(aux_tiny_file, tmp_path / "lg.safetensors", SelectionSettings())
    assert list(tmp_path.iterdir()) == []


# --- temporary files -------------------------------------------------------------------------------------


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temporary_names_and_their_pattern(tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    with atomic_path(out) as tmp:
        assert tmp.parent == tmp_path and tmp.exists()
        assert tmp.name.startswith(f".model.safetensors{files.TEMP_TAG}{os.getpid()}-")
        assert temp_pattern(out).match(tmp.name)
        assert not temp_pattern(tmp_path / "other.safetensors").match(tmp.name)
        tmp.write_bytes(b"x")
    assert out.read_bytes() == b"x" and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_a_long_output_name_still_gets_a_temporary_file(tmp_path: Path) -> None:
    out = tmp_path / ("m" * 240 + ".pt")
    with atomic_path(out) as tmp:
        assert len(tmp.name.encode()) <= 255 and temp_pattern(out).match(tmp.name)
        tmp.write_bytes(b"y")
    assert out.read_bytes() == b"y"


def test_stale_temporary_files_of_dead_processes_are_removed_for_the_same_output(tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    dead, alive = dead_pid(), os.getppid()
    stale = [tmp_path / f".out.safetensors.lgt-tmp-{dead}-0123abcd", tmp_path / f".out.safetensors.tmp-{dead}"]
    kept = [tmp_path / f".out.safetensors.lgt-tmp-{alive}-0123abcd",  # a live writer's
            tmp_path / f".other.safetensors.lgt-tmp-{dead}-0123abcd",  # another output's
            tmp_path / f".out.safetensors.lgt-tmp-{dead}-notahex0"]  # not ours
    for p in stale + kept:
        p.write_bytes(b"half")
    assert sorted(remove_stale_temps(out)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)


@pytest.mark.parametrize("error", [OSError(5, "Input/output error"), KeyboardInterrupt(), ValueError("boom")])
def test_the_temporary_file_goes_on_every_handled_failure(tmp_path: Path, error: BaseException) -> None:
    out = tmp_path / "o.pt"
    with pytest.raises((OutputError, KeyboardInterrupt, ValueError)):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"partial")
            raise error
    assert list(tmp_path.iterdir()) == []


def test_damaged_pickle_prints_no_torch_warning(tmp_path: Path, bundle_tiny: Path) -> None:
    """Byte 1 of a pickle is its protocol: torch warns "Detected pickle protocol 5" before failing."""
    torch.save(tinymodels.tiny_vgg().state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    data = bytearray((tmp_path / "legacy.pt").read_bytes())
    data[1] = 5
    data[300:340] = bytes(40)
    (tmp_path / "damaged.pt").write_bytes(bytes(data))
    r = lgt("transplant", str(bundle_tiny), str(tmp_path / "damaged.pt"), "-o", str(tmp_path / "out.pt"))
    one_line(r, "damaged.pt", "not a readable pytorch checkpoint")
    assert "Warning" not in r.stderr
