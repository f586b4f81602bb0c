"""The one error type that the command line turns into a one-line message and exit status 2."""

from __future__ import annotations

from os import PathLike


class InputError(ValueError):
    """Bad user input: a file that is missing, unreadable or inconsistent.

    The message names the file and the problem in one line, e.g.
    ``tile.xml: malformed XML (line 3)``.
    """

    def __init__(self, path: str | PathLike | None, reason: str) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(reason if path is None else f"{path}: {reason}")
