# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The trigger's error-event codec: every kind survives JSON with its class, message and fields."""

from __future__ import annotations

import errno
import json

import pytest

from airflow_s3sftp import exceptions
from airflow_s3sftp.core.events import KNOWN_ERRORS, decode_error, encode_error

TARGET = "sftp://user@host:22/in/report.csv"

SIMPLE = [
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
]


def round_trip(error: BaseException) -> Exception:
    """Encode, pass through JSON as the triggerer's database does, decode."""
    return decode_error(json.loads(json.dumps(encode_error(error, TARGET))), origin="T failed for /p")


@pytest.mark.parametrize("cls", SIMPLE, ids=lambda cls: cls.__name__)
def test_every_kind_comes_back_as_itself_with_its_message(cls: type[Exception]) -> None:
    original = cls(f"{TARGET}: it went wrong")

    decoded = round_trip(original)

    assert type(decoded) is cls
    assert str(decoded) == str(original)


def test_every_class_of_the_package_is_known_except_the_operators_own() -> None:
    # A new error class must be added to the codec (or here, with the reason it cannot be sent).
    ours = {
        name
        for name, value in vars(exceptions).items()
        if isinstance(value, type) and issubclass(value, BaseException) and not issubclass(value, Warning)
    }
    # Raised by the operators, never by a trigger.
    assert ours - KNOWN_ERRORS == {"DeliveryFailedError", "ReportError"}


def test_checksum_mismatch_keeps_both_digests() -> None:
    original = exceptions.ChecksumMismatchError(TARGET, "sha256:" + "a" * 64, "sha256:" + "b" * 64)

    decoded = round_trip(original)

    assert type(decoded) is exceptions.ChecksumMismatchError
    assert (str(decoded), decoded.expected, decoded.actual) == (
        str(original),
        original.expected,
        original.actual,
    )


def test_manifest_mismatch_keeps_the_first_bad_range_and_the_count() -> None:
    first = "range 4 bytes 256-319: expected 3f..., got 9a... (differs)"
    original = exceptions.ManifestMismatchError(TARGET, first, "3f" * 32, "9a" * 32, bad_ranges=3)

    decoded = round_trip(original)

    assert type(decoded) is exceptions.ManifestMismatchError
    assert (str(decoded), decoded.first, decoded.expected, decoded.actual, decoded.bad_ranges) == (
        str(original),
        first,
        "3f" * 32,
        "9a" * 32,
        3,
    )


def test_an_os_error_keeps_its_errno() -> None:
    original = PermissionError(errno.EACCES, "Permission denied when reading", f"{TARGET}.sha256")

    decoded = round_trip(original)

    assert type(decoded) is PermissionError
    assert decoded.errno == errno.EACCES
    assert str(decoded) == str(original)


def test_an_error_without_a_message_is_named_by_its_repr() -> None:
    assert str(round_trip(TimeoutError())) == "TimeoutError()"


def test_the_payload_names_the_target_and_status() -> None:
    payload = encode_error(ValueError("bad"), TARGET)

    assert payload == {"status": "error", "error_type": "ValueError", "message": "bad", "what": TARGET}


def test_an_unknown_kind_is_a_runtime_error_naming_it() -> None:
    event = {"status": "error", "error_type": "ZeroDivisionError", "message": "division by zero"}

    decoded = decode_error(event, origin="SFTPFileStableTrigger failed for /a")

    assert type(decoded) is RuntimeError
    assert str(decoded) == "SFTPFileStableTrigger failed for /a: ZeroDivisionError: division by zero"


@pytest.mark.parametrize("missing", ["expected", "actual", "what"])
def test_a_checksum_event_missing_a_field_is_a_runtime_error_naming_it(missing: str) -> None:
    event = encode_error(exceptions.ChecksumMismatchError(TARGET, "e", "a"), TARGET)
    del event[missing]

    decoded = decode_error(event, origin="T failed for /p")

    assert type(decoded) is RuntimeError
    assert "malformed ChecksumMismatchError event" in str(decoded) and missing in str(decoded)
