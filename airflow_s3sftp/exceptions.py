# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Errors raised by airflow-s3sftp for failures that no builtin exception names well."""

from __future__ import annotations


class S3SFTPError(Exception):
    """Base class of every domain error raised by this package."""


class VerificationError(S3SFTPError):
    """What landed on the SFTP server (or what S3 sent) is not what it should be."""


class SourceChangedError(S3SFTPError):
    """The S3 object changed (new ETag or version) while it was being read."""


class SFTPSourceChangedError(SourceChangedError):
    """The SFTP file changed (size, mtime or length read) while it was being brought into S3."""


class TransferInProgressError(S3SFTPError):
    """Another transfer is writing the same target right now."""


class SupersededError(TransferInProgressError):
    """Someone else removed this delivery's temp file before it was published; nothing was published."""


class TaskWideError(S3SFTPError):
    """A failure that no retry and no other object can heal: it ends the whole task at once.

    The one place where final and healable failures part: a connection attempt that fails with
    one is never repeated (no retry, no cipher fallback, no parallel attempt), and a many-object
    delivery stops at the first one and reports it once. Everything else that breaks a
    connection (a drop, a timeout, a throttling server) is healable and retried with backoff.
    """


class ConnectionConfigError(TaskWideError, ValueError):
    """An Airflow connection is missing, or one of its settings cannot work (a key file that is not there)."""


class UnknownHostError(TaskWideError, ConnectionError):
    """The SFTP host's name does not resolve (a typo, not a passing network failure)."""


class HostKeyVerificationError(TaskWideError):
    """The SFTP server's host key is unknown or differs from the one configured."""


class AuthenticationError(TaskWideError, PermissionError):
    """The SFTP server refused the login (wrong user, key or password)."""


class MissingTargetError(TaskWideError, FileNotFoundError):
    """What every object of the task needs is missing: the S3 bucket or the SFTP directory."""


class CredentialsError(TaskWideError, PermissionError):
    """No AWS credentials were found, or S3 refused them for the whole task."""


def is_final(err: BaseException) -> bool:
    """Return True when ``err`` ends the whole task: never retried, never tried again for another object."""
    return isinstance(err, TaskWideError)


class ChecksumMismatchError(VerificationError):
    """A digest differs from the one it must equal."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: checksum mismatch, expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class ManifestMismatchError(ChecksumMismatchError):
    """A file differs from its range manifest (``<path>.manifest``); the message names the first bad range.

    ``first`` describes that range (index, first and last byte, both digests, why); ``expected`` and
    ``actual`` are its digests (``"-"`` where there is none); ``bad_ranges`` counts the bad entries.
    """

    def __init__(self, what: str, first: str, expected: str, actual: str, bad_ranges: int = 1) -> None:
        VerificationError.__init__(
            self, f"{what}: differs from its manifest in {bad_ranges} range(s), first {first}"
        )
        self.expected = expected
        self.actual = actual
        self.first = first
        self.bad_ranges = bad_ranges


class ConnectionLostError(S3SFTPError, ConnectionError):
    """The SSH connection dropped or stalled in the middle of a transfer."""


class DeliveryFailedError(S3SFTPError):
    """Some objects of a many-object delivery failed; the others were delivered completely."""

    def __init__(self, message: str, summary: dict[str, object]) -> None:
        super().__init__(message)
        self.summary = summary


class ReportError(S3SFTPError):
    """The per-object report could not be written; the deliveries went on (``summary`` counts them)."""

    def __init__(self, message: str, summary: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.summary = summary


class UnsupportedAirflowVersionError(S3SFTPError, RuntimeError):
    """A feature was asked for that the running Airflow version does not provide."""


class ArgumentTypeError(TypeError, ValueError):
    """An argument has the wrong type (a string where a number or flag is expected); also a ``ValueError``."""


class S3SFTPDeprecationWarning(DeprecationWarning):
    """A name of this package that still works for one more release; the message names its replacement."""
