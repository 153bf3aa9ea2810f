"""Checks of the command line's failure contract, shared by the tests that run `lgt` as a subprocess."""

from __future__ import annotations

import json
import subprocess


def one_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """The one `error: ...` line of a failed call (exit 2, no traceback, nothing else on stdout), containing `fragments`."""
    shown = f"rc={proc.returncode}\nstdout={proc.stdout!r}\nstderr={proc.stderr!r}"
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, shown
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    if "--json" in proc.args:  # the error object, and nothing else, on stdout
        assert json.loads(proc.stdout)["error"]["message"] == lines[0].removeprefix("error: "), shown
    else:
        assert proc.stdout == "", shown
    for f in fragments:
        assert f.lower() in lines[0].lower(), (f, lines[0])
    return lines[0]
