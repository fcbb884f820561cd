"""The one error type users see, and the exit codes of the command line.

Library code raises :class:`HawqError` with a message that names the problem and what to do;
the CLI prints it on one line and exits with its code. Anything else escaping is a bug.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE = 1  # a validation gate failed (e.g. --max-drop)
EXIT_INPUT = 2  # bad input: files, shapes, budgets, options


class HawqError(Exception):
    """A user-facing failure: one line, no traceback, a non-zero exit."""

    exit_code = EXIT_INPUT

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class GateFailure(HawqError):
    """A check the user asked for did not pass (accuracy drop above --max-drop)."""

    exit_code = EXIT_GATE
