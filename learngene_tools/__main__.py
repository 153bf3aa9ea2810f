"""Entry point of `lgt` and `python -m learngene_tools`.

`lgt inspect BUNDLE [--json] [-q] [--verify/--no-verify]` is served here without building the
typer app: importing typer costs about 0.3 s, more than the whole header read. It runs the
command's own implementation (`cli.inspect`). Every other call, and any other option, goes to
the full CLI.
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

    path = pos[0]
    if path.startswith("lgt:"):
        from learngene_tools.refs import builtin_path

        try:
            path = str(builtin_path(path))
        except LgtError:
            return None  # the full CLI reports it
    if not os.path.isfile(path):
        return None
    from learngene_tools.cli import render
    from learngene_tools.cli.inspect import inspect_file
    from learngene_tools.io.bundle import is_bundle_file

    as_json = "--json" in opts
    last = {o: i for i, o in enumerate(opts)}  # the last of --verify / --no-verify wins, as in typer
    verify = last.get("--no-verify", -1) < last.get("--verify", -1) or "--no-verify" not in last
    try:
        if not is_bundle_file(path):
            return None
        inspect_file(pos[0], verify=verify, as_json=as_json, quiet="-q" in opts or "--quiet" in opts)
    except LgtError as e:  # e.g. a safetensors file with a broken header: the very line the full CLI prints
        render.print_failure(render.console(stderr=True), str(e), e.kind, 2, as_json)
        return 2
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
