"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class MathtuneError(Exception):
    """Bad input or an impossible request: a message for the user, never a traceback."""

    exit_code = 2
