"""What each light entry point imports, in one fresh interpreter (the only check of it; it needs a process of its own).

- `import learngene_tools` loads neither torch nor typer;
- reading and verifying a bundle's header (`describe_bundle`), and `lgt inspect BUNDLE`'s fast path in
  `__main__.py`, load neither torch, typer, safetensors, numpy nor timm;
- building the command line (`cli.app`, `cli.commands`, `cli.recipes`, `models.variants`: what `lgt -h`, `lgt pull`, `lgt inspect` pay
  before a command runs) loads none of torch, timm, huggingface_hub, numpy;
- timm imported after the package still finds the auxiliary models registered.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

CODE = textwrap.dedent("""
    import contextlib, io, json, sys

    def loaded(*names):
        return sorted(n for n in names if n in sys.modules)

    import learngene_tools
    assert not loaded("torch", "typer"), ("import learngene_tools", loaded("torch", "typer"))

    from learngene_tools.io.bundle import describe_bundle
    d = describe_bundle(BUNDLE)
    assert d["hash_verified"] and d["metadata_protected"], d
    from learngene_tools.__main__ import _fast_inspect
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = _fast_inspect(["inspect", BUNDLE, "--json"])
    assert code == 0 and json.loads(buf.getvalue())["kind"] == "learngene bundle", (code, buf.getvalue())
    heavy = ("torch", "typer", "safetensors", "numpy", "timm")
    assert not loaded(*heavy), ("bundle header and fast inspect", loaded(*heavy))

    import learngene_tools.cli.app, learngene_tools.cli.commands, learngene_tools.cli.recipes
    import learngene_tools.models.variants
    heavy = ("torch", "timm", "huggingface_hub", "numpy")
    assert not loaded(*heavy), ("the command line", loaded(*heavy))

    import timm
    timm.create_model("lgt_aux_tiny")
""")


def test_light_entry_points_import_no_torch(bundle_tiny: Path) -> None:
    p = subprocess.run([sys.executable, "-c", f"BUNDLE = {str(bundle_tiny)!r}\n" + CODE], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
