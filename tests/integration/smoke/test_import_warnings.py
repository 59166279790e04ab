# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Importing a public module of the package emits no warning (on every Airflow leg)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import airflow_s3sftp

PUBLIC_MODULES = [
    "airflow_s3sftp.operators.s3_to_sftp",
    "airflow_s3sftp.sensors.sftp",
    "airflow_s3sftp.triggers.sftp",
    "airflow_s3sftp.hooks.s3_sftp",
    "airflow_s3sftp.hooks.sftp",
    "airflow_s3sftp.hooks.sftp_sensing",
    "airflow_s3sftp.exceptions",
    "airflow_s3sftp.get_provider_info",
]

# Airflow's own framework imports go first, with warnings ignored: whatever Airflow says about its own
# configuration or web stack (e.g. 2.11's RemovedInAirflow3Warning) appears in every DAG, with or
# without this package. Everything our import pulls in after that (the sftp, ssh and amazon providers,
# paramiko, asyncssh, boto3) is recorded.
PROBE = """
import importlib, json, sys, warnings
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import airflow
    import airflow.providers.common.compat.sdk
    import airflow.triggers.base
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    importlib.import_module(sys.argv[1])
print(json.dumps([f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}" for w in caught]))
"""


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_importing_a_public_module_emits_no_warning(module: str, tmp_path: Path) -> None:
    package_root = Path(airflow_s3sftp.__file__).resolve().parents[1]
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(package_root), os.environ.get("PYTHONPATH")])),
        "PYTHONWARNINGS": "",
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE, module],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    warnings_seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert warnings_seen == [], f"importing {module} warned:\n" + "\n".join(warnings_seen)
