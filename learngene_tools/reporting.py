"""What the library tells its user besides results: warnings (worded for whoever reads them) and notices.

Warnings. A plan's warnings (`TransplantPlan.warnings`) are `Advice` strings: their text names
command-line flags (`--arch SPEC`), which is what `lgt` prints; `advice.for_api` names the Python
arguments (`arch=`) instead, which is what the API emits with `warnings.warn` as `PlanWarning`
(a `LgtWarning`). Write a message once, with `{option}` placeholders from `OPTIONS`, and `advise`
words it both ways.

Notices. Progress-like remarks ("building the architecture index once") go through `notice`: one
channel, which the command line points at its stderr console (silent with `-q` or `--json`) and
which a Python caller can redirect or silence with `notices_to`. By default they go to stderr.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from contextvars import ContextVar
from typing import Callable, Iterator

__all__ = ["LgtWarning", "PlanWarning", "Advice", "advise", "emit", "notice", "notices_to"]


class LgtWarning(UserWarning):
    """Base category of every warning learngene_tools emits (filter them with `warnings.filterwarnings`)."""


class PlanWarning(LgtWarning):
    """A transplant plan that may not do what you expect (guessed strides, layers placed nowhere, ...)."""


# option -> (how the command line spells it, how the Python API spells it)
OPTIONS: dict[str, tuple[str, str]] = {
    "arch": ("--arch SPEC", "arch=SPEC"),
    "arch_short": ("--arch", "arch="),
    "require_traced": ("--require-traced", "require_traced=True"),
    "drop_optimizer": ("--drop-optimizer", "drop_optimizer=True"),
    "grouped_project": ("--grouped project", "grouped='project'"),
    "trust_pickle": ("--trust-pickle", "trust_pickle=True"),
    "input_size": ("--input-size C,H,W", "input_size=(C, H, W)"),
}


class Advice(str):
    """A message worded for the command line (the string itself) and for the Python API (`for_api`)."""

    for_api: str

    def __new__(cls, cli: str, api: str | None = None) -> Advice:
        self = super().__new__(cls, cli)
        self.for_api = cli if api is None else api
        return self


def advise(template: str, **values: object) -> Advice:
    """`template` with `{option}` placeholders (keys of OPTIONS) and other `values`, worded both ways."""
    cli = {k: v[0] for k, v in OPTIONS.items()}
    api = {k: v[1] for k, v in OPTIONS.items()}
    return Advice(template.format(**cli, **values), template.format(**api, **values))


def emit(messages: tuple[str, ...] | list[str], category: type[Warning] = PlanWarning, stacklevel: int = 3) -> None:
    """Emit each message as a Python warning, in its API wording."""
    for m in messages:
        warnings.warn(getattr(m, "for_api", m), category, stacklevel=stacklevel)


def _to_stderr(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


_CHANNEL: ContextVar[Callable[[str], None] | None] = ContextVar("lgt_notices", default=_to_stderr)


def notice(message: str) -> None:
    """Tell the user something worth knowing that is not a warning (through the current channel)."""
    handler = _CHANNEL.get()
    if handler is not None:
        handler(message)


@contextlib.contextmanager
def notices_to(handler: Callable[[str], None] | None) -> Iterator[None]:
    """Send notices to `handler` inside the block (None: drop them); e.g. `notices_to(logging.info)`."""
    token = _CHANNEL.set(handler)
    try:
        yield
    finally:
        _CHANNEL.reset(token)
