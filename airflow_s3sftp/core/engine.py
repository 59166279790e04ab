# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The delivery engine: stream a source into an SFTP file in order, verify it, publish it atomically."""

from __future__ import annotations

import logging
import posixpath
import socket
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from airflow_s3sftp.core import sftp as remote
from airflow_s3sftp.core.checksums import format_checksum, new_hasher
from airflow_s3sftp.core.ordered import OrderedWriter
from airflow_s3sftp.core.paths import backup_path_for, temp_path_for
from airflow_s3sftp.core.ranged import RangedReader
from airflow_s3sftp.core.reader import ChunkReader, Hasher, MiB, OpenSource, ReadAhead
from airflow_s3sftp.exceptions import (
    ChecksumMismatchError,
    ConnectionLostError,
    TransferInProgressError,
    VerificationError,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from paramiko import SFTPAttributes, SFTPClient, SFTPFile

    from airflow_s3sftp.core.integrity import SourceCheck

log = logging.getLogger(__name__)

Verify = Literal["none", "size", "checksum"]
IfExists = Literal["replace", "fail", "skip_identical"]


@dataclass(frozen=True)
class DeliveryOptions:
    """How to deliver: see :class:`~airflow_s3sftp.operators.s3_to_sftp.S3ToSFTPStreamOperator`."""

    atomic: bool = True
    checksum: str | None = "sha256"
    verify: Verify = "size"
    if_exists: IfExists = "replace"
    create_dirs: bool = True
    file_mode: int | None = 0o644
    chunk_size: int = MiB
    read_ahead: int = 8
    write_size: int | None = None
    strict_order: bool = False
    fsync: bool = True
    stale_temp_after: float = 10.0
    progress_interval: float = 10.0
    io_timeout: float = 120.0
    retries: int = 3
    retry_delay: float = 1.0
    max_in_flight: int = 32
    parallel_parts: int = 1
    part_size: int = 16 * MiB
    sidecar: bool = False
    done_marker: str | None = None

    def __post_init__(self) -> None:
        if self.verify not in ("none", "size", "checksum"):
            raise ValueError(f"verify must be 'none', 'size' or 'checksum', not {self.verify!r}")
        if self.if_exists not in ("replace", "fail", "skip_identical"):
            raise ValueError(
                f"if_exists must be 'replace', 'fail' or 'skip_identical', not {self.if_exists!r}"
            )
        if self.sidecar and self.checksum is None:
            raise ValueError("sidecar=True needs a checksum algorithm (checksum=None was given)")
        if self.done_marker is not None and not self.done_marker.startswith("."):
            raise ValueError(
                f"done_marker is a suffix starting with '.', e.g. '.done' (got {self.done_marker!r})"
            )
        if self.checksum is not None:
            new_hasher(self.checksum)
            object.__setattr__(self, "checksum", self.checksum.lower())  # "SHA256" names sidecars .sha256
        if self.verify == "checksum" and self.checksum is None:
            raise ValueError("verify='checksum' needs a checksum algorithm (checksum=None was given)")
        if self.parallel_parts <= 0 or self.part_size <= 0:
            raise ValueError("parallel_parts and part_size must be positive")
        if self.chunk_size <= 0 or self.read_ahead <= 0:
            raise ValueError("chunk_size and read_ahead must be positive")
        if self.retries < 0 or self.io_timeout <= 0:
            raise ValueError("retries must be >= 0 and io_timeout > 0")


@dataclass(frozen=True)
class DeliveryResult:
    """What landed, where, and how it was checked."""

    sftp_path: str
    size: int
    checksum: str | None
    seconds: float
    mb_per_s: float
    verified: str
    published_with: str
    source_check: str | None
    resumed_from: int = 0
    s3_retries: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Progress:
    """Throttled progress lines: bytes, percent, MB/s, ETA."""

    def __init__(self, what: str, total: int | None, interval: float) -> None:
        self._what, self._total, self._interval = what, total, interval
        self._start = self._last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        self._last = now
        rate = done / max(now - self._start, 1e-9)
        if self._total:
            eta = (self._total - done) / rate if rate else float("inf")
            log.info(
                "%s: %s of %s bytes (%.0f%%), %.1f MB/s, ETA %.0fs",
                self._what,
                done,
                self._total,
                100 * done / self._total,
                rate / 1e6,
                eta,
            )
        else:
            log.info("%s: %s bytes, %.1f MB/s", self._what, done, rate / 1e6)


class Checkpoints:
    """Digest states of what was read at recent chunk boundaries, so a retry can prove and reuse a prefix.

    Each entry holds copies of the checksum hasher and of the S3 integrity hasher after the
    first ``offset`` bytes (a few hundred bytes each). Only the latest ``keep`` are kept: when a
    connection drops, the server holds everything up to a few chunks behind the reader, so older
    states are never the best resume point, and memory stays flat whatever the object size.
    """

    def __init__(self, keep: int = 64) -> None:
        self._points: dict[int, tuple[Any, Any]] = {}
        self._keep = keep
        self.owns_temp = False  # set once a delivery created the temp file: a retry may replace it

    def record(self, offset: int, hasher: Any, source_hasher: Any) -> None:
        self._points[offset] = (hasher.copy(), source_hasher.copy() if source_hasher is not None else None)
        if len(self._points) > self._keep:
            del self._points[min(self._points)]

    def best_at_or_below(self, size: int) -> tuple[int, Any, Any] | None:
        """Return ``(offset, hasher, source_hasher)`` copies for the largest offset <= ``size``."""
        offsets = [offset for offset in self._points if 0 < offset <= size]
        if not offsets:
            return None
        best = max(offsets)
        hasher, source_hasher = self._points[best]
        return best, hasher.copy(), source_hasher.copy() if source_hasher is not None else None


def connection_lost(sftp: SFTPClient, err: BaseException) -> bool:
    """Return True when ``err`` means the SSH connection is gone or stalled (worth a reconnect)."""
    if isinstance(err, (socket.timeout, TimeoutError, EOFError, ConnectionLostError)):
        return True
    transport = sftp.get_channel().get_transport() if sftp.get_channel() else None  # type: ignore[union-attr]
    return transport is None or not transport.is_active() or bool(sftp.get_channel().closed)  # type: ignore[union-attr]


def _try_resume(
    sftp: SFTPClient,
    temp: str,
    checkpoints: Checkpoints,
    algorithm: str,
) -> tuple[SFTPFile, int, Any, Any] | None:
    """Reopen ``temp`` at the largest prefix whose read-back digest matches what was sent."""
    attrs = remote.stat_or_none(sftp, temp)
    if attrs is None or not attrs.st_size:
        return None
    best = checkpoints.best_at_or_below(attrs.st_size)
    if best is None:
        return None
    offset, hasher, source_hasher = best
    started = time.monotonic()
    landed = new_hasher(algorithm)
    remote.hash_remote(sftp, temp, landed, offset)
    if landed.digest() != hasher.copy().digest():
        log.warning(
            "Temp file %s does not hold the bytes sent in its first %s bytes; restarting", temp, offset
        )
        return None
    handle = sftp.open(temp, "r+b", bufsize=0)
    handle.truncate(offset)
    handle.seek(offset)
    log.info(
        "Resuming %s at byte %s: its prefix was read back and matches what was sent (%.1fs)",
        temp,
        offset,
        time.monotonic() - started,
    )
    return handle, offset, hasher, source_hasher


def _verify(
    sftp: SFTPClient, write_path: str, sent: int, checksum: str | None, options: DeliveryOptions
) -> tuple[SFTPAttributes, str]:
    """Check what landed before it is published; return its attributes and how it was verified."""
    landed = remote.stat_or_none(sftp, write_path)
    if landed is None:
        raise FileNotFoundError(
            f"SFTP file {write_path!r} vanished during the transfer (was its directory removed?)"
        )
    verified = "none"
    if options.verify != "none":
        if landed.st_size != sent:
            raise VerificationError(
                f"SFTP file {write_path!r} has {landed.st_size} bytes after sending {sent}"
            )
        verified = "size"
    if options.verify == "checksum" and options.checksum and checksum:
        reread = new_hasher(options.checksum)
        remote.hash_remote(sftp, write_path, reread, sent)
        actual = format_checksum(options.checksum, reread.hexdigest())
        if actual != checksum:
            raise ChecksumMismatchError(f"SFTP file {write_path!r} read back", checksum, actual)
        verified = "checksum"
    return landed, verified


def _publish(
    sftp: SFTPClient, write_path: str, path: str, landed: SFTPAttributes, options: DeliveryOptions
) -> str:
    """Give the verified file its final mode and name; return how the name was given."""
    if options.file_mode is not None:
        try:
            sftp.chmod(write_path, options.file_mode)
        except OSError as err:
            log.warning("Server refused chmod %o on %s: %s", options.file_mode, write_path, err)
    if not options.atomic:
        return "direct"
    # Someone who took over our temp file (after a stall) would have changed it.
    now = remote.stat_or_none(sftp, write_path)
    if now is None or (now.st_size, now.st_mtime) != (landed.st_size, landed.st_mtime):
        raise TransferInProgressError(f"SFTP temp file {write_path!r} changed under us before publish")
    return remote.publish(
        sftp, write_path, path, replace=options.if_exists != "fail", backup=backup_path_for(path)
    )


def deliver(
    sftp: SFTPClient,
    path: str,
    open_source: OpenSource,
    *,
    size: int | None,
    options: DeliveryOptions,
    source_check: SourceCheck | None = None,
    is_retryable: Callable[[BaseException], bool] = lambda err: False,
    describe: str = "source",
    checkpoints: Checkpoints | None = None,
) -> DeliveryResult:
    """Stream ``open_source(0)`` into ``path`` on ``sftp``: in order, verified, published atomically.

    The final name is touched only by the last step (a rename). On any failure the temp file is
    removed when the connection still allows it, and the final name keeps its previous content.
    When the connection is lost, :class:`ConnectionLostError` is raised and the temp file stays:
    a call with the same ``checkpoints`` on a new connection resumes after the longest prefix
    whose read-back digest matches what was sent.
    """
    started = time.monotonic()
    directory = posixpath.dirname(path) or "."
    target = remote.stat_or_none(sftp, path)
    if remote.is_dir(target):
        raise IsADirectoryError(
            f"SFTP target {path!r} is a directory; end sftp_path with '/' to write into it"
        )
    if target is not None and options.if_exists == "fail":
        raise FileExistsError(f"SFTP file {path!r} already exists (if_exists='fail')")
    remote.ensure_directory(sftp, directory, options.create_dirs)

    write_path = temp_path_for(path) if options.atomic else path
    hasher = new_hasher(options.checksum) if options.checksum else None
    if source_check is not None and hasher is not None and source_check.algorithm == options.checksum:
        source_check.hasher = hasher  # S3 vouches for the digest we compute anyway: hash once
    write_size = options.write_size or remote.server_write_size(sftp)
    channel = sftp.get_channel()
    if channel is not None:
        channel.settimeout(options.io_timeout)  # a stalled server fails the write instead of hanging

    resumed = None
    if options.atomic and checkpoints is not None and hasher is not None and options.checksum:
        resumed = _try_resume(sftp, write_path, checkpoints, options.checksum)
    start = 0
    if resumed is not None:
        handle, start, hasher, source_hasher = resumed
        if source_check is not None:
            source_check.hasher = hasher if source_check.algorithm == options.checksum else source_hasher
    elif options.atomic:
        if checkpoints is not None and checkpoints.owns_temp:
            remote.remove_quietly(sftp, write_path)  # our own leftover from a lost connection
        handle = remote.open_exclusive(sftp, write_path, stale_after=options.stale_temp_after)
        if checkpoints is not None:
            checkpoints.owns_temp = True
    else:
        try:
            handle = sftp.open(write_path, "wb", bufsize=0)
        except OSError as err:
            raise remote.sftp_error(err, "create", write_path) from err
    hashers: list[Hasher] = [h for h in (hasher, source_check.hasher if source_check else None) if h]
    hashers = list({id(h): h for h in hashers}.values())
    source_hasher = source_check.hasher if source_check and source_check.hasher is not hasher else None

    def checkpoint(offset: int) -> None:
        if checkpoints is not None and hasher is not None:
            checkpoints.record(offset, hasher, source_hasher)

    published = False
    keep_temp = False
    try:
        # OpenSSH applies requests in arrival order, so pipelined in-order writes land in order;
        # strict_order waits for every write's status for servers that may apply them in parallel.
        pipeline = remote.PipelinedWriter(
            sftp,
            handle,
            start=start,
            write_size=write_size,
            max_in_flight=1 if options.strict_order else options.max_in_flight,
        )
        writer = OrderedWriter(pipeline, start=start)
        progress = _Progress(f"{describe} -> {path}", size, options.progress_interval)
        log.info("Streaming %s (%s bytes) to %s via %s", describe, size, path, write_path)
        shared: dict[str, Any] = {
            "start": start,
            "chunk_size": options.chunk_size,
            "depth": options.read_ahead,
            "hashers": hashers,
            "is_retryable": is_retryable,
            "describe": describe,
            "on_chunk": checkpoint,
        }
        reader: ReadAhead
        if options.parallel_parts > 1 and size is not None:
            # Parallel ranged GETs for sources capped per connection; bytes still leave in order.
            reader = RangedReader(
                open_source, size=size, part_size=options.part_size, parts=options.parallel_parts, **shared
            )
        else:
            reader = ChunkReader(open_source, size=size, **shared)
        with reader:
            try:
                for chunk in reader:
                    writer.write(chunk)
                    progress.update(writer.position)
                pipeline.flush()
                if options.fsync:
                    remote.fsync(sftp, handle)
                handle.close()  # collects the status of every pipelined write
            except OSError as err:
                if connection_lost(sftp, err):
                    raise
                raise remote.write_error(sftp, err, write_path, size) from err
        sent = writer.position
        if size is not None and sent != size:
            raise VerificationError(f"{describe}: read {sent} bytes, expected {size}")
        if source_check is not None and (problem := source_check.verify()):
            raise VerificationError(f"{describe} changed or was corrupted in transit: {problem}")

        checksum = (
            format_checksum(options.checksum, hasher.hexdigest()) if hasher and options.checksum else None
        )
        landed, verified = _verify(sftp, write_path, sent, checksum, options)
        published_with = _publish(sftp, write_path, path, landed, options)
        published = True
    except Exception as err:
        if connection_lost(sftp, err):
            keep_temp = checkpoints is not None
            raise ConnectionLostError(f"Connection lost while writing {write_path!r}: {err}") from err
        raise
    finally:
        if not published:
            try:
                handle.close()
            except Exception:
                log.debug("Closing %s after a failure failed", write_path, exc_info=True)
            if options.atomic and not keep_temp:
                remote.remove_quietly(sftp, write_path)
    seconds = time.monotonic() - started
    rate = (sent - start) / seconds / 1e6
    log.info(
        "Delivered %s bytes to %s in %.2fs (%.1f MB/s), checksum %s, verified by %s, published by %s",
        sent,
        path,
        seconds,
        rate,
        checksum,
        verified,
        published_with,
    )
    return DeliveryResult(
        sftp_path=path,
        size=sent,
        checksum=checksum,
        seconds=round(seconds, 3),
        mb_per_s=round(rate, 2),
        verified=verified,
        published_with=published_with,
        source_check=source_check.name if source_check else None,
        resumed_from=start,
        s3_retries=reader.retries,
    )
