# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""One delivery, owned end to end: plan, attempts, digests, temp file, verify, publish, sidecar, marker."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import posixpath
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_s3sftp.core.checksums import format_checksum, new_hasher
from airflow_s3sftp.core.digests import Checkpoints, Digests
from airflow_s3sftp.core.integrity import weigh_source_integrity
from airflow_s3sftp.core.journal import (
    MAX_JOURNAL_BYTES,
    Identity,
    Journal,
    JournalKeeper,
    journal_path_for,
    journal_temp_path_for,
)
from airflow_s3sftp.core.manifest import Manifest, RangeHasher, manifest_path, render_manifest
from airflow_s3sftp.core.ordered import OrderedWriter
from airflow_s3sftp.core.parts import StripedFile, Striping, part_token
from airflow_s3sftp.core.paths import (
    STRIPE_SUFFIX,
    backup_path_for,
    hidden_path_for,
    new_token,
    temp_path_for,
)
from airflow_s3sftp.core.ranged import RangedReader
from airflow_s3sftp.core.reader import ChunkReader
from airflow_s3sftp.core.sftp import is_dir
from airflow_s3sftp.core.sidecar import read_recorded, sidecar_path, sidecar_text, write_small_file
from airflow_s3sftp.core.sweep import LeftoverSweeper
from airflow_s3sftp.exceptions import (
    ChecksumMismatchError,
    ConnectionLostError,
    SupersededError,
    VerificationError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from paramiko import SFTPAttributes

    from airflow_s3sftp.core.options import DeliveryOptions
    from airflow_s3sftp.core.reader import OpenSource, ReadAhead
    from airflow_s3sftp.core.remote import Remote, RemoteFile
    from airflow_s3sftp.core.session import SessionPool, SFTPSession

log = logging.getLogger(__name__)

#: Auto striping (``channels=None``): objects at least this large... Striping costs sequential
#: round trips before and after the data (about 10 now that the channels, part files, join and
#: removes go pipelined; about 30 with 4 channels before), paid back only by a big object. Measured
#: through a delay proxy (docs/performance.md, "Long links"), before the pipelining: 64 MiB was
#: slower striped at every round trip from 10 to 250 ms (e.g. 7.6 vs 9.5 MB/s at 100 ms); 256 MiB
#: 1.9x faster at 100 ms (20.6 vs 10.9 MB/s) and 1.6x at 250 ms.
AUTO_MIN_SIZE = 256 * 1024 * 1024
#: ...over links whose SFTP round trip is at least this long... Measured at 256 MiB: striping lost at
#: 10 ms (63.0 vs 81.7 MB/s) and 20 ms (59.7 vs 61.4), won at 100 ms and 250 ms; one channel's window
#: (2 MiB on OpenSSH) allows about 42 MB/s at 50 ms, near what the CPU allows here.
AUTO_MIN_ROUND_TRIP = 0.050
#: ...are spread over this many channels (OpenSSH grants 10 per connection by default). Measured
#: at 100 ms, 1 GiB, side by side, once every channel holds up to two stripes and the join overlaps
#: the transfer: 8 x 2 MiB 47.3 MB/s at +67 MiB over an import-only process, 4 x 8 MiB 46.9 at +93,
#: 4 x 2 MiB 26.5; at 256 MiB 8 channels 37-39 MB/s, 4 channels 25-26. Raw striped writes without S3:
#: 8 x 2 MiB 131 MB/s, 4 x 2 MiB 75. The channels' memory is capped by ``parts.LANES_MEMORY``.
AUTO_CHANNELS = 8

_noted: set[tuple[str, str]] = set()
_noted_lock = threading.Lock()


def _note_once(endpoint: str, what: str) -> None:
    """Log a fact about a server once per process, not once per object."""
    with _noted_lock:
        if (endpoint, what) in _noted:
            return
        _noted.add((endpoint, what))
    log.info("%s %s", endpoint, what)


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


def extra_paths(path: str, options: DeliveryOptions) -> list[str]:
    """Return the sidecar and done marker paths a delivery to ``path`` writes (by temp file and rename)."""
    publishing, algorithm = options.publishing, options.checks.checksum
    extras = []
    if publishing.sidecar and algorithm:
        extras.append(sidecar_path(path, algorithm))
    if publishing.manifest:
        extras.append(manifest_path(path))
    if publishing.done_marker:
        extras.append(path + publishing.done_marker)
    return extras


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
        self._sweeper = sweeper or LeftoverSweeper(
            options.publishing.stale_temp_after, [path], earlier_tries_after=options.retry.resume_after
        )
        self._sweeper.include(extra_paths(path, options))  # sidecars and markers go via temp files too
        self._token = new_token()
        self.write_path = temp_path_for(path, self._token) if options.publishing.atomic else path
        self.integrity = weigh_source_integrity(source.head, preferred=options.checks.checksum)
        self.check = self.integrity.check
        self.checkpoints = Checkpoints()
        self.attempts = 0
        self.resumed_from = 0
        self.s3_retries = 0
        self._prepared = False  # the skip check ran (it runs once, before the first byte)
        self._looked = False  # the target was looked at (it rides with our file's first create)
        self._created = False  # write_path is a file this delivery created and has not published
        self._parts: list[str] = []  # part files this delivery created and has not removed
        self.identity = Identity(
            path=path,
            source=source.uri,
            etag=source.etag,
            version_id=source.version_id,
            size=source.size,
            checksum=options.checks.checksum,
        )
        self._journal = self._journaling()  # None: no durable checkpoints for this delivery
        self._keeper: JournalKeeper | None = None
        self._proven = 0  # bytes the journal on the server says are fsynced
        self._adoption_checked = False
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
                    self._stop_journal()
                    if self._proven:
                        note += (
                            f". The first {self._proven} bytes of {self.write_path!r} are proven by its "
                            "journal and kept: the next try of the task resumes from them"
                        )
                    else:
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
                self._clean_up(session)
                self.sessions.release(session)
                if note:
                    err.add_note(note.strip())
                raise
            self.sessions.release(session)
            return record

    def _attempt(self, session: SFTPSession) -> DeliveryRecord:
        """Run one attempt over ``session``: the story of :class:`Delivery`, step by step."""
        try:
            remote = self._port(session)  # asking the server what it is may meet a dropped link too
            if not self._prepared and (skipped := self._prepare(remote)) is not None:
                return skipped
            file, digests = self._open(remote)
            start = file.position
            landed = self._stream(file, digests)
            self._remove_parts(remote)
            if problem := digests.source_problem():
                raise VerificationError(f"{self.source.uri} changed or was corrupted in transit: {problem}")
            checksum = digests.checksum()
            verified = self._verify(remote, landed, checksum)
            self._stop_journal()
            published_with = self._publish(remote)
            self._drop_journal(remote)
            sidecar, marker = self._write_extras(remote, checksum, digests)
        except Exception as err:
            if session.lost(err):
                raise ConnectionLostError(
                    f"connection to {session.endpoint} lost while writing {self.write_path!r}: {err}"
                ) from err
            raise
        return self._record(
            size=self.source.size,
            checksum=checksum,
            verified=verified,
            published_with=published_with,
            sidecar=sidecar,
            marker=marker,
            moved=self.source.size - start,
        )

    # -- the steps ------------------------------------------------------------------------------

    def _port(self, session: SFTPSession) -> Remote:
        """Return the session's SFTP port in the wire mode its server needs."""
        streaming = self.options.streaming
        remote = session.remote(
            strict_order=streaming.strict_order,
            write_size=streaming.write_size,
            max_in_flight=streaming.max_in_flight,
            io_timeout=streaming.io_timeout,
        )
        self._endpoint = f"{remote.endpoint}:"
        return remote

    def _prepare(self, remote: Remote) -> DeliveryRecord | None:
        """With ``if_exists="skip_identical"``, look at the target first; return a record to skip it.

        Every other mode looks at the target in the round trip that opens our file.
        """
        self._prepared = True
        if self.options.publishing.if_exists != "skip_identical":
            return None
        target = remote.stat(self.path)
        self._check_target(target)
        if target is None or target.st_size != self.source.size:
            return None
        identical = self._identical(remote)
        if identical is None:
            return None
        log.info("%s already holds %s (%s): skipped", self.path, self.source.uri, identical)
        sidecar, marker = self._write_extras(remote, identical, None, only_missing=True)
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

    def _check_target(self, target: SFTPAttributes | None) -> None:
        """Refuse a final name that is a directory, or that exists when ``if_exists="fail"``."""
        if is_dir(target):
            raise IsADirectoryError(
                f"SFTP target {self.path!r} is a directory; end sftp_path with '/' to write into it"
            )
        if target is not None and self.options.publishing.if_exists == "fail":
            raise FileExistsError(f"SFTP file {self.path!r} already exists (if_exists='fail')")

    def _open(self, remote: Remote) -> tuple[RemoteFile, Digests]:
        """Return the file to write (positioned where to write) and the digests of the bytes before it."""
        fresh = self._fresh_digests()
        if self._created:
            resumed = self._resume(remote, fresh)
            if resumed is not None:
                self._keep_journal(remote)
                return resumed
        self.checkpoints = Checkpoints()
        self.resumed_from = 0
        publishing = self.options.publishing
        if self._created and publishing.atomic:
            remote.remove(self.write_path)  # our own earlier attempt, not provably reusable
        self._remove_parts(remote)
        file = self._create(
            remote, exclusive=publishing.atomic or (publishing.if_exists == "fail" and not self._created)
        )
        directory = posixpath.dirname(self.path)
        server_now = file.server_time() if publishing.atomic else None  # the server's clock, not ours
        if server_now is not None and self._sweeper.pending(directory):
            self._sweeper.sweep(remote, directory, server_now)
        if self._journal is not None and not self._adoption_checked:
            self._adoption_checked = True
            adopted = self._adopt(remote, file, server_now)
            if adopted is not None:
                file, fresh = adopted
        self._keep_journal(remote)
        return file, fresh

    # -- durable checkpoints: the journal beside the temp file (core/journal.py) -----------------

    def _journaling(self) -> Journal | None:
        """Return the journal this delivery keeps on the server, or None when it keeps none.

        Only atomic deliveries of objects larger than one checkpoint keep one: a small object is
        sent again faster than its journal is written.
        """
        every, checks = self._checkpoint_every, self.options.checks
        if not self.options.publishing.atomic or every == 0 or self.source.size <= every:
            return None
        return Journal(identity=self.identity, temp=self.write_path, range_size=checks.range_size)

    @property
    def _checkpoint_every(self) -> int:
        """Return the bytes between checkpoints: the option, or 1/32 of the object in whole ranges."""
        every = self.options.retry.checkpoint_every
        if every is not None:
            return every
        range_size = self.options.checks.range_size
        return max(range_size, self.source.size // 32 // range_size * range_size)

    def _fresh_digests(self) -> Digests:
        keep_ranges = self._journal is not None or self.options.publishing.manifest
        range_size = self.options.checks.range_size if keep_ranges else None
        return Digests.fresh(self.options.checks.checksum, self.check, range_size)

    def _keep_journal(self, remote: Remote) -> None:
        """Publish the journal from this attempt's session on, on a channel off the writer's path."""
        journal = self._journal
        if journal is None:
            return
        if self._keeper is not None:
            self._keeper.close()
        side = remote.side()
        port = side if side is not None else remote
        path = journal_path_for(self.path)

        def write(content: bytes) -> None:
            temp, backup = journal_temp_path_for(self.path), backup_path_for(self.path, new_token())
            port.write_small(path, content, None, temp=temp, backup=backup, exclusive=False)

        journal.temp, journal.parts = self.write_path, list(self._parts)
        self._keeper = JournalKeeper(write, f"{self.source.uri} -> {self.path}", inline=side is None)
        self._keeper.submit(journal.to_bytes())
        self._keeper.drain()

    def _checkpoint(self, file: RemoteFile, digests: Digests) -> None:
        """Have the server flush what was written; once it confirms, the journal says so."""
        journal, keeper, ranges = self._journal, self._keeper, digests.ranges
        if journal is None or keeper is None or ranges is None:
            return

        def synced(offset: int) -> None:  # on the writer's thread, while it collects replies
            done = ranges.completed  # a copy: the reader thread appends
            proven = min(offset // journal.range_size, len(done)) * journal.range_size
            if proven > self._proven:
                self._proven = journal.proven = proven
                journal.ranges = list(done[: proven // journal.range_size])
                keeper.submit(journal.to_bytes())

        file.checkpoint(synced)

    def _stop_journal(self) -> None:
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None

    def _drop_journal(self, remote: Remote) -> None:
        """Stop writing the journal and remove it (the delivery is published, or nothing is kept)."""
        self._stop_journal()
        if self._journal is not None:
            # the temp one: left there by a write cut short
            remote.remove_all([journal_path_for(self.path), journal_temp_path_for(self.path)])
            self._proven = 0

    def _adopt(
        self, remote: Remote, fresh: RemoteFile, server_now: float | None
    ) -> tuple[RemoteFile, Digests] | None:
        """Take over what an earlier try (another process) proved, or remove what it left; None: start fresh.

        Trusted, and only together: a journal of ours at this path for the same object, version and
        checksum; its temp file idle for ``resume_after`` by the server's clock (a live writer keeps
        it fresh) and at least as long as the journal says; the S3 bytes it claims, read again
        (in-region) and hashed per range, giving the journal's digests; and the ranges read back
        from the server giving them too (every proven range; only the last with ``verify="none"``).
        The longest prefix of whole ranges passing all of it is adopted; anything else is never
        trusted: what the journal names is removed and the delivery starts clean.
        """
        path = journal_path_for(self.path)
        try:
            data = remote.read_small(path, MAX_JOURNAL_BYTES)
        except OSError as err:
            log.warning("Could not read %s (%s): not resuming", path, err)
            return None
        if data is None or server_now is None:
            return None
        try:
            earlier = Journal.from_bytes(data)
        except ValueError as err:
            log.warning("%s is not a journal of ours (%s): ignored", path, err)
            return None
        temp = remote.stat(earlier.temp)
        if temp is not None and temp.st_mtime is not None:
            age = server_now - temp.st_mtime
            if age < self.options.retry.resume_after:
                log.info(
                    "%s was written %.0fs ago: another try may be alive; not touching it", earlier.temp, age
                )
                return None
        proven, why = self._provable(remote, earlier, temp)
        digests = self._prefix_digests(proven) if proven else None
        if (
            digests is not None
            and digests.ranges is not None
            and list(digests.ranges.completed) != earlier.ranges[: proven // earlier.range_size]
        ):
            proven, digests, why = 0, None, f"{self.source.uri} no longer gives its digests"
        if digests is None:
            log.info("Not resuming from %s (%s): removing what it names", path, why)
            for leftover in (earlier.temp, *earlier.parts):
                if leftover != self.write_path:
                    remote.remove(leftover)
            return None
        fresh.abort()
        remote.remove(self.write_path)  # ours, just created, empty
        file = remote.reopen(earlier.temp, proven, size=self.source.size)
        self.write_path = earlier.temp
        self._proven = self.resumed_from = proven
        assert self._journal is not None
        self._journal.proven, self._journal.ranges = proven, earlier.ranges[: proven // earlier.range_size]
        self.checkpoints = Checkpoints()
        self.checkpoints.record(proven, digests)
        log.info(
            "Resuming %s at byte %s of %s: an earlier try left them in %s, proven by its journal%s",
            self.path,
            proven,
            self.source.size,
            earlier.temp,
            f" ({why})" if why else "",
        )
        return file, digests

    def _provable(self, remote: Remote, earlier: Journal, temp: SFTPAttributes | None) -> tuple[int, str]:
        """Return how many bytes of the earlier try's temp file may be adopted, and why not more."""
        if not earlier.adoptable(self.identity):
            return 0, "it describes another object, version or checksum"
        if earlier.parts:
            return 0, "its bytes were in part files, which are joined only when complete"
        if earlier.range_size != self.options.checks.range_size:
            return 0, "its ranges differ from this try's"
        if temp is None or (temp.st_size or 0) < earlier.proven:
            return (
                0,
                f"its temp file holds {None if temp is None else temp.st_size} bytes, not {earlier.proven}",
            )
        size, count = earlier.range_size, earlier.proven // earlier.range_size
        if count == 0:
            return 0, "it proves no whole range"
        first = count - 1 if self.options.checks.verify == "none" else 0
        for index in range(first, count):
            hasher = hashlib.sha256()
            for data in remote.read(earlier.temp, (index + 1) * size, start=index * size):
                hasher.update(data)
            if hasher.hexdigest() != earlier.ranges[index]:
                why = f"range {index} (bytes {index * size}-{(index + 1) * size - 1}) reads back otherwise"
                return (index * size if first == 0 else 0), why
        return count * size, ""

    def _prefix_digests(self, end: int) -> Digests | None:
        """Return the digests of the object's first ``end`` bytes, read again from S3."""
        digests = self._fresh_digests()
        stream = self.source.open(0, end - 1)
        read = 0
        try:
            while read < end and (chunk := stream.read(min(4 * 1024 * 1024, end - read))):
                for hasher in digests.hashers:
                    hasher.update(chunk)
                read += len(chunk)
        finally:
            stream.close()
        return digests if read == end else None

    def _create(self, remote: Remote, *, exclusive: bool) -> RemoteFile:
        """Create our file; the target's STAT rides along the first time; a missing directory is seen to.

        Whatever the target's STAT says is acted on before a byte is written; a file we created
        for a refused target is removed by :meth:`run`'s cleanup like after any other failure.
        """
        look_at = None if self._looked else self.path
        size = self.source.size
        try:
            file, target = remote.create(self.write_path, exclusive=exclusive, look_at=look_at, size=size)
        except FileNotFoundError as err:
            self._check_target(getattr(err, "target", None))
            # Only now look at the directory: a clear error, or create_dirs makes it.
            remote.ensure_directory(
                posixpath.dirname(self.path) or ".", create=self.options.publishing.create_dirs
            )
            file, target = remote.create(self.write_path, exclusive=exclusive, size=size)
        except OSError as err:
            self._check_target(getattr(err, "target", None))  # the clearer error, when there is one
            raise
        self._created = True
        self._looked = True
        self._check_target(target)
        striping = self._striping(remote)
        return file if striping is None else self._striped(remote, file, striping)

    def _striping(self, remote: Remote) -> Striping | None:
        """Return how to spread the object over several channels, or None for one channel.

        Auto (``channels=None``) stripes objects of at least :data:`AUTO_MIN_SIZE` over a link whose
        round trip is at least :data:`AUTO_MIN_ROUND_TRIP`: below, one channel is as fast (measured in
        docs/performance.md) and spends less CPU.
        """
        streaming, size = self.options.streaming, self.source.size
        wanted = streaming.channels
        if wanted == 1 or not self.options.publishing.atomic or size < 2 * streaming.stripe_size:
            return None
        if wanted is None:
            if size < AUTO_MIN_SIZE or remote.round_trip() < AUTO_MIN_ROUND_TRIP:
                return None
            wanted = AUTO_CHANNELS
        if not remote.can_join():
            _note_once(remote.endpoint, "offers no copy-data extension: one SFTP channel per object")
            return None
        free = remote.free_bytes(posixpath.dirname(self.path) or ".")
        if free is not None and free < 2 * size + 64 * 1024 * 1024:
            log.info(
                "%s has %s bytes free, less than twice %s (%s bytes): one SFTP channel",
                remote.endpoint,
                free,
                self.source.uri,
                size,
            )
            return None
        return Striping(min(wanted, -(-size // streaming.stripe_size)), streaming.stripe_size)

    def _striped(self, remote: Remote, target: RemoteFile, striping: Striping) -> RemoteFile:
        """Open one hidden part file per granted channel and return the file that spreads writes over them."""
        lanes = remote.lanes(striping.channels)
        if len(lanes) < 2:
            _note_once(remote.endpoint, "granted fewer than 2 extra SFTP channels: one channel per object")
            return target
        paths = [
            hidden_path_for(self.path, part_token(self._token, number), STRIPE_SUFFIX)
            for number in range(len(lanes))
        ]
        self._parts.extend(paths)  # named by our fresh token: ours, removed on any failure
        try:
            parts = remote.create_each(lanes, paths, size=self.source.size)
        except BaseException:
            target.abort()
            raise
        log.info(
            "Spreading %s over %s SFTP channels in stripes of %s bytes%s",
            self.source.uri,
            len(lanes),
            striping.stripe_size,
            # measured for auto striping; not asked (two round trips) only to be logged
            f" (round trip {remote.round_trip() * 1000:.0f} ms)"
            if self.options.streaming.channels is None
            else "",
        )
        return StripedFile(
            remote, target, parts, Striping(len(lanes), striping.stripe_size), self.source.size
        )

    def _remove_parts(self, remote: Remote) -> None:
        """Remove the part files of this delivery (joined into the temp file, or abandoned)."""
        parts, self._parts = self._parts, []
        if parts:
            remote.remove_all(parts)

    def _resume(self, remote: Remote, fresh: Digests) -> tuple[RemoteFile, Digests] | None:
        """Reopen our file after the longest prefix whose read-back digest matches what was sent."""
        algorithm = self.options.checks.checksum
        if not fresh.resumable or algorithm is None:
            return None
        attrs = remote.stat(self.write_path)
        if attrs is None or not attrs.st_size:
            return None
        best = self.checkpoints.best_at_or_below(attrs.st_size)
        if best is None:
            return None
        offset, states = best
        landed = new_hasher(algorithm)
        for data in remote.read(self.write_path, offset):
            landed.update(data)
        if landed.digest() != fresh.prefix_digest(states):
            log.warning(
                "%s does not hold the bytes sent in its first %s; restarting", self.write_path, offset
            )
            return None
        file = remote.reopen(self.write_path, offset, size=self.source.size)
        self.checkpoints.forget_after(offset)
        self.resumed_from = offset
        log.info("Resuming %s at byte %s: its prefix was read back and matches", self.write_path, offset)
        return file, fresh.restored(states)

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

    def _stream(self, file: RemoteFile, digests: Digests) -> SFTPAttributes | None:
        """Write the object from ``file.position`` in strict offset order; return what landed."""
        streaming = self.options.streaming
        writer = OrderedWriter(file, start=file.position)
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
        reader = self._reader(file.position, digests)
        every = self._checkpoint_every or self.source.size + 1
        next_checkpoint = (file.position // every + 1) * every
        try:
            with reader:
                for chunk in reader:  # S3's errors come from here, unchanged
                    writer.write(chunk)
                    progress.update(writer.position)
                    if writer.position >= next_checkpoint:
                        self._checkpoint(file, digests)
                        next_checkpoint = (writer.position // every + 1) * every
                    if self._keeper is not None:
                        self._keeper.drain()  # an inline keeper writes here, between two writes
                landed = file.finish(sync=streaming.fsync)
        finally:
            self.s3_retries += reader.retries
            file.abort()
        if writer.position != self.source.size:
            raise VerificationError(
                f"{self.source.uri}: read {writer.position} bytes, expected {self.source.size}"
            )
        return landed

    def _verify(self, remote: Remote, landed: SFTPAttributes | None, checksum: str | None) -> str:
        """Check what landed before it is published; return how it was verified."""
        checks, size = self.options.checks, self.source.size
        if landed is None:
            raise self._vanished(remote)
        if checks.verify == "none":
            return "none"
        if landed.st_size != size:
            raise VerificationError(
                f"SFTP file {self.write_path!r} has {landed.st_size} bytes after sending {size}"
            )
        if checks.verify == "checksum" and checks.checksum and checksum:
            reread = new_hasher(checks.checksum)
            for data in remote.read(self.write_path, size):
                reread.update(data)
            actual = format_checksum(checks.checksum, reread.hexdigest())
            if actual != checksum:
                raise ChecksumMismatchError(f"SFTP file {self.write_path!r} read back", checksum, actual)
            return "checksum"
        return "size"

    def _publish(self, remote: Remote) -> str:
        """Give the verified file its final mode and name; return how the name was given."""
        publishing = self.options.publishing
        try:
            if not publishing.atomic:
                if publishing.file_mode is not None:
                    remote.chmod(self.write_path, publishing.file_mode)
                how = "direct"
            else:
                how = remote.publish(
                    self.write_path,
                    self.path,
                    replace=publishing.if_exists != "fail",
                    backup=backup_path_for(self.path, self._token),
                    mode=publishing.file_mode,
                )
        except FileNotFoundError:
            if remote.stat(self.write_path) is None:
                raise self._vanished(remote) from None
            raise
        self._created = False  # published (or, in place, complete and verified): the delivered file now
        return how

    def _write_extras(
        self, remote: Remote, checksum: str | None, digests: Digests | None, *, only_missing: bool = False
    ) -> tuple[str | None, str | None]:
        """Write the checksum sidecar, the range manifest, then the done marker, after the publish."""
        publishing, algorithm = self.options.publishing, self.options.checks.checksum
        sidecar = marker = None
        if publishing.sidecar and algorithm and checksum:
            sidecar = sidecar_path(self.path, algorithm)
            hexdigest = checksum.split(":", 1)[1]
            if not (only_missing and read_recorded(remote, self.path, algorithm) == hexdigest):
                text = sidecar_text(self.path, hexdigest).encode()
                write_small_file(remote, sidecar, text, publishing.file_mode)
        if publishing.manifest and not (only_missing and remote.stat(manifest_path(self.path)) is not None):
            write_small_file(
                remote, manifest_path(self.path), self._manifest(remote, digests), publishing.file_mode
            )
        if publishing.done_marker:
            marker = self.path + publishing.done_marker
            if not (only_missing and remote.stat(marker) is not None):
                write_small_file(remote, marker, b"", publishing.file_mode)
        return sidecar, marker

    def _manifest(self, remote: Remote, digests: Digests | None) -> bytes:
        """Return the range manifest of the delivered bytes (read again from the server when skipped)."""
        range_size = self.options.checks.range_size
        ranges = digests.ranges if digests is not None else None
        if ranges is None or ranges.size != self.source.size:  # skipped: the file is there, ours to read
            ranges = RangeHasher(range_size, whole=False)
            for data in remote.read(self.path, self.source.size):
                ranges.update(data)
        whole = digests.checksum() if digests is not None else None
        if whole is None or not whole.startswith("sha256:"):
            hasher = hashlib.sha256()
            for data in remote.read(self.path, self.source.size):
                hasher.update(data)
            whole = "sha256:" + hasher.hexdigest()
        completed, _ = ranges.finish()
        name = posixpath.basename(self.path)
        return render_manifest(
            Manifest(name, self.source.size, range_size, whole.split(":", 1)[1], completed)
        ).encode()

    def _identical(self, remote: Remote) -> str | None:
        """Return ``"<algorithm>:<hex>"`` when the final file provably holds the object's bytes."""
        algorithm = self.options.checks.checksum or "sha256"
        check = self.check
        if self.options.checks.skip_identical_by == "sidecar" and check and check.algorithm == algorithm:
            recorded = read_recorded(remote, self.path, algorithm)
            if recorded == check.expected.hex():
                return format_checksum(algorithm, recorded)
        # The proof by content: read the remote file and compare with what S3 vouches for.
        remote_digests = Digests.fresh(algorithm, check)
        for data in remote.read(self.path, self.source.size):
            for hasher in remote_digests.hashers:
                hasher.update(data)
        if check is not None:
            return remote_digests.checksum() if remote_digests.source_problem() is None else None
        # S3 keeps no usable digest of this object: hash the object itself.
        source = new_hasher(algorithm)
        stream = self.source.open(0)
        try:
            while chunk := stream.read(4 * 1024 * 1024):
                source.update(chunk)
        finally:
            stream.close()
        ours = remote_digests.checksum()
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

    def _vanished(self, remote: Remote) -> Exception:
        directory = posixpath.dirname(self.path) or "."
        if not is_dir(remote.stat(directory)):
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

    def _clean_up(self, session: SFTPSession) -> None:
        """Remove the file this delivery created and did not publish (never anything else)."""
        self._stop_journal()
        if not self._created and not self._parts:
            return
        try:
            remote = self._port(session)
            removed = self._created and remote.remove(self.write_path)
            self._remove_parts(remote)
            self._drop_journal(remote)
        except Exception as err:  # cleanup after a failure must not mask that failure
            log.warning("Could not remove %s after the failure: %s", self.write_path, err)
            removed = False
        if removed:
            log.info("Removed %s after the failure", self.write_path)
        self._created = False

    def _clean_up_on_new_session(self) -> None:
        if not self._created and not self._parts:
            return
        try:
            session = self.sessions.acquire()
        except Exception as err:
            log.warning("Could not reconnect to remove %s: %s", self.write_path, err)
            return
        try:
            self._clean_up(session)
        finally:
            self.sessions.release(session)
