"""The one user-facing exception."""


class CdganError(Exception):
    """Anything the user can fix: a bad param, a missing or corrupt input, an unreachable server.

    The message names the thing and the fix; the CLI prints it on one line and exits 1.
    """
