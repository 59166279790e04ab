# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The trigger's error events: one codec, from the exception the trigger caught to the one the task raises.

A trigger runs in the triggerer and its events cross the database as JSON, so an exception travels as
its class name, its message and the fields its class carries. :func:`encode_error` writes that payload,
:func:`decode_error` rebuilds the same class with the same message and fields (an ``OSError`` keeps its
``errno``). A class the codec does not know (a bug, or a foreign library's error) comes back as a
``RuntimeError`` naming its type and message, never silently as something else.
"""

from __future__ import annotations

from typing import Any

from airflow_s3sftp import exceptions

#: Classes rebuilt as ``cls(message)``: this package's errors and the builtins the sensing hooks raise.
_BY_MESSAGE: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        exceptions.S3SFTPError,
        exceptions.VerificationError,
        exceptions.SourceChangedError,
        exceptions.TransferInProgressError,
        exceptions.SupersededError,
        exceptions.TaskWideError,
        exceptions.ConnectionConfigError,
        exceptions.UnknownHostError,
        exceptions.HostKeyVerificationError,
        exceptions.AuthenticationError,
        exceptions.MissingTargetError,
        exceptions.CredentialsError,
        exceptions.ConnectionLostError,
        exceptions.UnsupportedAirflowVersionError,
        exceptions.ArgumentTypeError,
        ValueError,
        TypeError,
        OSError,
        PermissionError,
        FileNotFoundError,
        FileExistsError,
        IsADirectoryError,
        NotADirectoryError,
        ConnectionError,
        ConnectionResetError,
        ConnectionRefusedError,
        ConnectionAbortedError,
        BrokenPipeError,
        TimeoutError,
        EOFError,
    )
}

#: Every class name :func:`decode_error` rebuilds as itself.
KNOWN_ERRORS: frozenset[str] = frozenset(
    {*_BY_MESSAGE, exceptions.ChecksumMismatchError.__name__, exceptions.ManifestMismatchError.__name__}
)


def encode_error(error: BaseException, what: str) -> dict[str, Any]:
    """Return the JSON-able payload of an error event about ``what`` (the ``sftp://`` target).

    Keys: ``status`` (``"error"``), ``error_type`` (the class name), ``message``, ``what``; plus
    ``expected`` and ``actual`` for a checksum mismatch, ``first`` and ``bad_ranges`` for a manifest
    mismatch, ``errno`` for an ``OSError`` that has one.
    """
    payload: dict[str, Any] = {
        "status": "error",
        "error_type": type(error).__name__,
        "message": str(error) or repr(error),
        "what": what,
    }
    if isinstance(error, exceptions.ChecksumMismatchError):
        payload.update(expected=error.expected, actual=error.actual)
    if isinstance(error, exceptions.ManifestMismatchError):
        payload.update(first=error.first, bad_ranges=error.bad_ranges)
    if isinstance(error, OSError) and isinstance(error.errno, int):
        payload["errno"] = error.errno
    return payload


def decode_error(event: dict[str, Any], *, origin: str = "A trigger failed") -> Exception:
    """Return the exception an error event (from :func:`encode_error`) describes, ready to raise.

    :param event: the event payload
    :param origin: start of the ``RuntimeError`` message for an unknown or malformed event, naming
        the trigger and its path
    """
    error_type = str(event.get("error_type"))
    message = str(event.get("message", "unknown error"))
    try:
        if error_type == exceptions.ManifestMismatchError.__name__:
            return exceptions.ManifestMismatchError(
                str(event["what"]),
                str(event["first"]),
                str(event["expected"]),
                str(event["actual"]),
                int(event["bad_ranges"]),
            )
        if error_type == exceptions.ChecksumMismatchError.__name__:
            return exceptions.ChecksumMismatchError(
                str(event["what"]), str(event["expected"]), str(event["actual"])
            )
    except (KeyError, TypeError, ValueError) as err:
        return RuntimeError(f"{origin}: malformed {error_type} event ({err!r}): {message}")
    cls = _BY_MESSAGE.get(error_type)
    if cls is None:
        return RuntimeError(f"{origin}: {error_type}: {message}")
    error = cls(message)
    code = event.get("errno")
    if isinstance(error, OSError) and isinstance(code, int) and not isinstance(code, bool):
        error.errno = code
    return error
