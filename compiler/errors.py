"""User-facing errors: one line for a person, exit code 2 at the CLI."""

from __future__ import annotations


class EdgecError(Exception):
    """A mistake in the user's input (file, option, model), not a bug in edgec.

    The CLI prints ``message`` (and ``hint``) on one line and exits with code 2.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())
        self.hint = " ".join(hint.split()) if hint else None

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message
