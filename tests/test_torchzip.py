"""A .pt/.pth target in torch's zip format is written by patching a copy of its file (io/torchzip.py), not by
loading it whole and torch.save-ing it: the output must equal the full save's tensor for tensor, load with
`torch.load(weights_only=True)`, pass zip CRC checks, and the patch must decline (falling back to the full save)
whenever its result could differ."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from tinymodels import tiny_vgg

from learngene_tools.io import torchzip
from learngene_tools.transplantation.apply import transplant

ARCH = "tinymodels:tiny_vgg"


def _both(bundle: Path, target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kw) -> tuple[Path, Path, list]:
    """The patched output, the full-save output, and what each patch call returned."""
    calls = []
    real = torchzip.patch_torch_zip

    def spy(*a, **k):
        calls.append(real(*a, **k))
        return calls[-1]

    monkeypatch.setattr(torchzip, "patch_torch_zip", spy)
    patched = tmp_path / f"patched{target.suffix}"
    transplant(bundle, str(target), patched, arch=ARCH, **kw)
    monkeypatch.setattr(torchzip, "patch_torch_zip", lambda *a, **k: False)
    full = tmp_path / f"full{target.suffix}"
    transplant(bundle, str(target), full, arch=ARCH, **kw)
    monkeypatch.setattr(torchzip, "patch_torch_zip", real)
    return patched, full, calls


def _tensors(obj, path=""):
    """Every tensor of a loaded checkpoint by its path (modules by their state_dict)."""
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, torch.Tensor):
        return {path: obj}
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _tensors(val, f"{path}/{key}").items()}
    return {}


def _assert_same(a: Path, b: Path, weights_only: bool = True) -> dict[str, torch.Tensor]:
    with zipfile.ZipFile(a) as z:
        assert z.testzip() is None  # every record's CRC-32 is right
    ta = _tensors(torch.load(a, weights_only=weights_only))
    tb = _tensors(torch.load(b, weights_only=weights_only))
    assert ta.keys() == tb.keys() and ta
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape and torch.equal(ta[k], tb[k]), k
    return ta


def test_a_wrapped_checkpoint_with_ema_is_patched_and_equals_the_full_save(tmp_path, bundle_tiny, monkeypatch):
    sd = tiny_vgg().state_dict()
    ema = {k: (v * 0.5 if v.is_floating_point() else v.clone()) for k, v in sd.items()}
    target = tmp_path / "t.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "state_dict_ema": ema, "epoch": 4}, target)
    patched, full, calls = _both(bundle_tiny, target, tmp_path, monkeypatch)
    assert calls == [True]
    got = _assert_same(patched, full)
    before = _tensors(torch.load(target, weights_only=True))
    changed = {k for k in got if not torch.equal(got[k], before[k])}
    assert any(k.startswith("/state_dict/") for k in changed) and any(k.startswith("/state_dict_ema/") for k in changed)
    assert torch.load(patched, weights_only=True)["epoch"] == 4


def test_views_of_one_shared_storage_are_patched_in_place(tmp_path, bundle_tiny, monkeypatch):
    """Every tensor a view (with an offset) into one flat buffer, as flat-parameter trainers save them; one
    tensor also as a transposed (strided) view."""
    sd = tiny_vgg().state_dict()
    floats = {k: v for k, v in sd.items() if v.is_floating_point()}
    flat = torch.cat([v.reshape(-1) for v in floats.values()])
    views, at = {}, 0
    for k, v in floats.items():
        views[k] = flat[at:at + v.numel()].view(v.shape)
        at += v.numel()
    first_conv = next(k for k, v in sd.items() if v.dim() == 4)
    w = views[first_conv]  # store this conv as a non-contiguous view of its own buffer
    views[first_conv] = w.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    assert not views[first_conv].is_contiguous() and torch.equal(views[first_conv], w)
    state = {**sd, **views}
    target = tmp_path / "flat.pt"
    torch.save(state, target)
    patched, full, calls = _both(bundle_tiny, target, tmp_path, monkeypatch)
    assert calls == [True]
    got = _assert_same(patched, full)
    assert not torch.equal(got[f"/{first_conv}"], w)  # the strided view was rewritten
    loaded = torch.load(patched, weights_only=True)
    tiny_vgg().load_state_dict(loaded, strict=True)
    a, b = loaded["0.1.weight"], loaded["0.1.bias"]  # still views of one storage, as in the input
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def test_a_tied_tensor_falls_back_to_the_full_save(tmp_path, bundle_tiny, monkeypatch):
    """A changed tensor also held under an unchanged key: patching the storage would change both; the full save
    changes one, so the patch declines."""
    sd = tiny_vgg().state_dict()
    conv = next(k for k, v in sd.items() if v.dim() == 4)
    target = tmp_path / "tied.pt"
    torch.save({"model": sd, "extra": {"copy_of_first_conv": sd[conv]}}, target)
    patched, full, calls = _both(bundle_tiny, target, tmp_path, monkeypatch)
    assert calls == [False]
    _assert_same(patched, full)


def test_a_pickled_module_needing_trust_pickle_is_patched(tmp_path, bundle_tiny, monkeypatch):
    target = tmp_path / "module.pt"
    torch.save({"model": tiny_vgg(), "epoch": 1}, target)
    patched, full, calls = _both(bundle_tiny, target, tmp_path, monkeypatch, trust_pickle=True)
    assert calls == [True]
    _assert_same(patched, full, weights_only=False)


def test_half_precision_and_legacy_files(tmp_path, bundle_tiny, monkeypatch):
    sd = {k: v.half() if v.is_floating_point() else v for k, v in tiny_vgg().state_dict().items()}
    torch.save(sd, tmp_path / "half.pt")
    patched, full, calls = _both(bundle_tiny, tmp_path / "half.pt", tmp_path, monkeypatch)
    assert calls == [True]
    _assert_same(patched, full)
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)  # not a zip: saved in full
    out = tmp_path / "legacy_out.pth"
    transplant(bundle_tiny, str(tmp_path / "legacy.pth"), out, arch=ARCH)
    assert not zipfile.is_zipfile(out)


def test_inert_unpickler_runs_nothing(tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('ran')",))

    root, _, _ = torchzip.read_pickle(pickle.dumps({"x": Boom()}, protocol=2))
    assert type(root["x"]).__name__ == "exec"  # a placeholder, never called
