# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The running Airflow's version and the gates of features that need a newer Airflow than the 2.11 floor.

Airflow's public API (``BaseHook``, ``BaseOperator``, ``BaseSensorOperator``, ``Context``, ``conf``,
``PokeReturnValue``, ``timezone``) is imported from ``airflow.providers.common.compat.sdk``, as the official
providers do; this module only holds what common-compat does not: which Airflow is running, and a clear
error (raised while the DAG is parsed) for a feature that this Airflow cannot provide.
"""

from __future__ import annotations

from airflow_s3sftp.exceptions import UnsupportedAirflowVersionError


def get_base_airflow_version_tuple() -> tuple[int, int, int]:
    """Return the running Airflow's ``(major, minor, micro)``, ignoring pre-release and local parts."""
    from airflow import __version__
    from packaging.version import Version

    version = Version(__version__)
    return version.major, version.minor, version.micro


AIRFLOW_VERSION = get_base_airflow_version_tuple()

#: The features that need a newer Airflow than the package's floor, the version each needs, and the
#: documented route on an older Airflow (docs/versions.md has the same table).
FEATURES: dict[str, tuple[tuple[int, int, int], str]] = {
    "sensor mode='reschedule'": (
        (3, 3, 0),
        "it keeps the observations of earlier pokes in the task state store; "
        "use mode='poke' or deferrable=True on this Airflow",
    ),
    "event-driven scheduling (AssetWatcher)": (
        (3, 0, 0),
        "only Airflow 3 runs asset watchers; poll with the sensor (poke or deferrable) on this Airflow",
    ),
}


def require_airflow(feature: str, *, version: tuple[int, int, int] | None = None) -> None:
    """Raise :class:`UnsupportedAirflowVersionError` if the running Airflow is too old for ``feature``.

    Call it where the feature is chosen (an operator's or trigger's ``__init__``), so that the DAG fails
    when it is parsed, not when the task runs.

    :param feature: a key of :data:`FEATURES`, named in the error
    :param version: the running Airflow's version; defaults to the installed one (tests pass their own)
    """
    try:
        needed, route = FEATURES[feature]
    except KeyError:
        raise ValueError(f"unknown feature {feature!r}; known: {', '.join(sorted(FEATURES))}") from None
    running = AIRFLOW_VERSION if version is None else version
    if running < needed:
        raise UnsupportedAirflowVersionError(
            f"{feature} needs Apache Airflow {_dotted(needed)} or newer, this is {_dotted(running)}: {route}"
        )


def check_sensor_mode(mode: str, *, version: tuple[int, int, int] | None = None) -> None:
    """Refuse ``mode="reschedule"`` on an Airflow without the task state store (before 3.3).

    :param mode: the sensor's ``mode`` argument
    :param version: the running Airflow's version; defaults to the installed one (tests pass their own)
    """
    if mode == "reschedule":
        require_airflow("sensor mode='reschedule'", version=version)


def _dotted(version: tuple[int, int, int]) -> str:
    return ".".join(str(part) for part in version)
