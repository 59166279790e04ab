# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""One delivery, owned end to end: plan, attempts, digests, temp file, verify, publish, sidecar, marker."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import posixpath
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_s3sftp.core.checksums import format_checksum, new_hasher
from airflow_s3sftp.core.digests import Checkpoints, Digests
from airflow_s3sftp.core.integrity import weigh_source_integrity
from airflow_s3sftp.core.ordered import OrderedWriter
from airflow_s3sftp.core.paths import backup_path_for, leftover_of, new_token, short_stem, temp_path_for
from airflow_s3sftp.core.ranged import RangedReader
from airflow_s3sftp.core.reader import ChunkReader
from airflow_s3sftp.core.sftp import (
    DEFAULT_WRITE_SIZE,
    PipelinedWriter,
    Replies,
    advertised_write_limit,
    create_private,
    ensure_directory,
    fsync,
    hash_remote,
    is_dir,
    publish,
    read_range,
    remove_quietly,
    stat_or_none,
    write_error,
)
from airflow_s3sftp.core.sidecar import read_sidecar, sidecar_path, sidecar_text, write_small_file
from airflow_s3sftp.exceptions import (
    ChecksumMismatchError,
    ConnectionLostError,
    SupersededError,
    VerificationError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from paramiko import SFTPAttributes, SFTPClient, SFTPFile

    from airflow_s3sftp.core.options import DeliveryOptions
    from airflow_s3sftp.core.reader import OpenSource, ReadAhead
    from airflow_s3sftp.core.session import SessionPool, SFTPSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """An S3 object as the core sees it: how to read it, what S3 vouches for, and which version it is.

    :param uri: ``s3://bucket/key``, for messages and the record
    :param size: bytes in the object
    :param open: opens bytes ``start`` to ``end`` (inclusive), pinned to this version
    :param head: the object's metadata with its checksums (``HeadObject`` with ``ChecksumMode``)
    :param etag: the ETag without quotes
    :param version_id: the version, when the bucket is versioned
    :param is_retryable: tells a transient read error (reopen at the same offset) from a final one
    """

    uri: str
    size: int
    open: OpenSource
    head: Mapping[str, Any] = field(default_factory=dict)
    etag: str | None = None
    version_id: str | None = None
    is_retryable: Callable[[BaseException], bool] = field(default=lambda err: False)


@dataclass(frozen=True)
class DeliveryRecord:
    """What a delivery did; the same keys on every path (delivered, resumed, skipped)."""

    s3_uri: str
    sftp_path: str
    size: int
    checksum: str | None
    etag: str | None
    version_id: str | None
    skipped: bool
    attempts: int
    resumed_from: int
    seconds: float
    mb_per_s: float
    verified: str
    published_with: str
    source_check: str | None
    source_check_skipped: str | None
    s3_retries: int
    sidecar_path: str | None
    done_marker_path: str | None

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-able dict (the operator's XCom)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Landed:
    """What a STAT sent behind the last write said about our file (``asked=False``: nothing was sent)."""

    asked: bool
    attrs: SFTPAttributes | None = None


class Progress:
    """Throttled progress lines: bytes, percent, MB/s, ETA."""

    def __init__(self, what: str, total: int | None, interval: float) -> None:
        self._what, self._total, self._interval = what, total, interval
        self._start = self._last = time.monotonic()

    def update(self, done: int) -> None:
        """Log a line when ``interval`` seconds passed since the last one."""
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


class BatchProgress:
    """Throttled progress of many deliveries: objects done of the total, bytes, MB/s, ETA.

    Thread-safe: every worker reports its finished objects; at most one line per ``interval``.

    :param total: objects in the batch
    :param interval: seconds between progress lines
    """

    def __init__(self, total: int, interval: float) -> None:
        self._total, self._interval = total, interval
        self._done = self._failed = self._bytes = 0
        self._start = self._last = time.monotonic()
        self._lock = threading.Lock()

    def finished(self, size: int, *, failed: bool = False) -> None:
        """Count one finished object (``size`` bytes moved) and log a line when one is due."""
        with self._lock:
            self._done += 1
            self._failed += failed
            self._bytes += size
            now = time.monotonic()
            if now - self._last < self._interval or self._done == self._total:
                return
            self._last = now
            elapsed = max(now - self._start, 1e-9)
            done, moved, failures = self._done, self._bytes, self._failed
        eta = (self._total - done) * elapsed / done
        log.info(
            "%s of %s objects done (%s failed), %s bytes, %.1f MB/s, %.1f objects/s, ETA %.0fs",
            done,
            self._total,
            failures,
            moved,
            moved / elapsed / 1e6,
            done / elapsed,
            eta,
        )


class LeftoverSweeper:
    """Removes temp files that crashed workers left behind, once per directory per task.

    Only files shaped like our temp or backup files of a final name this task delivers are
    candidates, and only when their mtime is more than ``older_than`` seconds behind the
    server's clock, read from the mtime of a file we just created (so client clock skew
    does not matter). A file being written, even slowly, keeps a fresh mtime and is never taken.

    :param older_than: seconds without change after which a leftover counts as abandoned
    :param final_paths: the final remote paths of the task
    """

    def __init__(self, older_than: float, final_paths: Iterable[str]) -> None:
        self._older_than = older_than
        self._names: dict[str, dict[str, str]] = {}  # directory -> {what leftover_of says: final name}
        self._swept: set[str] = set()
        self._lock = threading.Lock()
        self.include(final_paths)

    def include(self, paths: Iterable[str]) -> None:
        """Also sweep the leftovers of ``paths`` (e.g. a delivery's sidecar and done marker)."""
        with self._lock:
            for path in paths:
                directory, name = posixpath.split(path)
                names = self._names.setdefault(directory, {})
                names[name] = name
                names[short_stem(name)] = name  # the temp names of a long name use its short form

    def pending(self, directory: str) -> bool:
        """Return True when ``directory`` has not been swept yet."""
        with self._lock:
            return directory not in self._swept

    def sweep(self, sftp: SFTPClient, directory: str, server_now: float) -> list[str]:
        """Remove the abandoned leftovers in ``directory`` (the first time it is asked) and list them."""
        with self._lock:
            if directory in self._swept:
                return []
            self._swept.add(directory)
        with self._lock:
            names = dict(self._names.get(directory, {}))
        removed: list[str] = []
        try:
            entries = sftp.listdir_attr(directory or ".")
        except OSError as err:
            log.warning("Could not list %s to look for abandoned temp files: %s", directory, err)
            return removed
        for attrs in entries:
            stem = leftover_of(attrs.filename)
            owner = names.get(stem) if stem is not None else None
            if owner is None or attrs.st_mtime is None:
                continue
            age = server_now - attrs.st_mtime
            if age > self._older_than:
                path = posixpath.join(directory, attrs.filename)
                log.warning(
                    "Removing %s (%s bytes), a temp file of %s abandoned %.0fs ago (stale_temp_after=%.0fs)",
                    path,
                    attrs.st_size,
                    owner,
                    age,
                    self._older_than,
                )
                if remove_quietly(sftp, path):
                    removed.append(path)
        return removed


class Delivery:
    """Deliver one S3 object to one SFTP path, owning every piece of state that takes.

    :meth:`run` tells the story: prepare the target (and maybe skip it), then attempts until one
    publishes: open a file of our own (resuming a proven prefix after a lost connection, else
    from byte 0 with fresh digests), stream in offset order, check S3's integrity data, verify
    what landed, publish by rename, write the sidecar and the done marker. A lost connection
    costs one attempt and a reconnect from ``sessions``; anything else ends the delivery. On
    the way out, whatever this delivery created and did not publish is removed; nothing else
    ever is.

    :param source: the S3 object
    :param path: final remote path
    :param options: how to deliver
    :param sessions: where SFTP sessions come from (and go back to)
    :param sweeper: removes abandoned temp files; shared by the deliveries of one task
    :param sleep: waits between attempts (a parameter so unit tests need not wait)
    """

    def __init__(
        self,
        source: Source,
        path: str,
        options: DeliveryOptions,
        sessions: SessionPool,
        *,
        sweeper: LeftoverSweeper | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.source = source
        self.path = path
        self.options = options
        self.sessions = sessions
        self._sleep = sleep
        self._sweeper = sweeper or LeftoverSweeper(options.publishing.stale_temp_after, [path])
        self._sweeper.include(self._extra_paths())  # sidecars and markers are written via temp files too
        self._token = new_token()
        self.write_path = temp_path_for(path, self._token) if options.publishing.atomic else path
        self.integrity = weigh_source_integrity(source.head, preferred=options.checks.checksum)
        self.check = self.integrity.check
        self.checkpoints = Checkpoints()
        self.attempts = 0
        self.resumed_from = 0
        self.s3_retries = 0
        self._prepared = False
        self._created = False  # write_path is a file this delivery created and has not published
        self._started = time.monotonic()
        self._endpoint = ""  # "user@host:port:" once a session was had, for messages

    # -- the story ------------------------------------------------------------------------------

    def run(self) -> DeliveryRecord:
        """Deliver, retrying lost connections; return the record or raise what ended the delivery."""
        while True:
            self.attempts += 1
            session: SFTPSession | None = None
            try:
                session = self.sessions.acquire()  # a connection dropped while opening counts too
                record = self._attempt(session)
            except ConnectionLostError as err:
                if session is not None:
                    self.sessions.discard(session)
                if self.attempts > self.options.retry.retries:
                    note = self._lost_note()
                    self._clean_up_on_new_session()
                    raise ConnectionLostError(
                        f"Giving up on {self.source.uri} -> {self._endpoint}{self.path} after "
                        f"{self.attempts} attempts: {err}{note}"
                    ) from err
                delay = self.options.retry.backoff(self.attempts)
                log.warning(
                    "SFTP connection lost (%s); reconnecting in %.1fs (attempt %s of %s)",
                    err,
                    delay,
                    self.attempts + 1,
                    self.options.retry.retries + 1,
                )
                self._sleep(delay)
                continue
            except BaseException as err:
                if session is None:
                    raise
                note = self._lost_note()
                self._clean_up(session.sftp)
                self.sessions.release(session)
                if note:
                    err.add_note(note.strip())
                raise
            self.sessions.release(session)
            return record

    def _attempt(self, session: SFTPSession) -> DeliveryRecord:
        sftp = session.sftp
        self._endpoint = f"{session.endpoint}:"
        session.set_timeout(self.options.streaming.io_timeout)
        try:
            # A server that applies requests in arrival order takes independent ones back to back:
            # several requests then cost one round trip (what many small files are made of). Asking
            # the server what it is may itself meet a dropped connection: inside the try.
            replies = None if self._strict(session) else Replies(sftp)
            if self._prepared:
                handle, start, digests = self._open(sftp, replies)
            elif replies is not None and self.options.publishing.if_exists != "skip_identical":
                handle, start, digests = self._open_checking_target(sftp, replies)
                self._prepared = True
            else:
                skipped = self._prepare(sftp)
                if skipped is not None:
                    return skipped
                self._prepared = True
                handle, start, digests = self._open(sftp, replies)
            sent, landed = self._stream(session, handle, start, digests, replies)
            if problem := digests.source_problem():
                raise VerificationError(f"{self.source.uri} changed or was corrupted in transit: {problem}")
            checksum = digests.checksum()
            verified = self._verify(sftp, sent, checksum, landed)
            published_with = self._publish(sftp, replies)
            sidecar, marker = self._write_extras(sftp, checksum)
        except Exception as err:
            if session.lost(err):
                raise ConnectionLostError(
                    f"connection to {session.endpoint} lost while writing {self.write_path!r}: {err}"
                ) from err
            raise
        return self._record(
            size=sent,
            checksum=checksum,
            verified=verified,
            published_with=published_with,
            sidecar=sidecar,
            marker=marker,
            moved=sent - start,
        )

    # -- the steps ------------------------------------------------------------------------------

    def _prepare(self, sftp: SFTPClient) -> DeliveryRecord | None:
        """Check the target and its directory; return a record when an identical file makes us skip."""
        publishing = self.options.publishing
        target = stat_or_none(sftp, self.path)
        self._check_target(target)
        ensure_directory(sftp, posixpath.dirname(self.path) or ".", publishing.create_dirs)
        if (
            publishing.if_exists == "skip_identical"
            and target is not None
            and target.st_size == self.source.size
        ):
            identical = self._identical(sftp)
            if identical is not None:
                log.info("%s already holds %s (%s): skipped", self.path, self.source.uri, identical)
                sidecar, marker = self._write_extras(sftp, identical, only_missing=True)
                return self._record(
                    size=self.source.size,
                    checksum=identical,
                    verified="identical",
                    published_with="skipped",
                    sidecar=sidecar,
                    marker=marker,
                    moved=0,
                    skipped=True,
                )
        return None

    def _check_target(self, target: SFTPAttributes | None) -> None:
        """Refuse a final name that is a directory, or that exists when ``if_exists="fail"``."""
        if is_dir(target):
            raise IsADirectoryError(
                f"SFTP target {self.path!r} is a directory; end sftp_path with '/' to write into it"
            )
        if target is not None and self.options.publishing.if_exists == "fail":
            raise FileExistsError(f"SFTP file {self.path!r} already exists (if_exists='fail')")

    def _open_checking_target(self, sftp: SFTPClient, replies: Replies) -> tuple[SFTPFile, int, Digests]:
        """Open our file with the STAT of the final name in the same round trip; check the target first.

        The directory is looked at only when the open says it is missing. Whatever the STAT says
        is acted on before a byte is written; a file we created for a refused target is removed
        by :meth:`run`'s cleanup like after any other failure.
        """
        probe = replies.send_stat(self.path)
        try:
            opened = self._open(sftp, replies)
        except OSError:
            self._check_target(replies.attrs(probe, self.path))  # the clearer error, when there is one
            raise
        self._check_target(replies.attrs(probe, self.path))
        return opened

    def _open(self, sftp: SFTPClient, replies: Replies | None) -> tuple[SFTPFile, int, Digests]:
        """Return the file to write, the offset to write at, and the digests of the bytes before it."""
        fresh = Digests.fresh(self.options.checks.checksum, self.check)
        if self._created:
            resumed = self._resume(sftp, fresh)
            if resumed is not None:
                return resumed
        self.checkpoints = Checkpoints()
        self.resumed_from = 0
        if self._created and self.options.publishing.atomic:
            remove_quietly(sftp, self.write_path)  # our own earlier attempt, not provably reusable
        exclusive = self.options.publishing.atomic or (
            self.options.publishing.if_exists == "fail" and not self._created
        )
        try:
            handle = create_private(sftp, self.write_path, exclusive=exclusive, replies=replies)
        except FileNotFoundError:
            # Only now look at the directory: a clear error, or create_dirs makes it.
            ensure_directory(sftp, posixpath.dirname(self.path) or ".", self.options.publishing.create_dirs)
            handle = create_private(sftp, self.write_path, exclusive=exclusive, replies=replies)
        self._created = True
        directory = posixpath.dirname(self.path)
        if self.options.publishing.atomic and self._sweeper.pending(directory):
            server_now = handle.stat().st_mtime  # the server's clock, whatever ours says
            if server_now is not None:
                self._sweeper.sweep(sftp, directory, server_now)
        return handle, 0, fresh

    def _resume(self, sftp: SFTPClient, fresh: Digests) -> tuple[SFTPFile, int, Digests] | None:
        """Reopen our file after the longest prefix whose read-back digest matches what was sent."""
        algorithm = self.options.checks.checksum
        if not fresh.resumable or algorithm is None:
            return None
        attrs = stat_or_none(sftp, self.write_path)
        if attrs is None or not attrs.st_size:
            return None
        best = self.checkpoints.best_at_or_below(attrs.st_size)
        if best is None:
            return None
        offset, states = best
        landed = new_hasher(algorithm)
        hash_remote(sftp, self.write_path, landed, offset)
        if landed.digest() != fresh.prefix_digest(states):
            log.warning(
                "%s does not hold the bytes sent in its first %s; restarting", self.write_path, offset
            )
            return None
        handle = sftp.open(self.write_path, "r+b", bufsize=0)
        handle.truncate(offset)
        self.checkpoints.forget_after(offset)
        self.resumed_from = offset
        log.info("Resuming %s at byte %s: its prefix was read back and matches", self.write_path, offset)
        return handle, offset, fresh.restored(states)

    def _reader(self, start: int, digests: Digests) -> ReadAhead:
        streaming = self.options.streaming
        shared: dict[str, Any] = {
            "start": start,
            "chunk_size": streaming.chunk_size,
            "depth": streaming.read_ahead,
            "hashers": digests.hashers,
            "is_retryable": self.source.is_retryable,
            "retry": self.options.retry,
            "describe": self.source.uri,
            "on_chunk": lambda offset: self.checkpoints.record(offset, digests),
        }
        if streaming.parallel_parts > 1:
            # Parallel ranged GETs for sources capped per connection; bytes still leave in order.
            return RangedReader(
                self.source.open,
                size=self.source.size,
                part_size=streaming.part_size,
                parts=streaming.parallel_parts,
                **shared,
            )
        return ChunkReader(self.source.open, size=self.source.size, **shared)

    def _strict(self, session: SFTPSession) -> bool:
        """Return True when requests must go one at a time (servers that may apply them in parallel)."""
        strict = self.options.streaming.strict_order
        return strict if strict is not None else not session.writes_in_order

    def _stream(
        self,
        session: SFTPSession,
        handle: SFTPFile,
        start: int,
        digests: Digests,
        replies: Replies | None,
    ) -> tuple[int, Landed]:
        """Write the object from ``start`` in strict offset order; return the bytes written in all.

        With ``replies`` (a server applying requests in arrival order), fsync, a STAT of the file
        and CLOSE follow the last WRITE without waiting: the STAT's answer (what landed) is
        returned for the verification, and the whole tail costs one round trip.
        """
        streaming = self.options.streaming
        sftp = session.sftp
        # OpenSSH applies requests in arrival order, so pipelined in-order writes land in order;
        # strict waits for every write's status for servers that may apply them in parallel.
        pipeline = PipelinedWriter(
            sftp,
            handle,
            start=start,
            write_size=self._write_size(session),
            max_in_flight=1 if replies is None else streaming.max_in_flight,
        )
        writer = OrderedWriter(pipeline, start=start)
        progress = Progress(
            f"{self.source.uri} -> {self.path}", self.source.size, streaming.progress_interval
        )
        log.info(
            "Streaming %s (%s bytes) to %s via %s",
            self.source.uri,
            self.source.size,
            self.path,
            self.write_path,
        )
        reader = self._reader(start, digests)
        try:
            with reader:
                for chunk in reader:  # S3's errors come from here, unchanged
                    with self._writing(session):
                        writer.write(chunk)
                    progress.update(writer.position)
                probe = None
                with self._writing(session):
                    if replies is None:
                        pipeline.flush()
                        if streaming.fsync:
                            fsync(sftp, handle)
                        handle.close()  # collects the status of every pipelined write
                    else:
                        synced = replies.send_fsync(handle) if streaming.fsync else None
                        probe = replies.send_stat(self.write_path)
                        handle.close()  # its reply comes after every earlier one: all are in now
                        pipeline.flush()  # the first failed WRITE, if any
                        if synced is not None:
                            replies.synced(synced, self.write_path)
                        replies.settle()
                landed = (
                    Landed(asked=False)
                    if replies is None or probe is None
                    else Landed(asked=True, attrs=replies.attrs(probe, self.write_path))
                )
        finally:
            self.s3_retries += reader.retries
            _close_quietly(handle)
        if writer.position != self.source.size:
            raise VerificationError(
                f"{self.source.uri}: read {writer.position} bytes, expected {self.source.size}"
            )
        return writer.position, landed

    def _write_size(self, session: SFTPSession) -> int:
        """Return the bytes per WRITE: ``write_size`` capped to what the server takes, else its own."""
        wanted = self.options.streaming.write_size
        if wanted is None:
            return session.write_size
        if wanted <= DEFAULT_WRITE_SIZE:
            return wanted  # every SFTP server must take 32 KiB writes
        limit = advertised_write_limit(session.sftp)
        if limit is not None and wanted > limit:
            log.warning(
                "write_size=%s is above the %s bytes %s accepts in one WRITE (limits@openssh.com): using %s",
                wanted,
                limit,
                session.endpoint,
                limit,
            )
            return limit
        return wanted

    @contextlib.contextmanager
    def _writing(self, session: SFTPSession) -> Iterator[None]:
        """Name a failed SFTP write (a full disk, a permission) unless the connection itself is gone."""
        try:
            yield
        except OSError as err:
            if session.lost(err):
                raise
            raise write_error(session.sftp, err, self.write_path, self.source.size) from err

    def _verify(self, sftp: SFTPClient, sent: int, checksum: str | None, known: Landed) -> str:
        """Check what landed before it is published; return how it was verified."""
        checks = self.options.checks
        landed = known.attrs if known.asked else stat_or_none(sftp, self.write_path)
        if landed is None:
            raise self._vanished(sftp)
        if checks.verify == "none":
            return "none"
        if landed.st_size != sent:
            raise VerificationError(
                f"SFTP file {self.write_path!r} has {landed.st_size} bytes after sending {sent}"
            )
        if checks.verify == "checksum" and checks.checksum and checksum:
            reread = new_hasher(checks.checksum)
            hash_remote(sftp, self.write_path, reread, sent)
            actual = format_checksum(checks.checksum, reread.hexdigest())
            if actual != checksum:
                raise ChecksumMismatchError(f"SFTP file {self.write_path!r} read back", checksum, actual)
            return "checksum"
        return "size"

    def _publish(self, sftp: SFTPClient, replies: Replies | None) -> str:
        """Give the verified file its final mode and name; return how the name was given.

        With ``replies``, the chmod travels with the rename (one round trip); it is applied first
        all the same, and its answer is read afterwards.
        """
        publishing = self.options.publishing
        chmod = None
        if publishing.file_mode is not None:
            if replies is not None:
                chmod = replies.send_chmod(self.write_path, publishing.file_mode)
            else:
                try:
                    sftp.chmod(self.write_path, publishing.file_mode)
                except FileNotFoundError:
                    raise self._vanished(sftp) from None
                except OSError as err:
                    log.warning(
                        "Server refused chmod %o on %s: %s", publishing.file_mode, self.write_path, err
                    )
        if not publishing.atomic:
            if replies is not None and chmod is not None:
                self._chmod_done(sftp, replies, chmod)
            self._created = False  # complete and verified: it is the delivered file now
            return "direct"
        try:
            how = publish(
                sftp,
                self.write_path,
                self.path,
                replace=publishing.if_exists != "fail",
                backup=backup_path_for(self.path, self._token),
            )
        except FileNotFoundError:
            if stat_or_none(sftp, self.write_path) is None:
                raise self._vanished(sftp) from None
            raise
        self._created = False
        if replies is not None and chmod is not None:
            self._chmod_done(sftp, replies, chmod)
        return how

    def _chmod_done(self, sftp: SFTPClient, replies: Replies, num: int) -> None:
        """Act on the answer to the chmod of our file: gone means superseded, refused is a warning."""
        try:
            refused = replies.refusal(num, self.write_path)
        except FileNotFoundError:
            if self._created:
                raise self._vanished(sftp) from None
            raise
        if refused is not None:
            mode = self.options.publishing.file_mode
            log.warning("Server refused chmod %o on %s: %s", mode, self.write_path, refused)

    def _write_extras(
        self, sftp: SFTPClient, checksum: str | None, *, only_missing: bool = False
    ) -> tuple[str | None, str | None]:
        """Write the checksum sidecar, then the done marker, after the file itself is published."""
        publishing, algorithm = self.options.publishing, self.options.checks.checksum
        sidecar = marker = None
        if publishing.sidecar and algorithm and checksum:
            sidecar = sidecar_path(self.path, algorithm)
            hexdigest = checksum.split(":", 1)[1]
            if not (only_missing and read_sidecar(sftp, self.path, algorithm) == hexdigest):
                text = sidecar_text(self.path, hexdigest).encode()
                write_small_file(sftp, sidecar, text, publishing.file_mode)
        if publishing.done_marker:
            marker = self.path + publishing.done_marker
            if not (only_missing and stat_or_none(sftp, marker) is not None):
                write_small_file(sftp, marker, b"", publishing.file_mode)
        return sidecar, marker

    def _extra_paths(self) -> list[str]:
        """Return the sidecar and done marker paths this delivery writes (by temp file and rename)."""
        publishing, algorithm = self.options.publishing, self.options.checks.checksum
        extras = []
        if publishing.sidecar and algorithm:
            extras.append(sidecar_path(self.path, algorithm))
        if publishing.done_marker:
            extras.append(self.path + publishing.done_marker)
        return extras

    def _identical(self, sftp: SFTPClient) -> str | None:
        """Return ``"<algorithm>:<hex>"`` when the final file provably holds the object's bytes."""
        algorithm = self.options.checks.checksum or "sha256"
        check = self.check
        if self.options.checks.skip_identical_by == "sidecar" and check and check.algorithm == algorithm:
            recorded = read_sidecar(sftp, self.path, algorithm)
            if recorded == check.expected.hex():
                return format_checksum(algorithm, recorded)
        # The proof by content: read the remote file and compare with what S3 vouches for.
        remote = Digests.fresh(algorithm, check)
        for data in read_range(sftp, self.path, self.source.size):
            for hasher in remote.hashers:
                hasher.update(data)
        if check is not None:
            return remote.checksum() if remote.source_problem() is None else None
        # S3 keeps no usable digest of this object: hash the object itself.
        source = new_hasher(algorithm)
        stream = self.source.open(0)
        try:
            while chunk := stream.read(4 * 1024 * 1024):
                source.update(chunk)
        finally:
            stream.close()
        ours = remote.checksum()
        return ours if ours == format_checksum(algorithm, source.hexdigest()) else None

    # -- records and cleanup ------------------------------------------------------------------

    def _record(
        self,
        *,
        size: int,
        checksum: str | None,
        verified: str,
        published_with: str,
        sidecar: str | None,
        marker: str | None,
        moved: int,
        skipped: bool = False,
    ) -> DeliveryRecord:
        seconds = time.monotonic() - self._started
        rate = moved / max(seconds, 1e-9) / 1e6
        if not skipped:
            log.info(
                "Delivered %s bytes to %s in %.2fs (%.1f MB/s), checksum %s, verified by %s, published by %s",
                size,
                self.path,
                seconds,
                rate,
                checksum,
                verified,
                published_with,
            )
        return DeliveryRecord(
            s3_uri=self.source.uri,
            sftp_path=self.path,
            size=size,
            checksum=checksum,
            etag=self.source.etag,
            version_id=self.source.version_id,
            skipped=skipped,
            attempts=self.attempts,
            resumed_from=self.resumed_from,
            seconds=round(seconds, 3),
            mb_per_s=round(rate, 2),
            verified=verified,
            published_with=published_with,
            source_check=self.check.name if self.check else None,
            source_check_skipped=self.integrity.unchecked_reason,
            s3_retries=self.s3_retries,
            sidecar_path=sidecar,
            done_marker_path=marker,
        )

    def _vanished(self, sftp: SFTPClient) -> Exception:
        directory = posixpath.dirname(self.path) or "."
        if not is_dir(stat_or_none(sftp, directory)):
            self._created = False
            return FileNotFoundError(
                f"SFTP directory {directory!r} vanished during the transfer to {self.path!r}; "
                "nothing was published"
            )
        if self.options.publishing.atomic:
            self._created = False  # gone: whoever removed it may have written another file there since
            return SupersededError(
                f"The temp file {self.write_path!r} of {self.path!r} was removed by someone else before it "
                "was published (a newer delivery's cleanup, or a person); nothing was published by this one"
            )
        return FileNotFoundError(
            f"SFTP file {self.path!r} vanished during the transfer (was its directory removed?)"
        )

    def _lost_note(self) -> str:
        """Say what a failure cost when the final name was being written in place."""
        if self.options.publishing.atomic or not self._created:
            return ""
        return (
            f". With atomic=False the file was written in place: the partial {self.path!r} was removed and "
            "its previous version, if any, is gone"
        )

    def _clean_up(self, sftp: SFTPClient) -> None:
        """Remove the file this delivery created and did not publish (never anything else)."""
        if self._created and remove_quietly(sftp, self.write_path):
            log.info("Removed %s after the failure", self.write_path)
        self._created = False

    def _clean_up_on_new_session(self) -> None:
        if not self._created:
            return
        try:
            session = self.sessions.acquire()
        except Exception as err:
            log.warning("Could not reconnect to remove %s: %s", self.write_path, err)
            return
        try:
            self._clean_up(session.sftp)
        finally:
            self.sessions.release(session)


def _close_quietly(handle: SFTPFile) -> None:
    if handle.closed:
        return
    try:
        handle.close()
    except Exception:  # the connection may be gone; the error that got us here matters more
        log.debug("Closing %s after a failure failed", handle, exc_info=True)
