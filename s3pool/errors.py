"""Domain exceptions of s3pool.

Lower layers raise these; each boundary translates them once: the control
protocol into an ERROR line, the FUSE layer into an errno (see
``s3pool.fs.ops.ERRNO_FOR``).
"""


class S3PoolError(Exception):
    """Base of every error s3pool reports to a client."""


class BadRequest(S3PoolError):
    """The request itself is malformed (protocol level)."""


class BadBucket(S3PoolError):
    """A bucket name we cannot use as a directory."""


class BadKey(S3PoolError):
    """A key that would leave its bucket dir, alias another key or our files."""


class KeyConflict(S3PoolError):
    """Key ``a`` is shadowed by keys under ``a/``: on disk the directory wins."""


class NoSuchKey(S3PoolError):
    """The object does not exist on S3."""


class NoSuchBucket(S3PoolError):
    """The bucket does not exist on S3."""


class AccessDenied(S3PoolError):
    """S3 refused us."""


class BackendError(S3PoolError):
    """S3 failed or could not be reached (after the backend's retries)."""


class DigestMismatch(BackendError):
    """Downloaded bytes that do not hash to what S3 said (retried, never installed)."""


class VersionChanged(BackendError):
    """The object changed on S3 while it was read (a reader of the old version: ESTALE)."""


class NoSpace(S3PoolError):
    """The object does not fit in the cache even after eviction."""


class ShuttingDown(S3PoolError):
    """The daemon is stopping: a long request was abandoned."""


class LocalFileError(S3PoolError):
    """A local file named by a client (PUSH) is missing or not usable."""


class PermissionDenied(S3PoolError):
    """The client may not do this (SET by a non-admin, PUSH by an unknown local peer)."""


EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_RUNNING = 3
EXIT_MOUNT = 4


class StartupError(Exception):
    """A problem the user must fix before the daemon can run; carries the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code
