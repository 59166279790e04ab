# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Connections: the async twin's copy of the provider's ``_get_conn`` is pinned; final failures are classified."""

from __future__ import annotations

import hashlib
import inspect

import pytest
from airflow.providers.sftp.hooks.sftp import SFTPHookAsync

from airflow_s3sftp import exceptions
from airflow_s3sftp.hooks.sftp_sensing import UPSTREAM_GET_CONN_SHA256


def test_async_twin_mirrors_the_installed_providers_get_conn():
    source = inspect.getsource(SFTPHookAsync._get_conn)
    assert hashlib.sha256(source.encode()).hexdigest() == UPSTREAM_GET_CONN_SHA256, (
        "SFTPHookAsync._get_conn changed: update _ParityHookAsync._get_conn in hooks/sftp_sensing.py to "
        "match it, then record the new hash in UPSTREAM_GET_CONN_SHA256"
    )


@pytest.mark.parametrize(
    ("error", "final"),
    [
        (exceptions.AuthenticationError("refused"), True),
        (exceptions.HostKeyVerificationError("unknown"), True),
        (exceptions.ConnectionConfigError("no key file"), True),
        (exceptions.UnknownHostError("no such host"), True),
        (exceptions.MissingTargetError("no bucket"), True),
        (exceptions.CredentialsError("no credentials"), True),
        (exceptions.ConnectionLostError("dropped"), False),
        (TimeoutError("slow"), False),
        (PermissionError("one file"), False),
        (FileNotFoundError("one key"), False),
    ],
)
def test_final_failures_are_classified_once(error: BaseException, final: bool):
    assert exceptions.is_final(error) is final


def test_final_failures_keep_their_builtin_types():
    assert issubclass(exceptions.AuthenticationError, PermissionError)
    assert issubclass(exceptions.MissingTargetError, FileNotFoundError)
    assert issubclass(exceptions.UnknownHostError, ConnectionError)
    assert issubclass(exceptions.ConnectionConfigError, ValueError)
