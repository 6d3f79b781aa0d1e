"""User-facing errors: one line that names the file, tensor or field and what was expected."""


class DdalignError(Exception):
    """An error caused by the user's input. The CLI prints it on one line and exits non-zero."""


class DdalignWarning(UserWarning):
    """A doubtful input ddalign goes on with; the CLI prints it as one line."""
