"""The one error type users see.

Every problem with user input (a file, a flag, a value) raises :class:`InputError` with a message
that names the offending file or flag. The command line prints that message as one line on stderr
and exits with status 2; Python callers get a normal exception.
"""


class InputError(ValueError):
    """Bad user input. ``str(err)`` is a one-line message naming the file or flag at fault."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
