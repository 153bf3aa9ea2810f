"""The one exception type the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations


class LgtError(Exception):
    """A problem with the user's input: the message says what is wrong and what to do."""
