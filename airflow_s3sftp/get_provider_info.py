# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Provider metadata that Airflow reads through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_s3sftp import __version__


def get_provider_info() -> dict[str, Any]:
    """Return the provider description; ``package-name`` must equal the distribution name."""
    return {
        "package-name": "airflow-s3sftp",
        "name": "S3 to SFTP streaming",
        "description": "Stream S3 objects to SFTP servers in offset order, publish atomically, "
        "verify with checksums, and sense when a remote file is complete.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "S3 to SFTP streaming",
                "external-doc-url": "https://pypi.org/project/airflow-s3sftp/",
                "tags": ["protocol", "aws"],
            }
        ],
        "hooks": [
            {
                "integration-name": "S3 to SFTP streaming",
                "python-modules": ["airflow_s3sftp.hooks.s3_sftp", "airflow_s3sftp.hooks.sftp_s3"],
            }
        ],
        "operators": [
            {
                "integration-name": "S3 to SFTP streaming",
                "python-modules": [
                    "airflow_s3sftp.operators.s3_to_sftp",
                    "airflow_s3sftp.operators.sftp_to_s3",
                    "airflow_s3sftp.sharding",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "S3 to SFTP streaming",
                "python-modules": ["airflow_s3sftp.sensors.sftp"],
            }
        ],
        "triggers": [
            {
                "integration-name": "S3 to SFTP streaming",
                "python-modules": ["airflow_s3sftp.triggers.sftp"],
            }
        ],
    }
