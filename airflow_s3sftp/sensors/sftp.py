# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Sensor that waits until a file on an SFTP server is complete: stable in size, mtime and content."""

from __future__ import annotations

import datetime
import math
import time
from typing import TYPE_CHECKING, Any, Literal

from airflow.providers.common.compat.sdk import (
    AirflowSensorTimeout,
    AirflowSkipException,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
)

from airflow_s3sftp.core import poll, stability, validate
from airflow_s3sftp.core.events import decode_error
from airflow_s3sftp.hooks.sftp_sensing import DEFAULT_CHUNK_SIZE, SFTPSensingHook
from airflow_s3sftp.triggers.sftp import SFTPFileStableTrigger
from airflow_s3sftp.version_compat import check_sensor_mode

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.providers.common.compat.sdk import Context

#: Key of the observations in Airflow's task state store (reschedule mode).
STATE_STORE_KEY = "airflow_s3sftp.sftp_file_stable"


class SFTPFileStableSensor(BaseSensorOperator):
    """
    Wait until a file on an SFTP server is complete, proven by its size, mtime and content.

    The sensor fires once the file exists, is at least ``min_size`` bytes, and its size and mtime stayed
    the same across observations spanning ``stable_for`` seconds (plus one second, as SFTP mtimes are whole
    seconds). With ``checksum`` set it then reads the file and hashes it: the digest must equal
    ``expected_checksum`` when given, or the one in the sidecar ``<path>.<algorithm>`` with
    ``expected_checksum_from="sidecar"``, or every range of the range manifest ``<path>.manifest`` with
    ``expected_checksum_from="manifest"``; otherwise two digests taken at least one poll apart, with size
    and mtime unchanged in between, must agree. Size and mtime alone (``checksum=None``) is a weaker mode: an
    uploader that writes out of order or preserves the source's mtime can look stable while incomplete.

    A stable file larger than ``expected_size`` or whose digest differs from ``expected_checksum`` (or from
    the sidecar's) fails at once, without waiting for the timeout; a file that differs from its manifest
    (in any range, or in size) fails at once with ``ManifestMismatchError`` naming the first bad range. A
    missing file is "not yet", and so is a stable file whose sidecar or manifest does not exist yet, or
    whose sidecar holds no valid digest (the uploader writes it last); a malformed manifest fails. A
    refused login, an unknown host key, a permission error, a directory, or a malformed ``expected_checksum``
    fail with a message that names the server and path.

    In ``reschedule`` mode the observations are kept in Airflow's task state store (Airflow 3.3+), scoped to
    the current try. With ``deferrable=True`` the sensor checks once, then hands its observations to
    :class:`~airflow_s3sftp.triggers.sftp.SFTPFileStableTrigger`, which polls from the triggerer.

    The XCom return value is a dict with ``path``, ``size``, ``mtime`` (POSIX seconds), ``checksum``
    (``"<algorithm>:<hex>"`` or ``None``), ``stable_since``, ``observed_at``, ``stable_seconds``, ``polls``.

    :param path: remote path of the file (templated)
    :param sftp_conn_id: SFTP connection to use (templated)
    :param stable_for: seconds (or a timedelta) over which consecutive observations must show the same size
        and mtime
    :param checksum: digest algorithm used to prove the content once size and mtime are stable (``sha256``,
        ``sha1``, ``sha512``, ``md5``, ``blake2b``), or ``None`` for size and mtime only (weaker)
    :param expected_size: exact size in bytes the file must reach; smaller is "not yet", larger fails
        (templated)
    :param expected_checksum: ``"<algorithm>:<hex>"`` the content must equal, e.g. the upload operator's XCom
        ``checksum``; its algorithm wins over ``checksum`` (templated)
    :param expected_checksum_from: ``"sidecar"`` to read the expected checksum from ``<path>.<checksum>``
        (``sha256sum -c`` format, as ``S3ToSFTPStreamOperator(sidecar=True)`` writes it) once the file is
        stable; ``"manifest"`` to check the stable file range by range against ``<path>.manifest`` (sha256,
        so ``checksum`` must be ``"sha256"``); or ``None``. Excludes ``expected_checksum``, needs ``checksum``
    :param min_size: smallest size in bytes that counts as a file worth firing for
    :param chunk_size: bytes per read while hashing
    :param deferrable: poll from the triggerer instead of a worker slot
    """

    template_fields: Sequence[str] = ("path", "sftp_conn_id", "expected_checksum", "expected_size")
    ui_color = "#c8e6f0"

    def __init__(
        self,
        *,
        path: str,
        sftp_conn_id: str = "sftp_default",
        stable_for: float | datetime.timedelta = 60,
        checksum: str | None = "sha256",
        expected_size: int | None = None,
        expected_checksum: str | None = None,
        expected_checksum_from: Literal["sidecar", "manifest"] | None = None,
        min_size: int = 1,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        validate.flag("deferrable", deferrable)
        if not deferrable:
            check_sensor_mode(self.mode)  # reschedule needs the task state store: fail at parse time
        # Non-templated arguments are checked now: a bad DAG fails at parse time.
        validate.number(
            "stable_for",
            stable_for.total_seconds() if isinstance(stable_for, datetime.timedelta) else stable_for,
        )
        validate.algorithm("checksum", checksum)
        if expected_checksum_from not in (None, *stability.EXPECTED_CHECKSUM_SOURCES):
            choices = ", ".join(map(repr, stability.EXPECTED_CHECKSUM_SOURCES))
            raise ValueError(
                f"expected_checksum_from for {path} must be one of {choices} or None, "
                f"got {expected_checksum_from!r}"
            )
        validate.integer("min_size", min_size, minimum=0)
        validate.integer("chunk_size", chunk_size, minimum=1)
        validate.number("poke_interval", self.poke_interval)
        self.path = path
        self.sftp_conn_id = sftp_conn_id
        self.stable_for = stable_for
        self.checksum = checksum
        self.expected_size = expected_size
        self.expected_checksum = expected_checksum
        self.expected_checksum_from = expected_checksum_from
        self.min_size = min_size
        self.chunk_size = chunk_size
        self.deferrable = deferrable
        self._io: SFTPSensingHook | None = None
        self._policy: stability.Policy | None = None
        self._state = stability.State()
        self._last_reason: str | None = None
        self._started_at = stability.utcnow()  # when this try started waiting (UTC: crosses reschedules)
        self._started = time.monotonic()

    def _open(self) -> tuple[SFTPSensingHook, stability.Policy]:
        """Return the sensing hook and the validated policy, building both on first use."""
        if self._io is None or self._policy is None:
            validate.integer("chunk_size", self.chunk_size, minimum=1)
            # Templated arguments, as rendered:
            validate.text("path", self.path)
            validate.text("sftp_conn_id", self.sftp_conn_id)
            validate.text("expected_checksum", self.expected_checksum, optional=True, empty=True)
            io = SFTPSensingHook(self.sftp_conn_id, chunk_size=self.chunk_size)
            self._policy = stability.Policy.build(
                target=io.target(self.path),
                stable_for=self.stable_for,
                checksum=self.checksum,
                expected_size=self.expected_size,
                expected_checksum=self.expected_checksum,
                expected_checksum_from=self.expected_checksum_from,
                min_size=self.min_size,
            )
            self._io = io
        return self._io, self._policy

    def _close(self) -> None:
        if self._io is not None:
            self._io.close()
        self._io = None

    def execute(self, context: Context) -> Any:
        """Poke, reschedule or defer until the file is complete; return its summary."""
        self._state = stability.State()
        self._last_reason = None
        self._started_at, self._started = stability.utcnow(), time.monotonic()
        try:
            _, policy = self._open()
            if not self.deferrable:
                try:
                    return super().execute(context)
                except AirflowSensorTimeout as err:
                    raise AirflowSensorTimeout(self._timeout_message(policy)) from err
                except AirflowSkipException as err:
                    if self.soft_fail and "timed out" in str(err):
                        raise AirflowSkipException(self._timeout_message(policy)) from err
                    raise
            verdict = self._poll(self._state)
            if verdict.action is stability.Action.FIRE:
                return stability.result(self.path, verdict)
            self.log.info("Deferring: %s", verdict.reason)
            self.defer(
                trigger=SFTPFileStableTrigger(
                    path=self.path,
                    sftp_conn_id=self.sftp_conn_id,
                    policy=policy.to_dict(),
                    poke_interval=self.poke_interval,
                    chunk_size=self.chunk_size,
                    state=verdict.state.to_dict(),
                    # The trigger gives up at the timeout itself, so that its error names what it saw last.
                    timeout=float(self.timeout) if math.isfinite(float(self.timeout)) else None,
                    started_at=self._started_at.isoformat(),
                ),
                method_name="execute_complete",
                timeout=datetime.timedelta(seconds=self.timeout),
            )
        finally:
            self._close()

    def poke(self, context: Context) -> bool | PokeReturnValue:
        """Observe the file once and return its summary when it is complete."""
        state = self._load_state(context) if self.reschedule else self._state
        verdict = self._poll(state)
        if self.reschedule:
            self._save_state(context, verdict.state, verdict.reason)
        self._state = verdict.state
        self._last_reason = verdict.reason
        if verdict.action is stability.Action.FIRE:
            return PokeReturnValue(is_done=True, xcom_value=stability.result(self.path, verdict))
        self.log.info("%s is not complete yet: %s", self.path, verdict.reason)
        return False

    def _poll(self, state: stability.State) -> stability.Verdict:
        """Run one poll (:func:`airflow_s3sftp.core.poll.poll_file`) over the sync sensing hook."""
        io, policy = self._open()
        attempt = 0
        while True:
            try:
                verdict = poll.drive(poll.poll_file(self.path, state, policy), io)
                break
            except Exception as err:
                # A dropped connection is healed by reconnecting; a refused login or host key is final.
                attempt += 1
                if not poll.is_healable(err) or attempt > poll.RECONNECT_ATTEMPTS:
                    raise
                delay = poll.reconnect_delay(attempt)
                self.log.warning(
                    "Sensing %s: %s; reconnecting in %.0fs (%s of %s)",
                    policy.target,
                    err,
                    delay,
                    attempt,
                    poll.RECONNECT_ATTEMPTS,
                )
                io.close()
                time.sleep(delay)
        if verdict.action is stability.Action.FIRE:
            self.log.info("%s is complete: %s (%s)", policy.target, verdict.reason, verdict.checksum)
        return verdict

    def _load_state(self, context: Context) -> stability.State:
        """Return the observations of earlier pokes of this try from the task state store."""
        store = self._state_store(context)
        record = store.get(STATE_STORE_KEY)
        try_number = context["ti"].try_number
        if not isinstance(record, dict) or record.get("try_number") != try_number:
            return stability.State()
        if (record.get("path"), record.get("sftp_conn_id")) != (self.path, self.sftp_conn_id):
            return stability.State()
        try:
            state = stability.State.from_dict(record["state"])
            if record.get("started_at"):
                self._started_at = stability.parse_utc(str(record["started_at"]))
            return state
        except (KeyError, TypeError, ValueError) as err:
            self.log.warning("Ignoring unreadable observations of earlier pokes: %s", err)
            return stability.State()

    def _save_state(self, context: Context, state: stability.State, reason: str) -> None:
        record = {
            "try_number": context["ti"].try_number,
            "path": self.path,
            "sftp_conn_id": self.sftp_conn_id,
            "state": state.to_dict(),
            "started_at": self._started_at.isoformat(),
            "reason": reason,
        }
        self._state_store(context).set(STATE_STORE_KEY, record)

    def _timeout_message(self, policy: stability.Policy) -> str:
        """Return the timeout error: the path, the last observation and its verdict, the time waited."""
        if self.reschedule:
            waited = (stability.utcnow() - self._started_at).total_seconds()
        else:
            waited = time.monotonic() - self._started
        return stability.timeout_message(
            policy.target, self._state, self._last_reason, waited, float(self.timeout)
        )

    def _state_store(self, context: Context) -> Any:
        store = context.get("task_state_store")
        if store is None:
            raise RuntimeError(
                f"{self.task_id}: mode='reschedule' keeps observations in the task state store of "
                "Airflow 3.3+, which this Airflow does not provide; use mode='poke' or deferrable=True"
            )
        return store

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Resume after the trigger; its timeout event keeps its message with ``soft_fail`` too.

        Airflow's sensor base replaces any error of a resumed sensor with soft_fail by a generic "Skipping
        due to soft_fail" line, which would hide the path and what the trigger saw last.
        """
        event = (next_kwargs or {}).get("event")
        if next_method == "execute_complete" and isinstance(event, dict) and event.get("status") == "timeout":
            self._raise_timeout(event)
        return super().resume_execution(next_method, next_kwargs, context)

    def _raise_timeout(self, event: dict[str, Any]) -> None:
        message = str(event.get("message") or f"SFTP file {self.path} was not complete within the timeout")
        if self.soft_fail or getattr(self, "never_fail", False):
            raise AirflowSkipException(message)
        raise AirflowSensorTimeout(message)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Return the summary from the trigger's success event, or raise the error it reported."""
        if event.get("status") == "success":
            return event["result"]
        if event.get("status") == "timeout":
            self._raise_timeout(event)
        raise decode_error(event, origin=f"SFTPFileStableTrigger failed for {self.path}")
