"""The one exception users see: a problem with their input, shown as `ERROR: ...` and exit 2."""

from __future__ import annotations


class InputError(Exception):
    """Bad user input (a file, a config key, a CLI value); the message is one line for the user."""
