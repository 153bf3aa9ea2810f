"""The project's error types: every failure a user can cause or fix is an `LgtError`.

The CLI turns any `LgtError` into one line on stderr and exit code 2 (with `--json`, also an
error object on stdout); Python callers can catch the subclasses for the main kinds of failure.
"""

from __future__ import annotations


class LgtError(Exception):
    """A problem with the user's input or environment: the message says what is wrong and what to do.

    A message worded both ways (`reporting.Advice`) reads with Python argument names here and with command-line
    flags in `cli_text`, which is what `lgt` prints.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(getattr(a, "for_api", a) for a in args))
        self.cli_text = str(args[0]) if args else ""

    @property
    def kind(self) -> str:
        """Short machine-readable kind, e.g. "not_found" (the class name for the base type)."""
        return _KINDS.get(type(self), "error")


class NotFoundError(LgtError):
    """A file, folder, built-in bundle, Hub repo, revision or file in a repo does not exist."""


class InvalidFileError(LgtError):
    """A file exists but is not what it should be: damaged, truncated, not a checkpoint or not a bundle."""


class UnsafeInputError(LgtError):
    """Loading the input would run code (untrusted pickle globals, a model spec that was not trusted)."""


class OutputError(LgtError):
    """The output cannot be written where asked: it exists, is an input, or its folder is missing or read-only."""


class SettingsError(LgtError):
    """A bad option, recipe value or combination of settings."""


class ModelError(LgtError):
    """A model spec cannot be built, or the model does not fit the checkpoint or the bundle."""


class TrainingError(LgtError):
    """Distillation cannot go on (non-finite loss, no decodable images, nothing to resume)."""


class HubError(LgtError):
    """The Hugging Face Hub refused or failed a request."""


class HubNotFoundError(HubError, NotFoundError):
    """The repo, revision or file does not exist on the Hub (or is private/gated without access)."""


class HubAuthError(HubError):
    """The Hub refused the credentials, or the token lacks access."""


class HubConnectionError(HubError):
    """The Hub could not be reached, or the connection failed mid-transfer; offline and not cached."""


_KINDS = {
    NotFoundError: "not_found", InvalidFileError: "invalid_file", UnsafeInputError: "unsafe_input",
    OutputError: "output", SettingsError: "settings", ModelError: "model", TrainingError: "training",
    HubError: "hub", HubNotFoundError: "hub_not_found", HubAuthError: "hub_auth", HubConnectionError: "hub_connection",
}
