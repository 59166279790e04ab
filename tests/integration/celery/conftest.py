# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The Celery tests need Airflow's celery provider, the redis client and Debian's ``redis-server``.

In the ``celery`` CI leg (``S3SFTP_CELERY_LEG=1``, set by ``.ci/run``) a missing one fails the run at
collection. Elsewhere (the newest leg's venv has no Celery; ``.ci/run`` does not even collect this folder
there) the module is skipped with the reason and the way to run it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

MISSING = [
    what
    for what, present in (
        ("apache-airflow-providers-celery", importlib.util.find_spec("airflow.providers.celery") is not None),
        ("the redis client", importlib.util.find_spec("redis") is not None),
        ("redis-server (apt)", shutil.which("redis-server") is not None),
    )
    if not present
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    ours = [item for item in items if str(item.path).startswith(here)]
    if not ours or not MISSING:
        return
    if os.environ.get("S3SFTP_CELERY_LEG") == "1":
        raise pytest.UsageError(
            f"the celery leg cannot run its tests: missing {', '.join(MISSING)} "
            "(.ci/locks/celery.txt, APT_PACKAGES in .ci/run)"
        )
    skip = pytest.mark.skip(reason=f"missing {', '.join(MISSING)}: run `bash .ci/run celery`")
    for item in ours:
        item.add_marker(skip)
