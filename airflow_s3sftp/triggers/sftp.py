# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Triggers that poll SFTP files from the triggerer: one for a deferred sensor, one for asset watchers."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import posixpath
import time
import warnings
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_s3sftp.core import poll, stability, validate
from airflow_s3sftp.core.events import encode_error
from airflow_s3sftp.exceptions import S3SFTPDeprecationWarning
from airflow_s3sftp.hooks.sftp_sensing import DEFAULT_CHUNK_SIZE, SFTPSensingHookAsync

try:  # Airflow 3.0+: the base of triggers that may back an AssetWatcher
    from airflow.triggers.base import BaseEventTrigger as _EventTriggerBase

    _EVENT_TRIGGER_UNAVAILABLE: str | None = None
except ImportError:  # Airflow 2.x
    from airflow import __version__ as _airflow_version
    from airflow.triggers.base import BaseTrigger as _EventTriggerBase  # type: ignore[assignment]

    _EVENT_TRIGGER_UNAVAILABLE = (
        "airflow_s3sftp.triggers.sftp.SFTPFileStableEventTrigger needs Airflow 3.0+ (BaseEventTrigger, "
        f"AssetWatcher); this is Airflow {_airflow_version}. On Airflow 2 use SFTPFileStableSensor."
    )

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Hashable

log = logging.getLogger(__name__)

#: Seconds between two warnings about one file whose claim the server refuses for permission.
BLOCKED_WARNING_INTERVAL = 300.0


class SFTPFileStableTrigger(BaseTrigger):
    """
    Poll an SFTP file until it is complete, with the same rules as :class:`SFTPFileStableSensor`.

    Sensor and trigger run the one poll of :func:`airflow_s3sftp.core.poll.poll_file`, so they reach the
    same verdict from the same observations; the trigger answers its requests over asyncssh
    (:class:`~airflow_s3sftp.hooks.sftp_sensing.SFTPSensingHookAsync`, one connection). It continues from
    the observations the sensor made before deferring (``state``), yields exactly one event and returns.
    Any error becomes one error event.

    :param path: remote path of the file
    :param sftp_conn_id: SFTP connection to use
    :param policy: what "complete" means, :meth:`airflow_s3sftp.core.stability.Policy.to_dict`
    :param poke_interval: seconds between polls (the sensor's ``poke_interval``)
    :param chunk_size: bytes per read while hashing
    :param state: observations made so far (:meth:`airflow_s3sftp.core.stability.State.to_dict`), or ``None``
    :param timeout: seconds after ``started_at`` at which to give up with a ``"timeout"`` event naming the
        last observation; ``None`` polls until the file is complete (Airflow's deferral timeout still applies)
    :param started_at: when the sensor started waiting, ISO 8601 UTC; defaults to when the trigger starts
    :param poll_interval: deprecated name of ``poke_interval`` (warns with
        :class:`~airflow_s3sftp.exceptions.S3SFTPDeprecationWarning`; kept for one release, so that a
        trigger serialized by an earlier version still runs)
    """

    def __init__(
        self,
        *,
        path: str,
        sftp_conn_id: str = "sftp_default",
        policy: dict[str, Any],
        poke_interval: float = 60.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        state: dict[str, Any] | None = None,
        timeout: float | None = None,
        started_at: str | None = None,
        poll_interval: float | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if poll_interval is not None:
            warnings.warn(
                "SFTPFileStableTrigger(poll_interval=...) is deprecated: use poke_interval=...",
                S3SFTPDeprecationWarning,
                stacklevel=2,
            )
            if poke_interval != 60.0:
                raise ValueError(
                    "SFTPFileStableTrigger got both poke_interval and its deprecated name poll_interval; "
                    "pass poke_interval only"
                )
            poke_interval = poll_interval
        validate.text("path", path)
        validate.text("sftp_conn_id", sftp_conn_id)
        validate.number("poke_interval", poke_interval, positive=True)
        validate.integer("chunk_size", chunk_size, minimum=1)
        if timeout is not None:
            validate.number("timeout", timeout)
        if started_at is not None:
            try:
                stability.parse_utc(started_at)
            except (TypeError, ValueError) as err:
                raise ValueError(f"started_at must be an ISO 8601 UTC time, got {started_at!r}") from err
        # The policy and state come from the sensor, which validated them: a bad one is one error event.
        self.path = path
        self.sftp_conn_id = sftp_conn_id
        self.policy = policy
        self.poke_interval = poke_interval
        self.chunk_size = chunk_size
        self.state = state
        self.timeout = timeout
        self.started_at = started_at

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the classpath and exactly the constructor arguments."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "path": self.path,
                "sftp_conn_id": self.sftp_conn_id,
                "policy": self.policy,
                "poke_interval": self.poke_interval,
                "chunk_size": self.chunk_size,
                "state": self.state,
                "timeout": self.timeout,
                "started_at": self.started_at,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until the file is complete or fails; yield one success or error event."""
        io = SFTPSensingHookAsync(self.sftp_conn_id, chunk_size=self.chunk_size)
        try:
            async with io:
                payload = await self._watch(io)
        except Exception as err:
            self.log.error("Sensing %s failed: %s", io.target(self.path), err)
            yield TriggerEvent(encode_error(err, io.target(self.path)))  # type: ignore[no-untyped-call]
            return
        yield TriggerEvent(payload)  # type: ignore[no-untyped-call]

    async def _watch(self, io: SFTPSensingHookAsync) -> dict[str, Any]:
        target = io.target(self.path)
        policy = dataclasses.replace(stability.Policy.from_dict(self.policy), target=target)
        state = stability.State.from_dict(self.state) if self.state else stability.State()
        started = stability.parse_utc(self.started_at) if self.started_at else stability.utcnow()
        failures = 0
        while True:
            try:
                verdict = await poll.adrive(poll.poll_file(self.path, state, policy), io)
            except Exception as err:
                # A dropped connection is healed by reconnecting; a refused login or host key is final.
                failures += 1
                if not poll.is_healable(err) or failures > poll.RECONNECT_ATTEMPTS:
                    raise
                delay = poll.reconnect_delay(failures)
                self.log.warning(
                    "Sensing %s: %s; reconnecting in %.0fs (%s of %s)",
                    target,
                    err,
                    delay,
                    failures,
                    poll.RECONNECT_ATTEMPTS,
                )
                await io.close()
                await asyncio.sleep(delay)
                continue
            failures = 0
            state = verdict.state
            if verdict.action is stability.Action.FIRE:
                self.log.info("%s is complete: %s (%s)", target, verdict.reason, verdict.checksum)
                return {"status": "success", "result": stability.result(self.path, verdict)}
            self.log.info("%s is not complete yet: %s", target, verdict.reason)
            waited = (stability.utcnow() - started).total_seconds()
            if self.timeout is not None and waited >= self.timeout:
                message = stability.timeout_message(target, state, verdict.reason, waited, self.timeout)
                self.log.error("%s", message)
                return {"status": "timeout", "message": message}
            left = math.inf if self.timeout is None else self.timeout - waited
            await asyncio.sleep(min(self.poke_interval, left))


class SFTPFileStableEventTrigger(_EventTriggerBase):
    """
    Watch an SFTP directory and fire one event per file that becomes provably complete (AssetWatcher).

    ``path`` names the files: its last segment may be a glob (``/inbound/*.csv``; hidden files match only a
    pattern starting with ``.``). A file fires under the sensor's rule: size and mtime unchanged over
    ``stable_for`` seconds (plus one second of mtime resolution), then, with ``checksum``, two equal digests
    a poll apart. A growing or rewritten file never fires with a partial size.

    With ``expected_checksum_from="manifest"`` a stable file is checked range by range against its
    manifest ``<path>.manifest`` (see ``docs/manifest.md``): no manifest yet is "not yet", a match fires at
    once (one read), and a file that differs is logged with its first bad range and skipped until its
    size or mtime changes. Manifests themselves never fire, and with ``claim_to`` they stay where they
    are. ``"sidecar"`` works the same with the sidecar ``<path>.<checksum>``.

    With ``claim_to`` (a directory on the same server) a complete file is first renamed into it with a
    plain SFTP rename, which refuses to overwrite (OpenSSH: link + unlink), and the event names the new
    path. Of two watchers claiming one file exactly one wins; a claimed file is no longer in the watched
    directory, so it cannot fire again, also not after a triggerer restart. A claim refused because the
    name is taken in ``claim_to`` is logged and retried each poll (one rename, no re-hash) until the name
    is free or the file changes.

    Without ``claim_to`` the trigger remembers, in memory, the ``(size, mtime)`` each file fired with:
    a file fires again when its size or mtime changes and it is complete again, when it is removed and
    created again, and after the trigger restarts (a triggerer restart, or the watcher moved to another
    triggerer), when every complete file present fires once more.

    Event payload: ``path`` (after the claim), ``source_path``, ``size``, ``mtime`` (POSIX seconds),
    ``checksum`` (``"sha256:<hex>"``, ``None`` with ``checksum=None``). Files that become complete in the
    same poll fire one event each, in name order. On Airflow 3.3+ watchers of one directory with the
    same connection and ``poke_interval`` share one listing loop (``shared_stream_key``); each still
    hashes and claims on its own connection. Needs Airflow 3.0+.

    :param path: remote directory plus a file name or glob, e.g. ``/inbound/*.csv``
    :param sftp_conn_id: SFTP connection to use
    :param stable_for: seconds over which size and mtime must not change
    :param checksum: digest algorithm proving the content, or ``None`` for size and mtime only (weaker)
    :param claim_to: absolute directory to move complete files into before firing, or ``None``
    :param poke_interval: seconds between listings
    :param expected_checksum_from: ``"manifest"`` (or ``"sidecar"``) to check each stable file against the
        file the uploader writes beside it, or ``None`` for the two-digest rule
    """

    def __init__(
        self,
        path: str,
        sftp_conn_id: str = "sftp_default",
        stable_for: float = 60,
        checksum: str | None = "sha256",
        claim_to: str | None = None,
        poke_interval: float = 5,
        expected_checksum_from: str | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        # Every argument is checked now: a bad DAG fails at parse time.
        validate.absolute_path("path", path)
        self.directory, self.pattern = poll.split_pattern(path)
        validate.text("sftp_conn_id", sftp_conn_id)
        validate.number("stable_for", stable_for)
        validate.algorithm("checksum", checksum)
        stability.Policy.build(
            target=path,
            stable_for=stable_for,
            checksum=checksum,
            expected_checksum_from=expected_checksum_from,
        )
        if claim_to is not None:
            if not isinstance(claim_to, str) or not claim_to.startswith("/"):
                raise ValueError(f"claim_to must be an absolute directory, got {claim_to!r}")
            validate.absolute_path("claim_to", claim_to)
            if posixpath.normpath(claim_to) == posixpath.normpath(self.directory):
                raise ValueError(
                    f"claim_to {claim_to!r} is the watched directory: claimed files would fire again"
                )
        validate.number("poke_interval", poke_interval, positive=True)
        self._blocked_warned: dict[str, float] = {}  # source path -> when its refused claim was logged
        self.path = path
        self.sftp_conn_id = sftp_conn_id
        self.stable_for = stable_for
        self.checksum = checksum
        self.claim_to = claim_to
        self.poke_interval = poke_interval
        self.expected_checksum_from = expected_checksum_from

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the classpath and exactly the constructor arguments."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "path": self.path,
                "sftp_conn_id": self.sftp_conn_id,
                "stable_for": self.stable_for,
                "checksum": self.checksum,
                "claim_to": self.claim_to,
                "poke_interval": self.poke_interval,
                "expected_checksum_from": self.expected_checksum_from,
            },
        )

    def _new_watch(self, io: SFTPSensingHookAsync) -> poll.Watch:
        policy = stability.Policy.build(
            target=io.target(self.path),
            stable_for=self.stable_for,
            checksum=self.checksum,
            expected_checksum_from=self.expected_checksum_from,
        )
        return poll.Watch(self.directory, self.pattern, policy, self.claim_to)

    async def _round(
        self, watch: poll.Watch, io: SFTPSensingHookAsync, listing: dict[str, stability.Observation] | None
    ) -> tuple[list[TriggerEvent], Exception | None]:
        """
        Run one watch round; return its events and the error that should stop the watch, if any.

        Files claimed before an error still fire. A lost connection is logged and retried next round; an
        unreadable file is logged once and skipped until it changes.
        """
        error: Exception | None = None
        refused: list[poll.Fired] = []
        try:
            found = await poll.adrive(watch.round(listing), io)
        except ConnectionError as err:
            self.log.warning("Watching %s: %s; reconnecting at the next poll", io.target(self.path), err)
            await io.close()
            fired = watch.take_fired()
        except Exception as err:
            error = err
            fired = watch.take_fired()
        else:
            fired, refused = found.fired, found.refused
            for name, failure in found.failed:
                self.log.error("Skipping %s until it changes: %s", name, failure)
            self._warn_blocked(found.blocked)
        for held in refused:
            self.log.warning(
                "%s is complete but %s already holds %s: not claimed, not fired; retrying each poll",
                held.source_path,
                self.claim_to,
                posixpath.basename(held.source_path),
            )
        events = []
        for complete in fired:
            self.log.info(
                "%s is complete (%s bytes, %s): firing", complete.path, complete.size, complete.checksum
            )
            events.append(TriggerEvent(complete.payload()))  # type: ignore[no-untyped-call]
        return events, error

    def _warn_blocked(self, blocked: list[tuple[poll.Fired, OSError]]) -> None:
        """Warn about claims refused for permission: once per file per :data:`BLOCKED_WARNING_INTERVAL`."""
        warned = self._blocked_warned
        now = time.monotonic()
        for held, err in blocked:
            last = warned.get(held.source_path)
            if last is not None and now - last < BLOCKED_WARNING_INTERVAL:
                continue
            warned[held.source_path] = now
            self.log.warning(
                "%s is complete but the server refused to move it into %s (%s): not fired; retrying each "
                "poll (this warning repeats at most every %.0fs)",
                held.source_path,
                self.claim_to,
                err,
                BLOCKED_WARNING_INTERVAL,
            )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """List, assess, hash and claim every ``poke_interval`` seconds; one event per complete file."""
        async with SFTPSensingHookAsync(self.sftp_conn_id) as io:
            watch = self._new_watch(io)
            while True:
                events, error = await self._round(watch, io, None)
                for event in events:
                    yield event
                if error is not None:
                    raise error
                await asyncio.sleep(self.poke_interval)

    def shared_stream_key(self) -> Hashable | None:
        """Return the key under which watchers of one directory share one listing loop (Airflow 3.3+)."""
        return ("airflow_s3sftp.sftp-listing", self.sftp_conn_id, self.directory, float(self.poke_interval))

    @classmethod
    async def open_shared_stream(cls, kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        """List the directory every ``poke_interval`` seconds for every watcher of the group; forever."""
        directory, _ = poll.split_pattern(kwargs["path"])
        async with SFTPSensingHookAsync(kwargs.get("sftp_conn_id", "sftp_default")) as io:
            while True:
                try:
                    listing = await io.list_files(directory, "")
                except ConnectionError as err:
                    # A shared stream that ends is an error for every watcher: reconnect instead.
                    log.warning("Listing %s: %s; reconnecting at the next poll", directory, err)
                    await io.close()
                else:
                    yield {name: seen.to_dict() for name, seen in listing.items()}
                await asyncio.sleep(float(kwargs.get("poke_interval", 5)))

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        """Assess this watcher's matches in each shared listing; hash and claim on its own connection."""
        async with SFTPSensingHookAsync(self.sftp_conn_id) as io:
            watch = self._new_watch(io)
            async for raw in shared_stream:
                listing = {name: stability.Observation.from_dict(seen) for name, seen in raw.items()}
                events, error = await self._round(watch, io, listing)
                for event in events:
                    yield event
                if error is not None:
                    raise error


if _EVENT_TRIGGER_UNAVAILABLE is not None:
    del SFTPFileStableEventTrigger

    def __getattr__(name: str) -> Any:
        if name == "SFTPFileStableEventTrigger":
            raise ImportError(_EVENT_TRIGGER_UNAVAILABLE)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
