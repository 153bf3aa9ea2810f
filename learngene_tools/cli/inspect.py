"""`lgt inspect FILE`: a bundle described from its header, or a checkpoint's convs, as tables or JSON.

The one implementation of the command: the typer command calls it, and so does `__main__`'s fast path for a
local bundle (which spares typer's import), so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from learngene_tools.cli import render


def inspect_file(file: Any, *, verify: bool | None = None, arch: str | None = None, trust_pickle: bool = False,
                 as_json: bool = False, quiet: bool = False, out: Console | None = None) -> None:
    """Describe `file` (a path, `lgt:NAME` or `hf://` reference) on stdout; LgtError when it cannot be read."""
    from learngene_tools import api

    summary = api.describe(file, verify=verify, arch=arch, trust_pickle=trust_pickle)
    out = out or render.console()
    if as_json:
        render.print_json(summary)
    elif summary["kind"] == "learngene bundle":
        render.show_bundle(out, summary, quiet=quiet)
    else:
        render.show_checkpoint(out, summary, quiet=quiet)
