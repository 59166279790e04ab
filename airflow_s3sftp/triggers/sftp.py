# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Trigger that polls an SFTP file from the triggerer until it is complete."""

from __future__ import annotations

import asyncio
import collections
import itertools
import stat
from typing import TYPE_CHECKING, Any, Literal, cast

import asyncssh
from airflow.providers.common.compat.connection import get_async_connection
from airflow.providers.sftp.hooks.sftp import SFTPHookAsync
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_s3sftp.core import stability
from airflow_s3sftp.core.checksums import format_checksum, new_hasher
from airflow_s3sftp.core.sidecar import MAX_SIDECAR_BYTES, parse_sidecar, sidecar_path
from airflow_s3sftp.exceptions import AuthenticationError, ChecksumMismatchError, HostKeyVerificationError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

#: Bytes per read while hashing: one await per chunk keeps the event loop responsive.
DEFAULT_CHUNK_SIZE = 256 * 1024
#: Chunk reads kept in flight while hashing in the trigger.
READ_AHEAD = 8


def _target(where: str, path: str) -> str:
    return f"sftp://{where}{path if path.startswith('/') else '/' + path}"


async def _observe(sftp: asyncssh.SFTPClient, path: str, target: str) -> stability.Observation:
    """Return the size and mtime of ``path``, or a missing observation; refuse what is not a file."""
    try:
        attrs = await sftp.stat(path)
    except asyncssh.SFTPNoSuchFile:
        return stability.Observation.take(None, None)
    except asyncssh.SFTPPermissionDenied as err:
        raise PermissionError(f"Permission denied when checking {target}") from err
    mode = attrs.permissions
    if mode is not None and stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{target} is a directory, not a file")
    if mode is not None and not stat.S_ISREG(mode):
        raise ValueError(f"{target} is not a regular file")
    return stability.Observation.take(int(attrs.size or 0), int(attrs.mtime or 0))


async def _digest(
    sftp: asyncssh.SFTPClient, path: str, target: str, algorithm: str, size: int, chunk_size: int
) -> str | None:
    """
    Return ``"<algorithm>:<hex>"`` of the first ``size`` bytes of ``path``; ``None`` if it is shorter.

    Keeps :data:`READ_AHEAD` chunk reads in flight so a long round trip does not bound the rate, and
    hashes one chunk per await: memory stays at ``READ_AHEAD * chunk_size`` and the loop stays free.
    """
    hasher = new_hasher(algorithm)
    try:
        async with sftp.open(path, "rb") as remote:

            async def read(offset: int) -> tuple[int, bytes]:
                length = min(chunk_size, size - offset)
                # Opened in binary mode: asyncssh returns bytes.
                return length, cast("bytes", await remote.read(length, offset))

            offsets = iter(range(0, size, chunk_size))
            pending = collections.deque(
                asyncio.ensure_future(read(offset)) for offset in itertools.islice(offsets, READ_AHEAD)
            )
            try:
                while pending:
                    length, data = await pending.popleft()
                    if len(data) != length:
                        return None  # truncated while we read
                    for offset in itertools.islice(offsets, 1):
                        pending.append(asyncio.ensure_future(read(offset)))
                    hasher.update(data)
            finally:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
    except asyncssh.SFTPNoSuchFile:
        return None
    except asyncssh.SFTPPermissionDenied as err:
        raise PermissionError(f"Permission denied when reading {target}") from err
    return format_checksum(algorithm, hasher.hexdigest())


async def _read_sidecar(sftp: asyncssh.SFTPClient, path: str, target: str, algorithm: str) -> str | None:
    """Return the hex digest in the sidecar ``<path>.<algorithm>``, or ``None`` while there is none."""
    side = sidecar_path(path, algorithm)
    try:
        attrs = await sftp.stat(side)
        if (attrs.size or 0) > MAX_SIDECAR_BYTES:
            return None  # not a checksum line: the same answer as the sensor's reader
        async with sftp.open(side, "rb") as handle:
            # A few bytes: read it whole; opened in binary mode, asyncssh returns bytes.
            data = cast("bytes", await handle.read(MAX_SIDECAR_BYTES))
    except asyncssh.SFTPNoSuchFile:
        return None
    except asyncssh.SFTPPermissionDenied as err:
        raise PermissionError(f"Permission denied when reading {side}, the sidecar of {target}") from err
    return parse_sidecar(data.decode("utf-8", "replace"), algorithm)


def error_event(error: BaseException, target: str) -> dict[str, Any]:
    """Return the payload of an error event; :meth:`SFTPFileStableSensor.execute_complete` raises it."""
    payload: dict[str, Any] = {
        "status": "error",
        "error_type": type(error).__name__,
        "message": str(error) or repr(error),
        "what": target,
    }
    if isinstance(error, ChecksumMismatchError):
        payload.update(expected=error.expected, actual=error.actual)
    return payload


class SFTPFileStableTrigger(BaseTrigger):
    """
    Poll an SFTP file until it is complete, with the same rules as :class:`SFTPFileStableSensor`.

    Both call :mod:`airflow_s3sftp.core.stability`, so they reach the same verdict from the same observations.
    The trigger continues from the observations the sensor made before deferring (``state``), keeps one
    SSH connection through ``SFTPHookAsync`` (so ``host_key``, ``known_hosts``, ``no_host_key_check``,
    ``key_file`` and ``private_key`` extras apply), reads in ``chunk_size`` pieces when hashing, yields
    exactly one event and returns. Any error becomes one error event.

    :param path: remote path of the file
    :param sftp_conn_id: SFTP connection to use
    :param stable_for: seconds over which consecutive observations must show the same size and mtime
    :param checksum: digest algorithm proving the content, or ``None`` for size and mtime only
    :param expected_size: exact size the file must reach, or ``None``
    :param expected_checksum: ``"<algorithm>:<hex>"`` the content must equal, or ``None``
    :param expected_checksum_from: ``"sidecar"`` to read the expected checksum from ``<path>.<checksum>``
        once the file is stable, or ``None``
    :param min_size: smallest size in bytes that can fire
    :param poll_interval: seconds between polls
    :param chunk_size: bytes per read while hashing
    :param state: observations made so far (:meth:`airflow_s3sftp.core.stability.State.to_dict`), or ``None``
    """

    def __init__(
        self,
        *,
        path: str,
        sftp_conn_id: str = "sftp_default",
        stable_for: float = 60.0,
        checksum: str | None = "sha256",
        expected_size: int | None = None,
        expected_checksum: str | None = None,
        expected_checksum_from: Literal["sidecar"] | None = None,
        min_size: int = 1,
        poll_interval: float = 60.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        state: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.path = path
        self.sftp_conn_id = sftp_conn_id
        self.stable_for = stable_for
        self.checksum = checksum
        self.expected_size = expected_size
        self.expected_checksum = expected_checksum
        self.expected_checksum_from = expected_checksum_from
        self.min_size = min_size
        self.poll_interval = poll_interval
        self.chunk_size = chunk_size
        self.state = state

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the classpath and exactly the constructor arguments."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "path": self.path,
                "sftp_conn_id": self.sftp_conn_id,
                "stable_for": self.stable_for,
                "checksum": self.checksum,
                "expected_size": self.expected_size,
                "expected_checksum": self.expected_checksum,
                "expected_checksum_from": self.expected_checksum_from,
                "min_size": self.min_size,
                "poll_interval": self.poll_interval,
                "chunk_size": self.chunk_size,
                "state": self.state,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until the file is complete or fails; yield one success or error event."""
        target = _target(f"<{self.sftp_conn_id}>", self.path)
        try:
            hook = SFTPHookAsync(sftp_conn_id=self.sftp_conn_id)
            conn = await get_async_connection(self.sftp_conn_id, hook)
            where = f"{conn.host}:{conn.port or 22}"
            target = _target(where, self.path)
            payload = await self._watch(hook, where, target, conn.login)
        except Exception as err:
            self.log.error("Sensing %s failed: %s", target, err)
            yield TriggerEvent(error_event(err, target))  # type: ignore[no-untyped-call]
            return
        yield TriggerEvent(payload)  # type: ignore[no-untyped-call]

    async def _watch(self, hook: SFTPHookAsync, where: str, target: str, login: str | None) -> dict[str, Any]:
        policy = stability.Policy.build(
            target=target,
            stable_for=self.stable_for,
            checksum=self.checksum,
            expected_size=self.expected_size,
            expected_checksum=self.expected_checksum,
            expected_checksum_from=self.expected_checksum_from,
            min_size=self.min_size,
        )
        state = stability.State.from_dict(self.state) if self.state else stability.State()
        try:
            async with hook.get_managed_conn() as sftp:
                while True:
                    verdict = await self._poll(sftp, state, policy)
                    state = verdict.state
                    if verdict.action is stability.Action.FIRE:
                        self.log.info("%s is complete: %s (%s)", target, verdict.reason, verdict.checksum)
                        return {"status": "success", "result": stability.result(self.path, verdict)}
                    self.log.info("%s is not complete yet: %s", target, verdict.reason)
                    await asyncio.sleep(self.poll_interval)
        except asyncssh.PermissionDenied as err:
            raise AuthenticationError(
                f"{where} refused the login of user {login!r} "
                f"(connection {self.sftp_conn_id!r}): {err.reason}"
            ) from err
        except asyncssh.HostKeyNotVerifiable as err:
            raise HostKeyVerificationError(
                f"Host key of SFTP server {where} is unknown or does not match the one configured in "
                f"connection {self.sftp_conn_id!r} (host_key extra or known_hosts): {err.reason}"
            ) from err

    async def _poll(
        self, sftp: asyncssh.SFTPClient, state: stability.State, policy: stability.Policy
    ) -> stability.Verdict:
        """Run one poll: stat; once size and mtime are stable, read the sidecar if asked, hash, stat again."""
        verdict = stability.assess(state, await _observe(sftp, self.path, policy.target), policy)
        if verdict.action is stability.Action.READ_SIDECAR and verdict.algorithm is not None:
            recorded = await _read_sidecar(sftp, self.path, policy.target, verdict.algorithm)
            verdict = stability.assess_sidecar(verdict.state, recorded, policy)
        if verdict.action is stability.Action.HASH and verdict.algorithm is not None:
            before = verdict.state.last
            size = before.size if before is not None and before.size is not None else 0
            self.log.info("Hashing %s (%d bytes, %s)", policy.target, size, verdict.algorithm)
            checksum = await _digest(sftp, self.path, policy.target, verdict.algorithm, size, self.chunk_size)
            after = await _observe(sftp, self.path, policy.target)
            expected = verdict.expected_checksum
            verdict = stability.assess_digest(verdict.state, after, checksum, policy, expected)
        return verdict
