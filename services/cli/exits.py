"""Exit codes: what a script calling the CLI can rely on, and how errors map onto them."""

from __future__ import annotations

from enum import IntEnum

from orchestrator.v1 import jobs_pb2 as pb

from orchestrator_client import AccessDenied, ClientError, RefusedError, TransientError, UploadError


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    PARTIALLY_FAILED = 3
    FAILED = 4
    CANCELLED = 5
    UNREACHABLE = 6
    ACCESS_DENIED = 7
    REFUSED = 8
    INTERRUPTED = 130


EXIT_CODES_HELP = """\
Exit codes:
  0    success; for a command that follows a job: the job COMPLETED
  1    unexpected error (a bug, or the gateway failed internally)
  2    bad command line (unknown option, missing argument)
  3    the job ended PARTIALLY_FAILED (`orchestrator retry JOB_ID` may fix it)
  4    the job ended FAILED
  5    the job ended CANCELLED
  6    gateway unreachable, not serving or not answering in time
  7    authentication or permission refused (check --token)
  8    request refused: invalid argument, unknown job, wrong job state, idempotency key
       reused, or the image upload refused
  130  interrupted (Ctrl-C); the job itself goes on"""

_BY_JOB_STATUS = {
    pb.JOB_STATUS_COMPLETED: ExitCode.OK,
    pb.JOB_STATUS_PARTIALLY_FAILED: ExitCode.PARTIALLY_FAILED,
    pb.JOB_STATUS_FAILED: ExitCode.FAILED,
    pb.JOB_STATUS_CANCELLED: ExitCode.CANCELLED,
}


def for_job(status: pb.JobStatus.ValueType) -> ExitCode:
    """The exit code of a followed job; a job not finished (follow interrupted) is an error."""
    return _BY_JOB_STATUS.get(status, ExitCode.ERROR)


def for_error(exc: ClientError) -> ExitCode:
    if isinstance(exc, AccessDenied) or (
        isinstance(exc, UploadError) and exc.http_status in (401, 403)
    ):
        return ExitCode.ACCESS_DENIED
    if isinstance(exc, RefusedError) or (isinstance(exc, UploadError) and exc.refused):
        return ExitCode.REFUSED
    if isinstance(exc, TransientError | UploadError):
        return ExitCode.UNREACHABLE
    return ExitCode.ERROR
