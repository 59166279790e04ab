# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Inbound tests reuse the server matrix of tests/integration/servers."""

from __future__ import annotations

from tests.integration.servers.conftest import sftp_server

__all__ = ["sftp_server"]
