import argparse
import hashlib
import zipfile

import pytest
import torch
from safetensors.torch import load_file, save_file
from tinymodels import tiny_vgg

from learngene_tools.errors import LgtError, OutputError
from learngene_tools.io.header import read_header
from learngene_tools.io.reading import common_prefix, find_state_dict, load_checkpoint
from learngene_tools.transplantation.apply import transplant

WRAPPERS = [(), ("state_dict",), ("model",), ("model_ema",), ("state_dict_ema",)]
PREFIXES = ["", "module.", "_orig_mod.", "module._orig_mod."]


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wrap(state, wrapper, prefix):
    obj = {prefix + k: v for k, v in state.items()}
    for key in reversed(wrapper):
        obj = {key: obj, "epoch": 7, "optimizer": {"lr": 0.1}}
    return obj


def unwrap(obj, wrapper, prefix):
    for key in wrapper:
        assert obj["epoch"] == 7 and obj["optimizer"] == {"lr": 0.1}  # the rest of the wrapper survives
        obj = obj[key]
    assert all(k.startswith(prefix) for k in obj)
    return {k[len(prefix):]: v for k, v in obj.items()}


def raw(t):
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("suffix,zip_format", [(".pt", True), (".pth", False), (".bin", True), (".ckpt", True)])
@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("prefix", ["", "module.", "module._orig_mod."])
def test_pickle_round_trip(tmp_path, bundle_tiny, suffix, zip_format, wrapper, prefix):
    state = tiny_vgg().state_dict()
    target = tmp_path / f"target{suffix}"
    torch.save(wrap(state, wrapper, prefix), target, _use_new_zipfile_serialization=zip_format)
    before = sha(target)
    out = tmp_path / f"out{suffix}"
    plan = transplant(bundle_tiny, str(target), out, arch="tinymodels:tiny_vgg")
    assert sha(target) == before  # input untouched
    assert zipfile.is_zipfile(out) == zip_format  # same serialisation as the target
    got = unwrap(torch.load(out, weights_only=True), wrapper, prefix)
    model = tiny_vgg()
    model.load_state_dict(got, strict=True)
    changed = set(plan.changed_keys())
    assert changed and changed <= set(state)
    for k, v in state.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        if k not in changed:
            assert raw(got[k]) == raw(v), k
        elif k.endswith("weight") and v.dim() == 4:
            assert not torch.equal(got[k], v), k


@pytest.mark.parametrize("prefix", PREFIXES)
def test_safetensors_round_trip(tmp_path, bundle_tiny, prefix):
    state = tiny_vgg().state_dict()
    target = tmp_path / "target.safetensors"
    save_file({prefix + k: v for k, v in state.items()}, str(target), metadata={"format": "pt", "note": "keep me"})
    before = sha(target)
    out = tmp_path / "out.safetensors"
    plan = transplant(bundle_tiny, str(target), out, arch="tinymodels:tiny_vgg")
    assert sha(target) == before
    meta = read_header(out).metadata
    assert meta["note"] == "keep me" and "learngene.transplant" in meta
    got = {k[len(prefix):]: v for k, v in load_file(str(out)).items()}
    tiny_vgg().load_state_dict(got, strict=True)
    src_header, out_header = read_header(target), read_header(out)
    data_in, data_out = target.read_bytes(), out.read_bytes()
    for k in state:
        e_in, e_out = src_header.tensors[prefix + k], out_header.tensors[prefix + k]
        same = data_in[e_in.start:e_in.end] == data_out[e_out.start:e_out.end]
        assert same == (k not in plan.changed_keys()), k


def test_dtypes_are_kept(tmp_path, bundle_tiny):
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in tiny_vgg().state_dict().items()}
    torch.save(state, tmp_path / "half.pt")
    transplant(bundle_tiny, str(tmp_path / "half.pt"), tmp_path / "out.pt")
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in state.items()}


def test_untrusted_pickle_is_refused_and_names_the_globals(tmp_path, bundle_tiny):
    target = tmp_path / "train.pth"
    torch.save({"model": tiny_vgg().state_dict(), "args": argparse.Namespace(lr=0.1)}, target)
    with pytest.raises(LgtError, match=r"untrusted globals argparse\.Namespace; if you trust this file, pass --trust-pickle"):
        load_checkpoint(target)
    out = tmp_path / "out.pth"
    transplant(bundle_tiny, str(target), out, trust_pickle=True)
    got = torch.load(out, weights_only=False)
    assert got["args"].lr == 0.1
    tiny_vgg().load_state_dict(got["model"], strict=True)


def test_finds_state_dict_and_prefix():
    sd = {"module.a.weight": torch.zeros(1)}
    assert find_state_dict({"model": sd, "step": torch.tensor(3)}) == (sd, ("model",))
    assert find_state_dict({"state_dict": {"model": sd}}) == (sd, ("state_dict", "model"))
    assert find_state_dict({"epoch": 3}) is None
    assert common_prefix(["module._orig_mod.a", "module._orig_mod.b"]) == "module._orig_mod."
    assert common_prefix(["module.a", "b"]) == ""


@pytest.mark.parametrize("where", ["patched copy", "full save"])
def test_failed_write_leaves_nothing(tmp_path, bundle_tiny, monkeypatch, where):
    from learngene_tools.io import torchzip, writing

    torch.save(tiny_vgg().state_dict(), tmp_path / "t.pt")
    out = tmp_path / "out.pt"
    out.write_bytes(b"previous output")

    def crash(*a, **k):
        raise OSError(28, "No space left on device")

    if where == "full save":
        monkeypatch.setattr(torchzip, "patch_torch_zip", lambda *a, **k: False)
        monkeypatch.setattr(torch, "save", crash)
    else:  # the zip file copied, then patched (io/torchzip.py)
        monkeypatch.setattr(writing, "_copy_range", crash)
    with pytest.raises(OutputError, match="out.pt: cannot write .No space left on device.; nothing was written"):
        transplant(bundle_tiny, str(tmp_path / "t.pt"), out, force=True)
    assert out.read_bytes() == b"previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pt", "t.pt"]


def test_existing_output_needs_force_and_input_is_never_output(tmp_path, bundle_tiny):
    torch.save(tiny_vgg().state_dict(), tmp_path / "t.pt")
    (tmp_path / "o.pt").write_bytes(b"x")
    with pytest.raises(LgtError, match="already exists; pass --force"):
        transplant(bundle_tiny, str(tmp_path / "t.pt"), tmp_path / "o.pt")
    with pytest.raises(LgtError, match="is an input; inputs are never modified"):
        transplant(bundle_tiny, str(tmp_path / "t.pt"), tmp_path / "t.pt", force=True)
    transplant(bundle_tiny, str(tmp_path / "t.pt"), tmp_path / "o.pt", force=True)
    assert (tmp_path / "o.pt").stat().st_size > 1


def test_output_format_must_match_target(tmp_path, bundle_tiny):
    torch.save(tiny_vgg().state_dict(), tmp_path / "t.pt")
    with pytest.raises(LgtError, match="written back as one; name the output .pt/.pth/.bin"):
        transplant(bundle_tiny, str(tmp_path / "t.pt"), tmp_path / "o.safetensors")


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, bundle_tiny):
    torch.save(tiny_vgg().state_dict(), tmp_path / "t.pt")
    for name in ("a.pt", "b.pt"):
        transplant(bundle_tiny, str(tmp_path / "t.pt"), tmp_path / name, seed=0)
    a, b = (torch.load(tmp_path / n, weights_only=True) for n in ("a.pt", "b.pt"))
    assert all(raw(a[k]) == raw(b[k]) for k in a)
    # resnet18 is wider than the bundle, so new kernels are drawn: the seed decides them
    for name, seed in [("r1.safetensors", 0), ("r2.safetensors", 0), ("r3.safetensors", 1)]:
        transplant(bundle_tiny, "timm:resnet18", tmp_path / name, seed=seed)
    assert sha(tmp_path / "r1.safetensors") == sha(tmp_path / "r2.safetensors")
    assert sha(tmp_path / "r1.safetensors") != sha(tmp_path / "r3.safetensors")
