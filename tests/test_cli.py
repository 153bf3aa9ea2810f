"""The `lgt` command line, run as a user runs it: `python -m learngene_tools ARGS`.

Every bad input must give ONE line on stderr that says what is wrong and what to do,
exit code 2, no traceback, nothing on stdout, and nothing written (no output, no
temporary file, inputs untouched). Happy paths check what each command prints and
writes.

A subprocess that imports torch costs 2-6 s, so the GOOD and BAD calls run in this
process (conftest.run_lgt: the same entry point, its own working folder, environment and
captured streams), all made by one module-scoped fixture, and the tests assert on their
results; `test_a_real_process_gives_what_the_in_process_call_gave` runs a sample of them
as real processes and requires the same exit code, stdout and stderr. tests/ is on the
PYTHONPATH, for `--arch tinymodels:tiny_vgg` and for unpickling pickled_helpers with --trust-pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pickled_helpers
import pytest
import tinymodels
import torch
from conftest import run_lgt
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import learngene_tools
from learngene_tools.io.header import read_header

TESTS = Path(__file__).parent
WITH_TESTS = {"PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)}
WORKERS = max(2, min(6, 2 * (os.cpu_count() or 1)))


def _run_many(calls: dict[str, tuple[list[str], Path, dict[str, str]]]) -> dict[str, subprocess.CompletedProcess]:
    """Run `lgt ARGS` for every call at once (bounded by WORKERS); results by call name."""
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = {name: pool.submit(run_lgt, *args, cwd=cwd, env_extra=env) for name, (args, cwd, env) in calls.items()}
        return {name: f.result() for name, f in futures.items()}


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single `error: ...` line of a failed call, after checking the failure contract."""
    shown = f"rc={proc.returncode}\nstdout={proc.stdout!r}\nstderr={proc.stderr!r}"
    assert "Traceback" not in proc.stderr + proc.stdout, shown
    assert proc.returncode == 2, shown
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    if "--json" in proc.args:  # scripts reading stdout get an error object, never half a result
        error = json.loads(proc.stdout)["error"]
        assert error["message"] == lines[0].removeprefix("error: ") and error["exit_code"] == 2, shown
        assert error["kind"] != "error", shown  # a typed error: scripts can tell the kinds of failure apart
    else:
        assert proc.stdout == "", shown
    return lines[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _listing(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden temporary files included) with its hash."""
    return {str(p.relative_to(folder)): _sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _header(path: Path) -> tuple[int, bytes]:
    data = path.read_bytes()
    return struct.unpack("<Q", data[:8])[0], data


def _rewrite_bundle(src: Path, dst: Path, edit: Callable[[dict, dict], None]) -> None:
    """Write `src`'s tensors and metadata to `dst` after `edit(tensors, metadata)` (a valid safetensors file)."""
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors, meta)
    save_file(tensors, str(dst), metadata=meta)


# --- the input files ------------------------------------------------------------------------------


@dataclass
class Inputs:
    dir: Path
    bundle: Path
    aux: Path
    vgg_sd: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, bundle_tiny: Path, aux_tiny_file: Path) -> Inputs:
    """Every input file the calls read, in one folder whose contents must never change."""
    d = tmp_path_factory.mktemp("inputs")
    bundle = d / "learngene.safetensors"
    shutil.copyfile(bundle_tiny, bundle)

    sd = tinymodels.tiny_vgg().state_dict()
    save_file(sd, str(d / "vgg.safetensors"))
    torch.save(sd, d / "vgg.pth")
    save_file(tinymodels.only_linear().state_dict(), str(d / "linear.safetensors"))
    torch.save(tinymodels.only_linear().state_dict(), d / "linear.pt")
    save_file(tinymodels.only_pointwise().state_dict(), str(d / "pointwise.safetensors"))

    (d / "notes.txt").write_text("these are my notes, not a checkpoint\n")
    noise = bytes((i * 193 + 71) % 251 for i in range(4096))  # fixed "random" bytes: no pickle/zip/safetensors start
    assert noise[:1] != b"\x80" and noise[:2] != b"PK"
    (d / "random.pt").write_bytes(noise)
    (d / "random.safetensors").write_bytes(noise)

    # untrusted pickles: a state_dict subclass, and a dataclass saved beside the weights
    torch.save(pickled_helpers.TaggedStateDict(sd), d / "tagged.pt")
    torch.save({"state_dict": sd, "train_state": pickled_helpers.TrainState(epoch=3, lr=0.1)}, d / "trainstate.pth")

    # damaged legacy (non-zip) torch pickles
    legacy = d / "legacy_tmp.pt"
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    data = legacy.read_bytes()
    legacy.unlink()
    (d / "cut_legacy.pt").write_bytes(data[:300])
    (d / "damaged_legacy.pt").write_bytes(data[:20] + bytes(b ^ 0xFF for b in data[20:40]) + data[40:])

    # damaged bundles
    n, data = _header(bundle)
    (d / "cut_header.safetensors").write_bytes(data[: 8 + n // 2])
    (d / "cut_data.safetensors").write_bytes(data[: (8 + n + len(data)) // 2])
    flipped = bytearray(data)
    for i in range(8 + n + 100, 8 + n + 116):  # inside the tensor data: the header stays valid
        flipped[i] ^= 0xFF
    (d / "corrupted.safetensors").write_bytes(bytes(flipped))
    _rewrite_bundle(bundle, d / "bad_json.safetensors", lambda t, m: m.update({"learngene.layers": "{not json"}))
    _rewrite_bundle(bundle, d / "schema3.safetensors", lambda t, m: m.update({"learngene.schema": "3"}))
    _rewrite_bundle(bundle, d / "missing_tensor.safetensors", lambda t, m: t.pop("s3.1.bn.running_var"))
    _rewrite_bundle(bundle, d / "wrong_shape.safetensors", lambda t, m: t.update({"s1.0.weight": t["s1.0.weight"][:4].clone()}))
    return Inputs(d, bundle, aux_tiny_file, sd)


# --- bad inputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """One bad call. `args` may use {in} (the inputs folder; {inname} its name), {bundle}, {aux}, and {out}: this
    call's own output folder, empty unless `existing`, and its working directory (where a default output would go)."""

    args: tuple[str, ...]
    expect: tuple[str, ...]  # substrings of the error line (compared in lower case)
    absent: tuple[str, ...] = ()  # substrings the error line must not have
    existing: str | None = None  # a file already in {out} before the call (it must stay as it was)


def _transplant(bundle: str, target: str, out: str = "{out}/out.safetensors", *more: str) -> tuple[str, ...]:
    return ("transplant", bundle, target, "-o", out, *more)


# damaged bundle -> what its error line says
BAD_BUNDLES = {
    "cut_header": ("not a valid safetensors file", "header length"),
    "cut_data": ("truncated safetensors file", "download or write it again"),
    "corrupted": ("corrupted bundle", "tensor bytes hash to", "export it again"),
    "bad_json": ("bad bundle metadata json", "re-export"),
    "schema3": ("schema version '3' is not supported", "upgrade learngene_tools"),
    "missing_tensor": ("invalid bundle", "'s3.1.bn.running_var'", "missing"),
    "wrong_shape": ("invalid bundle", "'s1.0.weight'", "[4, 3, 3, 3]", "[8, 3, 3, 3]"),
}

BAD: dict[str, Bad] = {
    "missing_bundle": Bad(_transplant("{in}/nope.safetensors", "{in}/vgg.safetensors"), ("nope.safetensors", "no such file")),
    "missing_target": Bad(_transplant("{bundle}", "{in}/nope.pth", "{out}/out.pth"), ("nope.pth", "no such file")),
    "text_file_as_target": Bad(_transplant("{bundle}", "{in}/notes.txt", "{out}/out.pt"), ("notes.txt", "not a checkpoint")),
    "random_bytes_as_target": Bad(_transplant("{bundle}", "{in}/random.pt", "{out}/out.pt"), ("random.pt", "not a checkpoint")),
    "text_file_as_bundle": Bad(_transplant("{in}/notes.txt", "{in}/vgg.safetensors"), ("notes.txt", "not a valid safetensors file")),
    "random_bytes_as_bundle": Bad(_transplant("{in}/random.safetensors", "{in}/vgg.safetensors"),
                                  ("random.safetensors", "not a valid safetensors file")),
    # the header checks are the same code for both commands: every damage through `inspect` (no torch, fast),
    # the two kinds that only show past the header (cut data, flipped bytes) through `transplant` as well
    **{f"transplant_{name}_bundle": Bad(_transplant(f"{{in}}/{name}.safetensors", "{in}/vgg.safetensors"),
                                         (f"{name}.safetensors", *BAD_BUNDLES[name]))
       for name in ("cut_data", "corrupted")},
    **{f"inspect_{name}_bundle": Bad(("inspect", f"{{in}}/{name}.safetensors"), (f"{name}.safetensors", *expect))
       for name, expect in BAD_BUNDLES.items()},
    "inspect_corrupted_bundle_verify_json": Bad(("inspect", "{in}/corrupted.safetensors", "--verify", "--json"),
                                                ("corrupted.safetensors", "corrupted bundle")),
    "no_conv_safetensors": Bad(_transplant("{bundle}", "{in}/linear.safetensors"), ("linear.safetensors", "no conv layer", "cnn")),
    "no_conv_pt": Bad(_transplant("{bundle}", "{in}/linear.pt", "{out}/out.pt"), ("linear.pt", "no conv layer", "cnn")),
    "inspect_no_conv": Bad(("inspect", "{in}/linear.pt"), ("linear.pt", "no conv layer")),
    "no_layer_fits": Bad(_transplant("{bundle}", "{in}/pointwise.safetensors"),
                         ("pointwise.safetensors", "no learngene layer fits", "0 of 2 conv(s)", "lgt inspect")),
    "output_exists": Bad(_transplant("{bundle}", "{in}/vgg.safetensors"), ("out.safetensors", "already exists", "--force"),
                         existing="out.safetensors"),
    "output_is_target": Bad(_transplant("{bundle}", "{in}/vgg.safetensors", "{in}/vgg.safetensors"),
                            ("vgg.safetensors", "is an input", "choose another output path")),
    "output_is_bundle_force": Bad(  # spelt another way, and --force does not help
        _transplant("{bundle}", "{in}/vgg.safetensors", "{in}/../{inname}/./learngene.safetensors", "--force"),
        ("learngene.safetensors", "is an input")),
    "untrusted_state_dict_subclass": Bad(_transplant("{bundle}", "{in}/tagged.pt", "{out}/out.pt"),
                                         ("tagged.pt", "untrusted", "pickled_helpers.TaggedStateDict", "--trust-pickle")),
    "untrusted_dataclass": Bad(_transplant("{bundle}", "{in}/trainstate.pth", "{out}/out.pth"),
                               ("trainstate.pth", "untrusted", "pickled_helpers.TrainState", "--trust-pickle")),
    "select_not_an_auxiliary_model": Bad(("select", "{in}/vgg.safetensors", "-o", "{out}/lg.safetensors"),
                                         ("vgg.safetensors", "not a learngene_tools auxiliary model", "lgt distill")),
    "require_traced_unidentified": Bad(_transplant("{bundle}", "{in}/vgg.safetensors", "{out}/out.safetensors",
                                                   "--require-traced"),
                                       ("vgg.safetensors", "architecture was not identified", "--arch")),
    "grouped_bad_choice": Bad(_transplant("{bundle}", "{in}/vgg.safetensors", "{out}/out.safetensors",
                                          "--grouped", "sometimes"), ("--grouped", "skip, project")),
    # --- the three below expose bugs ---
    # A legacy (non-zip) torch pickle cut short: torch's weights-only unpickler raises IndexError/struct.error,
    # which checkpoint_io.torch_load does not catch -> "error: internal error: IndexError ...", exit 1.
    "truncated_legacy_pickle": Bad(_transplant("{bundle}", "{in}/cut_legacy.pt", "{out}/out.pt"),
                                   ("cut_legacy.pt", "not a readable pytorch checkpoint")),
    # A damaged legacy pickle is reported as "untrusted globals (unknown)" and the user is told to --trust-pickle it.
    "damaged_legacy_pickle": Bad(_transplant("{bundle}", "{in}/damaged_legacy.pt", "{out}/out.pt"),
                                 ("damaged_legacy.pt", "not a readable pytorch checkpoint"), absent=("--trust-pickle", "untrusted")),
    # BUNDLE and TARGET swapped (a .pth target first): the line only says the header length does not fit.
    "swapped_bundle_and_target": Bad(_transplant("{in}/vgg.pth", "{bundle}", "{out}/out.pth"), ("vgg.pth", "bundle")),
}


@dataclass(frozen=True)
class Good:
    args: tuple[str, ...]  # as in Bad
    existing: str | None = None  # a file already in {out}, for --force
    warns: bool = False  # tiny_vgg is no model a package builds: a transplant without --arch warns it estimated strides


NOT_IDENTIFIED = "warning: the architecture was not identified"


GOOD: dict[str, Good] = {
    "select": Good(("select", "{aux}", "-o", "{out}/lg.safetensors")),
    "transplant_safetensors": Good(_transplant("{bundle}", "{in}/vgg.safetensors"), warns=True),
    "transplant_force_json": Good(_transplant("{bundle}", "{in}/vgg.safetensors", "{out}/out.safetensors", "--force", "--json"),
                                  existing="out.safetensors", warns=True),
    "transplant_pth_arch_default_output": Good(("transplant", "{bundle}", "{in}/vgg.pth", "--arch", "tinymodels:tiny_vgg")),
    "dry_run": Good(_transplant("{bundle}", "{in}/vgg.pth", "{out}/out.pth", "--dry-run"), warns=True),
    "dry_run_json_default_output": Good(("transplant", "{bundle}", "{in}/vgg.safetensors", "--dry-run", "--json"), warns=True),
    "trust_pickle": Good(_transplant("{bundle}", "{in}/trainstate.pth", "{out}/out.pth", "--trust-pickle"), warns=True),
    "inspect_pth": Good(("inspect", "{in}/vgg.pth")),
    "inspect_safetensors": Good(("inspect", "{in}/vgg.safetensors")),
    "inspect_pointwise_json": Good(("inspect", "{in}/pointwise.safetensors", "--json")),
}


# --- running every call at once ------------------------------------------------------------------------


@dataclass
class Run:
    proc: subprocess.CompletedProcess
    out: Path  # the call's output folder and working directory
    before: dict[str, str]  # its files before the call
    warns: bool = False

    def ok(self) -> subprocess.CompletedProcess:
        p = self.proc
        shown = f"rc={p.returncode}\nstdout={p.stdout}\nstderr={p.stderr}"
        assert p.returncode == 0, shown
        if self.warns:  # one line that says what happened and names --arch
            lines = p.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith(NOT_IDENTIFIED) and "--arch" in lines[0], shown
        else:
            assert p.stderr == "", shown
        return p

    def json(self) -> dict:
        return json.loads(self.ok().stdout)


@dataclass
class Calls:
    runs: dict[str, Run]
    inputs_before: dict[str, str]  # the inputs folder (and the auxiliary model) before and after all calls
    inputs_after: dict[str, str]


@pytest.fixture(scope="module")
def calls(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> Calls:
    """Every GOOD and BAD call, started together, each in its own output folder (also its working directory)."""
    assert not set(GOOD) & set(BAD)
    root = tmp_path_factory.mktemp("calls")
    subst = {"in": str(inputs.dir), "inname": inputs.dir.name, "bundle": str(inputs.bundle), "aux": str(inputs.aux)}
    todo, outs = {}, {}
    for name, case in [*GOOD.items(), *BAD.items()]:  # the slower good calls first: the pool ends sooner
        out = root / name
        out.mkdir()
        if case.existing:
            (out / case.existing).write_bytes(b"an existing file\n")
        todo[name] = ([a.format(**subst, out=out) for a in case.args], out, WITH_TESTS)
        outs[name] = (out, _listing(out))

    def snapshot() -> dict[str, str]:
        return {**_listing(inputs.dir), "<aux>": _sha(inputs.aux)}

    before = snapshot()
    results = _run_many(todo)
    warns = {name for name, case in GOOD.items() if case.warns}
    return Calls({name: Run(results[name], *outs[name], warns=name in warns) for name in todo}, before, snapshot())


@pytest.fixture(scope="module")
def runs(calls: Calls) -> dict[str, Run]:
    return calls.runs


REAL_PROCESS_SAMPLE = ("missing_target", "untrusted_dataclass", "output_exists", "inspect_corrupted_bundle_verify_json")


def test_a_real_process_gives_what_the_in_process_call_gave(calls: Calls, inputs: Inputs):
    """The contract as a user meets it: the same bad calls as real processes, byte for byte the same result."""
    subst = {"in": str(inputs.dir), "inname": inputs.dir.name, "bundle": str(inputs.bundle), "aux": str(inputs.aux)}
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        real = dict(zip(REAL_PROCESS_SAMPLE, pool.map(
            lambda n: run_lgt(*[a.format(**subst, out=calls.runs[n].out) for a in BAD[n].args], cwd=calls.runs[n].out,
                              env_extra=WITH_TESTS, subprocess=True), REAL_PROCESS_SAMPLE)))
    for name, p in real.items():
        mine = calls.runs[name].proc
        assert (p.returncode, p.stdout, p.stderr) == (mine.returncode, mine.stdout, mine.stderr), name
        _one_error_line(p)
        assert _listing(calls.runs[name].out) == calls.runs[name].before, name  # nothing written


def test_no_call_modifies_an_input_or_writes_beside_it(calls: Calls):
    assert calls.inputs_after == calls.inputs_before


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_gives_one_actionable_line_and_writes_nothing(runs: dict[str, Run], inputs: Inputs, name: str):
    run, case = runs[name], BAD[name]
    line = _one_error_line(run.proc)
    line = line.replace(str(run.out), "{out}").replace(str(inputs.dir), "{in}").lower()  # match the message, not the paths
    for s in case.expect:
        assert s.lower() in line, (s, line)
    for s in case.absent:
        assert s.lower() not in line, (s, line)
    assert _listing(run.out) == run.before  # no output, no temporary file; an existing output is unchanged


# --- happy paths --------------------------------------------------------------------------------------


def test_select_writes_the_same_bundle_as_the_library(runs: dict[str, Run], bundle_tiny: Path):
    run = runs["select"]
    text = run.ok().stdout
    out = run.out / "lg.safetensors"
    assert f"wrote {out}" in text
    assert "learngene bundle, schema 2, 4 layers" in text and "stages 1, 3" in text
    assert out.read_bytes() == bundle_tiny.read_bytes()  # deterministic, and the CLI adds nothing of its own
    assert sorted(p.name for p in run.out.iterdir()) == ["lg.safetensors"]


def _changed_keys(plan: dict) -> set[str]:
    keys = set()
    for a in plan["assignments"]:
        if a["target"]:
            keys.add(a["target"])
            if a["bn"]:
                keys |= {f"{a['bn']}.{p}" for p in ("weight", "bias", "running_mean", "running_var")}
    return keys


def test_transplant_safetensors_target(runs: dict[str, Run], inputs: Inputs):
    run = runs["transplant_safetensors"]
    text = run.ok().stdout
    out = run.out / "out.safetensors"
    assert "4 of 4 learngene layers placed" in text and f"wrote {out}" in text
    for layer in ("s1.0", "s1.1", "s3.0", "s3.1"):
        assert layer in text
    assert sorted(p.name for p in run.out.iterdir()) == ["out.safetensors"]  # no temporary file left

    plan = runs["dry_run_json_default_output"].json()  # the same bundle, target and seed
    changed = _changed_keys(plan)
    assert len(changed) == plan["summary"]["tensors_changed"] > 0
    target = load_file(str(inputs.dir / "vgg.safetensors"))
    got = load_file(str(out))
    assert set(got) == set(target)
    for k, v in target.items():
        assert got[k].shape == v.shape and got[k].dtype == v.dtype, k
        if k in changed:
            assert not torch.equal(got[k], v), k
        else:
            assert torch.equal(got[k], v), k
    record = json.loads(read_header(out).metadata["learngene.transplant"])
    assert record["bundle_hash"] == plan["bundle_hash"] and record["seed"] == 0
    assert record["layers"] == {a["layer"]: a["target"] for a in plan["assignments"]}


def test_transplant_force_replaces_an_existing_output_and_json_reports_it(runs: dict[str, Run]):
    run = runs["transplant_force_json"]
    plan = run.json()
    out = run.out / "out.safetensors"
    assert plan["output"] == str(out) and plan["summary"]["layers_placed"] == 4
    assert plan["assignments"] == runs["dry_run_json_default_output"].json()["assignments"]
    assert sorted(p.name for p in run.out.iterdir()) == ["out.safetensors"]
    # the old file is gone, replaced by what a fresh transplant writes (same inputs, same bytes)
    assert out.read_bytes() == (runs["transplant_safetensors"].out / "out.safetensors").read_bytes()


def test_transplant_pth_with_arch_writes_default_output_that_loads_strictly(runs: dict[str, Run], inputs: Inputs):
    run = runs["transplant_pth_arch_default_output"]
    text = run.ok().stdout
    assert "4 of 4 learngene layers placed" in text and "strides traced from tinymodels:tiny_vgg" in text
    assert sorted(p.name for p in run.out.iterdir()) == ["vgg_lg.pth"]  # <target stem>_lg<suffix> in the working dir
    assert "wrote vgg_lg.pth" in text
    sd = torch.load(run.out / "vgg_lg.pth", weights_only=True)
    tinymodels.tiny_vgg().load_state_dict(sd, strict=True)
    assert list(sd) == list(inputs.vgg_sd)
    assert not torch.equal(sd["0.0.weight"], inputs.vgg_sd["0.0.weight"])
    # with exact strides the learngene's BN goes with its conv: the first conv is followed by BN 0.1
    assert not torch.equal(sd["0.1.running_mean"], inputs.vgg_sd["0.1.running_mean"])
    assert torch.equal(sd["3.weight"], inputs.vgg_sd["3.weight"])  # the head is never touched


def test_dry_run_prints_the_plan_and_writes_nothing(runs: dict[str, Run]):
    run = runs["dry_run"]
    text = run.ok().stdout
    assert "dry run: nothing written" in text and "4 of 4 learngene layers placed" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("s1.0 "))
    assert row.split()[2] == "0.0" and "8x3x3x3" in row  # layer | target conv | shape ...
    assert list(run.out.iterdir()) == []

    run = runs["dry_run_json_default_output"]
    plan = run.json()
    assert plan["output"] is None and plan["target"].endswith("vgg.safetensors") and plan["seed"] == 0
    assert plan["strides"] == "estimated" and plan["identification"].startswith("not identified")
    assert plan["warnings"] and "--arch" in plan["warnings"][0]
    assert [a["layer"] for a in plan["assignments"]] == ["s1.0", "s1.1", "s3.0", "s3.1"]
    assert all(a["target"] and a["steps"] and a["target_shape"] for a in plan["assignments"])
    assert plan["summary"]["layers_placed"] == 4 and plan["summary"]["layers_left_out"] == 0
    assert {c["key"] for c in plan["convs"]} == {k for k, v in load_file(plan["target"]).items() if v.ndim == 4}
    assert list(run.out.iterdir()) == []  # not even the default output vgg_lg.safetensors


def test_trust_pickle_loads_and_keeps_the_wrapper(runs: dict[str, Run], inputs: Inputs):
    run = runs["trust_pickle"]
    assert "wrote" in run.ok().stdout
    obj = torch.load(run.out / "out.pth", weights_only=False)
    assert set(obj) == {"state_dict", "train_state"}
    assert obj["train_state"] == pickled_helpers.TrainState(epoch=3, lr=0.1)
    assert list(obj["state_dict"]) == list(inputs.vgg_sd)
    assert not torch.equal(obj["state_dict"]["0.0.weight"], inputs.vgg_sd["0.0.weight"])


def _conv_rows(text: str) -> list[str]:
    """The rows of `lgt inspect CHECKPOINT`'s conv table."""
    return [ln for ln in text.splitlines() if "can take learngene" in ln or "skipped:" in ln]


def test_inspect_checkpoint_lists_convs_and_what_a_transplant_does(runs: dict[str, Run], inputs: Inputs):
    conv_keys = [k for k, v in inputs.vgg_sd.items() if v.ndim == 4]
    text = runs["inspect_pth"].ok().stdout
    assert text.startswith(f"{inputs.dir / 'vgg.pth'}: pickle checkpoint, bare state_dict, {len(inputs.vgg_sd)} tensors, "
                           f"{sum(v.numel() for v in inputs.vgg_sd.values()):,} parameters")
    rows = _conv_rows(text)
    assert [r.split()[0] for r in rows] == conv_keys  # every conv, in module order
    assert all("can take learngene: dense 3x3" in r for r in rows)
    assert f"{len(conv_keys)} of {len(conv_keys)} convs can take a learngene layer" in text
    assert "lgt transplant BUNDLE" in text and "--dry-run" in text

    s = runs["inspect_pointwise_json"].json()
    assert s["kind"] == "checkpoint" and s["format"] == "safetensors" and s["wrapper"] == "bare state_dict"
    assert [(c["key"], c["shape"], c["eligible"]) for c in s["convs"]] == [
        ("0.weight", [8, 3, 1, 1], False), ("2.weight", [8, 8, 1, 1], False)
    ]
    assert all(c["role"].startswith("skipped: 1x1 kernel") for c in s["convs"])


def test_inspect_checkpoint_does_not_depend_on_the_file_format(runs: dict[str, Run]):
    """The same state_dict as .pth and as .safetensors: the same conv table (module order, BN, strides).

    safetensors' writer stores tensors by dtype and name (0.10 before 0.3, num_batches_tracked first), so a
    planner that reads order and neighbours from the file order alone gets the layers scrambled and loses the BN.
    """
    pth, st = _conv_rows(runs["inspect_pth"].ok().stdout), _conv_rows(runs["inspect_safetensors"].ok().stdout)
    assert st == pth


# --- inspect BUNDLE: output, and the fast path in __main__.py ------------------------------------------


def _typer_lgt(*args: str) -> subprocess.CompletedProcess:
    return run_lgt(*args, typer_app=True)


def test_inspect_bundle_text_and_json(inputs: Inputs):
    b = str(inputs.bundle)
    p = run_lgt("inspect", b)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    text = p.stdout
    n, data = _header(inputs.bundle)
    header = json.loads(data[8 : 8 + n])
    recorded_hash = json.loads(header["__metadata__"]["learngene.provenance"])["tensor_hash"]
    assert f"{b}: learngene bundle, schema 2, 4 layers, 14,616 conv parameters, stages 1, 3" in text
    for row in (("s1.0", "1 (start)", "8x3x3x3", "stages.0.0.conv.weight"), ("s1.1", "1 (start)", "8x8x3x3"),
                ("s3.0", "3 (end)", "32x16x3x3"), ("s3.1", "3 (end)", "32x32x3x3", "stages.2.1.conv.weight")):
        line = next(ln for ln in text.splitlines() if ln.startswith(row[0] + " "))
        assert all(cell in line for cell in row), (row, line)
    assert f"tensor hash {recorded_hash} (verified)" in text
    assert "ancestry: unknown (not recorded)" in text
    assert "auxiliary: widths [8, 16, 32], depths [2, 2, 2]; tool " + learngene_tools.__version__ in text
    assert "selection: stages [1, 3], run length whole stage" in text

    p = run_lgt("inspect", b, "--json")
    assert p.returncode == 0 and p.stderr == ""
    s = json.loads(p.stdout)
    assert s["kind"] == "learngene bundle" and s["schema"] == "2" and s["file"] == b
    assert s["size_bytes"] == len(data) and s["hash_verified"] is True and s["tensor_hash"] == recorded_hash
    assert [r["id"] for r in s["layers"]] == ["s1.0", "s1.1", "s3.0", "s3.1"]
    assert [r["shape"] for r in s["layers"]] == [header[f"{r['id']}.weight"]["shape"] for r in s["layers"]]
    assert s["params"] == sum(torch.Size(r["shape"]).numel() for r in s["layers"]) == 14616
    assert s["stages"] == [1, 3] and all(r["has_bn"] for r in s["layers"])
    assert s["provenance"]["auxiliary"]["checkpoint"] == "aux_tiny.safetensors"
    assert s["provenance"]["tool"]["version"] == learngene_tools.__version__


def test_fast_inspect_prints_what_the_typer_command_prints(inputs: Inputs):
    b, bad = str(inputs.bundle), str(inputs.dir / "corrupted.safetensors")
    cases = [(b,), (b, "--json"), (b, "--no-verify"), (b, "--json", "--verify"), (bad,), (bad, "--json"),
             (bad, "--no-verify"), (bad, "--no-verify", "--verify")]
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        fast = list(pool.map(lambda a: run_lgt("inspect", *a), cases))
        slow = list(pool.map(lambda a: _typer_lgt("inspect", *a), cases))
    for args, f, s in zip(cases, fast, slow):
        assert (f.returncode, f.stdout, f.stderr) == (s.returncode, s.stdout, s.stderr), args
    assert "(not verified)" in fast[2].stdout and json.loads(fast[1].stdout)["hash_verified"] is True
    assert fast[4].returncode == 2 and "corrupted bundle" in fast[4].stderr
    assert fast[6].returncode == 0 and "(not verified)" in fast[6].stdout  # --no-verify skips the hash
    assert fast[7].returncode == 2  # the last of --verify/--no-verify wins


def test_fast_inspect_repeated_verify_flags_agree_with_typer(inputs: Inputs):
    """click takes the last of repeated --verify/--no-verify; the fast path looks at the first --no-verify."""
    bad = str(inputs.dir / "corrupted.safetensors")
    args = ("inspect", bad, "--no-verify", "--verify", "--no-verify")
    f, s = run_lgt(*args), _typer_lgt(*args)
    assert s.returncode == 0 and "(not verified)" in s.stdout
    assert (f.returncode, f.stdout, f.stderr) == (s.returncode, s.stdout, s.stderr)


def test_version():
    p = run_lgt("--version")
    assert (p.returncode, p.stdout, p.stderr) == (0, f"lgt {learngene_tools.__version__}\n", "")
