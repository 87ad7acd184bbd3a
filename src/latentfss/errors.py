"""The one exception users see: a problem with their input, shown as `ERROR: ...` and exit 2."""

from __future__ import annotations


class InputError(Exception):
    """Bad user input (a file, a config key, a CLI value); the message is one line for the user."""


class Stopped(Exception):
    """A stage stopped on a signal after saving what lets a re-run go on (`ERROR: ...`, exit
    128 + the signal's number, as a shell reports a process killed by it)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
