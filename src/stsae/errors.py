"""User-facing errors: the CLI prints these as one line and exits 2; anything else is a bug."""


class StsaeError(Exception):
    """Bad input, config or state that the user can fix; the message names the file, field or key."""


class InputDataError(StsaeError, ValueError):
    """An input file is missing, malformed or inconsistent (message names the file and field)."""
