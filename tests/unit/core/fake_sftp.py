"""An in-memory stand-in for paramiko's SFTPClient, with connections that can be cut on purpose.

It speaks the subset of paramiko's API (public and the request internals) the delivery core uses,
applies requests in arrival order like OpenSSH's sftp-server, and can drop the "connection" after N
bytes written or at a named step, so every attempt path of a delivery runs without a server.
"""

from __future__ import annotations

import errno
import posixpath
import stat
from dataclasses import dataclass, field
from typing import Any

from paramiko.sftp import (
    CMD_DATA,
    CMD_EXTENDED,
    CMD_READ,
    CMD_STATUS,
    CMD_WRITE,
    SFTP_EOF,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    SFTP_OP_UNSUPPORTED,
)

from airflow_s3sftp.core.session import SFTPSession


class Msg:
    def __init__(self, *values: Any) -> None:
        self._values = list(values)

    def _next(self) -> Any:
        return self._values.pop(0)

    get_int = get_text = get_string = get_int64 = _next


@dataclass
class Attrs:
    st_size: int
    st_mtime: int
    st_mode: int
    filename: str = ""


@dataclass
class FakeFS:
    """The server's disk: files, directories, a clock in whole seconds, and the fault plan."""

    files: dict[str, bytearray] = field(default_factory=dict)
    mtimes: dict[str, int] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=lambda: {"/", "/in"})
    now: int = 1_000_000
    cut_after_bytes: list[int] = field(default_factory=list)  # cut the connection once per entry
    cut_at: list[str] = field(default_factory=list)  # steps: "open", "verify-stat", "posix-rename", "chmod"
    posix_rename: bool = True
    written: int = 0
    connections: int = 0
    on_step: Any = None  # called with (step, path) before chmod and rename: a second writer's moment

    def step(self, name: str, path: str) -> None:
        if self.on_step is not None:
            self.on_step(name, path)

    def touch(self, path: str) -> None:
        self.mtimes[path] = self.now


class Handle:
    def __init__(self, sftp: FakeSFTP, path: str) -> None:
        self.sftp, self.path, self.handle, self.closed = sftp, path, path.encode(), False

    def chmod(self, mode: int) -> None:
        self.sftp._check()

    def stat(self) -> Attrs:
        return self.sftp.stat(self.path)

    def truncate(self, size: int) -> None:
        self.sftp._check()
        del self.sftp.fs.files[self.path][size:]

    def read(self, n: int = -1) -> bytes:
        return bytes(self.sftp.fs.files[self.path][: None if n < 0 else n])

    def write(self, data: bytes) -> None:
        self.sftp.fs.files[self.path] += data

    def close(self) -> None:
        self.sftp._check()
        self.closed = True

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True


class Channel:
    def __init__(self, sftp: FakeSFTP) -> None:
        self._sftp = sftp

    @property
    def closed(self) -> bool:
        return self._sftp.dead

    def settimeout(self, seconds: float) -> None:
        pass

    def get_transport(self) -> Channel:
        return self

    def is_active(self) -> bool:
        return not self._sftp.dead


class FakeSFTP:
    """One "connection" to a :class:`FakeFS`."""

    def __init__(self, fs: FakeFS) -> None:
        self.fs = fs
        self.dead = False
        self._replies: list[tuple[Any, int, Msg, int]] = []
        self._num = 0
        fs.connections += 1

    # -- faults ------------------------------------------------------------------------------
    def _check(self, step: str | None = None) -> None:
        if self.dead:
            raise EOFError("connection is gone")
        if step is not None and step in self.fs.cut_at:
            self.fs.cut_at.remove(step)
            self.dead = True
            raise EOFError(f"connection cut at {step}")

    def get_channel(self) -> Channel:
        return Channel(self)

    # -- public API ----------------------------------------------------------------------------
    def stat(self, path: str) -> Attrs:
        self._check()
        if path in self.fs.dirs:
            return Attrs(0, self.fs.now, stat.S_IFDIR | 0o755)
        if path not in self.fs.files:
            raise FileNotFoundError(errno.ENOENT, "No such file")
        return Attrs(len(self.fs.files[path]), self.fs.mtimes.get(path, self.fs.now), stat.S_IFREG | 0o644)

    def mkdir(self, path: str) -> None:
        self._check()
        self.fs.dirs.add(path)

    def open(self, path: str, mode: str = "r", bufsize: int = -1) -> Handle:
        self._check("open" if "w" in mode else None)
        if posixpath.dirname(path) not in self.fs.dirs:
            raise FileNotFoundError(errno.ENOENT, "No such file")
        if "x" in mode and path in self.fs.files:
            raise OSError("Failure")
        if "w" in mode:
            self.fs.files[path] = bytearray()
            self.fs.touch(path)
        elif path not in self.fs.files:
            raise FileNotFoundError(errno.ENOENT, "No such file")
        return Handle(self, path)

    def chmod(self, path: str, mode: int) -> None:
        self._check("chmod")
        self.fs.step("chmod", path)
        if path not in self.fs.files:
            raise FileNotFoundError(errno.ENOENT, "No such file")

    def remove(self, path: str) -> None:
        self._check()
        if self.fs.files.pop(path, None) is None:
            raise FileNotFoundError(errno.ENOENT, "No such file")

    def rename(self, old: str, new: str) -> None:
        self._check()
        if new in self.fs.files:
            raise OSError("Failure")
        if old not in self.fs.files:
            raise FileNotFoundError(errno.ENOENT, "No such file")
        self.fs.files[new] = self.fs.files.pop(old)
        self.fs.mtimes[new] = self.fs.mtimes.pop(old, self.fs.now)

    def listdir_attr(self, directory: str) -> list[Attrs]:
        self._check()
        out = []
        for path, data in self.fs.files.items():
            if posixpath.dirname(path) == directory:
                mtime = self.fs.mtimes.get(path, self.fs.now)
                out.append(Attrs(len(data), mtime, stat.S_IFREG | 0o600, posixpath.basename(path)))
        return out

    # -- paramiko's request internals ------------------------------------------------------------
    def _request(self, kind: int, *args: Any) -> tuple[int, Msg]:
        self._check()
        if kind == CMD_EXTENDED and args[0] == "fsync@openssh.com":
            return CMD_STATUS, Msg(SFTP_OK, "")
        raise OSError("Operation unsupported")

    def _async_request(self, callback: Any, kind: int, *args: Any) -> int:
        self._check()
        self._num += 1
        reply_kind, msg = self._apply(kind, *args)
        self._replies.append((callback, reply_kind, msg, self._num))
        return self._num

    def _read_response(self) -> None:
        self._check()
        callback, kind, msg, num = self._replies.pop(0)
        callback._async_response(kind, msg, num)

    def _apply(self, kind: int, *args: Any) -> tuple[int, Msg]:
        if kind == CMD_WRITE:
            handle, offset, data = args
            path = handle.decode()
            target = self.fs.files[path]
            if len(target) < int(offset):
                target.extend(b"\0" * (int(offset) - len(target)))
            target[int(offset) : int(offset) + len(data)] = data
            self.fs.touch(path)
            self.fs.written += len(data)
            if self.fs.cut_after_bytes and self.fs.written >= self.fs.cut_after_bytes[0]:
                self.fs.cut_after_bytes.pop(0)
                self.dead = True
            return CMD_STATUS, Msg(SFTP_OK, "")
        if kind == CMD_READ:
            handle, offset, length = args
            data = bytes(self.fs.files[handle.decode()][int(offset) : int(offset) + length])
            return (CMD_DATA, Msg(data)) if data else (CMD_STATUS, Msg(SFTP_EOF, "EOF"))
        if kind == CMD_EXTENDED and args[0] == "posix-rename@openssh.com":
            self._check("posix-rename")
            if not self.fs.posix_rename:
                return CMD_STATUS, Msg(SFTP_OP_UNSUPPORTED, "unsupported")
            old, new = args[1], args[2]
            if old not in self.fs.files:
                return CMD_STATUS, Msg(SFTP_NO_SUCH_FILE, "No such file")
            self.fs.files[new] = self.fs.files.pop(old)
            self.fs.mtimes[new] = self.fs.mtimes.pop(old, self.fs.now)
            return CMD_STATUS, Msg(SFTP_OK, "")
        raise AssertionError(f"unexpected request {kind}")


def session_factory(fs: FakeFS, *, writes_in_order: bool = True):  # type: ignore[no-untyped-def]
    def connect() -> SFTPSession:
        sftp = FakeSFTP(fs)
        return SFTPSession(
            sftp, close=lambda: None, endpoint="fake@server:22", writes_in_order=writes_in_order
        )  # type: ignore[arg-type]

    return connect
