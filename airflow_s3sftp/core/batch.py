# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Many objects in one task: reused sessions, worker threads, progress, one stop for task-wide failures."""

from __future__ import annotations

import errno
import functools
import logging
import posixpath
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from airflow_s3sftp.core.delivery import Delivery, extra_paths
from airflow_s3sftp.core.session import SessionPool
from airflow_s3sftp.core.sftp import DEFAULT_WRITE_SIZE
from airflow_s3sftp.core.sweep import LeftoverSweeper
from airflow_s3sftp.exceptions import ConnectionLostError, MissingTargetError, is_final

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from contextlib import AbstractContextManager

    from airflow_s3sftp.core.delivery import Source
    from airflow_s3sftp.core.options import DeliveryOptions
    from airflow_s3sftp.core.session import SFTPSession

log = logging.getLogger(__name__)

#: What to deliver where: ``(bucket, key, sftp_path)``.
Planned = tuple[str, str, str]

_LISTED = 20  # objects named in a task-wide failure's note; the rest are counted


class Batch:
    """Deliver many S3 objects on a pool of reused SFTP sessions; hand one record per object to a sink.

    The first SFTP session opens alone (retried with backoff if the connection drops or times
    out); then up to ``max_concurrency`` objects move at once, each session serving one object
    after another. ``planned`` may be a list or an iterator (e.g. a listing, page by page): it is
    consumed as the objects go, at most ``2 * max_concurrency`` ahead of the deliveries, so memory
    does not grow with the number of objects. Each target directory is checked once, when the
    first object for it comes up. A failed object yields a record with an ``error``
    (``s3_uri``, ``sftp_path``, ``error``) and does not stop the others.
    A task-wide failure (:func:`~airflow_s3sftp.exceptions.is_final`: refused login, host key,
    missing key file, connection, bucket, directory or credentials) is raised once, at once:
    objects not yet started are not attempted (an iterator is not consumed further), and a note
    lists (the first of) what was not delivered.

    The Airflow hook hands it adapters only: where sources and sessions come from.

    :param planned: what to deliver where (a sequence, or an iterator consumed as the batch goes)
    :param options: how to deliver; shared by every object
    :param source: ``source(bucket, key)`` returns a context manager yielding the object as a
        :class:`~airflow_s3sftp.core.delivery.Source`; it is left when the object's delivery ends
    :param connect: opens a new SFTP session
    :param endpoint: returns ``user@host:port`` for messages (asked only when one needs it)
    :param max_concurrency: objects (and SFTP sessions) in flight at once
    :param sleep: waits between connection attempts (a parameter so unit tests need not wait)
    :param total: how many objects an iterator will yield, when known (for progress and messages)
    """

    def __init__(
        self,
        planned: Iterable[Planned],
        options: DeliveryOptions,
        *,
        source: Callable[[str, str], AbstractContextManager[Source]],
        connect: Callable[[], SFTPSession],
        endpoint: Callable[[], str],
        max_concurrency: int = 4,
        sleep: Callable[[float], None] = time.sleep,
        total: int | None = None,
    ) -> None:
        known = list(planned) if isinstance(planned, (list, tuple)) else None
        total = len(known) if known is not None else total
        self.planned: Iterable[Planned] = known if known is not None else planned
        self.options = options
        self._source = source
        self._connect = connect
        self._endpoint = endpoint
        self._sleep = sleep
        self.workers = max(1, min(max_concurrency, len(known))) if known is not None else max_concurrency
        finals = [path for _, _, path in known or ()]
        # With a list, every name the task writes is known before the first sweep; with an iterator
        # each object's names are added as it comes up (before its delivery sweeps its directory).
        self.sweeper = LeftoverSweeper(
            options.publishing.stale_temp_after,
            finals + [extra for path in finals for extra in extra_paths(path, options)],
            earlier_tries_after=options.retry.resume_after,
        )
        self.progress = BatchProgress(total, options.streaming.progress_interval)
        self._stop = _TaskStop(known, atomic=options.publishing.atomic, total=total)
        self._directories: dict[str, BaseException | None] = {}  # checked directory -> why it is missing

    def run(self) -> list[dict[str, Any]]:
        """Deliver every planned object; return their records in plan order, or raise a task-wide failure."""
        records: dict[int, dict[str, Any]] = {}
        self.stream(lambda index, record: records.__setitem__(index, record))
        return [records[index] for index in sorted(records)]

    def stream(self, sink: Callable[[int, dict[str, Any]], None]) -> None:
        """Deliver every planned object, handing ``sink(index, record)`` each record as it finishes.

        ``sink`` is called from the worker threads, one call at a time, in the order the objects
        finish; ``index`` is the object's place in the plan. A task-wide failure is raised once
        (after the objects under way finished and were handed over).
        """
        stop = self._stop
        lock = threading.Lock()
        delivered = 0

        def hand_over(index: int, record: dict[str, Any]) -> None:
            nonlocal delivered
            with lock:
                delivered += "error" not in record
                sink(index, record)

        with SessionPool(self._connect, self.workers) as pool:
            try:
                first = self._first_session(pool)
            except Exception as err:
                stop.ends_all(err)
                raise
            pool.release(first)
            ahead = threading.BoundedSemaphore(2 * self.workers)
            with ThreadPoolExecutor(max_workers=self.workers) as threads:
                for index, item in enumerate(self.planned):
                    if stop.error is not None:
                        if stop.known:
                            hand_over(index, stop.not_attempted(item))
                            continue
                        break  # a listing is not consumed further
                    stop.seen(item)
                    missing = self._missing_directory(item, pool)
                    if missing is not None:
                        if not stop.failed(item, missing):
                            log.error("Delivering s3://%s/%s to %s failed: %s", *item, missing)
                        self.progress.finished(0, failed=True)
                        hand_over(index, _failure(item, missing))
                        continue
                    ahead.acquire()
                    future = threads.submit(self._one, item, pool)
                    future.add_done_callback(functools.partial(self._finished, hand_over, ahead, index))
        stop.raise_if_task_wide(delivered)

    @staticmethod
    def _finished(
        hand_over: Callable[[int, dict[str, Any]], None],
        ahead: threading.BoundedSemaphore,
        index: int,
        done: Future[dict[str, Any]],
    ) -> None:
        try:
            hand_over(index, done.result())
        finally:
            ahead.release()

    def _missing_directory(self, item: Planned, pool: SessionPool) -> BaseException | None:
        """Return why the target directory of ``item`` is missing (None if it is there); asked once each.

        Asked on a pooled session before the first object for that directory starts; with
        ``create_dirs`` the deliveries make missing directories themselves.
        """
        if self.options.publishing.create_dirs:
            return None
        directory = posixpath.dirname(item[2]) or "."
        if directory in self._directories:
            return self._directories[directory]
        session = pool.acquire()
        try:
            # One request at a time and the smallest WRITE every server takes: nothing to ask the server yet.
            remote = session.remote(
                strict_order=True, write_size=DEFAULT_WRITE_SIZE, io_timeout=self.options.streaming.io_timeout
            )
            missing: BaseException | None = None
            try:
                remote.ensure_directory(directory, create=False)
            except FileNotFoundError as err:
                missing = MissingTargetError(str(err))
            except NotADirectoryError as err:
                missing = err
        except BaseException:
            pool.discard(session)
            raise
        pool.release(session)
        self._directories[directory] = missing
        return missing

    def _one(self, item: Planned, pool: SessionPool) -> dict[str, Any]:
        """Deliver one object; a failure that is not task-wide becomes its record."""
        stop = self._stop
        if stop.error is not None:
            return stop.not_attempted(item)
        bucket, key, path = item
        try:
            if not stop.known:
                self.sweeper.include([path, *extra_paths(path, self.options)])
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


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Return the bounded JSON-able summary of a batch's records (see :class:`Summary`)."""
    summary = Summary()
    for record in records:
        summary.add(record)
    return summary.to_dict()


class Summary:
    """The counts of a batch, and its first failures: what the operator returns (XCom) for many objects.

    Its size does not grow with the number of objects: ``count``, ``transferred``, ``skipped``
    (delivered or found identical), ``bytes`` (moved), ``failed_count``, and ``failed``, the
    records of the first ``listed`` failures (``s3_uri``, ``sftp_path``, ``error``). Thread-safe.

    :param listed: failures kept in full
    """

    def __init__(self, listed: int = _LISTED) -> None:
        self._listed = listed
        self._lock = threading.Lock()
        self.count = self.transferred = self.skipped = self.bytes = self.failed_count = 0
        self.failed: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        """Count one object's record."""
        with self._lock:
            self.count += 1
            if "error" in record:
                self.failed_count += 1
                if len(self.failed) < self._listed:
                    self.failed.append({name: _clip(value) for name, value in record.items()})
            elif record.get("skipped"):
                self.skipped += 1
            else:
                self.transferred += 1
                self.bytes += int(record.get("size") or 0)

    @property
    def done(self) -> int:
        """Return the objects delivered or found identical."""
        return self.count - self.failed_count

    def to_dict(self) -> dict[str, Any]:
        """Return the summary as a JSON-able dict."""
        with self._lock:
            return {
                "count": self.count,
                "transferred": self.transferred,
                "skipped": self.skipped,
                "bytes": self.bytes,
                "failed_count": self.failed_count,
                "failed": list(self.failed),
            }

    def failures_text(self, what: str = "objects", *, inbound: bool = False) -> str:
        """Return the lines naming the failures kept (source first), and how many more there were."""
        ends = ("sftp_path", "s3_uri") if inbound else ("s3_uri", "sftp_path")
        lines = "\n".join(
            f"  {record.get(ends[0])} -> {record.get(ends[1])}: {record.get('error')}"
            for record in self.failed
        )
        more = self.failed_count - len(self.failed)
        if more:
            lines += f"\n  ... and {more} more {what} (the report, if one was asked for, names them all)"
        return lines


#: Characters of a text field kept in the summary's failure records (the report keeps them whole).
_CLIPPED = 600


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _CLIPPED:
        return f"{value[: _CLIPPED - 40]}... ({len(value) - _CLIPPED + 40} more characters)"
    return value


def _failure(item: Planned, err: BaseException) -> dict[str, Any]:
    bucket, key, path = item
    return {"s3_uri": f"s3://{bucket}/{key}", "sftp_path": path, "error": f"{type(err).__name__}: {err}"}


class BatchProgress:
    """Throttled progress of many deliveries: objects done (of the total, when known), bytes, MB/s, ETA.

    Thread-safe: every worker reports its finished objects; at most one line per ``interval``.

    :param total: objects in the batch, None when they are listed as the batch goes
    :param interval: seconds between progress lines
    """

    def __init__(self, total: int | None, interval: float) -> None:
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
        if self._total is None:
            log.info(
                "%s objects done so far (%s failed), %s bytes, %.1f MB/s, %.1f objects/s",
                done,
                failures,
                moved,
                moved / elapsed / 1e6,
                done / elapsed,
            )
            return
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
    goes to that directory. With a plan listed as the batch goes, "every object" means every
    object seen so far.
    """

    def __init__(self, planned: Sequence[Planned] | None, *, atomic: bool, total: int | None = None) -> None:
        self.known = planned is not None
        self._planned = planned
        self._total = len(planned) if planned is not None else total
        self._directories = {posixpath.dirname(path) for _, _, path in planned or ()}
        self._buckets = {bucket for bucket, _, _ in planned or ()}
        self._atomic = atomic
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self._hit: list[Planned] = []  # the first _LISTED objects the failure left undelivered
        self._hits = 0

    def seen(self, item: Planned) -> None:
        """Note an object of a plan listed as the batch goes (its directory and bucket)."""
        if not self.known:
            with self._lock:
                self._directories.add(posixpath.dirname(item[2]))
                self._buckets.add(item[0])

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

    def _note_hit(self, item: Planned) -> None:
        self._hits += 1
        if len(self._hit) < _LISTED:
            self._hit.append(item)

    def failed(self, item: Planned, err: BaseException) -> bool:
        """Record a failed object; return True when the failure was already reported for the task."""
        with self._lock:
            if self.error is not None and type(err) is type(self.error):
                self._note_hit(item)
                return True
            if self.error is None and self._task_wide(item, err):
                self.error = err
                self._note_hit(item)
                return True
            return False

    def ends_all(self, err: Exception) -> None:
        """Note on ``err`` that no object was attempted (the first connection failed, even after retries)."""
        self.error = err
        if self._planned is not None:
            self._hit, self._hits = list(self._planned[:_LISTED]), len(self._planned)
        elif self._total is not None:
            self._hits = self._total  # not listed yet: counted, not named
        self._note(err, delivered=0)

    def not_attempted(self, item: Planned) -> dict[str, Any]:
        """Return the record of an object left out after a task-wide failure."""
        with self._lock:
            self._note_hit(item)
        return _failure(item, RuntimeError("not attempted after a task-wide failure"))

    def raise_if_task_wide(self, delivered: int) -> None:
        """Raise the task-wide failure once, with a note listing the objects it left undelivered."""
        if self.error is None:
            return
        err = self.error
        self._note(err, delivered=delivered)
        raise err

    def _note(self, err: BaseException, *, delivered: int) -> None:
        hits = self._hits
        shown = "\n".join(f"  s3://{bucket}/{key} -> {path}" for bucket, key, path in self._hit)
        more = f"\n  ... and {hits - len(self._hit)} more" if hits > len(self._hit) else ""
        if self._total is not None:
            listed = f":\n{shown}{more}" if shown else ""
            err.add_note(
                f"Task-wide failure, so the task stopped at once: {delivered} of {self._total} objects "
                f"delivered, {self._total - delivered} not delivered{listed}"
            )
        elif hits == 0:
            err.add_note("Task-wide failure before the first object: no object was delivered")
        else:
            err.add_note(
                f"Task-wide failure, so the task stopped at once: {delivered} objects delivered, {hits} "
                f"failed with it, and the rest of the listing was not attempted:\n{shown}{more}"
            )
