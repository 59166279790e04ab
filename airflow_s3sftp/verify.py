# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""``python -m airflow_s3sftp.verify FILE MANIFEST``: check a file against its range manifest.

Prints ``OK`` and exits 0, or prints each bad range (index, first and last byte, expected and actual
sha256) and exits 1; exits 2 on a usage error, an unreadable file or a malformed manifest. Imports no
Airflow: the check lives in :mod:`airflow_s3sftp.core.manifest`, which imports the standard library
only and runs on its own when copied alone (``python3 manifest.py FILE MANIFEST``).
"""

from __future__ import annotations

import sys

from airflow_s3sftp.core.manifest import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m airflow_s3sftp.verify"))
