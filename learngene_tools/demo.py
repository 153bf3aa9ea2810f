"""`lgt demo`: the whole pipeline on built-in models, needing no file of the user's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from learngene_tools.architectures.specs import build_model
from learngene_tools.extraction.config import SelectionSettings
from learngene_tools.extraction.selection import select_from_file
from learngene_tools.io.bundle import describe_bundle
from learngene_tools.io.files import check_output
from learngene_tools.models.aux_checkpoint import save_aux
from learngene_tools.models.auxiliary import create_aux
from learngene_tools.models.variants import VARIANTS
from learngene_tools.transplantation.apply import transplant

DEMO_AUX = "lgt_aux_small"


def run_demo(out_dir: str | Path, target: str = "timm:resnet50", force: bool = False, seed: int = 0) -> dict[str, Any]:
    """Build an (untrained) auxiliary model, select its learngene and transplant it into `target`."""
    import torch

    out_dir = Path(out_dir)
    aux_path, bundle_path = out_dir / "aux.safetensors", out_dir / "learngene.safetensors"
    output = out_dir / f"{target.split(':', 1)[-1].replace('.', '_')}_lg.safetensors"
    for p in (aux_path, bundle_path, output):
        if p.parent.exists():
            check_output(p, [], force)
    build_model(target, seed=seed)  # a target that cannot be built fails before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    save_aux(create_aux(VARIANTS[DEMO_AUX]), aux_path)
    select_from_file(aux_path, bundle_path, SelectionSettings())
    plan = transplant(bundle_path, target, output, seed=seed, force=force)
    return {
        "aux_variant": DEMO_AUX, "aux": aux_path, "bundle": bundle_path, "output": output,
        "bundle_summary": describe_bundle(bundle_path), "plan": plan,
    }
