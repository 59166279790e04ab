# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Moved to :mod:`testservers.processes`; re-exported here for branches written against the old path."""

from __future__ import annotations

from testservers.processes import (
    GREENEND_SFTP_SERVER,
    PROFTPD,
    PROFTPD_MODULES,
    SFTP_SERVER,
    SSHD,
    TEST_PASSWORD,
    MotoServer,
    SSHDServer,
    conn_env,
    ensure_test_user,
    free_port,
    remove_test_user,
    running_servers,
    start_moto,
    start_proftpd,
    start_sftp_server,
    start_sshd,
    wait_for_port,
)

__all__ = [
    "GREENEND_SFTP_SERVER",
    "PROFTPD",
    "PROFTPD_MODULES",
    "SFTP_SERVER",
    "SSHD",
    "TEST_PASSWORD",
    "MotoServer",
    "SSHDServer",
    "conn_env",
    "ensure_test_user",
    "free_port",
    "remove_test_user",
    "running_servers",
    "start_moto",
    "start_proftpd",
    "start_sftp_server",
    "start_sshd",
    "wait_for_port",
]
