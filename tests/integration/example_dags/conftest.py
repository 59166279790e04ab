# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Fixtures of the example DAG tests: a fresh metadata DB and the DAGs deployed to its DAGs folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

EXAMPLE_DAGS = Path(__file__).resolve().parents[3] / "example_dags"


@pytest.fixture(scope="module")
def dags_folder() -> Path:
    """Create the metadata DB of the tests' AIRFLOW_HOME and deploy the example DAGs to its DAGs folder."""
    from airflow.configuration import conf
    from airflow.utils import db

    db.resetdb()
    folder = Path(conf.get("core", "dags_folder"))
    folder.mkdir(parents=True, exist_ok=True)
    for source in EXAMPLE_DAGS.glob("example_*.py"):
        shutil.copy(source, folder / source.name)
    return folder
