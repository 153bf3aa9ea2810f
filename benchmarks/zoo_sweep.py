"""Zoo sweep: one smallest model per timm family with a dense conv of 3x3 or larger, transplanted two ways.

For each model: its random-init state_dict saved as a `.pth` file is transplanted WITHOUT --arch
(identification must find the architecture), and the model spec `timm:NAME` is transplanted (traced);
bundle `lgt:default`. A model passes when the file's architecture was identified and traced, the
file-based plan equals the spec's traced plan (no pass with a wrong placement), the output loads with
strict=True into the model and a forward pass is finite. `refused`: lgt declined the spec itself with
a one-line error (no layer fits). `failed`: anything else. Both --grouped settings are swept.

Run:  python benchmarks/zoo_sweep.py [--grouped skip,project] [--families a,b] [--refresh] [--json OUT]
The family list (the smallest model of each) is kept in benchmarks/zoo_families.json; --refresh rebuilds it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

FAMILIES_FILE = Path(__file__).with_name("zoo_families.json")
BUNDLE = "lgt:default"


@dataclass
class Result:
    """One model's outcome for one --grouped setting."""

    family: str
    model: str
    grouped: str
    status: str  # "pass" | "refused" | "failed"
    detail: str = ""
    placed_file: int = 0
    placed_spec: int = 0
    identification: str = ""
    seconds: float = 0.0


def _has_dense_conv(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) and m.groups == 1 and min(m.kernel_size) >= 3 for m in model.modules())


def list_families() -> dict[str, str]:
    """timm module (family) -> its smallest model (by parameters) that has a dense conv of 3x3 or larger."""
    import timm

    from learngene_tools.architectures.index import OWN_MODELS
    from learngene_tools.architectures.tracing import on_meta

    chosen: dict[str, str] = {}
    for family in sorted(timm.list_modules()):
        best: tuple[int, str] | None = None
        for name in timm.list_models(module=family):
            if name.startswith(OWN_MODELS):
                continue
            try:
                with warnings.catch_warnings(), on_meta():
                    warnings.simplefilter("ignore")
                    model = timm.create_model(name, pretrained=False)
            except Exception:  # noqa: BLE001 - a model that does not build is not in the sweep
                continue
            if not _has_dense_conv(model):
                continue
            size = sum(p.numel() for p in model.parameters())
            if best is None or (size, name) < best:
                best = (size, name)
        if best is not None:
            chosen[family] = best[1]
    return chosen


def load_families(refresh: bool = False, save: bool = True) -> dict[str, str]:
    """The family list (cached in zoo_families.json, with the timm version it was made for; `save=False` never
    writes that file, e.g. from the tests, which must not change the source tree)."""
    import timm

    if not refresh and FAMILIES_FILE.is_file():
        data = json.loads(FAMILIES_FILE.read_text())
        if data.get("timm") == timm.__version__:
            return data["families"]
    families = list_families()
    if save:
        FAMILIES_FILE.write_text(json.dumps({"timm": timm.__version__, "families": families}, indent=1,
                                            sort_keys=True) + "\n")
    return families


def sweep_model(family: str, name: str, workdir: Path, grouped: str = "skip") -> Result:
    """Transplant one model as a file without --arch and as a spec; compare the plans; load and run the output."""
    from learngene_tools.api import transplant
    from learngene_tools.architectures.specs import build_model
    from learngene_tools.architectures.tracing import model_input_size
    from learngene_tools.errors import LgtError, ModelError
    from learngene_tools.transplantation.planner import placement

    t0 = time.perf_counter()
    r = Result(family, name, grouped, "failed")
    spec = f"timm:{name}"
    workdir.mkdir(parents=True, exist_ok=True)
    target, out = workdir / f"{name}.pth", workdir / f"{name}_{grouped}_lg.pth"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(spec, seed=0)
            if not target.exists():
                torch.save(model.state_dict(), target)
            try:
                spec_plan = transplant(BUNDLE, spec, None, grouped=grouped)
            except ModelError as e:
                if "no learngene layer fits" not in str(e) and "has no conv layer" not in str(e):
                    raise
                r.status, r.detail = "refused", str(e)
                return r
            r.placed_spec = len(spec_plan.placed)
            plan = transplant(BUNDLE, str(target), out, grouped=grouped, force=True)
            r.placed_file, r.identification = len(plan.placed), plan.identification
            if plan.strides != "traced":
                r.detail = f"not identified: {plan.identification}"
                return r
            if placement(plan) != placement(spec_plan):
                r.detail = f"file plan differs from the traced {spec} plan ({plan.identification})"
                return r
            model.load_state_dict(torch.load(out, weights_only=True), strict=True)
            c, h, w = model_input_size(model)
            with torch.no_grad():
                y = model.eval()(torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(0)))
            y = y[0] if isinstance(y, (tuple, list)) else y
            if not torch.isfinite(y).all():
                r.detail = "non-finite forward"
                return r
            r.status = "pass"
    except LgtError as e:
        r.detail = f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - the sweep reports every failure and goes on
        r.detail = f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        r.seconds = round(time.perf_counter() - t0, 2)
        out.unlink(missing_ok=True)
    return r


def summary(results: list[Result]) -> dict[str, dict[str, float]]:
    """Per --grouped setting: counts of pass/refused/failed, the pass share, and layers placed (file and spec)."""
    out: dict[str, dict[str, float]] = {}
    for g in sorted({r.grouped for r in results}):
        rs = [r for r in results if r.grouped == g]
        n = len(rs)
        counts = {s: sum(r.status == s for r in rs) for s in ("pass", "refused", "failed")}
        out[g] = {**counts, "models": n, "pass_share": round(counts["pass"] / n, 4) if n else 0.0,
                  "layers_placed_file": sum(r.placed_file for r in rs if r.status == "pass"),
                  "layers_placed_spec": sum(r.placed_spec for r in rs),
                  "identified": sum(r.identification.startswith("identified") for r in rs)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grouped", default="skip,project", help="comma-separated --grouped settings to sweep")
    ap.add_argument("--families", default=None, help="comma-separated families (default: all)")
    ap.add_argument("--refresh", action="store_true", help="rebuild the family list")
    ap.add_argument("--json", default=None, help="write every result to this JSON file")
    args = ap.parse_args()
    os.environ.setdefault("YOLO_VERBOSE", "False")
    families = load_families(args.refresh)
    if args.families:
        families = {f: families[f] for f in args.families.split(",")}
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="lgt-zoo-") as tmp:
        for family, name in families.items():
            for g in args.grouped.split(","):
                r = sweep_model(family, name, Path(tmp), g)
                results.append(r)
                print(f"{r.status:7} {g:7} {family:28} {name:36} file {r.placed_file} spec {r.placed_spec} "
                      f"{r.seconds:6.1f}s {r.detail[:160]}", flush=True)
            (Path(tmp) / f"{name}.pth").unlink(missing_ok=True)
    for g, s in summary(results).items():
        print(f"--grouped {g}: {s['pass']} pass, {s['refused']} refused, {s['failed']} failed of {s['models']} "
              f"families ({100 * s['pass_share']:.1f} % pass); identified {s['identified']}; layers placed: "
              f"{s['layers_placed_file']} from files, {s['layers_placed_spec']} from specs")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": [asdict(r) for r in results],
                                               "summary": summary(results)}, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
