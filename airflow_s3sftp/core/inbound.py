# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Inbound transfer (SFTP file -> S3 object): pipelined in-order reads into a verified S3 upload.

:class:`InboundTransfer` owns one file from its first stat to the publish in S3 and the ``after``
step on the SFTP side. It reads through the delivery's SFTP port
(:meth:`airflow_s3sftp.core.remote.Remote.read`: a window of READs in flight, in offset order),
hashes every byte in order (SHA-256 and the full-object CRC-32), and streams the bytes into an
:class:`ObjectStore` (the S3 port, adapted by the hook): one ``PutObject`` for a file smaller than
one part, else a multipart upload whose parts go up in parallel with bounded memory.

The object is published (``CompleteMultipartUpload`` or the ``PutObject``) only once the bytes
are proven: the file's size and mtime did not change between the stat before and the stat after
the read, the size equals ``expected_size`` and the SHA-256 equals ``expected_checksum`` when they
are given. Any failure aborts the multipart upload. A lost SSH connection resumes reading at the
last byte read, the upload staying open; a failed part upload is retried.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fnmatch
import hashlib
import logging
import posixpath
import queue
import stat
import threading
import time
import zlib
from collections import abc
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import paramiko

from airflow_s3sftp.core.checksums import format_checksum, parse_checksum
from airflow_s3sftp.core.delivery import Progress
from airflow_s3sftp.core.options import RetryPolicy
from airflow_s3sftp.core.paths import safe_name
from airflow_s3sftp.exceptions import (
    ChecksumMismatchError,
    ConnectionLostError,
    SFTPSourceChangedError,
    VerificationError,
    is_final,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

    from paramiko import SFTPAttributes

    from airflow_s3sftp.core.remote import Remote
    from airflow_s3sftp.core.session import SessionPool, SFTPSession

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3's smallest part (all but the last)
MAX_PARTS = 10_000  # S3's most parts per upload
MAX_COPY_SIZE = 5 * 1024**3  # the largest object CopyObject copies in one request
MAX_KEY_BYTES = 1024  # S3's longest key
_GLOB_CHARS = frozenset("*?[")
AUTO_CHANNELS = 8  # OpenSSH grants 10 channels per connection by default (MaxSessions)
AUTO_MIN_ROUND_TRIP = 0.010  # below, one channel's window is not the limit (as for delivery)

After = Literal["keep", "delete", "move"]
IfExists = Literal["replace", "fail", "skip_identical"]


@dataclass(frozen=True)
class InboundOptions:
    """How inbound transfers run: the user's decisions and the tuning, validated once.

    :param after: what happens to the SFTP file once the S3 object is complete and verified
    :param move_to: directory that ``after="move"`` renames the file into (never overwriting)
    :param if_exists: an existing S3 object is replaced, refused, or kept when identical
    :param part_size: bytes per multipart part (and the largest file sent with one PutObject)
    :param upload_concurrency: parts uploaded at once (memory is about (this + 1) * part_size, plus
        about channels * stripe_size when several channels read)
    :param connection_retries: reconnects after a lost SSH connection, per file
    :param connection_retry_delay: seconds before the first reconnect, doubled each time
    :param s3_retries: retries of a failed part upload (or PutObject), per part
    :param io_timeout: seconds an SFTP read may stall before the connection counts as lost
    :param progress_interval: seconds between progress lines of a long transfer
    :param channels: SFTP channels reading one file at once, each a stripe at a time (still handed
        on in order); None: several (:data:`AUTO_CHANNELS`) on a link with a round trip of at least
        :data:`AUTO_MIN_ROUND_TRIP` for files of at least two stripes, else one
    :param stripe_size: bytes each channel reads in turn when several read one file
    """

    after: After = "keep"
    move_to: str | None = None
    if_exists: IfExists = "replace"
    part_size: int = 8 * MiB
    upload_concurrency: int = 3
    connection_retries: int = 3
    connection_retry_delay: float = 1.0
    s3_retries: int = 3
    io_timeout: float = 60.0
    progress_interval: float = 30.0
    channels: int | None = None
    stripe_size: int = 8 * MiB

    #: The keys of the operator's ``tuning`` dict.
    TUNING = (
        "part_size",
        "upload_concurrency",
        "connection_retries",
        "connection_retry_delay",
        "s3_retries",
        "io_timeout",
        "progress_interval",
        "channels",
        "stripe_size",
    )

    def __post_init__(self) -> None:
        if self.after not in ("keep", "delete", "move"):
            raise ValueError(f"after must be 'keep', 'delete' or 'move' (got {self.after!r})")
        if (self.after == "move") != bool(self.move_to):
            raise ValueError(
                f"move_to is required with after='move' and only then (after={self.after!r}, "
                f"move_to={self.move_to!r})"
            )
        if self.move_to is not None and (not isinstance(self.move_to, str) or "\x00" in self.move_to):
            raise ValueError(f"move_to must be a directory path (got {self.move_to!r})")
        if self.if_exists not in ("replace", "fail", "skip_identical"):
            raise ValueError(
                f"if_exists must be 'replace', 'fail' or 'skip_identical' (got {self.if_exists!r})"
            )
        for name in self.TUNING:
            value = getattr(self, name)
            if name == "channels" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"tuning[{name!r}] must be a number (got {value!r})")
        if not isinstance(self.part_size, int) or self.part_size < MIN_PART_SIZE:
            raise ValueError(
                f"tuning['part_size'] must be an int >= 5 MiB (S3's minimum), got {self.part_size!r}"
            )
        for name in ("upload_concurrency", "connection_retries", "s3_retries", "channels"):
            value = getattr(self, name)
            if value is None and name == "channels":
                continue
            if not isinstance(value, int) or value < (1 if name in ("upload_concurrency", "channels") else 0):
                raise ValueError(f"tuning[{name!r}] must be a non-negative int (got {value!r})")
        if not isinstance(self.stripe_size, int) or self.stripe_size < MiB:
            raise ValueError(f"tuning['stripe_size'] must be an int >= 1 MiB (got {self.stripe_size!r})")
        for name in ("connection_retry_delay", "io_timeout", "progress_interval"):
            if getattr(self, name) < 0 or (name == "io_timeout" and self.io_timeout == 0):
                raise ValueError(f"tuning[{name!r}] must be positive (got {getattr(self, name)!r})")

    @classmethod
    def build(
        cls,
        *,
        after: str = "keep",
        move_to: str | None = None,
        if_exists: str = "replace",
        tuning: Mapping[str, Any] | None = None,
    ) -> InboundOptions:
        """Return validated options; unknown ``tuning`` keys raise ``ValueError`` naming them."""
        tuning = dict(tuning or {})
        unknown = sorted(set(tuning) - set(cls.TUNING))
        if unknown:
            raise ValueError(f"Unknown tuning keys {unknown}; known: {', '.join(cls.TUNING)}")
        return cls(after=after, move_to=move_to, if_exists=if_exists, **tuning)  # type: ignore[arg-type]

    @property
    def retry(self) -> RetryPolicy:
        """Return the retry policy of the SSH side."""
        return RetryPolicy(
            retries=self.connection_retries, s3_retries=self.s3_retries, delay=self.connection_retry_delay
        )


@dataclass(frozen=True)
class InboundFile:
    """One file to bring in: where it is, where it goes, and what it must be.

    :param sftp_path: the file on the SFTP server
    :param bucket: the S3 bucket
    :param key: the S3 key
    :param expected_checksum: ``"sha256:<hex>"`` the bytes must hash to (None: not checked)
    :param expected_size: bytes the file must hold (None: not checked)
    """

    sftp_path: str
    bucket: str
    key: str
    expected_checksum: str | None = None
    expected_size: int | None = None

    @property
    def s3_uri(self) -> str:
        """Return ``s3://bucket/key``."""
        return f"s3://{self.bucket}/{self.key}"


@dataclass
class Stored:
    """An S3 object as the store describes it after a write (or a HEAD)."""

    size: int
    etag: str
    version_id: str | None = None
    crc32: int | None = None  # the full-object CRC-32, when the store reports one
    checksum_type: str | None = None
    sha256: str | None = None  # our ``"sha256:<hex>"`` from the object's metadata
    metadata: dict[str, str] = field(default_factory=dict)


class ObjectStore(Protocol):
    """The S3 side of an inbound transfer, for one bucket and key (the hook adapts boto3 to it).

    Failures are builtins naming the object: a refused conditional write is
    :class:`FileExistsError`, a missing bucket :class:`FileNotFoundError`, a denial
    :class:`PermissionError`.
    """

    uri: str

    def is_retryable(self, err: BaseException) -> bool:
        """Return True when ``err`` is transient (the same request may work if sent again)."""

    def head(self) -> Stored | None:
        """Return the object as it is now, or None when there is none."""

    def put(self, data: bytes, *, crc32: int, md5: bytes, sha256: str, if_none_match: bool) -> Stored:
        """Write the whole object in one request (checked by S3 against ``crc32`` and ``md5``)."""

    def create_upload(self, *, sha256: str | None) -> str:
        """Start a multipart upload with a full-object CRC-32; return its id."""

    def upload_part(self, upload_id: str, number: int, data: bytes, *, crc32: int) -> dict[str, Any]:
        """Upload one part and return its entry for :meth:`complete`."""

    def complete(
        self, upload_id: str, parts: list[dict[str, Any]], *, crc32: int, if_none_match: bool
    ) -> Stored:
        """Publish the upload (atomic); ``if_none_match`` refuses an existing object."""

    def abort(self, upload_id: str) -> None:
        """Abort the upload and drop its parts (never raises)."""

    def set_sha256(self, stored: Stored, sha256: str) -> Stored:
        """Add our ``sha256`` to the metadata of the object we just wrote (a copy onto itself)."""

    def delete(self, stored: Stored) -> None:
        """Remove the version we wrote (after a failed check of what S3 stored)."""


@dataclass(frozen=True)
class InboundRecord:
    """What an inbound transfer did; the same keys on every path (uploaded, skipped)."""

    s3_uri: str
    sftp_path: str
    size: int
    checksum: str
    s3_checksum: str | None
    etag: str | None
    version_id: str | None
    seconds: float
    mb_per_s: float
    skipped: bool
    upload: str  # "put", "multipart" or "none" (skipped)
    parts: int
    channels: int  # SFTP channels that read the file at once (the most in any attempt)
    attempts: int
    resumed_from: int
    s3_check: str
    after: str
    moved_to: str | None

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-able dict (the operator's XCom)."""
        return asdict(self)


def crc32_text(value: int) -> str:
    """Return S3's notation of a CRC-32: base64 of its 4 big-endian bytes."""
    return base64.b64encode(value.to_bytes(4, "big")).decode()


def crc32_from_text(text: str | None) -> int | None:
    """Return the CRC-32 in S3's base64 notation as an int (None for None or a composite checksum)."""
    if not text or "-" in text:
        return None
    raw = base64.b64decode(text)
    return int.from_bytes(raw, "big") if len(raw) == 4 else None


def check_key(key: str, source: str) -> str:
    """Return ``key`` if S3 accepts it (1..1024 UTF-8 bytes, no NUL), else raise naming ``source``."""
    if not key or len(key.encode("utf-8")) > MAX_KEY_BYTES or "\x00" in key:
        raise ValueError(f"S3 key {key!r} for {source!r} is empty, has a NUL byte or exceeds 1024 bytes")
    return key


def has_glob(path: str) -> bool:
    """Return True when ``path`` holds glob characters (``*``, ``?``, ``[``)."""
    return any(char in _GLOB_CHARS for char in path)


def split_glob(sftp_path: str) -> tuple[str, str | None]:
    """Return ``(directory, pattern)`` for a glob in the last segment, or ``(sftp_path, None)``.

    A glob anywhere but the last segment raises ``ValueError`` naming ``sftp_path``.
    """
    if not isinstance(sftp_path, str) or not sftp_path or "\x00" in sftp_path:
        raise ValueError(f"sftp_path must be a remote file path (got {sftp_path!r})")
    directory, name = posixpath.split(sftp_path)
    if has_glob(directory):
        raise ValueError(f"sftp_path {sftp_path!r} may hold a glob only in its last segment")
    if not has_glob(name):
        if not name:
            raise ValueError(f"sftp_path {sftp_path!r} names a directory, not a file (add a glob: '*')")
        return sftp_path, None
    return directory or ".", name


def list_matching(remote: Remote, directory: str, pattern: str) -> list[str]:
    """Return the regular files in ``directory`` whose names match ``pattern``, sorted.

    Hidden names (a leading dot: temp files of writers, claims) match only a pattern that starts
    with a dot, as in a shell.
    """
    matches = []
    for attrs in remote.listdir(directory):
        name = attrs.filename
        if name.startswith(".") and not pattern.startswith("."):
            continue
        if fnmatch.fnmatchcase(name, pattern) and attrs.st_mode is not None and stat.S_ISREG(attrs.st_mode):
            matches.append(posixpath.join(directory, name))
    return sorted(matches)


def plan_files(
    paths: Sequence[str],
    *,
    bucket: str,
    key: str | None,
    prefix: str | None,
    expected_checksum: str | Mapping[str, str] | None = None,
    expected_size: int | Mapping[str, int] | None = None,
) -> list[InboundFile]:
    """Return one :class:`InboundFile` per path: ``key`` for one file, else ``prefix`` + base name.

    ``expected_checksum`` / ``expected_size`` are one value (one file) or a mapping from path to
    value. Two files landing on one key raise ``ValueError`` before anything moves.
    """
    if (key is None) == (prefix is None):
        raise ValueError("Set exactly one of s3_key (one file) or s3_prefix (each file under its name)")
    if key is not None and len(paths) != 1:
        raise ValueError(f"s3_key names one object but {len(paths)} files match; use s3_prefix")
    if len(paths) != 1:
        for name, value in (("expected_checksum", expected_checksum), ("expected_size", expected_size)):
            if value is not None and not isinstance(value, abc.Mapping):
                raise ValueError(f"{name} for {len(paths)} files must be a mapping from path to value")
    planned: list[InboundFile] = []
    seen: dict[str, str] = {}
    for path in paths:
        name = safe_name(posixpath.basename(path), path)
        target = key if key is not None else (f"{prefix.rstrip('/')}/{name}" if prefix else name)
        check_key(target, path)
        if target in seen:
            raise ValueError(f"{seen[target]!r} and {path!r} would both land on s3://{bucket}/{target}")
        seen[target] = path
        checksum = _for_path(expected_checksum, path, "expected_checksum")
        size = _for_path(expected_size, path, "expected_size")
        if checksum is not None:
            algorithm, hexdigest = parse_checksum(str(checksum))
            if algorithm != "sha256":
                raise ValueError(f"expected_checksum must be 'sha256:<hex>' (got {checksum!r})")
            checksum = format_checksum(algorithm, hexdigest)
        if isinstance(size, str) and size.strip().isdigit():  # a rendered template is a string
            size = int(size)
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ValueError(f"expected_size must be a non-negative int (got {size!r} for {path!r})")
        planned.append(InboundFile(path, bucket, target, checksum, size))
    return planned


def _for_path(value: Any, path: str, name: str) -> Any:
    if isinstance(value, abc.Mapping):
        return value.get(path)
    if value is not None and not isinstance(value, (str, int)):
        raise ValueError(f"{name} must be a value or a mapping from path to value (got {value!r})")
    return value


def _lost(remote: Remote, err: BaseException) -> bool:
    """Return True when ``err`` means the SSH connection is gone.

    paramiko's SFTP client turns the transport's EOFError into ``SSHException("Server connection
    dropped")`` at once, possibly before the transport is marked inactive: asking the port alone
    (``alive()``) can then still say the connection is up.
    """
    return remote.lost(err) or isinstance(err, paramiko.SSHException)


def _short_file(err: EOFError) -> bool:
    """Return True when ``err`` says the file ended early (the read's own EOFError names the file)."""
    return str(err).startswith("SFTP file ")


class _SinkError(Exception):
    """Carries an error of the sink out of the read loop untouched (as its ``__cause__``)."""


@contextlib.contextmanager
def _outside(reads: Iterator[bytes]) -> Iterator[None]:
    try:
        yield
    except Exception as err:
        close = getattr(reads, "close", None)
        if close is not None:
            close()
        raise _SinkError() from err


class _Striped:
    """Read ``[start, size)`` of one file over several SFTP channels, a stripe each in turn, yielded in order.

    Lane ``i`` reads stripes ``i``, ``i + n``, ``i + 2n`` ... each with a window of READs in flight on
    its own channel (each channel has its own SSH window: several multiply what a long link carries).
    Each lane holds at most ``depth`` chunks ahead, so memory stays bounded; a lane's error is
    raised to the consumer at the point where its bytes would come.
    """

    _DONE = object()

    def __init__(self, lanes: list[Remote], path: str, size: int, start: int, stripe: int) -> None:
        self._lanes, self._path, self._size, self._start, self._stripe = lanes, path, size, start, stripe
        self._stop = threading.Event()
        depth = max(4, stripe // (255 * 1024))  # about one stripe ahead per lane
        self._queues: list[queue.Queue[Any]] = [queue.Queue(maxsize=depth) for _ in lanes]
        self._threads = [
            threading.Thread(target=self._lane, args=(i,), name=f"sftp-lane-{i}", daemon=True)
            for i in range(len(lanes))
        ]

    def _stripes(self, lane: int) -> Iterator[tuple[int, int]]:
        count = len(self._lanes)
        begin = self._start + lane * self._stripe
        while begin < self._size:
            yield begin, min(begin + self._stripe, self._size)
            begin += count * self._stripe

    def _put(self, lane: int, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queues[lane].put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _lane(self, lane: int) -> None:
        try:
            for begin, end in self._stripes(lane):
                reads = self._lanes[lane].read(self._path, end, start=begin)
                try:
                    for data in reads:
                        if not self._put(lane, data):
                            return
                finally:
                    close = getattr(reads, "close", None)
                    if close is not None:
                        close()
        except BaseException as err:  # handed to the consumer, which decides what it means
            self._put(lane, err)
            return
        self._put(lane, self._DONE)

    def __iter__(self) -> Iterator[bytes]:
        for thread in self._threads:
            thread.start()
        try:
            count, offset = len(self._lanes), self._start
            while offset < self._size:
                lane = ((offset - self._start) // self._stripe) % count
                end = min(
                    self._start + ((offset - self._start) // self._stripe + 1) * self._stripe, self._size
                )
                while offset < end:
                    item = self._queues[lane].get()
                    if isinstance(item, BaseException):
                        raise item
                    if item is self._DONE:
                        raise EOFError(
                            f"SFTP file {self._path!r} ended at byte {offset}, expected {self._size}"
                        )
                    offset += len(item)
                    yield item
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(timeout=5)


class _Uploads:
    """Parts of one multipart upload going up in parallel, at most ``concurrency`` in memory at once."""

    def __init__(
        self, store: ObjectStore, upload_id: str, options: InboundOptions, sleep: Callable[[float], None]
    ) -> None:
        self._store, self._id, self._options, self._sleep = store, upload_id, options, sleep
        self._threads = ThreadPoolExecutor(
            max_workers=options.upload_concurrency, thread_name_prefix="s3-part"
        )
        self._room = threading.BoundedSemaphore(options.upload_concurrency)
        self._futures: list[Future[dict[str, Any]]] = []
        self.retries = 0

    def submit(self, number: int, data: bytes) -> None:
        """Queue part ``number`` (blocks while the window is full); raise a failed part's error."""
        while not self._room.acquire(timeout=0.5):
            self._raise_failed()
        self._raise_failed()
        self._futures.append(self._threads.submit(self._upload, number, data))

    def _raise_failed(self) -> None:
        for future in self._futures:
            if future.done() and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]

    def _upload(self, number: int, data: bytes) -> dict[str, Any]:
        try:
            crc = zlib.crc32(data)
            attempt = 0
            while True:
                try:
                    return self._store.upload_part(self._id, number, data, crc32=crc)
                except Exception as err:
                    attempt += 1
                    if attempt > self._options.s3_retries or not self._store.is_retryable(err):
                        raise
                    self.retries += 1
                    log.warning("Upload of part %s to %s failed (%s); retrying", number, self._store.uri, err)
                    self._sleep(min(30.0, 0.5 * 2 ** (attempt - 1)))
        finally:
            self._room.release()

    def finish(self) -> list[dict[str, Any]]:
        """Wait for every part and return their entries in order; raise the first failure."""
        wait(self._futures, return_when=FIRST_EXCEPTION)
        self._raise_failed()
        return sorted((future.result() for future in self._futures), key=lambda part: int(part["PartNumber"]))

    def close(self) -> None:
        """Stop queued parts and wait for those in flight (so an abort comes after the last of them)."""
        for future in self._futures:
            future.cancel()
        self._threads.shutdown(wait=True)


class InboundTransfer:
    """One SFTP file into one S3 object, proven equal to what was read before it is published.

    :param item: what to bring in, and what it must be
    :param store: the S3 port for the item's bucket and key
    :param options: the decisions and the tuning
    :param sessions: SFTP sessions (one is held for the transfer, replaced after a lost connection)
    :param sleep: waits between attempts (a parameter so unit tests need not wait)
    """

    def __init__(
        self,
        item: InboundFile,
        store: ObjectStore,
        options: InboundOptions,
        sessions: SessionPool,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.item, self.store, self.options, self.sessions = item, store, options, sessions
        self._sleep = sleep
        self._session: SFTPSession | None = None
        self._remote: Remote | None = None
        self.attempts = 1
        self.resumed_from = 0
        self.channels = 0

    # -- the SFTP side -------------------------------------------------------------------------
    def _port(self) -> Remote:
        if self._remote is None:
            self._session = self.sessions.acquire()
            try:
                # Reads are pipelined on every server (each reply is matched to its request), and no
                # write is ordered here: no need to ask what the server does with pipelined writes.
                self._remote = self._session.remote(io_timeout=self.options.io_timeout, strict_order=False)
            except BaseException:
                self.sessions.discard(self._session)
                self._session = None
                raise
        return self._remote

    def _drop(self) -> None:
        """Discard the current session (its connection is gone)."""
        if self._session is not None:
            self.sessions.discard(self._session)
        self._session = self._remote = None

    def _release(self) -> None:
        if self._session is not None:
            self.sessions.release(self._session)
        self._session = self._remote = None

    def _retrying(self, what: str, action: Callable[[Remote], Any]) -> Any:
        """Run ``action(port)``, reconnecting after a lost connection up to the retry budget."""
        while True:
            try:
                remote = self._port()
            except ConnectionLostError as err:  # a healable failure to connect (a final one is raised)
                self._reconnect(f"connecting for {what}", err)
                continue
            try:
                return action(remote)
            except Exception as err:
                if not _lost(remote, err):
                    raise
                self._reconnect(what, err)

    def _reconnect(self, what: str, err: BaseException) -> None:
        self._drop()
        retry = self.options.retry
        if self.attempts > retry.retries:
            raise ConnectionLostError(
                f"SSH connection lost while {what} {self.item.sftp_path} ({err}); gave up after "
                f"{self.attempts} attempts; nothing was published to {self.item.s3_uri}"
            ) from err
        delay = retry.backoff(self.attempts)
        self.attempts += 1
        log.warning(
            "SSH connection lost while %s %s (%s); reconnecting in %.1fs",
            what,
            self.item.sftp_path,
            err,
            delay,
        )
        self._sleep(delay)

    def _stat(self, remote: Remote) -> SFTPAttributes:
        attrs = remote.stat(self.item.sftp_path)
        if attrs is None:
            raise FileNotFoundError(
                errno.ENOENT, f"SFTP file {self.item.sftp_path!r} does not exist on {remote.endpoint}"
            )
        if attrs.st_mode is not None and not stat.S_ISREG(attrs.st_mode):
            raise IsADirectoryError(f"SFTP path {self.item.sftp_path!r} is not a regular file")
        return attrs

    def _unchanged(
        self, before: SFTPAttributes, now: SFTPAttributes, when: str, *, published: bool = False
    ) -> None:
        changes = []
        if now.st_size != before.st_size:
            changes.append(f"size {before.st_size} -> {now.st_size}")
        if now.st_mtime != before.st_mtime:
            changes.append(f"mtime {before.st_mtime} -> {now.st_mtime}")
        if not changes:
            return
        what = f"SFTP file {self.item.sftp_path} changed {when} ({', '.join(changes)})"
        if published:
            raise SFTPSourceChangedError(
                f"{what}: {self.item.s3_uri} holds the version that was read; after={self.options.after!r} "
                "was not applied to the new one"
            )
        raise SFTPSourceChangedError(f"{what}; nothing was published to {self.item.s3_uri}")

    # -- the transfer --------------------------------------------------------------------------
    def run(self) -> InboundRecord:
        """Bring the file in and return the record; raise naming the cause when it cannot be proven."""
        begin = time.monotonic()
        try:
            return self._run(begin)
        finally:
            self._release()

    def _run(self, begin: float) -> InboundRecord:
        item, options = self.item, self.options
        before: SFTPAttributes = self._retrying("stating", self._stat)
        size = int(before.st_size or 0)
        if item.expected_size is not None and size != item.expected_size:
            raise VerificationError(
                f"SFTP file {item.sftp_path} holds {size} bytes, expected_size is {item.expected_size}; "
                f"nothing was published to {item.s3_uri}"
            )
        if options.after == "move":
            self._retrying("checking move_to for", self._check_move_to)
        existing = self.store.head() if options.if_exists != "replace" else None
        if existing is not None and options.if_exists == "fail":
            raise FileExistsError(errno.EEXIST, f"S3 object {item.s3_uri} already exists (if_exists='fail')")
        if (
            existing is not None
            and item.expected_checksum is not None
            and self._identical(existing, size, item.expected_checksum)
        ):
            log.info("%s already holds %s (%s); skipped", item.s3_uri, item.sftp_path, item.expected_checksum)
            moved = self._after(before)
            return self._record(
                begin,
                size,
                item.expected_checksum,
                existing,
                skipped=True,
                upload="none",
                parts=0,
                check="identical (sha256 metadata)",
                moved=moved,
            )
        log.info(
            "Reading %s (%s bytes) from %s into %s", item.sftp_path, size, self._port().endpoint, item.s3_uri
        )
        if size < options.part_size:
            stored, sha256, parts, check = self._put(before, size, existing)
        else:
            stored, sha256, parts, check = self._multipart(before, size, existing)
        if stored is None and existing is not None:  # identical, found once the bytes were hashed
            moved = self._after(before)
            return self._record(
                begin,
                size,
                sha256,
                existing,
                skipped=True,
                upload="none",
                parts=0,
                check="identical (sha256 metadata)",
                moved=moved,
            )
        if stored is None:
            raise RuntimeError(
                f"No S3 object written for {item.sftp_path}"
            )  # unreachable: only identical skips
        moved = self._after(before)
        record = self._record(
            begin,
            size,
            sha256,
            stored,
            skipped=False,
            upload="put" if size < options.part_size else "multipart",
            parts=parts,
            check=check,
            moved=moved,
        )
        log.info(
            "%s is in %s: %s bytes, %s, %.1f MB/s, %s attempt(s), S3 check: %s",
            item.sftp_path,
            item.s3_uri,
            size,
            sha256,
            record.mb_per_s,
            record.attempts,
            check,
        )
        return record

    @staticmethod
    def _identical(existing: Stored, size: int, sha256: str) -> bool:
        return existing.size == size and existing.sha256 is not None and existing.sha256 == sha256

    def _check_move_to(self, remote: Remote) -> None:
        directory = self.options.move_to or ""
        attrs = remote.stat(directory)
        if attrs is None or (attrs.st_mode is not None and not stat.S_ISDIR(attrs.st_mode)):
            raise FileNotFoundError(
                errno.ENOENT, f"move_to {directory!r} is not a directory on {remote.endpoint}"
            )

    def _read(self, before: SFTPAttributes, size: int, sink: Callable[[bytes], None]) -> None:
        """Feed bytes ``[0, size)`` to ``sink`` in order; a lost connection resumes at the last byte read."""
        offset = 0
        progress = Progress(
            f"{self.item.sftp_path} -> {self.item.s3_uri}", size, self.options.progress_interval
        )
        while True:
            try:
                remote = self._port()
            except ConnectionLostError as err:
                self._reconnect("connecting to read", err)
                continue
            try:
                if offset:
                    self._unchanged(before, self._stat(remote), "while the connection was down")
                reads = self._reads(remote, size, offset)
                while (data := next(reads, None)) is not None:
                    # The sink (hashing, part uploads) runs outside this try: its errors are never
                    # mistaken for a lost connection, and offset counts only bytes it took.
                    with _outside(reads):
                        sink(data)
                    offset += len(data)
                    progress.update(offset)
                return
            except _SinkError as err:
                raise err.__cause__ from None  # type: ignore[misc]
            except EOFError as err:
                if not _short_file(err):  # paramiko's bare EOFError: the connection dropped
                    self._reconnect("reading", err)
                    self.resumed_from = offset
                    log.info("Resuming %s at byte %s of %s", self.item.sftp_path, offset, size)
                    continue
                raise SFTPSourceChangedError(
                    f"SFTP file {self.item.sftp_path} shrank while it was read ({err}); "
                    f"nothing was published to {self.item.s3_uri}"
                ) from err
            except Exception as err:
                if not _lost(remote, err):
                    raise
                self._reconnect("reading", err)
                self.resumed_from = offset
                log.info("Resuming %s at byte %s of %s", self.item.sftp_path, offset, size)

    def _reads(self, remote: Remote, size: int, offset: int) -> Iterator[bytes]:
        """Return the bytes ``[offset, size)`` in order: over one channel, or striped over several."""
        options = self.options
        wanted = options.channels
        one = remote.read(self.item.sftp_path, size, start=offset)
        self.channels = max(self.channels, 1)
        if wanted == 1 or size - offset < 2 * options.stripe_size:
            return one
        if wanted is None:
            if remote.round_trip() < AUTO_MIN_ROUND_TRIP:
                return one
            wanted = AUTO_CHANNELS
        lanes = remote.lanes(min(wanted, -(-(size - offset) // options.stripe_size)))
        if len(lanes) < 2:
            return one
        self.channels = max(self.channels, len(lanes))
        if self.attempts == 1 and not offset:
            log.info(
                "Reading %s over %s SFTP channels in stripes of %s bytes (round trip %.0f ms)",
                self.item.sftp_path,
                len(lanes),
                options.stripe_size,
                remote.round_trip() * 1000,
            )
        return iter(_Striped(lanes, self.item.sftp_path, size, offset, options.stripe_size))

    def _prove(self, before: SFTPAttributes, sha256: str) -> None:
        """Raise unless the file is unchanged since ``before`` and hashes to ``expected_checksum``."""
        after = self._retrying("stating", self._stat)
        self._unchanged(before, after, "while it was read")
        expected = self.item.expected_checksum
        if expected is not None and expected.lower() != sha256:
            raise ChecksumMismatchError(
                f"SFTP file {self.item.sftp_path} does not match expected_checksum "
                f"(nothing was published to {self.item.s3_uri})",
                expected.lower(),
                sha256,
            )

    def _put(
        self, before: SFTPAttributes, size: int, existing: Stored | None
    ) -> tuple[Stored | None, str, int, str]:
        buffer = bytearray()
        self._read(before, size, buffer.extend)
        data = bytes(buffer)
        sha256 = format_checksum("sha256", hashlib.sha256(data).hexdigest())
        self._prove(before, sha256)
        if existing is not None and self._identical(existing, size, sha256):
            return None, sha256, 0, "identical"
        crc = zlib.crc32(data)
        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        attempt = 0
        while True:
            try:
                stored = self.store.put(
                    data, crc32=crc, md5=md5, sha256=sha256, if_none_match=self.options.if_exists == "fail"
                )
                break
            except Exception as err:
                attempt += 1
                if attempt > self.options.s3_retries or not self.store.is_retryable(err):
                    raise
                log.warning("PutObject of %s failed (%s); retrying", self.store.uri, err)
                self._sleep(min(30.0, 0.5 * 2 ** (attempt - 1)))
        check = self._check_stored(stored, size, crc, md5.hex())
        return stored, sha256, 1, check

    def _multipart(
        self, before: SFTPAttributes, size: int, existing: Stored | None
    ) -> tuple[Stored | None, str, int, str]:
        options = self.options
        part_size = max(options.part_size, -(-size // MAX_PARTS))
        hasher = hashlib.sha256()
        crc = 0
        # The expected checksum is known up front: it goes in the metadata at once (the object is
        # published only if the bytes match it). Otherwise it is added by a copy once known.
        upload_id = self.store.create_upload(
            sha256=self.item.expected_checksum.lower() if self.item.expected_checksum else None
        )
        uploads = _Uploads(self.store, upload_id, options, self._sleep)
        published = False
        try:
            buffer = bytearray()
            number = 0

            def sink(data: bytes) -> None:
                nonlocal crc, number
                hasher.update(data)
                crc = zlib.crc32(data, crc)
                buffer.extend(data)
                while len(buffer) >= part_size:
                    number += 1
                    with memoryview(buffer) as view:
                        part = bytes(view[:part_size])  # one copy of the part, no more
                    del buffer[:part_size]
                    uploads.submit(number, part)

            self._read(before, size, sink)
            if buffer or number == 0:
                number += 1
                uploads.submit(number, bytes(buffer))
                buffer.clear()
            sha256 = format_checksum("sha256", hasher.hexdigest())
            self._prove(before, sha256)  # the file is proven before the parts are even all up
            parts = uploads.finish()
            if existing is not None and self._identical(existing, size, sha256):
                return None, sha256, 0, "identical"
            stored = self.store.complete(
                upload_id, parts, crc32=crc, if_none_match=options.if_exists == "fail"
            )
            published = True
        finally:
            uploads.close()
            if not published:
                self.store.abort(upload_id)
        check = self._check_stored(stored, size, crc, None)
        if stored.sha256 is None:
            if size <= MAX_COPY_SIZE:
                stored = self.store.set_sha256(stored, sha256)
            else:
                log.warning(
                    "%s is larger than one CopyObject; its sha256 is in the record only", self.store.uri
                )
        return stored, sha256, len(parts), check

    def _check_stored(self, stored: Stored, size: int, crc: int, md5: str | None) -> str:
        """Compare what S3 stored with what was read; delete our version and raise when they differ."""
        problems = []
        if stored.size != size:
            problems.append(f"size {stored.size} != {size}")
        checks = []
        if stored.crc32 is not None:
            if stored.crc32 != crc:
                problems.append(f"CRC-32 {stored.crc32:08x} != {crc:08x}")
            checks.append("full-object crc32")
        if md5 is not None and "-" not in stored.etag and len(stored.etag) == 32:
            if stored.etag != md5:
                problems.append(f"MD5 ETag {stored.etag} != {md5}")
            checks.append("md5 etag")
        if problems:
            self.store.delete(stored)
            raise VerificationError(
                f"S3 stored {self.store.uri} differently from what was read ({'; '.join(problems)}); "
                "the object was deleted"
            )
        return (
            " + ".join(checks) + " matched" if checks else "size only (S3 reported no full-object checksum)"
        )

    def _after(self, before: SFTPAttributes) -> str | None:
        """Apply ``after`` on the SFTP side; only called once the S3 object is complete and verified."""
        after = self.options.after
        if after == "keep":
            return None
        path = self.item.sftp_path

        def apply(remote: Remote) -> str | None:
            self._unchanged(before, self._stat(remote), "after it was uploaded", published=True)
            if after == "delete":
                if not remote.remove(path):
                    raise PermissionError(
                        f"Uploaded {self.item.s3_uri} but could not delete SFTP file {path}"
                    )
                log.info("Deleted %s (in %s now)", path, self.item.s3_uri)
                return None
            target = posixpath.join(self.options.move_to or "", posixpath.basename(path))
            remote.publish(path, target, replace=False, backup="", mode=None)
            log.info("Moved %s to %s (in %s now)", path, target, self.item.s3_uri)
            return target

        result: str | None = self._retrying("applying after to", apply)
        return result

    def _record(
        self,
        begin: float,
        size: int,
        sha256: str,
        stored: Stored,
        *,
        skipped: bool,
        upload: str,
        parts: int,
        check: str,
        moved: str | None,
    ) -> InboundRecord:
        seconds = time.monotonic() - begin
        return InboundRecord(
            s3_uri=self.item.s3_uri,
            sftp_path=self.item.sftp_path,
            size=size,
            checksum=sha256,
            s3_checksum=format_checksum("crc32", f"{stored.crc32:08x}") if stored.crc32 is not None else None,
            etag=stored.etag,
            version_id=stored.version_id,
            seconds=round(seconds, 3),
            mb_per_s=0.0 if skipped else round(size / max(seconds, 1e-9) / 1e6, 2),
            skipped=skipped,
            upload=upload,
            parts=parts,
            channels=self.channels,
            attempts=self.attempts,
            resumed_from=self.resumed_from,
            s3_check=check,
            after=self.options.after,
            moved_to=moved,
        )


def transfer_all(
    items: Iterable[InboundFile],
    store_for: Callable[[InboundFile], ObjectStore],
    options: InboundOptions,
    sessions: SessionPool,
    *,
    max_concurrency: int = 1,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Bring in every item, up to ``max_concurrency`` at once; a failure becomes a record with ``error``.

    ``on_record`` gets each record as its file finishes (from the worker threads, one call at a
    time), e.g. to write a report as the task goes.

    A task-wide failure (:func:`~airflow_s3sftp.exceptions.is_final`: a refused login, a missing
    bucket) is raised once the files in flight are done; the files not yet started are not attempted.
    """
    from airflow_s3sftp.core.batch import BatchProgress

    planned = list(items)
    progress = BatchProgress(len(planned), options.progress_interval)
    final: list[BaseException] = []  # a task-wide failure: the other files are not attempted

    handed = threading.Lock()

    def one(item: InboundFile) -> dict[str, Any]:
        record = attempt(item)
        if on_record is not None:
            with handed:
                on_record(record)
        return record

    def attempt(item: InboundFile) -> dict[str, Any]:
        if final:
            return {"s3_uri": item.s3_uri, "sftp_path": item.sftp_path, "error": "not attempted"}
        try:
            record = InboundTransfer(item, store_for(item), options, sessions).run().to_dict()
        except Exception as err:
            if is_final(err):
                final.append(err)
            log.error("Bringing %s into %s failed: %s", item.sftp_path, item.s3_uri, err)
            progress.finished(0, failed=True)
            return {
                "s3_uri": item.s3_uri,
                "sftp_path": item.sftp_path,
                "error": f"{type(err).__name__}: {err}",
            }
        progress.finished(0 if record["skipped"] else int(record["size"]))
        return record

    workers = max(1, min(max_concurrency, len(planned)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inbound") as threads:
        records = list(threads.map(one, planned))
    if final:
        skipped = sum(1 for record in records if record.get("error") == "not attempted")
        log.error(
            "A task-wide failure ended the batch; %s of %s files were not attempted", skipped, len(records)
        )
        raise final[0]
    return records
