"""Human output of `lgt`: rich tables for bundles, plans and checkpoints (no torch needed)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def console(stderr: bool = False) -> Console:
    """A console that is as wide as the terminal, or 140 columns (COLUMNS) when output is piped."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else int(os.environ.get("COLUMNS", "140"))
    return Console(stderr=stderr, highlight=False, width=width)


def show_bundle(out: Console, s: dict[str, Any], quiet: bool = False) -> None:
    """A bundle's summary line, layer table and provenance (the summary line only when `quiet`)."""
    prov = s["provenance"]
    anc = prov.get("ancestry") or {}
    aux = (prov.get("auxiliary") or {}).get("config")
    unprotected = "" if s.get("metadata_protected", True) else " (metadata unprotected)"
    out.print(f"[bold]{s['file']}[/]: learngene bundle, schema {s['schema']}{unprotected}, {len(s['layers'])} layers, "
              f"{s['params']:,} conv parameters, stages {', '.join(map(str, s['stages']))}")
    if quiet:
        return
    t = Table(show_edge=False, pad_edge=False)
    for col in ("layer", "stage", "shape", "stride", "out stride", "BN", "L2 norm min/mean/max", "source"):
        t.add_column(col)
    for r in s["layers"]:
        n = r["l2_norm"]
        t.add_row(r["id"], f"{r['stage']} ({r['anchor']})", "x".join(map(str, r["shape"])), str(r["stride"]),
                  str(r["reduction"]), "yes" if r["has_bn"] else "no",
                  f"{n['min']:.3g} / {n['mean']:.3g} / {n['max']:.3g}", r["source_key"])
    out.print(t)
    hash_state = "verified" if s["hash_verified"] else "not verified"
    out.print(f"tensor hash {s['tensor_hash']} ({hash_state})")
    if s.get("metadata_hash"):
        out.print(f"metadata hash {s['metadata_hash']} (verified: layer records and provenance)")
    for warning in s.get("warnings", []):
        out.print(f"warning: {escape(warning)}", soft_wrap=True)
    out.print(f"ancestry: {_ancestry_text(anc)}")
    aux_text = f"widths {aux.get('widths')}, depths {aux.get('depths')}" if isinstance(aux, dict) else str(aux)
    out.print(f"auxiliary: {aux_text}; tool {prov.get('tool', {}).get('version', '?')}")
    dist = prov.get("distillation")
    if dist:
        out.print(f"distillation: {_distillation_text(dist)}")
    sel = prov.get("selection") or {}
    out.print(f"selection: stages {sel.get('stages')}, run length {sel.get('run_length') or 'whole stage'}")


def _ancestry_text(anc: dict[str, Any] | None) -> str:
    if not anc:
        return "unknown (not recorded)"
    parts = [str(anc.get("arch", "?"))]
    if anc.get("checkpoint"):
        sha = str(anc.get("checkpoint_sha256") or "")
        parts.append(f"from {anc['checkpoint']}" + (f" ({sha[:19]}…)" if sha else ""))
    if anc.get("taps"):
        parts.append(f"taps {', '.join(anc['taps'])}")
    return ", ".join(parts)


def _distillation_text(d: dict[str, Any]) -> str:
    st = d.get("settings") or {}
    loss = st.get("loss") or {}
    finals = d.get("final_stage_losses") or []
    text = (f"{d.get('steps', '?')} steps, {d.get('images_seen', 0):,} images "
            f"({'synthetic' if st.get('data') is None else st.get('data')}) at {st.get('img_size', '?')} px; "
            f"loss {loss.get('kind', '?')} alphas {loss.get('alphas')}; final stage losses "
            f"{' / '.join(f'{v:.4g}' for v in finals) or '-'}; {d.get('precision', '?')} on {d.get('world_size', 1)} "
            f"{d.get('device', '?')} process(es)")
    if d.get("recipe"):
        text += f"; recipe {d['recipe'].get('name')}"
    return text + " (--json shows every setting)"


def plan_cells(a: Any) -> tuple[str, str, str, str]:
    """Short kernels / input-channels / kernel-size / BN cells of one placed assignment."""
    n1, c1, k, _ = a.source_shape
    n2, c2, kh, kw = a.target_shape
    kernels = f"{n1} -> {n2}" + (" top-L2" if n1 > n2 else f" +{n2 - n1} new" if n1 < n2 else "")
    inputs = {"follow": f"follow {a.follow}", "identity": f"{c1} -> {c2} as is", "fold": f"{c1} -> {c2} fold"}[a.in_map]
    ksize = f"{k}x{k}" + (f" in {kh}x{kw}" if (kh, kw) != (k, k) else "")
    return kernels, inputs, ksize, a.bn or "-"


def show_plan(out: Console, plan: Any, verbose: bool = False) -> None:
    """A transplant plan as a table and a summary line (`verbose`: every adaptation step of every layer)."""
    t = Table(show_edge=False, pad_edge=False)
    for col in ("layer", "target conv", "shape", "stride", "kernels", "in channels", "kernel", "BN"):
        t.add_column(col, overflow="fold")
    for a in plan.assignments:
        if a.placed:
            t.add_row(a.layer, a.target.removesuffix(".weight"), "x".join(map(str, a.target_shape)), str(a.reduction),
                      *plan_cells(a))
        else:
            t.add_row(a.layer, "[yellow]left out[/]", "", "", a.reason)
    out.print(t)
    if verbose:
        for a in plan.placed:
            for step in a.steps:
                out.print(f"{a.layer} -> {a.target.removesuffix('.weight')}: {step}", soft_wrap=True)
    skipped: dict[str, int] = {}
    for c in plan.convs:
        if not c.eligible:
            kind = c.reason.split(":")[0].split(" (")[0]
            skipped[kind] = skipped.get(kind, 0) + 1
    if skipped:
        out.print("target convs skipped: " + "; ".join(f"{k} ({n})" for k, n in sorted(skipped.items())))
    if plan.identification.startswith(("identified", "not identified")):
        out.print(f"architecture {plan.identification}", soft_wrap=True)
    out.print(f"{len(plan.placed)} of {len(plan.assignments)} learngene layers placed, "
              f"{plan.params_initialised:,} conv parameters initialised, {len(plan.changed_keys())} tensors changed; "
              f"{strides_text(plan.strides, plan.arch, plan.identification)}; target {plan.wrapper}; seed {plan.seed}; "
              "--json shows every step")
    if plan.control:
        what = ("random values with each filter's norm" if plan.control == "random-matched"
                else "each filter's own values permuted")
        out.print(f"[yellow]control transplant ({plan.control}):[/] the transplanted convs get {what}, not the "
                  "learngene's kernels; train it beside the plain transplant to tell knowledge from scale",
                  soft_wrap=True)
    if len(plan.copies) > 1:
        out.print(f"every copy of the weights gets the same plan: {', '.join(plan.copies)}", soft_wrap=True)
    if plan.optimizer_state and plan.drop_optimizer:
        out.print(f"optimizer state left out (--drop-optimizer): {', '.join(plan.optimizer_state)}", soft_wrap=True)


def strides_text(strides: str, arch: str | None, identification: str) -> str:
    """How the strides are known: 'strides traced from timm:vgg16_bn', or estimated."""
    if strides != "traced":
        return "strides estimated from channel widths (pass --arch for exact ones)"
    return f"strides traced from {arch}"


def show_checkpoint(out: Console, s: dict[str, Any], quiet: bool = False) -> None:
    """A checkpoint's summary line and its conv table (the summary line only when `quiet`)."""
    ident = s.get("identification") or {}
    out.print(f"[bold]{s['file']}[/]: {s['format']} checkpoint, {s['wrapper']}, {s['tensors']} tensors, "
              f"{s['params']:,} parameters; {strides_text(s['strides'], s['arch'], ident.get('text', ''))}")
    if quiet:
        return
    if ident.get("text", "").startswith(("identified", "not identified")):
        out.print(f"architecture {ident['text']}", soft_wrap=True)
    if len(s.get("copies") or []) > 1:
        out.print(f"weight copies (a transplant writes each): {', '.join(s['copies'])}", soft_wrap=True)
    if s.get("optimizer_state"):
        out.print(f"optimizer state: {', '.join(s['optimizer_state'])} (a transplant keeps it unless --drop-optimizer)",
                  soft_wrap=True)
    for k, v in s["metadata"].items():
        out.print(f"{k}: {v}")
    t = Table(show_edge=False, pad_edge=False)
    for col in ("conv", "shape", "stride", "BN", "transplant"):
        t.add_column(col, overflow="fold")
    for c in s["convs"]:
        t.add_row(c["key"], "x".join(map(str, c["shape"])), "?" if c["reduction"] is None else str(c["reduction"]),
                  c["bn"] or "", c["role"])
    out.print(t)
    n_ok = sum(c["eligible"] for c in s["convs"])
    out.print(f"{n_ok} of {len(s['convs'])} convs can take a learngene layer; "
              f"`lgt transplant BUNDLE {s['file']} --dry-run` shows where each layer of a bundle would go")


def print_json(obj: Any) -> None:
    """Machine output: indented JSON on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def print_error(err: Console, message: str) -> None:
    """The one line every failure prints."""
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)  # "[arch]" in a message is text, not markup


def print_failure(err: Console, message: str, kind: str, code: int, as_json: bool) -> None:
    """A failure: the one line on stderr and, for `--json`, an error object on stdout."""
    print_error(err, message)
    if as_json:
        print_json({"error": {"kind": kind, "message": message, "exit_code": code}})


def show_run_plan(out: Console, d: dict[str, Any]) -> None:
    """What a distillation would run (`--dry-run`)."""
    anc, aux = d["ancestry"], d["auxiliary"]
    how = f", {anc['identified']}" if anc.get("identified") else " (--arch)"
    lines = [
        f"ancestry: {anc['checkpoint']}: {anc['arch']}{how}",
        f"taps (stride 4, 8, 16): {', '.join(d['taps'])}",
        f"auxiliary model: {aux['variant'] or 'custom'} (widths {aux['widths']}, depths {aux['depths']})",
        f"training: {d['steps']} steps, batch {d['batch_size']}, {d['img_size']} px, lr {d['lr']:g} "
        f"(warm-up {d['warmup_steps']}), loss {d['loss'].get('kind')}, {d['precision']} precision on {d['device']}",
        f"data: {d['data']}",
        f"work folder: {d['work_dir']}" + (f"; bundle: {d['output']}" if d.get("output") else ""),
        "dry run: nothing trained or written",
    ]
    for line in lines:
        out.print(line, soft_wrap=True, highlight=False)


def show_distill_summary(out: Console, summary: dict[str, Any]) -> None:
    """The line a finished distillation prints."""
    losses = summary["final_stage_losses"] or []
    out.print(f"distilled {summary['steps']} steps, {summary['images_seen']:,} images "
              f"({summary['skipped_images']} unreadable skipped) on {summary['world_size']} {summary['device']} "
              f"process(es), {summary['precision']}; final loss {summary['final_loss']:.4f} "
              f"(stages {', '.join(f'{v:.4f}' for v in losses)}) -> {summary['aux_path']}", soft_wrap=True)


def show_bundle_list(out: Console, bundles: list[dict[str, Any]]) -> None:
    """`lgt list`: one row per bundle at hand (reference, where from, layers, stages, hash)."""
    if not bundles:
        out.print("no bundles: none shipped, none in the Hugging Face cache (`lgt pull OWNER/REPO` adds one)")
        return
    t = Table(show_edge=False, pad_edge=False)
    for col in ("bundle", "from", "layers", "stages", "ancestry", "tensor hash"):
        t.add_column(col)
    for b in bundles:
        ref = b["ref"] + (" (lgt:default)" if b.get("default") else "")
        t.add_row(escape(ref), b["source"], str(b["layers"]), ",".join(map(str, b["stages"])),
                  escape(str(b.get("ancestry") or "?")), b["hash"].removeprefix("sha256:")[:16])
    out.print(t)
