"""The one error type users see, and the exit codes of the command line.

Library code raises :class:`HawqError` with a message that names the problem and what to do;
the CLI prints it on one line and exits with its code. Anything else escaping is a bug.
"""

from __future__ import annotations

import re

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




class OptionError(HawqError):
    """A bad argument, named by its Python parameter name.

    ``template`` holds a ``{name}`` placeholder for each parameter in ``params``: ``str()`` fills
    in the Python names (``batch_size``) for a caller of the library, and the command line
    renders the same message with its flags (``--batch-size``) through :meth:`render`, so the
    library never tells a Python caller to change a command-line flag.
    """

    def __init__(self, template: str, *params: str, exit_code: int | None = None) -> None:
        self.template = template
        self.params = params
        super().__init__(self.render(lambda name: name), exit_code)

    def render(self, name_of) -> str:
        # Only the declared placeholders are filled: the rest of the text (paths, a user's layer
        # patterns) may hold braces of its own and is left exactly as it is.
        return re.sub(r"\{(\w+)\}", lambda m: name_of(m[1]) if m[1] in self.params else m[0], self.template)


class GateFailure(OptionError):
    """A check the user asked for did not pass (an accuracy drop above ``max_drop``)."""

    exit_code = EXIT_GATE
