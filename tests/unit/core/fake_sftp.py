"""An in-memory implementation of the delivery's SFTP port, with connections that can be cut on purpose.

:class:`FakeRemote` implements :class:`airflow_s3sftp.core.remote.Remote` over a :class:`FakeFS`
(the server's disk) and can drop the "connection" after N bytes written or at a named step, so every
attempt path of a delivery runs without a server. The real implementations of the port are driven
against real servers in ``tests/integration/test_remote.py``.
"""

from __future__ import annotations

import errno
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from airflow_s3sftp.exceptions import ConnectionLostError


class Killed(BaseException):
    """The worker process died (what kill -9 does): nothing it does afterwards reaches the server."""


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
    cut_at: list[str] = field(default_factory=list)  # steps: "open", "chmod", "posix-rename", "join"
    posix_rename: bool = True
    written: int = 0
    connections: int = 0
    on_step: Any = None  # called with (step, path) before chmod and rename: a second writer's moment
    copy_data: bool = False  # the server joins parts (copy-data)
    lanes_granted: int = 0  # extra channels the server grants per connection
    round_trip: float = 0.0
    free: int | None = None  # bytes free (statvfs); None: the server does not say
    joins: int = 0
    syncs: int = 0
    side_channel: bool = True  # False: the journal is written inline, as on ProFTPD
    kill_after_bytes: int | None = None  # the worker dies here (kill -9): no cleanup reaches the server
    killed: bool = False

    def step(self, name: str, path: str) -> None:
        if self.on_step is not None:
            self.on_step(name, path)

    def touch(self, path: str) -> None:
        self.mtimes[path] = self.now


class FakeFile:
    """One of our files open for appending at :attr:`position`."""

    def __init__(self, remote: FakeRemote, path: str, start: int) -> None:
        self.remote, self.path, self._position, self.closed = remote, path, start, False

    @property
    def position(self) -> int:
        return self._position

    @property
    def confirmed(self) -> int:
        return self._position  # every write is applied before it returns

    def write(self, data: bytes) -> int:
        fs = self.remote.fs
        self.remote.check()
        if self.path not in fs.files:
            raise FileNotFoundError(errno.ENOENT, f"SFTP write {self.path!r} failed: No such file")
        target = fs.files[self.path]
        del target[self._position :]
        target += data
        self._position += len(data)
        fs.touch(self.path)
        fs.written += len(data)
        if fs.cut_after_bytes and fs.written >= fs.cut_after_bytes[0]:
            fs.cut_after_bytes.pop(0)
            self.remote.dead = True
        if fs.kill_after_bytes is not None and fs.written >= fs.kill_after_bytes:
            fs.kill_after_bytes = None
            fs.killed = True
            raise Killed(f"killed after {fs.written} bytes")
        return len(data)

    def finish(self, *, sync: bool) -> Attrs | None:
        self.remote.check()
        self.closed = True
        return self.remote.stat(self.path)

    def checkpoint(self, on_synced: Any) -> None:
        self.remote.check()
        self.remote.fs.syncs += 1
        on_synced(self._position)

    def server_time(self) -> float | None:
        return float(self.remote.fs.now)

    def abort(self) -> None:
        self.closed = True


class FakeRemote:
    """One "connection" to a :class:`FakeFS`, speaking the delivery's port."""

    endpoint = "fake@server:22"

    def __init__(self, fs: FakeFS, *, lane: bool = False) -> None:
        self.fs = fs
        self.dead = False
        if not lane:  # a lane is one more channel on the same connection
            fs.connections += 1

    # -- faults ------------------------------------------------------------------------------
    def check(self, step: str | None = None) -> None:
        if self.fs.killed:
            raise Killed("the worker is dead")
        if self.dead:
            raise ConnectionLostError("connection is gone")
        if step is not None and step in self.fs.cut_at:
            self.fs.cut_at.remove(step)
            self.dead = True
            raise ConnectionLostError(f"connection cut at {step}")

    def lost(self, err: BaseException) -> bool:
        return isinstance(err, ConnectionLostError) or self.dead

    # -- the port --------------------------------------------------------------------------------
    def stat(self, path: str) -> Attrs | None:
        self.check()
        if path in self.fs.dirs:
            return Attrs(0, self.fs.now, stat.S_IFDIR | 0o755)
        if path not in self.fs.files:
            return None
        return Attrs(len(self.fs.files[path]), self.fs.mtimes.get(path, self.fs.now), stat.S_IFREG | 0o644)

    def ensure_directory(self, directory: str, *, create: bool) -> None:
        self.check()
        if directory in self.fs.dirs:
            return
        if not create:
            raise FileNotFoundError(errno.ENOENT, f"SFTP directory {directory!r} does not exist")
        self.fs.dirs.add(directory)

    def create(
        self, path: str, *, exclusive: bool, look_at: str | None = None, size: int | None = None
    ) -> tuple[FakeFile, Attrs | None]:
        self.check("open")
        target = self.stat(look_at) if look_at is not None else None
        if posixpath.dirname(path) not in self.fs.dirs:
            err = FileNotFoundError(errno.ENOENT, f"SFTP create {path!r} failed: No such file")
            err.target = target  # type: ignore[attr-defined]
            raise err
        if exclusive and path in self.fs.files:
            err2 = FileExistsError(errno.EEXIST, f"SFTP file {path!r} already exists")
            err2.target = target  # type: ignore[attr-defined]
            raise err2
        self.fs.files[path] = bytearray()
        self.fs.touch(path)
        return FakeFile(self, path, 0), target

    def reopen(self, path: str, offset: int, *, size: int | None = None) -> FakeFile:
        self.check()
        del self.fs.files[path][offset:]
        return FakeFile(self, path, offset)

    def read(self, path: str, size: int | None, *, start: int = 0) -> Iterator[bytes]:
        self.check()
        data = bytes(self.fs.files[path])
        end = len(data) if size is None else size
        if len(data) < end:
            raise EOFError(f"SFTP file {path!r} ended at byte {len(data)}, expected {end}")
        yield data[start:end]

    def publish(self, temp: str, final: str, *, replace: bool, backup: str, mode: int | None) -> str:
        if mode is not None:
            self.chmod(temp, mode)
        self.check("posix-rename")
        self.fs.step("posix-rename", temp)
        if temp not in self.fs.files:
            raise FileNotFoundError(errno.ENOENT, f"SFTP rename to {final!r} failed: No such file")
        if not replace:
            if final in self.fs.files:
                raise FileExistsError(errno.EEXIST, f"SFTP file {final!r} appeared during the transfer")
            self._move(temp, final)
            return "rename"
        if self.fs.posix_rename:
            self._move(temp, final)
            return "posix-rename"
        existed = final in self.fs.files
        if existed:
            assert backup not in self.fs.files, "the backup name must be unique"
            self._move(final, backup)
        self._move(temp, final)
        if existed:
            del self.fs.files[backup]
        return "rename-with-backup" if existed else "rename"

    def _move(self, old: str, new: str) -> None:
        self.fs.files[new] = self.fs.files.pop(old)
        self.fs.mtimes[new] = self.fs.mtimes.pop(old, self.fs.now)

    def chmod(self, path: str, mode: int) -> None:
        self.check("chmod")
        self.fs.step("chmod", path)
        if path not in self.fs.files:
            raise FileNotFoundError(errno.ENOENT, f"SFTP chmod {path!r} failed: No such file")

    def write_small(
        self, path: str, content: bytes, mode: int | None, *, temp: str, backup: str, exclusive: bool = True
    ) -> None:
        try:
            file, _ = self.create(temp, exclusive=exclusive)
            file.write(content)
            file.finish(sync=True)
            self.publish(temp, path, replace=True, backup=backup, mode=mode)
        except BaseException:
            self.remove(temp)
            raise

    def read_small(self, path: str, limit: int) -> bytes | None:
        self.check()
        data = self.fs.files.get(path)
        return None if data is None or len(data) > limit else bytes(data)

    def side(self) -> FakeRemote | None:
        return self if self.fs.side_channel else None  # another channel of the same connection

    def listdir(self, directory: str) -> list[Attrs]:
        self.check()
        out = []
        for path, data in self.fs.files.items():
            if posixpath.dirname(path) == directory:
                mtime = self.fs.mtimes.get(path, self.fs.now)
                out.append(Attrs(len(data), mtime, stat.S_IFREG | 0o600, posixpath.basename(path)))
        return out

    def remove(self, path: str) -> bool:
        if self.dead or self.fs.killed:
            return False
        return self.fs.files.pop(path, None) is not None

    def remove_all(self, paths: list[str]) -> None:
        for path in paths:
            self.remove(path)

    def free_bytes(self, path: str) -> int | None:
        return self.fs.free

    def round_trip(self) -> float:
        return self.fs.round_trip

    def can_join(self) -> bool:
        return self.fs.copy_data

    def lanes(self, count: int) -> list[FakeRemote]:
        self.check()
        if not hasattr(self, "_lanes"):
            self._lanes = [FakeRemote(self.fs, lane=True) for _ in range(self.fs.lanes_granted)]
        return self._lanes[:count]

    def create_each(self, lanes: list[FakeRemote], paths: list[str], *, size: int | None) -> list[FakeFile]:
        return [
            lane.create(path, exclusive=True, size=size)[0] for lane, path in zip(lanes, paths, strict=True)
        ]

    def joiner(self, target: Any, parts: list[str]) -> FakeJoiner:
        self.check()
        return FakeJoiner(self, target.path, parts)


class FakeJoiner:
    """Server-side copies of part files' stripes into the temp file, each checked to append."""

    def __init__(self, remote: FakeRemote, path: str, parts: list[str]) -> None:
        self.remote, self.path, self.parts = remote, path, parts

    def copy(self, part: int, offset: int, length: int, at: int) -> None:
        self.remote.check()
        out = self.remote.fs.files[self.path]
        assert at == len(out), "the join must write the temp file in offset order"
        source = self.remote.fs.files[self.parts[part]]
        assert offset + length <= len(source), "a stripe was copied before its part file held it"
        out += source[offset : offset + length]

    def finish(self) -> None:
        self.remote.check("join")
        self.remote.fs.joins += 1

    def abort(self) -> None:
        pass


class FakeSession:
    """What the session pool hands out: one connection and its port."""

    endpoint = FakeRemote.endpoint

    def __init__(self, fs: FakeFS) -> None:
        self.port = FakeRemote(fs)
        self.closed = False

    def remote(self, **settings: Any) -> FakeRemote:
        self.port.check()
        return self.port

    def lost(self, err: BaseException) -> bool:
        return self.port.lost(err)

    def alive(self) -> bool:
        return not self.closed and not self.port.dead

    def close(self) -> None:
        self.closed = True


def session_factory(fs: FakeFS, *, writes_in_order: bool = True):  # type: ignore[no-untyped-def]
    """Return a ``connect`` for :class:`~airflow_s3sftp.core.session.SessionPool` over ``fs``."""

    def connect() -> FakeSession:
        return FakeSession(fs)

    return connect
