"""Entry point of `lgt` and `python -m learngene_tools`.

`lgt inspect BUNDLE [--json] [-q] [--verify/--no-verify]` is served here without building the
typer app: importing typer costs about 0.3 s, more than the whole header read. Every other
call, and any other option, goes to the full CLI.
"""

from __future__ import annotations

import os
import sys

_FAST_INSPECT_FLAGS = {"--json", "--verify", "--no-verify", "-q", "--quiet"}


def _fast_inspect(argv: list[str]) -> int | None:
    """Exit code of a plain bundle inspect, or None when the call needs the full CLI."""
    if not argv or argv[0] != "inspect" or os.environ.get("LGT_DEBUG"):
        return None
    pos = [a for a in argv[1:] if not a.startswith("-")]
    opts = [a for a in argv[1:] if a.startswith("-")]
    if len(pos) != 1 or any(o not in _FAST_INSPECT_FLAGS for o in opts):
        return None
    from learngene_tools.errors import LgtError

    if pos[0].startswith("lgt:"):
        from learngene_tools.refs import builtin_path

        try:
            pos = [str(builtin_path(pos[0]))]
        except LgtError:
            return None  # the full CLI reports it
    if not os.path.isfile(pos[0]):
        return None
    from pathlib import Path

    from learngene_tools.cli import render
    from learngene_tools.io.bundle import describe_bundle, is_bundle_file

    path = str(Path(pos[0]))  # spelt as the full CLI spells it
    as_json = "--json" in opts
    try:
        if not is_bundle_file(path):
            return None
    except LgtError as e:  # a safetensors file with a broken header: the full CLI reports this very error
        render.print_failure(render.console(stderr=True), str(e), e.kind, 2, as_json)
        return 2
    last = {o: i for i, o in enumerate(opts)}  # the last of --verify / --no-verify wins, as in typer
    verify = last.get("--no-verify", -1) < last.get("--verify", -1) or "--no-verify" not in last
    try:
        summary = describe_bundle(path, verify=verify)
    except LgtError as e:
        render.print_failure(render.console(stderr=True), str(e), e.kind, 2, as_json)
        return 2
    if as_json:
        render.print_json(summary)
    else:
        render.show_bundle(render.console(), summary, quiet="-q" in opts or "--quiet" in opts)
    return 0


def main() -> None:
    """Run `lgt`."""
    code = _fast_inspect(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from learngene_tools.cli.app import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
