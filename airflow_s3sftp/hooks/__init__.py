# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Hooks of the airflow-s3sftp provider."""

from __future__ import annotations

import warnings

from cryptography.utils import CryptographyDeprecationWarning

# Every hook imports asyncssh (ours for the trigger, the sftp provider's at its top), and asyncssh
# touches names that some cryptography releases deprecate (DSA keys, ARC4, TripleDES) while it loads:
# a CryptographyDeprecationWarning at every DAG parse and task start that no user can act on (they
# are asyncssh's algorithm tables, not the user's keys or ciphers). Import it first, here, with
# exactly that warning from asyncssh's own modules silenced; any other warning still shows.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning, module=r"asyncssh(\.|$)")
    import asyncssh  # noqa: F401
