# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Version gates: a feature too new for the running Airflow fails with the version it needs."""

from __future__ import annotations

import pytest

from airflow_s3sftp.exceptions import UnsupportedAirflowVersionError
from airflow_s3sftp.version_compat import check_sensor_mode, require_airflow


@pytest.mark.parametrize("version", [(2, 11, 2), (3, 0, 6), (3, 2, 2)])
def test_reschedule_mode_before_3_3_names_the_version_and_the_routes(version):
    with pytest.raises(UnsupportedAirflowVersionError, match=r"needs Apache Airflow 3\.3\.0 or newer") as err:
        check_sensor_mode("reschedule", version=version)
    assert "mode='poke' or deferrable=True" in str(err.value)


def test_poke_mode_and_new_airflow_pass():
    check_sensor_mode("poke", version=(2, 11, 0))
    check_sensor_mode("reschedule", version=(3, 3, 0))


def test_event_driven_scheduling_needs_airflow_3():
    with pytest.raises(UnsupportedAirflowVersionError, match=r"3\.0\.0 or newer, this is 2\.11\.2"):
        require_airflow("event-driven scheduling (AssetWatcher)", version=(2, 11, 2))
    require_airflow("event-driven scheduling (AssetWatcher)", version=(3, 0, 0))


def test_unknown_feature_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown feature"):
        require_airflow("time travel")
