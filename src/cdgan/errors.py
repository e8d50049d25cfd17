"""The one user-facing exception, and SIGTERM as an exception."""


class CdganError(Exception):
    """Anything the user can fix: a bad param, a missing or corrupt input, an unreachable server.

    The message names the thing and the fix; the CLI prints it on one line and exits 1.
    """


class Terminated(BaseException):
    """SIGTERM, raised in the main thread by the handler the CLI installs, as Python raises KeyboardInterrupt
    for SIGINT: not an Exception, so no `except Exception` stops it. An open MLflow run ends KILLED."""
