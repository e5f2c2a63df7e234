"""Exit codes, the CLI's own error for bad flags, and the exit code of each of the client library's errors."""

from __future__ import annotations

from loka_client.errors import ClusterError, InvalidInputError, LokaError, NotFoundError, StorageError

EXIT_OK = 0
EXIT_FAILED = 1  # the run failed (submit --wait, status -w), or an operation did not complete
EXIT_USAGE = 2  # bad flags or bad input (argparse uses 2 too)
EXIT_NOT_FOUND = 3  # the run, its Ray cluster, a checkpoint or a log is not there
EXIT_CLUSTER = 4  # the API server or S3 cannot be reached, or refused the request
EXIT_INTERRUPTED = 130

EXIT_CODES = f"""exit codes:
  {EXIT_OK}    success (for submit --wait and status -w: the run succeeded)
  {EXIT_FAILED}    the run failed, or the operation did not complete
  {EXIT_USAGE}    bad flags or bad input (the message names the field and what is accepted)
  {EXIT_NOT_FOUND}    not found: the run, its Ray cluster, a checkpoint or a log
  {EXIT_CLUSTER}    the API server or S3 is unreachable or refused the request
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)"""


class CliError(LokaError):
    """A failure of the command line itself (a flag, a file): ``message``, ``hint``, and the exit code."""

    def __init__(self, message: str, *, hint: str | None = None, code: int = EXIT_FAILED) -> None:
        super().__init__(message, hint=hint)
        self.code = code


def usage(message: str, hint: str | None = None) -> CliError:
    return CliError(message, hint=hint, code=EXIT_USAGE)


def not_found(message: str, hint: str | None = None) -> CliError:
    return CliError(message, hint=hint, code=EXIT_NOT_FOUND)


def exit_code(error: LokaError) -> int:
    """What ``loka`` exits with for an error of the client library (or its own)."""
    if isinstance(error, CliError):
        return error.code
    if isinstance(error, InvalidInputError):
        return EXIT_USAGE
    if isinstance(error, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(error, ClusterError | StorageError):
        return EXIT_CLUSTER
    return EXIT_FAILED
