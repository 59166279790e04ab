# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""SFTP primitives of a delivery: exclusive temp files, fast in-order writes, read-back, rename."""

from __future__ import annotations

import collections
import errno
import logging
import posixpath
import stat
from typing import TYPE_CHECKING

from paramiko import SFTPAttributes, SFTPFile
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_FSETSTAT,
    CMD_HANDLE,
    CMD_NAME,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READ,
    CMD_READDIR,
    CMD_SETSTAT,
    CMD_STAT,
    CMD_STATUS,
    CMD_WRITE,
    SFTP_EOF,
    SFTP_FAILURE,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_EXCL,
    SFTP_FLAG_TRUNC,
    SFTP_FLAG_WRITE,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    SFTP_OP_UNSUPPORTED,
    SFTP_PERMISSION_DENIED,
    int64,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from paramiko import Message, SFTPClient

    from airflow_s3sftp.core.reader import Hasher

log = logging.getLogger(__name__)

DEFAULT_WRITE_SIZE = 32 * 1024  # what every SFTP server must accept
MAX_WRITE_SIZE = 256 * 1024


# The one table from SFTP status codes to errors: every request path builds its errors through
# status_error / sftp_error (paramiko's own calls raise IOError with these errno values too).
STATUS_ERRORS: dict[int, tuple[int, type[OSError]]] = {
    SFTP_NO_SUCH_FILE: (errno.ENOENT, FileNotFoundError),
    SFTP_PERMISSION_DENIED: (errno.EACCES, PermissionError),
    SFTP_OP_UNSUPPORTED: (errno.EOPNOTSUPP, OSError),
}
_CLASS_OF_ERRNO = {number: cls for number, cls in STATUS_ERRORS.values()} | {errno.EEXIST: FileExistsError}


def status_error(code: int, text: str) -> OSError | None:
    """Return the error for an SFTP status ``code`` (None for success), by the one table."""
    if code == SFTP_OK:
        return None
    number, cls = STATUS_ERRORS.get(code, (None, OSError))
    return cls(number, text or f"SFTP status {code}")


def reply_status(kind: int, msg: Message) -> tuple[int, str]:
    """Return ``(code, text)`` of a reply that should be a STATUS (anything else is a failure)."""
    if kind != CMD_STATUS:
        return SFTP_FAILURE, f"unexpected SFTP reply type {kind}"
    return msg.get_int(), msg.get_text()


#: The name limit of most filesystems, for the message of a name the server found too long.
_NAME_MAX = 255


def _name_too_long(err: OSError, path: str) -> OSError | None:
    """Return an ``ENAMETOOLONG`` error when ``err`` is the server's answer to an over-long name.

    OpenSSH's sftp-server answers ENAMETOOLONG with a bare "Bad message" status (code 5); others say
    "File name too long". Either is read as a name too long when a segment passes 255 bytes.
    """
    reason = str(err.strerror or (err.args[0] if err.args else "")).lower()
    if err.errno != errno.ENAMETOOLONG and "bad message" not in reason and "too long" not in reason:
        return None
    longest = max(path.split("/"), key=lambda segment: len(segment.encode("utf-8", "surrogateescape")))
    length = len(longest.encode("utf-8", "surrogateescape"))
    if err.errno != errno.ENAMETOOLONG and length <= _NAME_MAX:
        return None
    return OSError(
        errno.ENAMETOOLONG,
        f"SFTP name {longest!r} in {path!r} is too long for the server: {length} bytes"
        + (f", {length - _NAME_MAX} over the usual limit of {_NAME_MAX}" if length > _NAME_MAX else ""),
    )


def sftp_error(err: OSError, action: str, path: str) -> OSError:
    """Return a builtin error for a failed SFTP call whose message names the action and the path."""
    reason = err.strerror or (err.args[0] if err.args else "") or type(err).__name__
    too_long = _name_too_long(err, path)
    if too_long is not None:
        return OSError(errno.ENAMETOOLONG, f"SFTP {action} {path!r} failed: {too_long.strerror}")
    cls = _CLASS_OF_ERRNO.get(err.errno, OSError) if err.errno is not None else OSError
    return cls(err.errno, f"SFTP {action} {path!r} failed: {reason}")


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


def advertised_write_limit(sftp: SFTPClient) -> int | None:
    """Return the largest write the server says it accepts (``limits@openssh.com``), or None."""
    try:
        kind, msg = _extended(sftp, "limits@openssh.com")
    except OSError:
        return None
    return write_limit_of(kind, msg)


def write_limit_of(kind: int, msg: Message) -> int | None:
    """Return the largest write in the answer ``(kind, msg)`` to ``limits@openssh.com``, or None."""
    if kind != CMD_EXTENDED_REPLY:
        return None
    msg.get_int64()  # max packet length
    msg.get_int64()  # max read length
    return int(msg.get_int64()) or None


def write_size_for(limit: int | None) -> int:
    """Return the bytes per WRITE for a server whose advertised limit is ``limit``: within 32-256 KiB."""
    return max(DEFAULT_WRITE_SIZE, min(limit or DEFAULT_WRITE_SIZE, MAX_WRITE_SIZE))


def server_write_size(sftp: SFTPClient) -> int:
    """Return the largest write the server accepts (``limits@openssh.com``), within 32-256 KiB."""
    return write_size_for(advertised_write_limit(sftp))


def create_private(
    sftp: SFTPClient, path: str, *, exclusive: bool = True, replies: Replies | None = None
) -> SFTPFile:
    """Create ``path`` (refusing an existing one when ``exclusive``) readable by us alone until published.

    With ``replies`` (a server applying requests in arrival order) the OPEN carries the mode 0600
    (OpenSSH creates the file so) and the chmod is not waited for: it still reaches the server
    before any WRITE; its answer is read by ``replies.settle()``.
    """
    if replies is not None:
        return create_private_sent(sftp, path, replies, replies.send_create(path, exclusive=exclusive))
    try:
        handle = sftp.open(path, "wbx" if exclusive else "wb", bufsize=0)
    except OSError as err:
        if _name_too_long(err, path) is None and exclusive and stat_or_none(sftp, path) is not None:
            raise FileExistsError(errno.EEXIST, f"SFTP file {path!r} already exists") from err
        raise sftp_error(err, "create", path) from err
    try:
        handle.chmod(0o600)  # nobody but us reads it before it is verified
    except OSError:
        log.debug("Server refused chmod on %s; keeping its default mode", path)
    return handle


def create_private_sent(
    sftp: SFTPClient, path: str, replies: Replies, opened: int, *, exists: Callable[[], bool] | None = None
) -> SFTPFile:
    """Return the file a :meth:`Replies.send_create` ``opened``, its chmod sent behind it (not waited for).

    ``exists`` tells whether ``path`` exists after a refusal (default: ask the server).
    """
    kind, msg = replies.wait(opened)
    if kind != CMD_HANDLE:
        err = status_error(*reply_status(kind, msg)) or OSError(f"SFTP open {path!r}")
        there = exists() if exists is not None else stat_or_none(sftp, path) is not None
        if _name_too_long(err, path) is None and there and replies.last_create_exclusive:
            raise FileExistsError(errno.EEXIST, f"SFTP file {path!r} already exists") from err
        raise sftp_error(err, "create", path) from err
    handle = SFTPFile(sftp, msg.get_binary(), "wb", 0)
    num = replies.send(CMD_FSETSTAT, handle.handle, mode_attrs(0o600))
    replies.check_later(
        num, lambda reason: log.debug("Server refused chmod on %s (%s); keeping its mode", path, reason)
    )
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
        self._sent: collections.deque[tuple[int, int]] = collections.deque()  # (request, end), in order
        self._confirmed = start
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
            self._sent.append((num, self._offset))
        return len(data)

    @property
    def offset(self) -> int:
        """Return the offset of the next write."""
        return self._offset

    @property
    def confirmed(self) -> int:
        """Return the offset below which the server has acknowledged every write (none failed)."""
        return self._confirmed

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
        error = status_error(*reply_status(kind, msg))
        if error is None and self._error is None:
            while self._sent and self._sent[0][0] not in self._outstanding:
                self._confirmed = self._sent.popleft()[1]
        if error is not None and self._error is None:
            self._error = error


class Replies:
    """Independent requests sent back to back, their replies collected by request number.

    Requests that do not depend on each other's answers (fsync, close and a stat after the last
    write; a chmod before a rename) go out together and cost one round trip instead of one each.
    Only for servers that apply requests in arrival order (OpenSSH's sftp-server does); replies
    to other owners that arrive meanwhile are dispatched to them by paramiko as usual.

    :param sftp: the SFTP session
    """

    def __init__(self, sftp: SFTPClient) -> None:
        self._sftp = sftp
        self._replies: dict[int, tuple[int, Message]] = {}
        self._later: list[tuple[int, Callable[[str], None]]] = []
        self.last_create_exclusive = True

    def check_later(self, num: int, on_refusal: Callable[[str], None]) -> None:
        """Have :meth:`settle` call ``on_refusal(reason)`` if request ``num`` did not succeed."""
        self._later.append((num, on_refusal))

    def settle(self) -> None:
        """Read the answers :meth:`check_later` was asked to look at, and act on the refusals."""
        later, self._later = self._later, []
        for num, on_refusal in later:
            code, text = self.status(num)
            if code != SFTP_OK:
                on_refusal(text or f"SFTP status {code}")

    def send(self, kind: int, *args: object) -> int:
        """Send one request without waiting; return its number for :meth:`wait`."""
        num: int = self._sftp._async_request(self, kind, *args)  # type: ignore[attr-defined]
        return num

    def wait(self, num: int) -> tuple[int, Message]:
        """Return the reply ``(kind, message)`` to request ``num``, reading replies until it is there."""
        while num not in self._replies:
            self._sftp._read_response()  # type: ignore[attr-defined]
        return self._replies.pop(num)

    def status(self, num: int) -> tuple[int, str]:
        """Return the status ``(code, text)`` of request ``num`` without paramiko's translation."""
        return reply_status(*self.wait(num))

    def refusal(self, num: int, path: str) -> str | None:
        """Return None when request ``num`` on ``path`` succeeded, else the server's reason.

        A missing ``path`` raises :class:`FileNotFoundError` instead.
        """
        code, text = self.status(num)
        if code == SFTP_OK:
            return None
        if code == SFTP_NO_SUCH_FILE:
            raise FileNotFoundError(errno.ENOENT, f"SFTP file {path!r} does not exist: {text}")
        return text or f"SFTP status {code}"

    def attrs(self, num: int, path: str) -> SFTPAttributes | None:
        """Return the attributes a STAT request ``num`` of ``path`` got, or None when it does not exist."""
        kind, msg = self.wait(num)
        if kind == CMD_ATTRS:
            return SFTPAttributes._from_msg(msg)  # type: ignore[attr-defined,no-any-return]
        code, text = (msg.get_int(), msg.get_text()) if kind == CMD_STATUS else (SFTP_FAILURE, "")
        error = status_error(code, text)
        if error is None or code == SFTP_NO_SUCH_FILE:
            return None
        raise sftp_error(error, "stat", path)

    def send_create(self, path: str, *, exclusive: bool) -> int:
        """Send an OPEN creating ``path`` with the mode 0600; read it with :func:`create_private_sent`."""
        self.last_create_exclusive = exclusive
        flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC | (SFTP_FLAG_EXCL if exclusive else 0)
        return self.send(CMD_OPEN, path, flags, mode_attrs(0o600))

    def send_stat(self, path: str) -> int:
        """Send a STAT of ``path``; read the answer with :meth:`attrs`."""
        return self.send(CMD_STAT, path)

    def send_chmod(self, path: str, mode: int) -> int:
        """Send a SETSTAT giving ``path`` the permissions ``mode``; read the answer with :meth:`status`."""
        return self.send(CMD_SETSTAT, path, mode_attrs(mode))

    def send_fsync(self, handle: SFTPFile) -> int:
        """Send ``fsync@openssh.com`` for ``handle``; read the answer with :meth:`synced`."""
        return self.send(CMD_EXTENDED, "fsync@openssh.com", handle.handle)

    def synced(self, num: int, path: str) -> bool:
        """Return True when fsync ``num`` succeeded, False when the server lacks it; raise otherwise."""
        code, text = self.status(num)
        if code == SFTP_OK:
            return True
        if code == SFTP_OP_UNSUPPORTED:
            return False
        raise sftp_error(status_error(code, text) or OSError(text), "fsync", path)

    def _async_response(self, kind: int, msg: Message, num: int) -> None:
        """Called by paramiko with the reply to one of our requests."""
        self._replies[num] = (kind, msg)


def list_directory(sftp: SFTPClient, directory: str) -> list[SFTPAttributes]:
    """Return the entries of ``directory`` (not ``.`` and ``..``) with their attributes, READDIRs pipelined.

    For servers that apply requests in arrival order: two READDIRs stay in flight, so a directory
    that fits in one answer costs two round trips (OPENDIR, then both READDIRs), not four; the CLOSE
    goes out behind the last READDIR and is not waited for (its answer is read with a later one).
    """
    replies = Replies(sftp)
    kind, msg = replies.wait(replies.send(CMD_OPENDIR, directory))
    if kind != CMD_HANDLE:
        raise sftp_error(status_error(*reply_status(kind, msg)) or OSError(directory), "list", directory)
    handle = msg.get_binary()
    entries: list[SFTPAttributes] = []
    pending = collections.deque(replies.send(CMD_READDIR, handle) for _ in range(2))
    ended = False
    try:
        while pending:
            kind, msg = replies.wait(pending.popleft())
            if kind == CMD_STATUS:
                code, text = msg.get_int(), msg.get_text()
                if code != SFTP_EOF:
                    raise sftp_error(status_error(code, text) or OSError(text), "list", directory)
                ended = True
                continue
            if kind != CMD_NAME:
                raise OSError(f"SFTP list {directory!r} failed: unexpected reply type {kind}")
            for _ in range(msg.get_int()):
                name = msg.get_text()
                longname = msg.get_text()
                attrs = SFTPAttributes._from_msg(msg, name, longname)  # type: ignore[attr-defined]
                if name not in (".", ".."):
                    entries.append(attrs)
            if not ended and not pending:  # a big directory: two more, still one round trip for both
                pending.extend(replies.send(CMD_READDIR, handle) for _ in range(2))
    finally:
        sftp._async_request(type(None), CMD_CLOSE, handle)  # type: ignore[attr-defined]
    return entries


def mode_attrs(mode: int) -> SFTPAttributes:
    """Return attributes that set only the permission bits (for SETSTAT / FSETSTAT)."""
    attrs = SFTPAttributes()
    attrs.st_mode = mode
    return attrs


def _status_of(sftp: SFTPClient, kind: int, *args: object) -> tuple[int, str]:
    """Send one request and return its status ``(code, text)`` without paramiko's translation."""
    replies = Replies(sftp)
    return replies.status(replies.send(kind, *args))


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
        sink = Replies(sftp)
        pending: list[tuple[int, int, int]] = []  # (request number, offset, length) in offset order
        next_offset = start
        while pending or next_offset < size:
            while next_offset < size and len(pending) < max_in_flight:
                length = min(block_size, size - next_offset)
                num = sink.send(CMD_READ, handle.handle, int64(next_offset), length)
                pending.append((num, next_offset, length))
                next_offset += length
            num, offset, length = pending.pop(0)
            kind, msg = sink.wait(num)
            if kind == CMD_STATUS:
                code, text = msg.get_int(), msg.get_text()
                if code == SFTP_EOF:
                    raise EOFError(f"SFTP file {path!r} ended at byte {offset}, expected {size}")
                raise sftp_error(status_error(code, text) or OSError(text), "read", path)
            data = msg.get_string()
            if len(data) < length:  # a short read: ask again for the rest, in order
                rest, more = offset + len(data), length - len(data)
                pending.insert(0, (sink.send(CMD_READ, handle.handle, int64(rest), more), rest, more))
            yield data


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
        raise sftp_error(status_error(code, text) or OSError(text), "rename to", final)
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
    # Also when nothing was moved aside now: an attempt cut after its move aside left the backup.
    remove_quietly(sftp, backup)
    return "rename-with-backup" if existed else "rename"
