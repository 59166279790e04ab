# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Many objects in one task: reused sessions, worker threads, progress, one stop for task-wide failures."""

from __future__ import annotations

import errno
import logging
import posixpath
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from airflow_s3sftp.core.delivery import Delivery, extra_paths
from airflow_s3sftp.core.session import SessionPool
from airflow_s3sftp.core.sftp import DEFAULT_WRITE_SIZE
from airflow_s3sftp.core.sweep import LeftoverSweeper
from airflow_s3sftp.exceptions import ConnectionLostError, MissingTargetError, is_final

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from contextlib import AbstractContextManager

    from airflow_s3sftp.core.delivery import Source
    from airflow_s3sftp.core.options import DeliveryOptions
    from airflow_s3sftp.core.session import SFTPSession

log = logging.getLogger(__name__)

#: What to deliver where: ``(bucket, key, sftp_path)``.
Planned = tuple[str, str, str]

_LISTED = 20  # objects named in a task-wide failure's note; the rest are counted


class Batch:
    """Deliver many S3 objects on a pool of reused SFTP sessions; return one record per object.

    The first SFTP session opens alone (retried with backoff if the connection drops or times
    out), and the target directories are checked on it; only then do up to ``max_concurrency``
    objects move at once, each session serving one object after another. A failed object yields
    a record with an ``error`` (``s3_uri``, ``sftp_path``, ``error``) and does not stop the others.
    A task-wide failure (:func:`~airflow_s3sftp.exceptions.is_final`: refused login, host key,
    missing key file, connection, bucket, directory or credentials) is raised once, at once:
    objects not yet started are not attempted, and a note lists what was not delivered.

    The Airflow hook hands it adapters only: where sources and sessions come from.

    :param planned: what to deliver where
    :param options: how to deliver; shared by every object
    :param source: ``source(bucket, key)`` returns a context manager yielding the object as a
        :class:`~airflow_s3sftp.core.delivery.Source`; it is left when the object's delivery ends
    :param connect: opens a new SFTP session
    :param endpoint: returns ``user@host:port`` for messages (asked only when one needs it)
    :param max_concurrency: objects (and SFTP sessions) in flight at once
    :param max_connections: SSH connections open at once at most, each carrying up to
        ``max_concurrency / max_connections`` sessions on channels of their own; None for one per session
    :param sleep: waits between connection attempts (a parameter so unit tests need not wait)
    """

    def __init__(
        self,
        planned: Sequence[Planned],
        options: DeliveryOptions,
        *,
        source: Callable[[str, str], AbstractContextManager[Source]],
        connect: Callable[[], SFTPSession],
        endpoint: Callable[[], str],
        max_concurrency: int = 4,
        max_connections: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.planned = list(planned)
        self.options = options
        self._source = source
        self._connect = connect
        self._endpoint = endpoint
        self._sleep = sleep
        self.workers = max(1, min(max_concurrency, len(self.planned)))
        self.max_connections = max_connections
        finals = [path for _, _, path in self.planned]
        # Every name the task writes, known before the first sweep: the first object runs alone.
        self.sweeper = LeftoverSweeper(
            options.publishing.stale_temp_after,
            finals + [extra for path in finals for extra in extra_paths(path, options)],
            earlier_tries_after=options.retry.resume_after,
        )
        self.progress = BatchProgress(len(self.planned), options.streaming.progress_interval)
        self._stop = _TaskStop(self.planned, atomic=options.publishing.atomic)

    def run(self) -> list[dict[str, Any]]:
        """Deliver every planned object; return their records, or raise a task-wide failure once."""
        stop = self._stop
        with SessionPool(self._connect, self.workers, self.max_connections) as pool:
            try:
                first = self._first_session(pool)
            except Exception as err:
                stop.ends_all(err)
                raise
            try:
                missing = self._missing_directories(first)
            except BaseException:
                pool.discard(first)
                raise
            pool.release(first)
            for item in self.planned:
                if posixpath.dirname(item[2]) in missing:
                    stop.failed(item, missing[posixpath.dirname(item[2])])
            stop.raise_if_task_wide()
            # The pool may hold fewer sessions than asked (a short link, a server granting fewer).
            with ThreadPoolExecutor(max_workers=min(self.workers, pool.size)) as threads:
                records = list(threads.map(lambda item: self._one(item, pool), self.planned))
        stop.raise_if_task_wide(records)
        return records

    def _one(self, item: Planned, pool: SessionPool) -> dict[str, Any]:
        """Deliver one object; a failure that is not task-wide becomes its record."""
        stop = self._stop
        if stop.error is not None:
            return stop.not_attempted(item)
        bucket, key, path = item
        try:
            with self._source(bucket, key) as source:
                record = Delivery(
                    source, path, self.options, pool, sweeper=self.sweeper, sleep=self._sleep
                ).run()
        except Exception as err:
            if not stop.failed(item, err):
                log.error("Delivering s3://%s/%s to %s failed: %s", bucket, key, path, err)
            self.progress.finished(0, failed=True)
            return _failure(item, err)
        self.progress.finished(0 if record.skipped else record.size)
        return record.to_dict()

    def _first_session(self, pool: SessionPool) -> SFTPSession:
        """Open the task's first session alone: final failures at once, healable ones with backoff."""
        retry = self.options.retry
        attempts = retry.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return pool.acquire()
            except ConnectionLostError as err:
                if attempt == attempts:
                    raise ConnectionLostError(
                        f"Could not connect to {self._endpoint()} after {attempts} attempts; no object "
                        f"was attempted: {err}"
                    ) from err
                delay = retry.backoff(attempt)
                log.warning(
                    "Connecting to SFTP failed (%s); trying again in %.1fs (attempt %s of %s)",
                    err,
                    delay,
                    attempt + 1,
                    attempts,
                )
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _missing_directories(self, session: SFTPSession) -> dict[str, BaseException]:
        """Return the target directories that are missing (or not directories), with the error for each.

        Asked once per directory on the first session, before any object starts; with
        ``create_dirs`` the deliveries make missing directories themselves.
        """
        if self.options.publishing.create_dirs:
            return {}
        # One request at a time and the smallest WRITE every server takes: nothing to ask the server yet.
        remote = session.remote(
            strict_order=True, write_size=DEFAULT_WRITE_SIZE, io_timeout=self.options.streaming.io_timeout
        )
        missing: dict[str, BaseException] = {}
        for directory in sorted({posixpath.dirname(path) or "." for _, _, path in self.planned}):
            try:
                remote.ensure_directory(directory, create=False)
            except FileNotFoundError as err:
                missing[directory] = MissingTargetError(str(err))
            except NotADirectoryError as err:
                missing[directory] = err
        return missing


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Return the JSON-able summary of a batch's records (the operator's XCom for many objects).

    ``objects`` holds the records of the delivered (or skipped) objects, ``failed`` those with an
    ``error``; ``transferred``, ``skipped`` and ``bytes`` count the delivered ones.
    """
    done = [record for record in records if "error" not in record]
    moved = [record for record in done if not record.get("skipped")]
    return {
        "objects": done,
        "failed": [record for record in records if "error" in record],
        "count": len(records),
        "transferred": len(moved),
        "skipped": len(done) - len(moved),
        "bytes": sum(int(record["size"]) for record in moved),
    }


def _failure(item: Planned, err: BaseException) -> dict[str, Any]:
    bucket, key, path = item
    return {"s3_uri": f"s3://{bucket}/{key}", "sftp_path": path, "error": f"{type(err).__name__}: {err}"}


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


class _TaskStop:
    """Notice the first failure that every remaining object would share, and end the task with it once.

    A final failure (:func:`~airflow_s3sftp.exceptions.is_final`) stops the task (a missing bucket or
    directory only when every object needs it); so does a permission denied on creating a temp
    file (``atomic=True``: the name is new, so it is the directory that refuses) when every object
    goes to that directory.
    """

    def __init__(self, planned: Sequence[Planned], *, atomic: bool) -> None:
        self._planned = list(planned)
        self._directories = {posixpath.dirname(path) for _, _, path in planned}
        self._buckets = {bucket for bucket, _, _ in planned}
        self._atomic = atomic
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self._hit: list[Planned] = []

    def _task_wide(self, item: Planned, err: BaseException) -> bool:
        if is_final(err) and not isinstance(err, MissingTargetError):
            return True
        directory = posixpath.dirname(item[2])
        if isinstance(err, MissingTargetError) and str(err).startswith("S3 bucket"):
            return self._buckets == {item[0]}
        shared = self._directories == {directory}
        if isinstance(err, MissingTargetError):
            return shared
        return shared and self._atomic and isinstance(err, PermissionError) and err.errno == errno.EACCES

    def failed(self, item: Planned, err: BaseException) -> bool:
        """Record a failed object; return True when the failure was already reported for the task."""
        with self._lock:
            if self.error is not None and type(err) is type(self.error):
                self._hit.append(item)
                return True
            if self.error is None and self._task_wide(item, err):
                self.error = err
                self._hit.append(item)
                return True
            return False

    def ends_all(self, err: Exception) -> None:
        """Note on ``err`` that no object was attempted (the first connection failed, even after retries)."""
        self.error = err
        self._hit = list(self._planned)
        self._note(err, delivered=0)

    def not_attempted(self, item: Planned) -> dict[str, Any]:
        """Return the record of an object left out after a task-wide failure."""
        with self._lock:
            self._hit.append(item)
        return _failure(item, RuntimeError("not attempted after a task-wide failure"))

    def raise_if_task_wide(self, records: Sequence[dict[str, Any]] | None = None) -> None:
        """Raise the task-wide failure once, with a note listing the objects it left undelivered."""
        if self.error is None:
            return
        err = self.error
        self._note(err, delivered=sum(1 for record in records or () if "error" not in record))
        raise err

    def _note(self, err: BaseException, *, delivered: int) -> None:
        total = len(self._planned)
        shown = "\n".join(f"  s3://{bucket}/{key} -> {path}" for bucket, key, path in self._hit[:_LISTED])
        more = f"\n  ... and {len(self._hit) - _LISTED} more" if len(self._hit) > _LISTED else ""
        err.add_note(
            f"Task-wide failure, so the task stopped at once: {delivered} of {total} objects delivered, "
            f"{total - delivered} not delivered:\n{shown}{more}"
        )
