"""Pushing a bundle and writing its model card (YAML front matter, layers, provenance, commands)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learngene_tools import __version__
from learngene_tools.errors import HubAuthError, HubConnectionError, NotFoundError
from learngene_tools.hub.environment import hub_endpoint, is_offline, token
from learngene_tools.hub.references import DEFAULT_FILENAME, FILE_SUFFIXES, HF_SCHEME, NAME_PART, HfRef
from learngene_tools.hub.session import hub_call, progress_bars
from learngene_tools.io.bundle import Bundle, read_bundle_header

CARD_FILENAME = "README.md"
CARD_TAGS = ("learngene", "clkg", "transfer-learning", "knowledge-distillation", "safetensors")


@dataclass(frozen=True)
class PushResult:
    """What `push` did: where the bundle went, the commit, and whether the model card was written."""

    repo_id: str
    filename: str
    revision: str
    commit: str
    commit_url: str
    pr_url: str | None
    card: str  # "written" | "kept"
    repo_created: bool
    changed: bool  # False when the repo already had these exact files (no commit was made)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)



# --- push and model card ----------------------------------------------------------------------


def ancestry_hub_id(provenance: dict[str, Any]) -> str | None:
    """The ancestry's Hub model id (for the card's `base_model`), when the provenance names one."""
    anc = provenance.get("ancestry")
    if isinstance(anc, str):
        items = [("arch", anc)]
    elif isinstance(anc, dict):
        items = [(k, v) for k, v in anc.items() if isinstance(v, str)]
    else:
        return None
    prefixes = ("hf-hub:", "hf_hub:", HF_SCHEME, "https://huggingface.co/")
    for key, value in items:
        v = value.strip()
        prefixed = v.startswith(prefixes)
        for p in prefixes:
            if v.startswith(p):
                v = v[len(p):]
        v = v.removeprefix("models/")
        if prefixed:
            v = "/".join(v.split("@", 1)[0].split("/")[:2])
        elif key not in ("arch", "hub_id", "repo_id", "hf_repo", "model_id", "source", "pretrained"):
            continue
        parts = v.split("/")
        if len(parts) == 2 and all(NAME_PART.match(p) for p in parts) and not v.lower().endswith(FILE_SUFFIXES):
            return v
    return None


def _provenance_lines(prov: dict[str, Any]) -> list[str]:
    anc = prov.get("ancestry")
    aux = prov.get("auxiliary") or {}
    sel = prov.get("selection") or {}
    dist = prov.get("distillation")
    lines = []
    if isinstance(anc, dict) and anc:
        desc = anc.get("arch") or anc.get("name") or "recorded"
        extra = ", ".join(f"{k} `{v}`" for k, v in sorted(anc.items()) if k != "arch" and v not in (None, "", [], {}))
        lines.append(f"- **Ancestry** (the large model distilled): `{desc}`" + (f" ({extra})" if extra else ""))
    else:
        lines.append("- **Ancestry**: not recorded (the auxiliary model was not distilled with `lgt extract`)")
    cfg = aux.get("config")
    lines.append(
        f"- **Auxiliary model**: 3×3 conv + BN + ReLU, config `{json.dumps(cfg, sort_keys=True)}`"
        + (f", checkpoint `{aux['checkpoint']}`" if aux.get("checkpoint") else "")
        + (f" (`{aux['checkpoint_sha256']}`)" if aux.get("checkpoint_sha256") else "")
    )
    if dist:
        lines.append(f"- **Distillation**: `{json.dumps(dist, sort_keys=True)}`")
    else:
        lines.append("- **Distillation**: not recorded")
    if sel:
        lines.append(
            f"- **Selection**: stages {sel.get('stages')}, run length {sel.get('run_length') or 'whole stage'}, "
            f"criteria {', '.join(sel.get('criteria') or []) or 'not recorded'}"
        )
    tool = prov.get("tool") or {}
    lines.append(f"- **Written by**: {tool.get('name', 'learngene_tools')} {tool.get('version', '?')}")
    lines.append(f"- **Tensor hash**: `{prov.get('tensor_hash')}` (checked by `lgt inspect` and `lgt pull`)")
    return lines


def model_card(
    bundle: Bundle | str | os.PathLike[str], repo_id: str, filename: str = DEFAULT_FILENAME,
    revision: str | None = None, license: str | None = None,
) -> str:
    """The README.md for a bundle's repo: YAML front matter, the layers, provenance and the `lgt` commands."""
    from huggingface_hub import ModelCard, ModelCardData

    b = bundle if isinstance(bundle, Bundle) else read_bundle_header(bundle, verify=False)
    prov = b.provenance
    data = ModelCardData(library_name="learngene_tools", tags=list(CARD_TAGS), base_model=ancestry_hub_id(prov),
                         license=license)
    ref = str(HfRef(repo_id, filename, revision))
    pull_cmd = f"lgt pull {repo_id}" + (f" --filename {filename}" if filename != DEFAULT_FILENAME else "") + (
        f" --revision {revision}" if revision else ""
    )
    n_params = f"{b.num_params:,}"
    rows = ["| layer | stage (run edge) | shape (out×in×k×k) | stride | output stride | BN | source conv |",
            "|---|---|---|---|---|---|---|"]
    for r in b.layers:
        rows.append(
            f"| `{r.id}` | {r.stage} ({r.anchor}) | {'×'.join(map(str, r.shape))} | {r.stride} | {r.reduction} | "
            f"{'yes' if r.has_bn else 'no'} | `{r.source_key}` |"
        )
    name = repo_id.split("/")[-1]
    body = [
        "",
        f"# {name}: a learngene bundle",
        "",
        f"`{filename}` is a **learngene**: {len(b.layers)} convolution layers ({n_params} parameters) of a small "
        "3×3-kernel auxiliary CNN that was distilled from a large ancestry model, following CLKG (Zu et al., "
        "*Inheriting Generalized Learngene for Efficient Knowledge Transfer across Multiple Tasks*, AAAI 2025). "
        "Transplanted into a freshly initialised CNN of another architecture (ResNet, VGG, MobileViT, detection "
        "and segmentation backbones, …) it gives that model a better starting point than random initialisation. "
        "The file is a safetensors bundle that describes itself: `lgt inspect` shows everything below from its header.",
        "",
        "## What the learngene is",
        "",
        f"Stages {', '.join(map(str, b.stages))} of the auxiliary model; each stage gives one continuous run of layers "
        "(edge kernels: the first stage's run starts at its beginning, the last stage's ends at its end).",
        "",
        *rows,
        "",
        "## Provenance",
        "",
        *_provenance_lines(prov),
        "",
        "## How to use it",
        "",
        "With learngene_tools installed (it provides the `lgt` command):",
        "",
        "```",
        f"lgt inspect {ref}          # layers, shapes, provenance: reads the header only",
        f"{pull_cmd}          # into the Hugging Face cache; prints the local path",
        f"lgt transplant {ref} resnet50.pth -o resnet50_lg.pth --arch torchvision:resnet50",
        f"lgt transplant {ref} timm:vgg16_bn -o vgg16_lg.safetensors   # a fresh timm model as target",
        f"lgt transplant {ref} my_model.pth --dry-run   # the plan only, nothing written",
        "```",
        "",
        "From Python:",
        "",
        "```python",
        "from learngene_tools import transplant",
        "",
        f'plan = transplant("{ref}", "resnet50.pth", "resnet50_lg.pth", arch="torchvision:resnet50")',
        "```",
        "",
        "The descendant checkpoint has exactly the target's keys, shapes and dtypes; every tensor the plan does not "
        "name is byte-identical to the target's. Then train it as usual.",
        "",
    ]
    return str(ModelCard("\n".join(["---", data.to_yaml(), "---", *body])))


def push(
    bundle_path: str | os.PathLike[str], repo_id: str, *, filename: str | None = None, private: bool = False,
    revision: str | None = None, create_pr: bool = False, license: str | None = None,
    overwrite_card: bool = False, commit_message: str | None = None, progress: bool | None = None,
) -> PushResult:
    """Upload a bundle and its model card to `repo_id` (created if needed); an existing card is kept unless asked."""
    path = Path(bundle_path)
    if not path.is_file():
        raise NotFoundError(f"{path}: no such file; give the bundle to push (made by `lgt select` or `lgt extract`)")
    bundle = read_bundle_header(path, verify=True)  # refuse a file that is not a valid bundle before any upload
    ref = HfRef(repo_id.strip("/"), filename or path.name, revision)
    if is_offline():
        raise HubConnectionError("HF_HUB_OFFLINE is set: pushing needs the network; unset HF_HUB_OFFLINE")
    if token() is None:
        raise HubAuthError("pushing needs a Hugging Face token with write access: set HF_TOKEN or run `hf auth login`")
    with progress_bars(progress), hub_call(ref, write=True):
        return _push(path, bundle, ref, private=private, create_pr=create_pr, license=license,
                     overwrite_card=overwrite_card, commit_message=commit_message)


def _push(path: Path, bundle: Bundle, ref: HfRef, *, private: bool, create_pr: bool, license: str | None,
          overwrite_card: bool, commit_message: str | None) -> PushResult:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=hub_endpoint(), library_name="learngene_tools", library_version=__version__)
    repo_id, filename, revision = ref.repo_id, ref.filename, ref.revision
    created = not api.repo_exists(repo_id)
    if created:
        api.create_repo(repo_id, private=private, exist_ok=True)
    if revision and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    head = api.repo_info(repo_id, revision=revision).sha
    ops = [CommitOperationAdd(path_in_repo=filename, path_or_fileobj=str(path))]
    card = "kept"
    if overwrite_card or not api.file_exists(repo_id, CARD_FILENAME, revision=revision):
        text = model_card(bundle, repo_id, filename, revision=revision, license=license)
        ops.append(CommitOperationAdd(path_in_repo=CARD_FILENAME, path_or_fileobj=text.encode()))
        card = "written"
    info = api.create_commit(
        repo_id, operations=ops, revision=revision, create_pr=create_pr,
        commit_message=commit_message or f"Upload learngene bundle {filename} with lgt",
    )
    return PushResult(
        repo_id=repo_id, filename=filename, revision=revision or "main", commit=info.oid,
        commit_url=info.commit_url, pr_url=getattr(info, "pr_url", None), card=card, repo_created=created,
        changed=info.oid != head,
    )
