"""User-facing errors: one line for a person. Exit codes at the CLI: 0 ok, 1 an internal error (a bug in
edgec), 2 a user mistake (EdgecError), 3 a budget not met (BudgetNotMet: the best model IS written)."""

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


EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_BUDGET = 0, 1, 2, 3


class BudgetNotMet(EdgecError):
    """An accuracy budget (--min-sqnr, --max-drop) was not met. The best model found has been written;
    the CLI prints this one line and exits with EXIT_BUDGET so build scripts notice."""

    exit_code = EXIT_BUDGET
