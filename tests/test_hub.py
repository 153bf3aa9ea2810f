"""Bundles on the Hugging Face Hub: pull, push, hf:// references, header-only inspect, errors.

Everything runs against tests/fakehub.py, a Hub-compatible HTTP server on 127.0.0.1: the real
huggingface_hub client talks HTTP to it; nothing of learngene_tools is mocked.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_lgt

pytest.register_assert_rewrite("hubenv")
from hubenv import ALICE, BOB, one_error_line, point_huggingface_hub_at, repo_with_bundle

from learngene_tools import describe, hub, resolve
from learngene_tools.errors import LgtError
from learngene_tools.io.bundle import Bundle, describe_bundle, read_bundle_header

pytest_plugins = ["hubenv"]  # fake_hub, hub_env, work


# --- references ---------------------------------------------------------------------------------


def test_parse_hf_ref_forms_and_mistakes():
    p = hub.parse_hf_ref
    assert p("hf://o/r/learngene.safetensors@v1") == hub.HfRef("o/r", "learngene.safetensors", "v1")
    assert p("hf://o/r") == hub.HfRef("o/r", "learngene.safetensors", None)
    assert p("hf://o/r@dev") == hub.HfRef("o/r", "learngene.safetensors", "dev")
    assert p("hf://o/r@refs%2Fpr%2F1/sub/x.safetensors") == hub.HfRef("o/r", "sub/x.safetensors", "refs/pr/1")
    assert p("hf://models/o/r/x.pth@refs/pr/2") == hub.HfRef("o/r", "x.pth", "refs/pr/2")
    assert str(p("hf://o/r/x.safetensors@v1")) == "hf://o/r/x.safetensors@v1"
    for bad in ("hf://o", "hf://o/r/../x", "hf://o/r/x@", "hf://datasets/o/r/x", "hf://o b/r/x", "o/r/x"):
        with pytest.raises(LgtError):
            p(bad)
    assert resolve("local/learngene.safetensors") == Path("local/learngene.safetensors")
    assert hub.is_hf_ref("hf://o/r") and not hub.is_hf_ref("timm:resnet50")


def test_fake_hub_answers_huggingface_hub_itself(fake_hub, hub_env):
    """The fake serves what huggingface_hub's own API calls expect (info, revision info, tree, exists)."""
    from huggingface_hub import HfApi

    c1 = repo_with_bundle(fake_hub, "alice/lg", b"x" * 100)
    fake_hub.tag("alice/lg", "v1")
    api = HfApi(endpoint=fake_hub.url)
    assert api.model_info("alice/lg").sha == c1
    assert api.model_info("alice/lg", revision="v1").sha == c1
    assert api.list_repo_files("alice/lg") == [".gitattributes", "learngene.safetensors"]
    assert api.file_exists("alice/lg", "learngene.safetensors") and not api.file_exists("alice/lg", "nope.bin")
    assert api.repo_exists("alice/lg") and not api.repo_exists("alice/nope")


# --- pull -----------------------------------------------------------------------------------------


def test_pull_by_branch_tag_and_commit(fake_hub, hub_env, bundle_tiny, bundle_small):
    old, new = bundle_tiny.read_bytes(), bundle_small.read_bytes()
    c1 = repo_with_bundle(fake_hub, "alice/lg", old)
    fake_hub.tag("alice/lg", "v1")
    c2 = fake_hub.commit("alice/lg", {"learngene.safetensors": new}, message="bigger learngene")
    latest = hub.pull("alice/lg")
    assert latest.read_bytes() == new and hub.commit_of(latest) == c2
    assert str(latest).startswith(hub_env["HF_HUB_CACHE"])
    by_tag = hub.pull("alice/lg", revision="v1")
    assert by_tag.read_bytes() == old and hub.commit_of(by_tag) == c1
    by_commit = hub.pull("alice/lg", revision=c1)
    assert by_commit == by_tag
    assert hub.pull("hf://alice/lg/learngene.safetensors@v1") == by_tag


def test_second_pull_downloads_nothing(fake_hub, hub_env, bundle_small):
    repo_with_bundle(fake_hub, "alice/lg", bundle_small.read_bytes())
    first = hub.pull("alice/lg")
    assert fake_hub.file_gets[("alice/lg", "learngene.safetensors")] == 1
    fake_hub.reset_counters()
    assert hub.pull("alice/lg") == first
    assert fake_hub.file_gets[("alice/lg", "learngene.safetensors")] == 0  # HEAD only: the cache is reused
    assert fake_hub.bytes_served[("alice/lg", "learngene.safetensors")] == 0
    assert {m for m, _, _ in fake_hub.requests} == {"HEAD"}


def test_offline_mode_uses_the_cache(fake_hub, hub_env, bundle_small, monkeypatch, work):
    data = bundle_small.read_bytes()
    repo_with_bundle(fake_hub, "alice/lg", data)
    cached = hub.pull("alice/lg")
    fake_hub.stop()  # no Hub at all from here on
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # for `lgt`; in this process, huggingface_hub's import-time copy
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert hub.pull("alice/lg") == cached
    assert hub.read_remote_header("hf://alice/lg/learngene.safetensors").tensors.keys() == \
        read_bundle_header(bundle_small, verify=False).header.tensors.keys()
    proc = run_lgt("pull", "alice/lg", cwd=work)
    assert proc.returncode == 0 and proc.stdout.strip() == str(cached)
    proc = run_lgt("inspect", "hf://alice/lg/learngene.safetensors", cwd=work)
    assert proc.returncode == 0 and "learngene bundle" in proc.stdout
    line = one_error_line(run_lgt("pull", "alice/other", cwd=work))
    assert "not in the local cache" in line and "HF_HUB_OFFLINE" in line
    assert list(work.iterdir()) == []


# --- inspect --------------------------------------------------------------------------------------


def test_inspect_reads_the_header_only(fake_hub, hub_env, bundle_small, work):
    data = bundle_small.read_bytes()
    repo_with_bundle(fake_hub, "alice/lg", data)
    key = ("alice/lg", "learngene.safetensors")
    header = hub.read_remote_header("hf://alice/lg/learngene.safetensors")
    local = read_bundle_header(bundle_small, verify=False).header
    assert header.tensors == local.tensors and header.metadata == local.metadata and header.file_size == len(data)
    assert 0 < fake_hub.bytes_served[key] < 0.05 * len(data)
    fake_hub.reset_counters()

    proc = run_lgt("inspect", "hf://alice/lg/learngene.safetensors", "--json", cwd=work)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    expected = describe_bundle(bundle_small, verify=False)
    assert summary["layers"] == expected["layers"] and summary["provenance"] == expected["provenance"]
    assert summary["file"] == "hf://alice/lg/learngene.safetensors" and summary["hash_verified"] is False
    assert 0 < fake_hub.bytes_served[key] < 0.05 * len(data)  # range requests, no full download
    assert not Path(hub_env["HF_HUB_CACHE"], "models--alice--lg", "blobs").exists()
    assert list(work.iterdir()) == []

    proc = run_lgt("inspect", "hf://alice/lg", cwd=work)  # the table; default file name
    assert proc.returncode == 0 and "hf://alice/lg/learngene.safetensors: learngene bundle" in proc.stdout
    assert "(not verified)" in proc.stdout


def test_inspect_verify_downloads_and_rehashes(fake_hub, hub_env, bundle_small):
    data = bundle_small.read_bytes()
    repo_with_bundle(fake_hub, "alice/lg", data)
    summary = describe("hf://alice/lg/learngene.safetensors", verify=True)
    assert summary["hash_verified"] is True and summary["file"] == "hf://alice/lg/learngene.safetensors"
    assert fake_hub.bytes_served[("alice/lg", "learngene.safetensors")] == len(data)


def test_inspect_a_checkpoint_on_the_hub(fake_hub, hub_env, aux_tiny_file, work):
    fake_hub.create_repo("alice/aux")
    fake_hub.commit("alice/aux", {"aux.safetensors": aux_tiny_file.read_bytes()})
    proc = run_lgt("inspect", "hf://alice/aux/aux.safetensors", "--json", cwd=work)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["kind"] == "checkpoint" and summary["file"] == "hf://alice/aux/aux.safetensors"
    assert summary["convs"]


# --- push -----------------------------------------------------------------------------------------


def test_push_then_pull_is_byte_identical(fake_hub, hub_env, bundle_small, work, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ALICE)
    src = work / "learngene.safetensors"
    src.write_bytes(bundle_small.read_bytes())
    proc = run_lgt("push", str(src), "alice/lg-small", "--private", "--license", "mit", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "pushed learngene.safetensors to alice/lg-small@main (new repo, private)" in proc.stdout
    assert "model card written" in proc.stdout and "lgt pull alice/lg-small" in proc.stdout
    repo = fake_hub.repos["alice/lg-small"]
    assert repo.private
    assert set(fake_hub.files_at("alice/lg-small")) == {".gitattributes", "learngene.safetensors", "README.md"}

    proc = run_lgt("pull", "alice/lg-small", "--json", cwd=work)
    assert proc.returncode == 0, proc.stderr
    pulled = json.loads(proc.stdout)
    assert Path(pulled["path"]).read_bytes() == bundle_small.read_bytes()
    assert pulled["commit"] == repo.refs["main"]

    monkeypatch.delenv("HF_TOKEN")  # private: without the token the repo is not there
    line = one_error_line(run_lgt("pull", "alice/lg-small", "--revision", "main", "--filename", "other.safetensors", cwd=work))
    assert "repository not found" in line and "HF_TOKEN" in line


def test_push_keeps_an_existing_card_unless_told(fake_hub, hub_env, bundle_tiny, bundle_small, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ALICE)
    fake_hub.create_repo("alice/lg")
    fake_hub.commit("alice/lg", {"README.md": b"# my own card\n"})
    r = hub.push(bundle_tiny, "alice/lg", filename="learngene.safetensors")
    assert r.card == "kept" and r.changed and not r.repo_created
    assert fake_hub.files_at("alice/lg")["README.md"] == b"# my own card\n"
    r = hub.push(bundle_tiny, "alice/lg", filename="learngene.safetensors")
    assert not r.changed  # same bytes: no empty commit
    r = hub.push(bundle_small, "alice/lg", filename="learngene.safetensors", overwrite_card=True)
    assert r.card == "written"
    card = fake_hub.files_at("alice/lg")["README.md"].decode()
    assert card.startswith("---\nlibrary_name: learngene_tools\n")
    assert fake_hub.files_at("alice/lg")["learngene.safetensors"] == bundle_small.read_bytes()


def test_push_to_a_branch_and_as_a_pull_request(fake_hub, hub_env, bundle_tiny, bundle_small, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ALICE)
    hub.push(bundle_tiny, "alice/lg", filename="learngene.safetensors")
    r = hub.push(bundle_small, "alice/lg", filename="learngene.safetensors", revision="dev")
    repo = fake_hub.repos["alice/lg"]
    assert r.revision == "dev" and repo.refs["dev"] == r.commit != repo.refs["main"]
    assert hub.pull("alice/lg", revision="dev").read_bytes() == bundle_small.read_bytes()
    assert hub.pull("alice/lg").read_bytes() == bundle_tiny.read_bytes()

    r = hub.push(bundle_small, "alice/lg", filename="learngene.safetensors", create_pr=True)
    assert r.pr_url and r.pr_url.endswith("/alice/lg/discussions/1")
    assert repo.refs["refs/pr/1"] == r.commit
    assert fake_hub.files_at("alice/lg")["learngene.safetensors"] == bundle_tiny.read_bytes()  # main untouched
    assert hub.pull("hf://alice/lg/learngene.safetensors@refs/pr/1").read_bytes() == bundle_small.read_bytes()


def test_model_card_contents(bundle_small):
    b = read_bundle_header(bundle_small, verify=False)
    prov = {**b.provenance, "ancestry": {"arch": "replknet31b", "hub_id": "DingXiaoH/RepLKNet-31B",
                                         "checkpoint": "RepLKNet-31B_ImageNet-1K_224.pth"}}
    card = hub.model_card(Bundle(b.source, b.layers, prov, b.header), "alice/lg", revision="v2", license="apache-2.0")
    front, body = card.split("---\n", 2)[1:]
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "learngene_tools" and "learngene" in meta["tags"]
    assert meta["base_model"] == "DingXiaoH/RepLKNet-31B" and meta["license"] == "apache-2.0"
    for r in b.layers:  # what the learngene is: every layer, its shape and stage
        assert f"| `{r.id}` | {r.stage} ({r.anchor}) | {'×'.join(map(str, r.shape))} |" in body
    assert "Stages 1, 3" in body and f"{b.num_params:,} parameters" in body
    assert "replknet31b" in body and b.provenance["tensor_hash"] in body  # provenance
    assert b.provenance["auxiliary"]["checkpoint_sha256"] in body
    assert "lgt pull alice/lg --revision v2" in body  # the exact commands
    assert "lgt transplant hf://alice/lg/learngene.safetensors@v2 resnet50.pth -o resnet50_lg.pth" in body
    assert "lgt inspect hf://alice/lg/learngene.safetensors@v2" in body

    plain = hub.model_card(b, "alice/lg")  # nothing recorded: no base_model, no license
    meta = yaml.safe_load(plain.split("---\n", 2)[1])
    assert "base_model" not in meta and "license" not in meta
    assert "Ancestry**: not recorded" in plain
    assert hub.ancestry_hub_id({"ancestry": {"arch": "timm/convnext_tiny.fb_in1k"}}) == "timm/convnext_tiny.fb_in1k"
    assert hub.ancestry_hub_id({"ancestry": {"checkpoint": "hf://timm/resnet50.a1_in1k/model.safetensors"}}) == \
        "timm/resnet50.a1_in1k"
    assert hub.ancestry_hub_id({"ancestry": {"arch": "resnet50", "checkpoint": "ckpts/r50.pth"}}) is None


# --- hf:// wherever a file is accepted ---------------------------------------------------------


def test_transplant_from_hub_references(fake_hub, hub_env, bundle_tiny, tmp_path, work):
    from safetensors.torch import save_file

    sys.path.insert(0, str(Path(__file__).parent))
    from tinymodels import tiny_vgg

    target = tmp_path / "tiny_vgg.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_vgg().state_dict().items()}, str(target))
    repo_with_bundle(fake_hub, "alice/lg", bundle_tiny.read_bytes())
    fake_hub.tag("alice/lg", "v1")
    fake_hub.commit("alice/lg", {"learngene.safetensors": b"not what v1 points at"})
    fake_hub.create_repo("alice/targets")
    fake_hub.commit("alice/targets", {"tiny_vgg.safetensors": target.read_bytes()})

    proc = run_lgt("transplant", "hf://alice/lg/learngene.safetensors@v1", "hf://alice/targets/tiny_vgg.safetensors",
                   "-o", "out.safetensors", cwd=work)
    assert proc.returncode == 0, proc.stderr
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    (local_dir / "learngene.safetensors").write_bytes(bundle_tiny.read_bytes())
    proc = run_lgt("transplant", str(local_dir / "learngene.safetensors"), str(target), "-o", str(local_dir / "out.safetensors"))
    assert proc.returncode == 0, proc.stderr
    assert (work / "out.safetensors").read_bytes() == (local_dir / "out.safetensors").read_bytes()
    assert sorted(p.name for p in work.iterdir()) == ["out.safetensors"]


# --- errors ---------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ERROR_CASES = {
    "no network": (["pull", "alice/lg"], "cannot reach the Hugging Face Hub"),
    "unknown repo": (["pull", "alice/nope"], "repository not found"),
    "missing file": (["pull", "alice/lg", "--filename", "other.safetensors"], "has no file 'other.safetensors'"),
    "unknown revision": (["transplant", "hf://alice/lg/learngene.safetensors@v9", "timm:resnet18"], "revision 'v9' not found"),
    "private without token": (["inspect", "hf://alice/secret/learngene.safetensors"], "private or gated"),
    "gated without token": (["pull", "carol/gated"], "gated repository"),
    "gated, token not granted": (["pull", "carol/gated"], "gated repository"),
    "not a bundle": (["pull", "alice/lg", "--filename", "aux.safetensors"], "not a learngene bundle"),
    "not a safetensors file": (["inspect", "hf://alice/lg/notes.safetensors"], "not a valid safetensors file"),
    "bundle that is no bundle": (["transplant", "hf://alice/lg/aux.safetensors", "timm:resnet18"], "not a learngene bundle"),
    "push without token": (["push", "{bundle}", "alice/new"], "needs a Hugging Face token"),
    "push to someone else's repo": (["push", "{bundle}", "carol/public"], "token with write access"),
    "push a file that is not a bundle": (["push", "{aux}", "alice/new"], "not a learngene bundle"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_are_one_actionable_line(case, fake_hub, hub_env, bundle_tiny, aux_tiny_file, work, monkeypatch):
    repo_with_bundle(fake_hub, "alice/lg", bundle_tiny.read_bytes())
    fake_hub.commit("alice/lg", {"aux.safetensors": aux_tiny_file.read_bytes(), "notes.safetensors": b"just text, no header"})
    repo_with_bundle(fake_hub, "alice/secret", bundle_tiny.read_bytes(), private=True)
    repo_with_bundle(fake_hub, "carol/gated", bundle_tiny.read_bytes(), gated=True)
    repo_with_bundle(fake_hub, "carol/public", bundle_tiny.read_bytes())
    if case == "no network":
        endpoint = f"http://127.0.0.1:{_closed_port()}"
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        point_huggingface_hub_at(monkeypatch, endpoint, Path(hub_env["HF_HOME"]))  # lgt runs in this process
    if case in ("gated, token not granted", "push to someone else's repo"):
        monkeypatch.setenv("HF_TOKEN", BOB)
    args, expected = ERROR_CASES[case]
    args = [a.format(bundle=bundle_tiny, aux=aux_tiny_file) for a in args]
    line = one_error_line(run_lgt(*args, cwd=work))
    assert expected in line, line
    assert list(work.iterdir()) == []  # nothing partial in the working directory
    assert not list(Path(hub_env["HF_HUB_CACHE"]).rglob("*.incomplete"))


def test_library_errors_are_lgt_errors(fake_hub, hub_env, bundle_tiny):
    repo_with_bundle(fake_hub, "alice/lg", bundle_tiny.read_bytes())
    with pytest.raises(LgtError, match="it has learngene.safetensors"):
        hub.pull("alice/lg", filename="missing.safetensors")
    with pytest.raises(LgtError, match="not a Hub repo id"):
        hub.pull("not a repo")
    with pytest.raises(LgtError, match="revision 'nope' not found"):
        hub.read_remote_header("hf://alice/lg/learngene.safetensors@nope")
