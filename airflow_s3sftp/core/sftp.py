# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""SFTP primitives of a delivery: exclusive temp files, fast in-order writes, read-back, rename."""

from __future__ import annotations

import errno
import logging
import posixpath
import stat
from typing import TYPE_CHECKING

from paramiko.sftp import (
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_READ,
    CMD_STATUS,
    CMD_WRITE,
    SFTP_EOF,
    SFTP_FAILURE,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    SFTP_OP_UNSUPPORTED,
    SFTP_PERMISSION_DENIED,
    int64,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from paramiko import Message, SFTPAttributes, SFTPClient, SFTPFile

    from airflow_s3sftp.core.reader import Hasher

log = logging.getLogger(__name__)

DEFAULT_WRITE_SIZE = 32 * 1024  # what every SFTP server must accept
MAX_WRITE_SIZE = 256 * 1024


def sftp_error(err: OSError, action: str, path: str) -> OSError:
    """Return a builtin error for a failed SFTP call whose message names the action and the path."""
    reason = err.strerror or (err.args[0] if err.args else "") or type(err).__name__
    message = f"SFTP {action} {path!r} failed: {reason}"
    if err.errno == errno.ENOENT:
        return FileNotFoundError(errno.ENOENT, message)
    if err.errno == errno.EACCES:
        return PermissionError(errno.EACCES, message)
    return OSError(err.errno, message)


def stat_or_none(sftp: SFTPClient, path: str) -> SFTPAttributes | None:
    """Return the attributes of ``path``, or None when it does not exist."""
    try:
        return sftp.stat(path)
    except OSError as err:
        if err.errno == errno.ENOENT:
            return None
        raise sftp_error(err, "stat", path) from err


def is_dir(attrs: SFTPAttributes | None) -> bool:
    return attrs is not None and attrs.st_mode is not None and stat.S_ISDIR(attrs.st_mode)


def ensure_directory(sftp: SFTPClient, directory: str, create: bool) -> None:
    """Make sure ``directory`` exists, creating missing parents when ``create`` is set."""
    attrs = stat_or_none(sftp, directory)
    if is_dir(attrs):
        return
    if attrs is not None:
        raise NotADirectoryError(errno.ENOTDIR, f"SFTP path {directory!r} exists and is not a directory")
    if not create:
        raise FileNotFoundError(
            errno.ENOENT,
            f"SFTP directory {directory!r} does not exist: check the path for a typo, or set "
            "create_dirs=True to create it",
        )
    parent = posixpath.dirname(directory.rstrip("/"))
    if parent and parent != directory:
        ensure_directory(sftp, parent, create)
    try:
        sftp.mkdir(directory)
    except OSError as err:
        if not is_dir(stat_or_none(sftp, directory)):  # lost a race with another creator: fine
            raise sftp_error(err, "mkdir", directory) from err
    else:
        log.info("Created SFTP directory %s (create_dirs=True)", directory)


def _extended(sftp: SFTPClient, request: str, *args: object) -> tuple[int, Message]:
    """Send an SFTP extended request; paramiko has no public call for the OpenSSH extensions."""
    reply: tuple[int, Message] = sftp._request(CMD_EXTENDED, request, *args)  # type: ignore[attr-defined]
    return reply


def server_write_size(sftp: SFTPClient) -> int:
    """Return the largest write the server accepts (``limits@openssh.com``), within 32-256 KiB."""
    try:
        kind, msg = _extended(sftp, "limits@openssh.com")
    except OSError:
        return DEFAULT_WRITE_SIZE
    if kind != CMD_EXTENDED_REPLY:
        return DEFAULT_WRITE_SIZE
    msg.get_int64()  # max packet length
    msg.get_int64()  # max read length
    max_write = msg.get_int64()
    return max(DEFAULT_WRITE_SIZE, min(max_write or DEFAULT_WRITE_SIZE, MAX_WRITE_SIZE))


def create_private(sftp: SFTPClient, path: str, *, exclusive: bool = True) -> SFTPFile:
    """Create ``path`` (refusing an existing one when ``exclusive``) readable by us alone until published."""
    try:
        handle = sftp.open(path, "wbx" if exclusive else "wb", bufsize=0)
    except OSError as err:
        if exclusive and stat_or_none(sftp, path) is not None:
            raise FileExistsError(errno.EEXIST, f"SFTP file {path!r} already exists") from err
        raise sftp_error(err, "create", path) from err
    try:
        handle.chmod(0o600)  # nobody but us reads it before it is verified
    except OSError:
        log.debug("Server refused chmod on %s; keeping its default mode", path)
    return handle


class PipelinedWriter:
    """Send SFTP WRITE requests in offset order with a bounded window, checking every reply.

    paramiko's own pipelining (``SFTPFile.set_pipelined``) drops the status of write replies it
    reads incidentally, so a failed write (a full disk) can pass unnoticed until a size check.
    Here every reply is checked, the first error is raised on the next call, and at most
    ``max_in_flight`` requests are outstanding (1 = wait for each write: strict ordering on
    servers that may apply pipelined writes in parallel).

    :param sftp: the SFTP session
    :param handle: the open remote file
    :param start: offset of the first write
    :param write_size: bytes per WRITE request
    :param max_in_flight: requests sent before waiting for replies
    """

    def __init__(
        self, sftp: SFTPClient, handle: SFTPFile, *, start: int, write_size: int, max_in_flight: int
    ) -> None:
        self._sftp = sftp
        self._handle = handle.handle
        self._offset = start
        self._write_size = write_size
        self._max_in_flight = max(1, max_in_flight)
        self._outstanding: set[int] = set()
        self._error: OSError | None = None

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        for begin in range(0, len(view), self._write_size):
            piece = view[begin : begin + self._write_size]
            while len(self._outstanding) >= self._max_in_flight:
                self._collect_one()
            self._raise_error()
            num = self._sftp._async_request(  # type: ignore[attr-defined]
                self, CMD_WRITE, self._handle, int64(self._offset), bytes(piece)
            )
            self._outstanding.add(num)
            self._offset += len(piece)
        return len(data)

    def flush(self) -> None:
        """Wait for every outstanding reply and raise the first error."""
        while self._outstanding:
            self._collect_one()
        self._raise_error()

    def _collect_one(self) -> None:
        self._sftp._read_response()  # type: ignore[attr-defined]  # dispatches to _async_response

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _async_response(self, kind: int, msg: Message, num: int) -> None:
        """Called by paramiko with the reply to one of our requests."""
        self._outstanding.discard(num)
        if kind != CMD_STATUS:
            self._error = self._error or OSError(f"unexpected SFTP reply type {kind} to a write")
            return
        code, text = msg.get_int(), msg.get_text()
        if code != SFTP_OK and self._error is None:
            self._error = OSError(_ERRNO_OF.get(code), text or f"SFTP status {code}")


_ERRNO_OF = {SFTP_NO_SUCH_FILE: errno.ENOENT, SFTP_PERMISSION_DENIED: errno.EACCES}


class _StatusReply:
    """Keeps the raw reply to one request, status code included (paramiko keeps only the text)."""

    reply: tuple[int, Message] | None = None

    def _async_response(self, kind: int, msg: Message, num: int) -> None:
        self.reply = (kind, msg)


def _status_of(sftp: SFTPClient, kind: int, *args: object) -> tuple[int, str]:
    """Send one request and return its status ``(code, text)`` without paramiko's translation."""
    sink = _StatusReply()
    sftp._async_request(sink, kind, *args)  # type: ignore[attr-defined]
    while sink.reply is None:
        sftp._read_response()  # type: ignore[attr-defined]
    reply_kind, msg = sink.reply
    if reply_kind != CMD_STATUS:
        return SFTP_FAILURE, f"unexpected SFTP reply type {reply_kind}"
    return msg.get_int(), msg.get_text()


def free_bytes(sftp: SFTPClient, path: str) -> int | None:
    """Return the bytes available to us on the filesystem of ``path`` (``statvfs@openssh.com``)."""
    try:
        kind, msg = _extended(sftp, "statvfs@openssh.com", path)
    except OSError:
        return None
    if kind != CMD_EXTENDED_REPLY:
        return None
    msg.get_int64()  # f_bsize
    fragment_size = msg.get_int64()
    msg.get_int64()  # f_blocks
    msg.get_int64()  # f_bfree
    return int(msg.get_int64() * fragment_size)  # f_bavail * f_frsize


def write_error(sftp: SFTPClient, err: OSError, path: str, size: int | None) -> OSError:
    """Return the error for a failed write, naming a full disk when the server's statvfs shows one.

    SFTP v3 reports ENOSPC as a bare "Failure", so the free space is asked for separately.
    """
    if err.errno is None:
        free = free_bytes(sftp, posixpath.dirname(path) or ".")
        if free is not None and (free < 1024 * 1024 or (size is not None and free < size)):
            return OSError(
                errno.ENOSPC,
                f"SFTP write {path!r} failed: no space left on the server's disk ({free} bytes free"
                + (f", {size} needed)" if size is not None else ")"),
            )
    return sftp_error(err, "write", path)


def fsync(sftp: SFTPClient, handle: SFTPFile) -> bool:
    """Ask the server to flush ``handle`` to disk (``fsync@openssh.com``); False when unsupported."""
    try:
        _extended(sftp, "fsync@openssh.com", handle.handle)
    except OSError as err:
        if "unsupported" in str(err).lower():
            return False
        raise
    return True


class _ReadReplies:
    """Collects the replies to pipelined READ requests, keyed by request number."""

    def __init__(self) -> None:
        self.replies: dict[int, tuple[int, Message]] = {}

    def _async_response(self, kind: int, msg: Message, num: int) -> None:
        self.replies[num] = (kind, msg)


def read_range(
    sftp: SFTPClient,
    path: str,
    size: int | None,
    *,
    start: int = 0,
    block_size: int = 255 * 1024,
    max_in_flight: int = 16,
) -> Iterator[bytes]:
    """Yield the bytes ``[start, size)`` of ``path`` in order, with a bounded window of READ requests.

    ``size=None`` reads to the end of the file as it is when opened (``fstat`` on the handle).

    paramiko's ``prefetch`` sends every request up front from a helper thread, can stall on large
    files and buffers without bound; this keeps at most ``max_in_flight`` requests outstanding on
    the caller's thread. 255 KiB requests (OpenSSH's limit) read back ~4x faster than 32 KiB ones;
    servers that return less are asked again for the rest.
    """
    with sftp.open(path, "rb") as handle:
        if size is None:
            size = handle.stat().st_size or 0
        sink = _ReadReplies()
        pending: list[tuple[int, int, int]] = []  # (request number, offset, length) in offset order
        next_offset = start
        while pending or next_offset < size:
            while next_offset < size and len(pending) < max_in_flight:
                length = min(block_size, size - next_offset)
                num = sftp._async_request(sink, CMD_READ, handle.handle, int64(next_offset), length)  # type: ignore[attr-defined]
                pending.append((num, next_offset, length))
                next_offset += length
            num, offset, length = pending[0]
            while num not in sink.replies:
                sftp._read_response()  # type: ignore[attr-defined]
            kind, msg = sink.replies.pop(num)
            pending.pop(0)
            if kind == CMD_STATUS:
                code, text = msg.get_int(), msg.get_text()
                if code == SFTP_EOF:
                    raise EOFError(f"SFTP file {path!r} ended at byte {offset}, expected {size}")
                raise OSError(_ERRNO_OF.get(code), f"SFTP read {path!r}: {text}")
            data = msg.get_string()
            if len(data) < length:  # a short read: ask again for the rest, in order
                pending.insert(0, _reissue(sftp, sink, handle, offset + len(data), length - len(data)))
            yield data


def _reissue(
    sftp: SFTPClient, sink: _ReadReplies, handle: SFTPFile, offset: int, length: int
) -> tuple[int, int, int]:
    num = sftp._async_request(sink, CMD_READ, handle.handle, int64(offset), length)  # type: ignore[attr-defined]
    return num, offset, length


def hash_remote(sftp: SFTPClient, path: str, hasher: Hasher, size: int) -> None:
    """Feed the first ``size`` bytes of ``path`` to ``hasher``, reading with pipelined requests."""
    for data in read_range(sftp, path, size):
        hasher.update(data)


def remove_quietly(sftp: SFTPClient, path: str) -> bool:
    """Remove ``path`` and return True; log and return False when that fails."""
    try:
        sftp.remove(path)
    except Exception as err:  # cleanup after a failure must not mask that failure
        if getattr(err, "errno", None) != errno.ENOENT:
            log.warning("Could not remove %s: %s", path, err)
        return False
    return True


def publish(sftp: SFTPClient, temp: str, final: str, *, replace: bool, backup: str) -> str:
    """Move ``temp`` onto ``final`` and return how it was done.

    With ``replace``, ``posix-rename@openssh.com`` replaces atomically. Servers without it get
    a three-step fallback (old version aside, rename, drop the old version) whose window is a
    moment with no file under ``final`` — never a partial one. Without ``replace``, a plain
    SFTP rename refuses an existing target on OpenSSH, so two writers cannot both win.
    """
    if not replace:
        try:
            sftp.rename(temp, final)
        except OSError as err:
            if stat_or_none(sftp, final) is not None:
                raise FileExistsError(
                    errno.EEXIST, f"SFTP file {final!r} appeared during the transfer (if_exists='fail')"
                ) from err
            raise sftp_error(err, "rename to", final) from err
        return "rename"
    code, text = _status_of(sftp, CMD_EXTENDED, "posix-rename@openssh.com", temp, final)
    if code == SFTP_OK:
        return "posix-rename"
    if code != SFTP_OP_UNSUPPORTED:
        raise sftp_error(OSError(_ERRNO_OF.get(code), text), "rename to", final)
    log.warning("Server lacks posix-rename@openssh.com; replacing %s in three steps", final)
    existed = stat_or_none(sftp, final) is not None
    if existed:
        remove_quietly(sftp, backup)
        try:
            sftp.rename(final, backup)
        except OSError as err:
            raise sftp_error(err, "move aside", final) from err
    try:
        sftp.rename(temp, final)
    except OSError as err:
        if existed:
            sftp.rename(backup, final)
        raise sftp_error(err, "rename to", final) from err
    if existed:
        remove_quietly(sftp, backup)
    return "rename-with-backup" if existed else "rename"
