# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The I/O of sensing, sync (paramiko) and async (asyncssh): stat, sidecar, digest, list, claim."""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import os
import posixpath
import socket
import stat
from typing import TYPE_CHECKING, Any, TypeVar, cast

import asyncssh
import asyncssh.compression
import asyncssh.encryption
import asyncssh.kex
import asyncssh.mac
import asyncssh.public_key
from airflow.providers.common.compat.connection import get_async_connection
from airflow.providers.sftp.hooks.sftp import SFTPHookAsync

from airflow_s3sftp.core.checksums import format_checksum, new_hasher
from airflow_s3sftp.core.manifest import MAX_MANIFEST_BYTES, RangeHasher, manifest_path
from airflow_s3sftp.core.poll import Claimed, matches
from airflow_s3sftp.core.sftp import read_range, stat_or_none
from airflow_s3sftp.core.sidecar import MAX_SIDECAR_BYTES, parse_sidecar, read_sidecar, sidecar_path
from airflow_s3sftp.core.stability import Observation
from airflow_s3sftp.exceptions import AuthenticationError, HostKeyVerificationError
from airflow_s3sftp.hooks.sftp import (
    bulk_sftp_hook,
    clear_connection_errors,
    close_sftp,
    connect_sftp,
    server_name,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    import paramiko

log = logging.getLogger(__name__)

R = TypeVar("R")

#: Bytes per read while hashing: one await per chunk keeps the event loop responsive.
DEFAULT_CHUNK_SIZE = 256 * 1024
#: Chunk reads kept in flight while hashing over asyncssh.
READ_AHEAD = 8


def sftp_target(where: str, path: str) -> str:
    """Return how messages name ``path`` on server ``where`` (``host:port``): never a user or secret."""
    return f"sftp://{where}{path if path.startswith('/') else '/' + path}"


def _missing_observation() -> Observation:
    return Observation.take(None, None)


def _observation(target: str, mode: int | None, size: int | None, mtime: int | None) -> Observation:
    if mode is not None and stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{target} is a directory, not a file")
    if mode is not None and not stat.S_ISREG(mode):
        raise ValueError(f"{target} is not a regular file")
    return Observation.take(int(size or 0), int(mtime or 0))


def _no_claim_directory(directory: str) -> NotADirectoryError:
    return NotADirectoryError(f"{directory}, the claim_to directory, does not exist or is not a directory")


def _subject(args: tuple[Any, ...], sidecar: bool, manifest: bool = False) -> str:
    """Return the remote path a call is about: its first argument, or that file's sidecar or manifest."""
    if manifest:
        return manifest_path(args[0])
    return sidecar_path(args[0], args[1]) if sidecar else str(args[0])


def sftp_errors(
    action: str,
    *,
    missing: Callable[[], Any] | None = None,
    sidecar: bool = False,
    manifest: bool = False,
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """
    Map paramiko's errors of a :class:`SFTPSensingHook` method to errors that name server and path.

    A missing file (or one shorter than asked, ``EOFError``) returns ``missing()`` when given: an
    answer, not an error. Permission errors name the action and the path; connection failures pass
    through :func:`~airflow_s3sftp.hooks.sftp.clear_connection_errors` (server, user, cause).
    """

    def decorate(method: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(method)
        def wrapper(self: SFTPSensingHook, *args: Any) -> R:
            target = self.target(_subject(args, sidecar, manifest))
            try:
                with clear_connection_errors(self.hook, self.conn_id):
                    return method(self, *args)
            except (FileNotFoundError, EOFError):
                if missing is None:
                    raise FileNotFoundError(f"{target} does not exist") from None
                return cast("R", missing())
            except PermissionError as err:
                if isinstance(err, AuthenticationError):
                    raise
                raise PermissionError(f"Permission denied when {action} {target}") from err
            except OSError as err:
                if isinstance(err, ConnectionError) or self.connected():
                    raise
                # paramiko's "Socket is closed" and kin: the connection dropped under the request.
                self.close()
                raise ConnectionError(
                    f"SSH connection to {self.where} dropped while {action} {target}: {err}"
                ) from err

        return wrapper

    return decorate


class SFTPSensingHook:
    """
    The synchronous I/O of a poll over one SSH connection, opened lazily and reused across polls.

    Its methods answer the requests of :mod:`airflow_s3sftp.core.poll`; drive a poll with
    ``poll.drive(generator, hook)``. Connections come from :func:`~airflow_s3sftp.hooks.sftp.bulk_sftp_hook`
    (no zlib unless the connection asks, AES-GCM first, the connection's host-key settings).

    :param sftp_conn_id: SFTP connection to use
    :param chunk_size: bytes per read request while hashing
    """

    def __init__(self, sftp_conn_id: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.conn_id = sftp_conn_id
        self.chunk_size = chunk_size
        # One attempt: a refused login or an unknown host key will not heal in a few seconds, and
        # Airflow's task retries cover transient network failures.
        self.hook = bulk_sftp_hook(sftp_conn_id, conn_retry_attempts=1)
        self.where = server_name(self.hook)
        self._sftp: paramiko.SFTPClient | None = None

    def target(self, path: str) -> str:
        """Return how messages name ``path`` on this server."""
        return sftp_target(self.where, path)

    def connected(self) -> bool:
        """Return True while the SFTP session is open and its SSH connection is up."""
        if self._sftp is None:
            return False
        channel = self._sftp.get_channel()
        return channel is not None and not channel.closed and channel.get_transport().is_active()

    def client(self) -> paramiko.SFTPClient:
        """Return the open SFTP client, connecting (again) when needed."""
        if self._sftp is not None:
            if self.connected():
                return self._sftp
            self.close()  # the server or the network dropped the session: reconnect
        with clear_connection_errors(self.hook, self.conn_id):
            sftp: paramiko.SFTPClient = connect_sftp(self.hook)
        self._sftp = sftp
        return sftp

    @sftp_errors("checking", missing=_missing_observation)
    def observe(self, path: str) -> Observation:
        """Return the size and mtime of ``path``, or a missing observation; refuse what is not a file."""
        attrs = self.client().stat(path)
        return _observation(self.target(path), attrs.st_mode, attrs.st_size, attrs.st_mtime)

    @sftp_errors("reading", missing=lambda: None)
    def digest(self, path: str, algorithm: str, size: int) -> str | None:
        """Return ``"<algorithm>:<hex>"`` of the first ``size`` bytes of ``path``; ``None`` if shorter."""
        log.info("Hashing %s (%d bytes, %s)", self.target(path), size, algorithm)
        hasher = new_hasher(algorithm)
        for data in read_range(self.client(), path, size, block_size=self.chunk_size):
            hasher.update(data)
        return format_checksum(algorithm, hasher.hexdigest())

    @sftp_errors("reading", missing=lambda: None, sidecar=True)
    def read_sidecar(self, path: str, algorithm: str) -> str | None:
        """Return the hex digest in the sidecar ``<path>.<algorithm>``, or ``None`` while there is none."""
        return read_sidecar(self.client(), path, algorithm)

    @sftp_errors("reading", missing=lambda: None, manifest=True)
    def read_manifest(self, path: str) -> bytes | None:
        """Return the bytes of ``<path>.manifest`` (one more than the format allows, at most), or ``None``."""
        with self.client().open(manifest_path(path), "rb") as handle:
            data: bytes = handle.read(MAX_MANIFEST_BYTES + 1)
        return data

    @sftp_errors("reading", missing=lambda: None)
    def range_digests(self, path: str, range_size: int, size: int) -> tuple[tuple[str, ...], str] | None:
        """Return the sha256 of each ``range_size`` range of the first ``size`` bytes and of all of them."""
        log.info("Hashing %s (%d bytes, ranges of %d)", self.target(path), size, range_size)
        hasher = RangeHasher(range_size)
        for data in read_range(self.client(), path, size, block_size=self.chunk_size):
            hasher.update(data)
        return hasher.finish()

    @sftp_errors("listing")
    def list_files(self, directory: str, pattern: str) -> dict[str, Observation]:
        """Return the regular files in ``directory`` whose names match ``pattern``, with size and mtime."""
        found: dict[str, Observation] = {}
        for attrs in self.client().listdir_attr(directory):
            mode = attrs.st_mode
            if matches(attrs.filename, pattern) and mode is not None and stat.S_ISREG(mode):
                found[attrs.filename] = Observation.take(int(attrs.st_size or 0), int(attrs.st_mtime or 0))
        return found

    @sftp_errors("claiming")
    def claim(self, source: str, target: str) -> Claimed:
        """Rename ``source`` to ``target`` unless ``target`` exists (plain SFTP rename never overwrites)."""
        sftp = self.client()
        try:
            sftp.rename(source, target)
        except FileNotFoundError:
            if stat_or_none(sftp, source) is None:
                return Claimed.GONE  # another watcher claimed it, or someone removed it
            raise _no_claim_directory(self.target(posixpath.dirname(target))) from None
        except OSError as err:
            if isinstance(err, PermissionError):
                raise
            if stat_or_none(sftp, target) is None:
                raise OSError(f"SFTP rename {self.target(source)} -> {target} failed: {err}") from err
            return Claimed.EXISTS
        return Claimed.CLAIMED

    def close(self) -> None:
        """Close the SFTP channel and the SSH connection, if open."""
        self._sftp = None
        close_sftp(self.hook)


def async_sftp_errors(
    action: str,
    *,
    missing: Callable[[], Any] | None = None,
    sidecar: bool = False,
    manifest: bool = False,
) -> Callable[[Callable[..., Awaitable[R]]], Callable[..., Awaitable[R]]]:
    """The asyncssh twin of :func:`sftp_errors`, for :class:`SFTPSensingHookAsync` methods."""

    def decorate(method: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
        @functools.wraps(method)
        async def wrapper(self: SFTPSensingHookAsync, *args: Any) -> R:
            target = self.target(_subject(args, sidecar, manifest))
            try:
                return await method(self, *args)
            except (asyncssh.SFTPNoSuchFile, EOFError):
                if missing is None:
                    raise FileNotFoundError(f"{target} does not exist") from None
                return cast("R", missing())
            except asyncssh.SFTPPermissionDenied as err:
                raise PermissionError(f"Permission denied when {action} {target}") from err
            except asyncssh.PermissionDenied as err:
                raise AuthenticationError(
                    f"{self.where} refused the login of user {self.login!r} "
                    f"(connection {self.conn_id!r}): {err.reason}"
                ) from err
            except asyncssh.HostKeyNotVerifiable as err:
                raise HostKeyVerificationError(
                    f"Host key of SFTP server {self.where} is unknown or does not match the one configured "
                    f"in connection {self.conn_id!r} (host_key extra or known_hosts): {err.reason}"
                ) from err
            except (asyncssh.DisconnectError, asyncssh.ConnectionLost, asyncssh.SFTPConnectionLost) as err:
                await self.close()
                raise ConnectionError(f"SSH connection to {self.where} failed: {err.reason}") from err
            except (ConnectionRefusedError, TimeoutError, socket.gaierror) as err:
                raise ConnectionError(f"Cannot connect to SFTP server {self.where}: {err}") from err

        return wrapper

    return decorate


def _without(defaults: list[bytes], disabled: object) -> list[str]:
    names = {str(name) for name in disabled} if isinstance(disabled, (list, tuple)) else set()
    return [alg.decode() for alg in defaults if alg.decode() not in names]


def asyncssh_options(extra: Mapping[str, Any]) -> dict[str, Any]:
    """
    Return the asyncssh ``connect`` options for the ``ciphers``, ``disabled_algorithms`` and ``compress``
    extras, which ``SFTPHookAsync`` ignores but the sync ``SSHHook`` honours.

    ``compress`` defaults to off, as for bulk sync sessions; ``disabled_algorithms`` keys ``ciphers``,
    ``macs``, ``kex``, ``keys`` (host keys) and ``pubkeys`` (client signatures) map to asyncssh's lists.
    """
    options: dict[str, Any] = {}
    ciphers = extra.get("ciphers")
    if ciphers:
        options["encryption_algs"] = [str(name) for name in ciphers]
    disabled = extra.get("disabled_algorithms") or {}
    if isinstance(disabled, dict):
        defaults = {
            "ciphers": ("encryption_algs", asyncssh.encryption.get_default_encryption_algs),
            "macs": ("mac_algs", asyncssh.mac.get_default_mac_algs),
            "kex": ("kex_algs", asyncssh.kex.get_default_kex_algs),
            "keys": ("server_host_key_algs", asyncssh.public_key.get_default_public_key_algs),
            "pubkeys": ("signature_algs", asyncssh.public_key.get_default_public_key_algs),
        }
        for key, names in disabled.items():
            if key not in defaults:
                raise ValueError(f"disabled_algorithms key {key!r} is not one of {', '.join(defaults)}")
            option, default = defaults[key]
            # With explicit ciphers, disable among those.
            base = [name.encode() for name in options[option]] if option in options else list(default())
            options[option] = _without(base, names)
            if not options[option]:
                left_out = sorted(map(str, names))
                raise ValueError(f"disabled_algorithms leaves no {key} to negotiate: {left_out}")
    compress = str(extra.get("compress", "false")).lower() == "true"
    options["compression_algs"] = ["zlib@openssh.com", "none"] if compress else ["none"]
    return options


#: sha256 of ``inspect.getsource(SFTPHookAsync._get_conn)`` that :class:`_ParityHookAsync` mirrors
#: (apache-airflow-providers-sftp 7.0.0). A test fails when the installed provider's method changes:
#: then bring the copy below up to date and record the new hash.
UPSTREAM_GET_CONN_SHA256 = "7ac88f196fc7ca7ac62349133ea7ab040532c8f0ce2f622dab354d869cedc644"


def _first_set(*values: Any) -> Any:
    """Return the first value that is not None (the provider's ``_get_value``: 0 and "" count as set)."""
    return next((value for value in values if value is not None), None)


class _ParityHookAsync(SFTPHookAsync):
    """``SFTPHookAsync`` that also honours the ``ciphers``, ``disabled_algorithms``, ``compress`` extras.

    asyncssh takes them only as arguments of ``connect``, which the provider's ``_get_conn`` builds
    inside itself: this is a copy of it (pinned by :data:`UPSTREAM_GET_CONN_SHA256`) plus those options.
    """

    extra_options: dict[str, Any]

    async def _get_conn(self) -> asyncssh.SSHClientConnection:
        """Connect as the provider does (its own extras parsing), adding the options of the sync hook."""
        conn = await get_async_connection(self.sftp_conn_id)
        self._parse_extras(conn)  # host_key, known_hosts, no_host_key_check, key_file, private_key
        config: dict[str, Any] = {
            "host": _first_set(self.host, conn.host),
            "port": _first_set(self.port, conn.port, 22),
            "username": _first_set(self.username, conn.login),
            "password": _first_set(self.password, conn.password),
        }
        if self.key_file:
            config["client_keys"] = self.key_file
        known_hosts = self.known_hosts
        if isinstance(known_hosts, str) and known_hosts.lower() == "none":
            config["known_hosts"] = None
        elif known_hosts and (
            known_hosts != os.path.expanduser(self.default_known_hosts) or os.path.isfile(known_hosts)
        ):
            config["known_hosts"] = known_hosts
        if self.private_key:
            config["client_keys"] = [asyncssh.import_private_key(self.private_key, self.passphrase or None)]
        if self.passphrase:
            config["passphrase"] = self.passphrase
        connection: asyncssh.SSHClientConnection = await asyncssh.connect(**config, **self.extra_options)
        return connection


class SFTPSensingHookAsync:
    """
    The asyncssh twin of :class:`SFTPSensingHook`: the same answers, awaited, over one connection.

    Built on ``SFTPHookAsync`` (``host_key``, ``known_hosts``, ``no_host_key_check``, ``key_file``,
    ``private_key`` extras), plus the ``ciphers``, ``disabled_algorithms`` and ``compress`` extras the sync
    hook honours. Use it as ``async with SFTPSensingHookAsync(conn_id) as io:`` and drive polls with
    ``await poll.adrive(generator, io)``.

    :param sftp_conn_id: SFTP connection to use
    :param chunk_size: bytes per read while hashing
    """

    def __init__(self, sftp_conn_id: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.conn_id = sftp_conn_id
        self.chunk_size = chunk_size
        self.where = f"<{sftp_conn_id}>"
        self.login: str | None = None
        self._hook: _ParityHookAsync | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._managed: Any = None

    def target(self, path: str) -> str:
        """Return how messages name ``path`` on this server."""
        return sftp_target(self.where, path)

    async def resolve(self) -> None:
        """Look up the connection: server name for messages and the parity options."""
        if self._hook is not None:
            return
        hook = _ParityHookAsync(sftp_conn_id=self.conn_id)
        conn = await get_async_connection(self.conn_id)
        self.where = f"{conn.host}:{conn.port or 22}"
        self.login = conn.login
        hook.extra_options = asyncssh_options(conn.extra_dejson)
        self._hook = hook

    async def client(self) -> asyncssh.SFTPClient:
        """Return the open SFTP client, connecting (again) when needed."""
        if self._sftp is None:
            await self.resolve()
            if self._hook is None:
                raise RuntimeError(f"connection {self.conn_id!r} was not resolved")
            managed = self._hook.get_managed_conn()
            self._sftp = await managed.__aenter__()
            self._managed = managed
        return self._sftp

    async def close(self) -> None:
        """Close the SFTP client and the SSH connection, if open."""
        managed, self._managed, self._sftp = self._managed, None, None
        if managed is not None:
            try:
                await managed.__aexit__(None, None, None)
            except (OSError, asyncssh.Error) as err:
                log.debug("Closing the SSH connection to %s: %s", self.where, err)

    async def __aenter__(self) -> SFTPSensingHookAsync:
        await self.resolve()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @async_sftp_errors("checking", missing=_missing_observation)
    async def observe(self, path: str) -> Observation:
        """Return the size and mtime of ``path``, or a missing observation; refuse what is not a file."""
        attrs = await (await self.client()).stat(path)
        return _observation(self.target(path), attrs.permissions, attrs.size, attrs.mtime)

    @async_sftp_errors("reading", missing=lambda: None)
    async def digest(self, path: str, algorithm: str, size: int) -> str | None:
        """
        Return ``"<algorithm>:<hex>"`` of the first ``size`` bytes of ``path``; ``None`` if it is shorter.

        Keeps :data:`READ_AHEAD` chunk reads in flight so a long round trip does not bound the rate, and
        hashes one chunk per await: memory stays at ``READ_AHEAD * chunk_size`` and the loop stays free.
        """
        log.info("Hashing %s (%d bytes, %s)", self.target(path), size, algorithm)
        hasher = new_hasher(algorithm)
        if not await self._feed(path, size, hasher.update):
            return None  # truncated while we read
        return format_checksum(algorithm, hasher.hexdigest())

    @async_sftp_errors("reading", missing=lambda: None)
    async def range_digests(
        self, path: str, range_size: int, size: int
    ) -> tuple[tuple[str, ...], str] | None:
        """Return the sha256 of each ``range_size`` range of the first ``size`` bytes and of all of them."""
        log.info("Hashing %s (%d bytes, ranges of %d)", self.target(path), size, range_size)
        hasher = RangeHasher(range_size)
        if not await self._feed(path, size, hasher.update):
            return None
        return hasher.finish()

    @async_sftp_errors("reading", missing=lambda: None, manifest=True)
    async def read_manifest(self, path: str) -> bytes | None:
        """Return the bytes of ``<path>.manifest`` (one more than the format allows, at most), or ``None``."""
        async with (await self.client()).open(manifest_path(path), "rb") as handle:
            # Opened in binary mode: asyncssh returns bytes (it loops over short reads).
            return cast("bytes", await handle.read(MAX_MANIFEST_BYTES + 1))

    async def _feed(self, path: str, size: int, consume: Callable[[bytes], object]) -> bool:
        """
        Pass the first ``size`` bytes of ``path`` to ``consume`` in order; False if the file is shorter.

        Keeps :data:`READ_AHEAD` chunk reads in flight so a long round trip does not bound the rate, and
        consumes one chunk per await: memory stays at ``READ_AHEAD * chunk_size`` and the loop stays free.
        """
        chunk = self.chunk_size
        async with (await self.client()).open(path, "rb") as remote:

            async def read(offset: int) -> tuple[int, bytes]:
                length = min(chunk, size - offset)
                # Opened in binary mode: asyncssh returns bytes.
                return length, cast("bytes", await remote.read(length, offset))

            offsets = iter(range(0, size, chunk))
            pending = collections.deque(
                asyncio.ensure_future(read(offset)) for offset in itertools.islice(offsets, READ_AHEAD)
            )
            try:
                while pending:
                    length, data = await pending.popleft()
                    if len(data) != length:
                        return False  # truncated while we read
                    for offset in itertools.islice(offsets, 1):
                        pending.append(asyncio.ensure_future(read(offset)))
                    consume(data)
            finally:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        return True

    @async_sftp_errors("reading", missing=lambda: None, sidecar=True)
    async def read_sidecar(self, path: str, algorithm: str) -> str | None:
        """Return the hex digest in the sidecar ``<path>.<algorithm>``, or ``None`` while there is none."""
        sftp = await self.client()
        side = sidecar_path(path, algorithm)
        attrs = await sftp.stat(side)
        if (attrs.size or 0) > MAX_SIDECAR_BYTES:
            return None  # not a checksum line: the same answer as the sync reader
        async with sftp.open(side, "rb") as handle:
            # A few bytes: read it whole; opened in binary mode, asyncssh returns bytes.
            data = cast("bytes", await handle.read(MAX_SIDECAR_BYTES))
        return parse_sidecar(data.decode("utf-8", "replace"), algorithm)

    @async_sftp_errors("listing")
    async def list_files(self, directory: str, pattern: str) -> dict[str, Observation]:
        """Return the regular files in ``directory`` whose names match ``pattern``, with size and mtime."""
        found: dict[str, Observation] = {}
        for entry in await (await self.client()).readdir(directory):
            name = str(entry.filename)
            mode = entry.attrs.permissions
            if matches(name, pattern) and mode is not None and stat.S_ISREG(mode):
                found[name] = Observation.take(int(entry.attrs.size or 0), int(entry.attrs.mtime or 0))
        return found

    @async_sftp_errors("claiming")
    async def claim(self, source: str, target: str) -> Claimed:
        """Rename ``source`` to ``target`` unless ``target`` exists (plain SFTP rename never overwrites)."""
        sftp = await self.client()
        try:
            await sftp.rename(source, target)
        except asyncssh.SFTPNoSuchFile:
            if not await sftp.exists(source):
                return Claimed.GONE  # another watcher claimed it, or someone removed it
            raise _no_claim_directory(self.target(posixpath.dirname(target))) from None
        except (asyncssh.SFTPFailure, asyncssh.SFTPFileAlreadyExists) as err:
            # OpenSSH answers a taken name with a bare failure, ProFTPD with "file already exists".
            if not await sftp.exists(target):
                raise OSError(f"SFTP rename {self.target(source)} -> {target} failed: {err.reason}") from err
            return Claimed.EXISTS
        return Claimed.CLAIMED
