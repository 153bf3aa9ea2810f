"""Bundle validation and schema 2: out-of-range records, non-float or non-finite tensors, and a hash over
the metadata as well as the tensors, so that one edited digit of `l2_norms` is caught everywhere."""

from __future__ import annotations

import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bundletools as bt
import pytest
import torch
from clichecks import one_line
from conftest import run_lgt

from learngene_tools.errors import InvalidFileError
from learngene_tools.io.bundle import (
    HASH_KEY,
    LAYERS_KEY,
    SCHEMA_KEY,
    UNPROTECTED_WARNING,
    bundle_summary,
    describe_bundle,
    read_bundle,
    read_bundle_header,
    upgrade_bundle,
)
from learngene_tools.io.header import read_header
from learngene_tools.refs import builtin_path

TESTS = Path(__file__).parent
ENV = {"PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)}
# the shipped bundle's tensor hash when it was schema 1: re-exported as schema 2, its tensors are the same bytes
DEFAULT_TENSOR_HASH = "sha256:f59c462b2277e81e1a33164853b568313e83403711e869abd63d0f3f187d8fea"


# --- schema 2 -------------------------------------------------------------------------------------------


def test_new_bundles_are_schema_2_and_hash_their_metadata(bundle_tiny: Path) -> None:
    meta = read_header(bundle_tiny).metadata
    assert meta[SCHEMA_KEY] == "2" and meta[HASH_KEY].startswith("sha256:")
    b = read_bundle_header(bundle_tiny)
    assert b.schema == "2" and b.metadata_protected and b.metadata_hash == meta[HASH_KEY]
    s = describe_bundle(bundle_tiny)
    assert s["schema"] == "2" and s["metadata_protected"] is True and s["warnings"] == []
    assert s["metadata_hash"] == meta[HASH_KEY]


@pytest.fixture(scope="module")
def edited(tmp_path_factory: pytest.TempPathFactory, bundle_tiny: Path) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("edited")
    return {
        "schema2_norm": bt.rewrite(bundle_tiny, d / "norm2.safetensors", meta=lambda m: m.update(
            {LAYERS_KEY: bt.change_one_norm_digit(m[LAYERS_KEY])})),
        "schema2_provenance": bt.rewrite(bundle_tiny, d / "prov2.safetensors", meta=lambda m: m.update(
            {"learngene.provenance": m["learngene.provenance"].replace('"run_length": null', '"run_length": 1')})),
        "schema1": bt.as_schema_1(bundle_tiny, d / "s1.safetensors"),
        "vgg": d / "vgg.safetensors",
    }


def test_one_edited_digit_of_l2_norms_is_caught_by_the_metadata_hash(edited: dict[str, Path], bundle_tiny: Path) -> None:
    assert read_header(edited["schema2_norm"]).metadata[LAYERS_KEY] != read_header(bundle_tiny).metadata[LAYERS_KEY]
    for name in ("schema2_norm", "schema2_provenance"):
        for verify in (True, False):  # the metadata hash needs no tensor bytes: checked even without --verify
            with pytest.raises(InvalidFileError, match="layer records or provenance do not match its 'learngene.hash'"):
                read_bundle_header(edited[name], verify=verify)


def test_the_edit_is_caught_by_inspect_transplant_and_pull(edited: dict[str, Path], tmp_path: Path) -> None:
    import tinymodels
    from safetensors.torch import save_file

    save_file(tinymodels.tiny_vgg().state_dict(), str(edited["vgg"]))
    bad = str(edited["schema2_norm"])
    calls = [("inspect", bad), ("inspect", bad, "--no-verify", "--json"),
             ("transplant", bad, str(edited["vgg"]), "-o", str(tmp_path / "out.safetensors"))]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda a: run_lgt(*a, env_extra=ENV), calls))
    for r in results:
        one_line(r, "norm2.safetensors", "do not match its 'learngene.hash'")
    assert not (tmp_path / "out.safetensors").exists()
    assert json.loads(results[1].stdout)["error"]["kind"] == "invalid_file"


def test_pull_refuses_an_edited_bundle(edited: dict[str, Path], tmp_path: Path) -> None:
    from fakehub import FakeHub

    hub = FakeHub().start()
    try:
        hub.add_user("alice", "hf_alice")
        hub.create_repo("alice/lg")
        hub.commit("alice/lg", {"learngene.safetensors": edited["schema2_norm"].read_bytes()})
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_alice",
               "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0"}
        r = run_lgt("pull", "alice/lg", env_extra=env)
    finally:
        hub.stop()
    one_line(r, "do not match its 'learngene.hash'")


def test_schema_1_still_reads_and_inspect_says_its_metadata_is_unprotected(edited: dict[str, Path]) -> None:
    b = read_bundle(edited["schema1"])
    assert b.schema == "1" and not b.metadata_protected and b.metadata_hash is None
    s = bundle_summary(b, verified=True)
    assert s["warnings"] == [UNPROTECTED_WARNING] and s["metadata_protected"] is False
    path = str(edited["schema1"])
    with ThreadPoolExecutor(2) as pool:
        text, js = pool.map(lambda a: run_lgt(*a), [("inspect", path), ("inspect", path, "--json")])
    assert text.returncode == 0 and text.stderr == "", text.stderr
    assert "learngene bundle, schema 1 (metadata unprotected), 4 layers" in text.stdout
    assert "warning: schema-1 bundle: its layer records and provenance are not covered by any hash" in text.stdout
    assert json.loads(js.stdout)["warnings"] == [UNPROTECTED_WARNING]


def test_schema_1_with_an_edited_norm_is_still_caught_where_the_tensors_are_loaded(bundle_tiny: Path, tmp_path: Path) -> None:
    s1 = bt.as_schema_1(bundle_tiny, tmp_path / "s1.safetensors")
    bad = bt.rewrite(s1, tmp_path / "s1_norm.safetensors", layers=lambda recs: recs[2]["l2_norms"].__setitem__(0, 9.5))
    read_bundle_header(bad)  # unprotected: the header alone cannot tell
    with pytest.raises(InvalidFileError, match="layer s3.0's recorded l2_norms are not its kernels' norms"):
        read_bundle(bad)


def test_upgrade_keeps_the_tensors_byte_for_byte(bundle_tiny: Path, tmp_path: Path) -> None:
    s1 = bt.as_schema_1(bundle_tiny, tmp_path / "s1.safetensors")
    a, b = upgrade_bundle(s1, tmp_path / "a.safetensors"), upgrade_bundle(s1, tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert (tmp_path / "a.safetensors").read_bytes() == bundle_tiny.read_bytes()  # what select writes today
    assert a.schema == "2" and a.provenance["tensor_hash"] == read_bundle_header(s1).provenance["tensor_hash"] == b.provenance["tensor_hash"]


def test_the_shipped_bundle_is_schema_2_with_its_original_tensors() -> None:
    b = read_bundle(builtin_path("lgt:default"))
    assert b.schema == "2" and b.metadata_protected
    assert b.provenance["tensor_hash"] == DEFAULT_TENSOR_HASH


# --- records out of range -------------------------------------------------------------------------------


def _set(i: int, **changes):
    def edit(recs: list) -> None:
        recs[i].update(changes)
    return edit


BAD_RECORDS = {
    "stride_zero": (_set(0, stride=0), "stride must be an integer from 1 to 64, not 0"),
    "stride_negative": (_set(0, stride=-2), "stride must be an integer"),
    "stride_huge": (_set(0, stride=2**70), "stride must be an integer"),
    "stride_float": (_set(0, stride=2.0), "stride must be an integer"),
    "stride_string": (_set(0, stride="2"), "stride must be an integer"),
    "stride_bool": (_set(0, stride=True), "stride must be an integer"),
    "stage_4": (_set(0, stage=4), "stage must be an integer from 1 to 3"),
    "position_past_run": (_set(1, position=2), "position must be an integer from 0 to 1"),
    "reduction_mismatch": (_set(0, reduction=4), "reduction 4 is not in_reduction 1 x stride 2"),
    "norms_count": (lambda r: r[0]["l2_norms"].pop(), "has 7 l2_norms for 8 kernels"),
    "norm_negative": (lambda r: r[0]["l2_norms"].__setitem__(0, -1.0), "l2_norms must be finite non-negative"),
    "norm_string": (lambda r: r[0]["l2_norms"].__setitem__(0, "1"), "l2_norms must be finite non-negative"),
    "absurd_kernels": (_set(0, shape=[10**9, 3, 3, 3]), "1 to 65536 kernels"),
    "zero_kernels": (_set(0, shape=[0, 3, 3, 3], l2_norms=[]), "1 to 65536 kernels"),
    "non_square": (_set(0, shape=[8, 3, 3, 5]), "square kernel"),
    "three_dims": (_set(0, shape=[8, 3, 3]), "shape must be 4 integers"),
    "id_mismatch": (_set(0, id="s2.0"), "does not match stage 1, position 0"),
    "anchor": (_set(0, anchor="middle"), "anchor must be"),
    "has_bn_string": (_set(0, has_bn="false"), "has_bn must be true or false"),
    "unknown_key": (_set(0, extra=1), "unknown extra"),
    "missing_key": (lambda r: r[0].pop("stride"), "missing stride"),
    "broken_chain": (_set(1, in_reduction=4, reduction=8), "does not continue s1.0"),
    "not_an_object": (lambda r: r.__setitem__(0, [1, 2]), "must be a JSON object"),
}
FIRST_NORM = re.compile(r'("l2_norms": \[)[^,\]]+')
RAW_RECORD_TEXT = {  # edits of the JSON text: numbers json.dumps cannot write
    "stride_1e400": (re.compile(r'("stride": )2'), r"\g<1>1e400", "stride must be an integer"),
    "norm_nan": (FIRST_NORM, r"\g<1>NaN", "l2_norms must be finite non-negative numbers, not nan"),
    "norm_inf": (FIRST_NORM, r"\g<1>Infinity", "l2_norms must be finite non-negative numbers, not inf"),
    "norm_1e400": (FIRST_NORM, r"\g<1>1e400", "not inf"),
    "shape_1e400": (re.compile(r'("shape": \[)8'), r"\g<1>1e400", "shape must be 4 integers"),
    "stride_5000_digits": (re.compile(r'("stride": )2'), "\\g<1>" + "9" * 5000, "metadata json in 'learngene.layers'"),
}


@pytest.mark.parametrize("name", sorted(BAD_RECORDS))
def test_out_of_range_records_are_refused(bundle_tiny: Path, tmp_path: Path, name: str) -> None:
    edit, fragment = BAD_RECORDS[name]
    bad = bt.rewrite(bundle_tiny, tmp_path / f"{name}.safetensors", layers=edit, forge=name not in ("not_an_object",))
    with pytest.raises(InvalidFileError) as e:
        read_bundle_header(bad, verify=False)
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("name", sorted(RAW_RECORD_TEXT))
def test_out_of_range_numbers_in_the_json_text_are_refused(bundle_tiny: Path, tmp_path: Path, name: str) -> None:
    pattern, new, fragment = RAW_RECORD_TEXT[name]

    def edit(m: dict) -> None:
        m[LAYERS_KEY], n = pattern.subn(new, m[LAYERS_KEY], count=1)
        assert n == 1
    bad = bt.rewrite(bundle_tiny, tmp_path / f"{name}.safetensors", meta=edit)
    with pytest.raises(InvalidFileError, match="bad bundle metadata") as e:
        read_bundle_header(bad, verify=False)
    assert fragment in str(e.value).lower() and "\n" not in str(e.value), str(e.value)


def test_inspect_of_a_layer_with_zero_kernels_is_one_line(bundle_tiny: Path, tmp_path: Path) -> None:
    """`min() arg is an empty sequence` before: the record, the tensor and the norms all say 0 kernels."""
    def tensors(t: dict) -> None:
        t["s1.0.weight"] = t["s1.0.weight"][:0].clone()
        for part in ("weight", "bias", "running_mean", "running_var"):
            t[f"s1.0.bn.{part}"] = t[f"s1.0.bn.{part}"][:0].clone()
    bad = bt.rewrite(bundle_tiny, tmp_path / "zero.safetensors", tensors=tensors,
                     layers=_set(0, shape=[0, 3, 3, 3], l2_norms=[]), forge=True)
    with ThreadPoolExecutor(2) as pool:
        for r in pool.map(lambda a: run_lgt(*a), [("inspect", str(bad)), ("inspect", str(bad), "--json")]):
            one_line(r, "zero.safetensors", "layer record 0 is malformed", "1 to 65536 kernels")


# --- tensors: dtypes and values ---------------------------------------------------------------------------


def _nan(t: dict) -> None:
    t["s1.0.weight"][0, 0, 0, 0] = float("nan")


def _inf_bn(t: dict) -> None:
    t["s3.1.bn.bias"][3] = float("-inf")


def _as(dtype: torch.dtype, name: str = "s1.0.weight"):
    def edit(t: dict) -> None:
        t[name] = (t[name] * 1e9).to(dtype) if dtype != torch.bool else t[name] > 0
    return edit


def _negative_var(t: dict) -> None:
    t["s1.1.bn.running_var"][0] = -1.0


BAD_TENSORS = {
    "nan_weight": (_nan, "tensor 's1.0.weight' holds inf or nan values"),
    "inf_bn": (_inf_bn, "tensor 's3.1.bn.bias' holds inf or nan values"),
    "i32_weight": (_as(torch.int32), "tensor 's1.0.weight' is i32; learngene tensors are floating point"),
    "i64_bn": (_as(torch.int64, "s1.0.bn.running_mean"), "is i64"),
    "bool_weight": (_as(torch.bool), "is bool"),
    "negative_variance": (_negative_var, "negative variances"),
}


@pytest.mark.parametrize("name", sorted(BAD_TENSORS))
def test_non_float_or_non_finite_tensors_are_refused_even_with_forged_hashes(bundle_tiny: Path, tmp_path: Path,
                                                                             name: str) -> None:
    edit, fragment = BAD_TENSORS[name]
    bad = bt.rewrite(bundle_tiny, tmp_path / f"{name}.safetensors", tensors=edit, forge=True)
    with pytest.raises(InvalidFileError) as e:
        read_bundle(bad)  # what transplant loads
    assert fragment in str(e.value).lower(), str(e.value)
    if name != "negative_variance":  # a header-only (torch-free) inspect with --verify sees it too
        with pytest.raises(InvalidFileError):
            read_bundle_header(bad, verify=True)


def test_transplant_refuses_a_nan_bundle_and_writes_nothing(bundle_tiny: Path, tmp_path: Path) -> None:
    bad = bt.rewrite(bundle_tiny, tmp_path / "nan.safetensors", tensors=_nan, forge=True)
    out = tmp_path / "out.safetensors"
    r = run_lgt("transplant", str(bad), "tinymodels:tiny_vgg", "-o", str(out), env_extra=ENV)
    one_line(r, "nan.safetensors", "inf or nan")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["nan.safetensors"]


def test_writing_a_bundle_from_a_diverged_model_is_refused(aux_tiny_file: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from learngene_tools.extraction.config import SelectionSettings
    from learngene_tools.extraction.selection import select_from_file

    state = load_file(str(aux_tiny_file))
    state["stages.0.0.conv.weight"][0, 0, 0, 0] = math.inf
    save_file(state, str(tmp_path / "aux.safetensors"), metadata=dict(read_header(aux_tiny_file).metadata))
    with pytest.raises(InvalidFileError, match="not finite floating point"):
        select_from_file(tmp_path / "aux.safetensors", tmp_path / "lg.safetensors", SelectionSettings())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aux.safetensors"]
