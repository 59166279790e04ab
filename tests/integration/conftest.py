# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Integration fixtures: every integration test sees ``aws_default`` and ``sftp_default`` on real servers."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from testservers.processes import MotoServer, SSHDServer, conn_env


@pytest.fixture(scope="session", autouse=True)
def airflow_connections(sshd: SSHDServer, moto: MotoServer) -> Iterator[None]:
    """Expose ``aws_default`` and ``sftp_default`` to Airflow as ``AIRFLOW_CONN_*`` variables."""
    env = dict([conn_env("aws_default", moto.connection()), conn_env("sftp_default", sshd.connection())])
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
