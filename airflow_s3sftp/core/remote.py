# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The SFTP port of a delivery: everything a delivery asks of the remote side, in one protocol.

:class:`Remote` is what :class:`~airflow_s3sftp.core.delivery.Delivery` (and the sidecar, the
sweep) speaks to; :class:`RemoteFile` is one file being written strictly in offset order. Two
implementations over one paramiko session differ only in how requests travel, chosen when the
port is made (:meth:`airflow_s3sftp.core.session.SFTPSession.remote`):

- :class:`PipelinedRemote`, for servers that apply requests in arrival order (OpenSSH,
  ProFTPD): a window of WRITEs in flight, and independent requests sent back to back (the
  STAT of the target with the OPEN, the chmod with the first WRITEs, fsync + STAT + CLOSE
  behind the last WRITE, the final chmod with the rename): one round trip each.
- :class:`StrictRemote`, for servers that may apply requests in parallel (Green End) or when
  ``strict_order`` asks for it: one request at a time, every answer waited for.

The delivery never asks which one it has. A unit fake implements the same protocol.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import logging
from typing import TYPE_CHECKING, Protocol

from paramiko import SFTPAttributes, SFTPFile
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_EXTENDED,
    CMD_FSETSTAT,
    CMD_HANDLE,
    CMD_OPEN,
    CMD_REMOVE,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_EXCL,
    SFTP_FLAG_READ,
    SFTP_FLAG_TRUNC,
    SFTP_FLAG_WRITE,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    int64,
)

from airflow_s3sftp.core.sftp import (
    PipelinedWriter,
    Replies,
    create_private,
    create_private_sent,
    ensure_directory,
    free_bytes,
    fsync,
    list_directory,
    mode_attrs,
    publish,
    read_range,
    remove_quietly,
    reply_status,
    sftp_error,
    stat_or_none,
    status_error,
    write_error,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from paramiko import Message, SFTPClient

    from airflow_s3sftp.core.session import SFTPSession

log = logging.getLogger(__name__)


class RemoteFile(Protocol):
    """A remote file open for writing at :attr:`position`, and only there (append-only)."""

    path: str

    @property
    def position(self) -> int:
        """Return the offset at which the next write lands."""

    @property
    def confirmed(self) -> int:
        """Return the offset below which the server has acknowledged every write."""

    def write(self, data: bytes) -> int:
        """Append ``data`` in offset order; a refused write raises an error naming the cause."""

    def finish(self, *, sync: bool) -> SFTPAttributes | None:
        """Flush every write (and fsync with ``sync``), close, and return what landed (None: gone)."""

    def checkpoint(self, on_synced: Callable[[int], None]) -> None:
        """Ask the server to flush what was written so far; once it confirms, call ``on_synced(offset)``.

        Pipelined, the fsync travels with the writes and its answer is read with theirs (no wait);
        strict, it is waited for. Where the server has no fsync, ``on_synced`` is never called.
        """

    def server_time(self) -> float | None:
        """Return the server's clock as the mtime of this freshly written file (None: unknown)."""

    def abort(self) -> None:
        """Close the file after a failure without raising."""


class Remote(Protocol):
    """What a delivery asks of the SFTP side: one port, one implementation per wire mode.

    Paths are the server's; attributes are paramiko ``SFTPAttributes`` (or look-alikes with
    ``st_size``, ``st_mtime``, ``st_mode`` and ``filename``). Errors are builtins that name the
    action and the path (:data:`airflow_s3sftp.core.sftp.STATUS_ERRORS` is the one table); a
    lost connection is whatever :meth:`lost` recognises.
    """

    endpoint: str

    def lost(self, err: BaseException) -> bool:
        """Return True when ``err`` means the connection is gone or stalled."""

    def stat(self, path: str) -> SFTPAttributes | None:
        """Return the attributes of ``path``, or None when it does not exist."""

    def ensure_directory(self, directory: str, *, create: bool) -> None:
        """Make sure ``directory`` exists; create it and its parents only with ``create``."""

    def create(
        self, path: str, *, exclusive: bool, look_at: str | None = None, size: int | None = None
    ) -> tuple[RemoteFile, SFTPAttributes | None]:
        """Create ``path`` readable by us alone (refusing an existing one when ``exclusive``).

        Also return the attributes of ``look_at`` (None when missing or not asked), read in the
        same round trip where the wire mode allows it. ``size`` (the bytes the file will hold)
        lets a failed write name a full disk. A refused create carries the attributes of
        ``look_at`` as its ``target`` attribute, since they may explain the refusal.
        """

    def reopen(self, path: str, offset: int, *, size: int | None = None) -> RemoteFile:
        """Open our existing ``path`` to append at ``offset`` (whatever lies beyond it is cut)."""

    def read(self, path: str, size: int | None, *, start: int = 0) -> Iterator[bytes]:
        """Yield bytes ``[start, size)`` of ``path`` in order (``size=None``: to its end)."""

    def publish(self, temp: str, final: str, *, replace: bool, backup: str, mode: int | None) -> str:
        """Give ``temp`` the permissions ``mode`` and the name ``final``; return how it was done.

        ``replace`` replaces atomically (``posix-rename``; a three-step fallback where the server
        lacks it); without it an existing ``final`` is refused. A missing ``temp`` raises
        :class:`FileNotFoundError`; a refused chmod is a warning.
        """

    def chmod(self, path: str, mode: int) -> None:
        """Set the permissions of ``path``; a refusal is a warning, a missing file an error."""

    def write_small(
        self, path: str, content: bytes, mode: int | None, *, temp: str, backup: str, exclusive: bool = True
    ) -> None:
        """Write a small file under ``temp`` and publish it onto ``path`` (never half-written).

        ``exclusive=False`` reuses a ``temp`` left by an earlier write (a name only we use).
        """

    def read_small(self, path: str, limit: int) -> bytes | None:
        """Return the content of a small file (None when missing or larger than ``limit``)."""

    def side(self) -> Remote | None:
        """Return a port on a channel of its own for small writes beside a stream (the journal).

        None where the server must not see two SFTP channels at once: write on this one, between writes.
        """

    def listdir(self, directory: str) -> list[SFTPAttributes]:
        """Return the entries of ``directory`` with their attributes."""

    def remove(self, path: str) -> bool:
        """Remove ``path``; return False (logged) instead of raising when that fails."""

    def remove_all(self, paths: list[str]) -> None:
        """Remove every one of ``paths`` (the REMOVEs sent at once where the wire mode allows).

        Never raises: a failure is logged.
        """

    def free_bytes(self, path: str) -> int | None:
        """Return the bytes free to us on the filesystem of ``path`` (None: the server will not say)."""

    def round_trip(self) -> float:
        """Return the round-trip time of one SFTP request in seconds (measured once per session)."""

    def can_join(self) -> bool:
        """Return whether the server copies byte ranges between files itself (``copy-data``)."""

    def lanes(self, count: int) -> list[Remote]:
        """Return up to ``count`` ports on SFTP channels of their own (same connection, as granted)."""

    def create_each(self, lanes: list[Remote], paths: list[str], *, size: int | None) -> list[RemoteFile]:
        """Create ``paths[i]`` (exclusive, readable by us alone) on ``lanes[i]``, all OPENs sent at once.

        On a refusal, the files that were created are closed (not removed: the caller knows their
        names) and the first error is raised.
        """

    def joiner(self, target: RemoteFile, parts: list[str]) -> Joiner:
        """Open ``parts`` for reading, to have the server copy their stripes into ``target`` in order."""


class Joiner(Protocol):
    """Server-side copies (``copy-data``) of part files' stripes into a temp file, in offset order."""

    def copy(self, part: int, offset: int, length: int, at: int) -> None:
        """Have the server copy ``length`` bytes at ``offset`` of part ``part`` to ``at`` in the target.

        ``at`` is the target's current end: each copy appends. Requests may be pipelined; a failure
        is raised by a later call.
        """

    def finish(self) -> None:
        """Wait for every copy, raise the first failure, and close the parts."""

    def abort(self) -> None:
        """Close the parts after a failure without raising."""


class _File:
    """A file of ours being written in order over a paramiko session (both wire modes)."""

    def __init__(
        self,
        remote: _ParamikoRemote,
        handle: SFTPFile,
        path: str,
        *,
        start: int,
        size: int | None,
        replies: Replies | None,
        mtime: float | None = None,
    ) -> None:
        self.path = path
        self._size = size
        self._mtime = mtime  # the server's clock when the file was created, if asked with the OPEN
        self._remote = remote
        self._pending_syncs: list[_WhenSynced] = []
        self._handle = handle
        self._replies = replies
        self._writes = PipelinedWriter(
            remote.sftp,
            handle,
            start=start,
            write_size=remote.write_size,
            max_in_flight=1 if replies is None else remote.max_in_flight,
        )

    @property
    def position(self) -> int:
        return self._writes.offset

    @property
    def confirmed(self) -> int:
        return self._writes.confirmed

    @property
    def handle(self) -> bytes:
        """Return the server's handle of the open file."""
        handle: bytes = self._handle.handle  # type: ignore[assignment]  # paramiko types it loosely
        return handle

    def write(self, data: bytes) -> int:
        with self._remote.naming_write_errors(self.path, self._size):
            self._writes.write(data)
        return len(data)

    def finish(self, *, sync: bool) -> SFTPAttributes | None:
        sftp, replies = self._remote.sftp, self._replies
        with self._remote.naming_write_errors(self.path, self._size):
            if replies is None:
                self._writes.flush()
                if sync:
                    fsync(sftp, self._handle)
                self._handle.close()  # collects the status of every write
                return stat_or_none(sftp, self.path)
            # fsync, a STAT and CLOSE behind the last WRITE: the whole tail costs one round trip.
            synced = replies.send_fsync(self._handle) if sync else None
            probe = replies.send_stat(self.path)
            self._handle.close()  # its reply comes after every earlier one: all are in now
            self._writes.flush()  # the first failed WRITE, if any
            if synced is not None:
                replies.synced(synced, self.path)
            replies.settle()
            return replies.attrs(probe, self.path)

    def checkpoint(self, on_synced: Callable[[int], None]) -> None:
        offset = self.position
        if self._replies is None:
            with self._remote.naming_write_errors(self.path, self._size):
                self._writes.flush()
                if fsync(self._remote.sftp, self._handle):
                    on_synced(offset)
            return
        owner = _WhenSynced(offset, on_synced, self.path)
        # paramiko keeps the owners of pending requests in a WeakValueDictionary: hold on to it.
        self._pending_syncs = [pending for pending in self._pending_syncs if not pending.answered]
        self._pending_syncs.append(owner)
        self._remote.sftp._async_request(  # type: ignore[attr-defined]
            owner, CMD_EXTENDED, "fsync@openssh.com", self._handle.handle
        )

    def server_time(self) -> float | None:
        if self._mtime is not None:
            return self._mtime
        mtime = self._handle.stat().st_mtime
        return None if mtime is None else float(mtime)

    def abort(self) -> None:
        if self._handle.closed:
            return
        try:
            self._handle.close()
        except Exception:  # the connection may be gone; the error that got us here matters more
            log.debug("Closing %s after a failure failed", self.path, exc_info=True)


def _chmod_refused(path: str, reason: str) -> None:
    log.debug("Server refused chmod on %s (%s); keeping its mode", path, reason)


class _WhenSynced:
    """The owner of a pipelined fsync's answer: calls back with the offset it covers once confirmed."""

    def __init__(self, offset: int, on_synced: Callable[[int], None], path: str) -> None:
        self._offset, self._on_synced, self._path = offset, on_synced, path
        self.answered = False

    def _async_response(self, kind: int, msg: Message, num: int) -> None:
        """Called by paramiko with the reply (while a write collects replies: never blocks)."""
        self.answered = True
        code, text = reply_status(kind, msg)
        if code == SFTP_OK:
            self._on_synced(self._offset)
        else:
            log.debug("fsync of %s at %s not confirmed (%s): no checkpoint", self._path, self._offset, text)


class _ParamikoRemote:
    """The :class:`Remote` port over one paramiko ``SFTPClient``; subclasses choose the wire mode.

    :param sftp: the open SFTP client
    :param endpoint: ``user@host:port``, for messages
    :param lost: tells a lost connection from a refused request
    :param write_size: bytes per WRITE request
    :param max_in_flight: WRITE requests outstanding at most (pipelined mode)
    """

    pipelined = False

    def __init__(
        self,
        sftp: SFTPClient,
        *,
        endpoint: str,
        lost: Callable[[BaseException], bool],
        write_size: int,
        max_in_flight: int = 32,
        session: SFTPSession | None = None,
    ) -> None:
        self.sftp = sftp
        self.endpoint = endpoint
        self._lost = lost
        self.write_size = write_size
        self.max_in_flight = max_in_flight
        self._session = session

    def _replies(self) -> Replies | None:
        return Replies(self.sftp) if self.pipelined else None

    def lost(self, err: BaseException) -> bool:
        return self._lost(err)

    @contextlib.contextmanager
    def naming_write_errors(self, path: str, size: int | None) -> Iterator[None]:
        """Name a failed write (a full disk, a permission) unless the connection itself is gone."""
        try:
            yield
        except OSError as err:
            if self.lost(err):
                raise
            raise write_error(self.sftp, err, path, size) from err

    def stat(self, path: str) -> SFTPAttributes | None:
        return stat_or_none(self.sftp, path)

    def ensure_directory(self, directory: str, *, create: bool) -> None:
        ensure_directory(self.sftp, directory, create)

    def create(
        self, path: str, *, exclusive: bool, look_at: str | None = None, size: int | None = None
    ) -> tuple[RemoteFile, SFTPAttributes | None]:
        replies = self._replies()
        if replies is None:  # strict: the STAT of ``look_at`` first, alone, then the OPEN
            target = stat_or_none(self.sftp, look_at) if look_at is not None else None
            try:
                handle = create_private(self.sftp, path, exclusive=exclusive)
            except OSError as err:
                err.target = target  # type: ignore[attr-defined]  # may explain the refusal
                raise
            return _File(self, handle, path, start=0, size=size, replies=None), target
        # Pipelined, one round trip: the STAT of ``look_at``, the OPEN, and a STAT of the new file (its
        # mtime is the server's clock, for the sweep); the chmod follows, read with the tail.
        probe = replies.send_stat(look_at) if look_at is not None else None
        opened = replies.send_create(path, exclusive=exclusive)
        mine = replies.send_stat(path)
        try:
            handle = create_private_sent(
                self.sftp, path, replies, opened, exists=lambda: replies.attrs(mine, path) is not None
            )
        except OSError as err:
            looked = replies.attrs(probe, look_at or "") if probe is not None else None
            err.target = looked  # type: ignore[attr-defined]  # may explain the refusal
            raise
        target = replies.attrs(probe, look_at or "") if probe is not None else None
        try:
            created = replies.attrs(mine, path)
        except OSError:
            created = None  # asked again by server_time() when needed
        mtime = None if created is None or created.st_mtime is None else float(created.st_mtime)
        return _File(self, handle, path, start=0, size=size, replies=replies, mtime=mtime), target

    def reopen(self, path: str, offset: int, *, size: int | None = None) -> RemoteFile:
        try:
            handle = self.sftp.open(path, "r+b", bufsize=0)
            handle.truncate(offset)
        except OSError as err:
            raise sftp_error(err, "reopen", path) from err
        return _File(self, handle, path, start=offset, size=size, replies=self._replies())

    def read(self, path: str, size: int | None, *, start: int = 0) -> Iterator[bytes]:
        return read_range(self.sftp, path, size, start=start)

    def publish(self, temp: str, final: str, *, replace: bool, backup: str, mode: int | None) -> str:
        replies = self._replies()
        chmod = None
        if mode is not None:
            if replies is not None:  # travels with the rename: one round trip for both
                chmod = replies.send_chmod(temp, mode)
            else:
                self.chmod(temp, mode)
        how = publish(self.sftp, temp, final, replace=replace, backup=backup)
        if replies is not None and chmod is not None:
            refused = replies.refusal(chmod, temp)
            if refused is not None:
                log.warning("Server refused chmod %o on %s: %s", mode, temp, refused)
        return how

    def chmod(self, path: str, mode: int) -> None:
        try:
            self.sftp.chmod(path, mode)
        except FileNotFoundError:
            raise
        except OSError as err:
            if err.errno == errno.ENOENT:
                raise sftp_error(err, "chmod", path) from err
            log.warning("Server refused chmod %o on %s: %s", mode, path, err)

    def write_small(
        self, path: str, content: bytes, mode: int | None, *, temp: str, backup: str, exclusive: bool = True
    ) -> None:
        try:
            with self.sftp.open(temp, "wbx" if exclusive else "wb") as handle:
                handle.write(content)
            self.publish(temp, path, replace=True, backup=backup, mode=mode)
        except BaseException:
            self.remove(temp)
            raise

    def read_small(self, path: str, limit: int) -> bytes | None:
        attrs = stat_or_none(self.sftp, path)
        if attrs is None or (attrs.st_size or 0) > limit:
            return None
        try:
            return b"".join(read_range(self.sftp, path, attrs.st_size or 0))
        except FileNotFoundError:
            return None

    def side(self) -> Remote | None:
        if self._session is None or not self._session.profile.channels_side_by_side:
            return None
        side = self._session.side_channel()
        if side is None:
            return None
        return type(self)(
            side,
            endpoint=self.endpoint,
            lost=self._lost,
            write_size=self.write_size,
            max_in_flight=self.max_in_flight,
        )

    def listdir(self, directory: str) -> list[SFTPAttributes]:
        if self.pipelined:
            return list_directory(self.sftp, directory or ".")
        try:
            return self.sftp.listdir_attr(directory or ".")
        except OSError as err:
            raise sftp_error(err, "list", directory or ".") from err

    def remove(self, path: str) -> bool:
        return remove_quietly(self.sftp, path)

    def remove_all(self, paths: list[str]) -> None:
        if not self.pipelined or len(paths) < 2:
            for path in paths:
                self.remove(path)
            return
        # Independent of each other: one round trip for all of them.
        try:
            replies = Replies(self.sftp)
            sent = [(path, replies.send(CMD_REMOVE, path)) for path in paths]
            for path, num in sent:
                code, text = replies.status(num)
                if code not in (SFTP_OK, SFTP_NO_SUCH_FILE):
                    log.warning("Could not remove %s: %s", path, text or f"SFTP status {code}")
        except Exception as err:  # cleanup after a failure must not mask that failure
            log.warning("Could not remove %s: %s", ", ".join(paths), err)

    def free_bytes(self, path: str) -> int | None:
        return free_bytes(self.sftp, path)

    def round_trip(self) -> float:
        return self._session.round_trip if self._session is not None else 0.0

    def can_join(self) -> bool:
        return self._session is not None and self._session.profile.copy_data

    def lanes(self, count: int) -> list[Remote]:
        if self._session is None:
            return []
        kind = type(self)
        return [
            kind(
                sftp,
                endpoint=self.endpoint,
                lost=self._lost,
                write_size=self.write_size,
                max_in_flight=self.max_in_flight,
            )
            for sftp in self._session.lanes(count)
        ]

    def create_each(self, lanes: list[Remote], paths: list[str], *, size: int | None) -> list[RemoteFile]:
        ports = [lane for lane in lanes if isinstance(lane, _ParamikoRemote)]
        if len(ports) != len(lanes):
            raise TypeError("create_each takes the lanes of this session's port")
        flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC | SFTP_FLAG_EXCL
        # Each OPEN travels on its own channel: every one is sent before any answer is read. The mode
        # rides in the OPEN (OpenSSH creates the file 0600); the FSETSTAT below covers other servers.
        sent = []
        for port, path in zip(ports, paths, strict=True):
            replies = Replies(port.sftp)
            sent.append((port, path, replies, replies.send(CMD_OPEN, path, flags, mode_attrs(0o600))))
        files: list[_File] = []
        error: OSError | None = None
        for port, path, replies, num in sent:
            try:
                kind, msg = replies.wait(num)
            except OSError as err:
                error = error or err
                continue
            if kind != CMD_HANDLE:
                refused = status_error(*reply_status(kind, msg)) or OSError(f"SFTP create {path!r}")
                error = error or sftp_error(refused, "create", path)
                continue
            handle = SFTPFile(port.sftp, msg.get_binary(), "wb", 0)
            if port.pipelined:
                chmod = replies.send(CMD_FSETSTAT, handle.handle, mode_attrs(0o600))
                replies.check_later(chmod, functools.partial(_chmod_refused, path))
                files.append(_File(port, handle, path, start=0, size=size, replies=replies))
            else:
                with contextlib.suppress(OSError):
                    handle.chmod(0o600)
                files.append(_File(port, handle, path, start=0, size=size, replies=None))
        if error is not None:
            for file in files:
                file.abort()
            raise error
        return list(files)

    def joiner(self, target: RemoteFile, parts: list[str]) -> Joiner:
        if not isinstance(target, _File):
            raise TypeError(f"cannot join into {target!r}: not a file of this session")
        return _Joiner(self, target, parts)


class _Joiner:
    """Copy stripes of part files into a temp file on the server (``copy-data``), in offset order.

    Pipelined where the server applies requests in arrival order (as for WRITEs): the copies land in
    the order sent, a window of them in flight; else one at a time.
    """

    def __init__(self, remote: _ParamikoRemote, target: _File, parts: list[str]) -> None:
        self._replies = Replies(remote.sftp)
        self._path, self._target = target.path, target.handle
        self._pipelined = remote.pipelined
        self._window = 64 if remote.pipelined else 1
        self._pending: collections.deque[int] = collections.deque()
        self._handles: list[bytes] = []
        # The parts' OPENs are independent: sent at once, one round trip for all.
        sent = [
            (path, self._replies.send(CMD_OPEN, path, SFTP_FLAG_READ, SFTPAttributes())) for path in parts
        ]
        error: OSError | None = None
        for path, num in sent:
            kind, msg = self._replies.wait(num)
            if kind == CMD_HANDLE:
                self._handles.append(bytes(msg.get_binary()))
            else:
                refused = status_error(*reply_status(kind, msg)) or OSError(f"SFTP open {path!r}")
                error = error or sftp_error(refused, "open", path)
        if error is not None:
            self.abort()
            raise error

    def copy(self, part: int, offset: int, length: int, at: int) -> None:
        while len(self._pending) >= self._window:
            self._copied(self._pending.popleft())
        self._pending.append(
            self._replies.send(
                CMD_EXTENDED,
                "copy-data",
                self._handles[part],
                int64(offset),
                int64(length),
                self._target,
                int64(at),
            )
        )

    def finish(self) -> None:
        # Pipelined, the CLOSEs go right behind the last copy (applied after it): no extra round trip.
        closes = self._send_closes() if self._pipelined else []
        try:
            while self._pending:
                self._copied(self._pending.popleft())
        finally:
            self._collect(closes or self._send_closes())

    def abort(self) -> None:
        try:
            closes = self._send_closes()
        except Exception as err:  # a lost connection: the error that matters is raised elsewhere
            log.debug("Closing the part files' handles failed: %s", err)
            return
        self._collect(closes)

    def _send_closes(self) -> list[int]:
        handles, self._handles = self._handles, []
        return [self._replies.send(CMD_CLOSE, handle) for handle in handles]

    def _collect(self, closes: list[int]) -> None:
        for num in closes:
            try:
                code, text = self._replies.status(num)
            except Exception as err:  # a lost connection: the error that matters is raised elsewhere
                log.debug("Closing a part file's handle failed: %s", err)
                return
            if code != SFTP_OK:
                log.debug("Closing a part file's handle failed: %s", text)

    def _copied(self, num: int) -> None:
        error = status_error(*self._replies.status(num))
        if error is not None:
            raise sftp_error(error, "copy-data into", self._path)


class PipelinedRemote(_ParamikoRemote):
    """The port for servers that apply requests in arrival order: independent requests share round trips."""

    pipelined = True


class StrictRemote(_ParamikoRemote):
    """The port for servers that may apply requests in parallel: one request at a time."""

    pipelined = False
