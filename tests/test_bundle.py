import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from learngene_tools.errors import LgtError
from learngene_tools.io.bundle import LAYERS_KEY, PROVENANCE_KEY, SCHEMA_KEY, read_bundle, read_bundle_header
from learngene_tools.io.header import read_header


def _rewrite_metadata(src, dst, **changes):
    tensors = load_file(str(src))
    meta = dict(read_header(src).metadata)
    for k, v in changes.items():
        key = {"schema": SCHEMA_KEY, "layers": LAYERS_KEY, "provenance": PROVENANCE_KEY}[k]
        if v is None:
            meta.pop(key)
        else:
            meta[key] = v
    save_file(tensors, str(dst), metadata=meta)


def test_bundle_records_and_provenance(bundle_tiny, aux_tiny_file):
    b = read_bundle(bundle_tiny)
    assert [r.id for r in b.layers] == ["s1.0", "s1.1", "s3.0", "s3.1"]
    s10 = b.layers[0]
    assert (s10.stage, s10.position, s10.run_length, s10.anchor) == (1, 0, 2, "start")
    assert s10.shape == (8, 3, 3, 3) and (s10.stride, s10.in_reduction, s10.reduction) == (2, 1, 2)
    assert b.layers[2].anchor == "end" and b.layers[2].reduction == 16 and b.layers[2].in_reduction == 8
    assert s10.source_key == "stages.0.0.conv.weight" and s10.has_bn
    w = b.tensors["s1.0.weight"]
    assert torch.allclose(torch.tensor(s10.l2_norms), w.flatten(1).norm(dim=1))
    aux = load_file(str(aux_tiny_file))
    assert torch.equal(w, aux["stages.0.0.conv.weight"])  # direct kernel extraction
    assert torch.equal(b.tensors["s3.1.bn.running_var"], aux["stages.2.1.bn.running_var"])  # BN travels with its conv
    p = b.provenance
    assert p["auxiliary"]["config"] == {"widths": [8, 16, 32], "depths": [2, 2, 2], "in_chans": 3}
    assert p["auxiliary"]["checkpoint_sha256"].startswith("sha256:")
    assert p["selection"]["stages"] == [1, 3] and p["tool"]["name"] == "learngene_tools"
    assert p["tensor_hash"].startswith("sha256:")


def test_bundle_bytes_are_deterministic(aux_tiny_file, tmp_path):
    from learngene_tools.extraction.config import SelectionSettings
    from learngene_tools.extraction.selection import select_from_file

    select_from_file(aux_tiny_file, tmp_path / "a.safetensors", SelectionSettings())
    select_from_file(aux_tiny_file, tmp_path / "b.safetensors", SelectionSettings())
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_corrupted_tensor_byte_fails_the_hash(bundle_tiny, tmp_path):
    data = bytearray(bundle_tiny.read_bytes())
    data[-3] ^= 0xFF
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(LgtError, match="corrupted bundle: tensor bytes hash"):
        read_bundle_header(bad)
    read_bundle_header(bad, verify=False)  # the header itself is fine


def test_truncated_bundle(bundle_tiny, tmp_path):
    bad = tmp_path / "t.safetensors"
    bad.write_bytes(bundle_tiny.read_bytes()[:-100])
    with pytest.raises(LgtError, match="truncated safetensors file"):
        read_bundle_header(bad)


def test_header_length_garbage(tmp_path):
    bad = tmp_path / "g.safetensors"
    bad.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(LgtError, match="header length"):
        read_bundle_header(bad)


def test_bad_schema_version(bundle_tiny, tmp_path):
    _rewrite_metadata(bundle_tiny, tmp_path / "v.safetensors", schema="99")
    with pytest.raises(LgtError, match="schema version '99' is not supported"):
        read_bundle_header(tmp_path / "v.safetensors")


def test_not_a_bundle(aux_tiny_file):
    with pytest.raises(LgtError, match="not a learngene bundle"):
        read_bundle_header(aux_tiny_file)


def test_bad_metadata_json(bundle_tiny, tmp_path):
    _rewrite_metadata(bundle_tiny, tmp_path / "j.safetensors", layers="[{oops")
    with pytest.raises(LgtError, match="bad bundle metadata JSON"):
        read_bundle_header(tmp_path / "j.safetensors")


def test_missing_tensor_and_wrong_shape(bundle_tiny, tmp_path):
    meta = dict(read_header(bundle_tiny).metadata)
    tensors = load_file(str(bundle_tiny))
    missing = {k: v for k, v in tensors.items() if k != "s3.1.bn.bias"}
    save_file(missing, str(tmp_path / "m.safetensors"), metadata=meta)
    with pytest.raises(LgtError, match="tensor 's3.1.bn.bias' of layer s3.1 is missing"):
        read_bundle_header(tmp_path / "m.safetensors", verify=False)
    layers = json.loads(meta[LAYERS_KEY])
    layers[1]["shape"] = [8, 8, 5, 5]
    _rewrite_metadata(bundle_tiny, tmp_path / "s.safetensors", layers=json.dumps(layers))
    with pytest.raises(LgtError, match=r"'s1.1.weight' has shape \[8, 8, 3, 3\], its record says \[8, 8, 5, 5\]"):
        read_bundle_header(tmp_path / "s.safetensors")


def test_malformed_record(bundle_tiny, tmp_path):
    layers = json.loads(read_header(bundle_tiny).metadata[LAYERS_KEY])
    del layers[0]["stride"]
    _rewrite_metadata(bundle_tiny, tmp_path / "r.safetensors", layers=json.dumps(layers))
    with pytest.raises(LgtError, match="layer record 0 is malformed"):
        read_bundle_header(tmp_path / "r.safetensors")
