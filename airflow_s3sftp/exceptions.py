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


class HostKeyVerificationError(S3SFTPError):
    """The SFTP server's host key is unknown or differs from the one configured."""


class AuthenticationError(S3SFTPError, PermissionError):
    """The SFTP server refused the login (wrong user, key or password)."""


class ChecksumMismatchError(VerificationError):
    """A digest differs from the one it must equal."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: checksum mismatch, expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class ConnectionLostError(S3SFTPError, ConnectionError):
    """The SSH connection dropped or stalled in the middle of a transfer."""


class DeliveryFailedError(S3SFTPError):
    """Some objects of a many-object delivery failed; the others were delivered completely."""

    def __init__(self, message: str, summary: dict[str, object]) -> None:
        super().__init__(message)
        self.summary = summary


class UnsupportedAirflowVersionError(S3SFTPError, RuntimeError):
    """A feature was asked for that the running Airflow version does not provide."""
