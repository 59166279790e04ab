# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Durable checkpoints: what a delivery has written and proven, kept on the server beside its temp file.

A killed worker (OOM, eviction, ``kill -9``) cannot tell its successor anything: Airflow's next try is
a new process. So a delivery keeps a small **journal** on the server, next to its hidden temp file,
published by rename (a reader sees the previous journal or the new one, never half of one), named
from the delivery's **identity** (final path, S3 object, ETag, version, size, checksum), so that the
next try of the same delivery finds it and no other delivery ever does:

- written once the temp file exists (``proven=0``: a later try can at least remove what it names),
  then each time the writer passed a checkpoint and the server confirmed an ``fsync`` of the bytes
  before it (the journal never claims bytes the server has not flushed);
- ``proven`` bytes of the temp file, with the sha256 of every complete range of ``range_size`` bytes
  of the object up to it (the same ranges as the range manifest);
- removed with the temp file after the publish, or when a try finds it does not match.

What the next try trusts is in :meth:`Journal.adoptable` and :mod:`airflow_s3sftp.core.delivery`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_s3sftp.core.paths import JOURNAL_SUFFIX, STRIPE_SUFFIX, TEMP_SUFFIX, hidden_path_for

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

VERSION = 1
MAX_JOURNAL_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Identity:
    """What makes two tries the same delivery: the same bytes, to the same place, proven the same way."""

    path: str
    source: str
    etag: str | None
    version_id: str | None
    size: int
    checksum: str | None


def journal_path_for(path: str) -> str:
    """Return where the journal of deliveries to ``path`` lives: a hidden temp-shaped name beside it.

    One name per final path (not per object version), so that a try finds the journal of an earlier
    try even when the S3 object changed in between, and removes what it no longer matches.
    Shaped like a temp file with its own suffix (``.s3sftp-journal``), so the plan's name-length
    checks and the sweep of abandoned temp files cover it, and nobody takes it for a temp file.
    """
    return hidden_path_for(path, _token("journal", path), JOURNAL_SUFFIX)


def journal_temp_path_for(path: str) -> str:
    """Return the temp name the journal of ``path`` is written under before its rename (reused)."""
    return hidden_path_for(path, _token("journal-temp", path), JOURNAL_SUFFIX)


def _token(kind: str, path: str) -> str:
    return hashlib.sha256(f"{kind}:{path}".encode()).hexdigest()[:12]


@dataclass
class Journal:
    """One delivery's durable checkpoint (JSON on the server)."""

    identity: Identity
    temp: str  # the hidden temp file the bytes go to
    range_size: int
    proven: int = 0  # bytes at the start of ``temp`` that were fsynced and are described by ``ranges``
    ranges: list[str] = field(default_factory=list)  # sha256 of each complete range, in order
    parts: list[str] = field(default_factory=list)  # part files of a striped try (removed, never adopted)

    def to_bytes(self) -> bytes:
        body = {"version": VERSION, **asdict(self)}
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Journal:
        """Parse a journal; raise ``ValueError`` on anything that is not one of ours."""
        try:
            body: dict[str, Any] = json.loads(data.decode("utf-8"))
            if body.pop("version") != VERSION:
                raise ValueError("journal of another version")
            identity = Identity(**body.pop("identity"))
            journal = cls(identity=identity, **body)
        except (KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"not a journal of ours: {err}") from err
        if not isinstance(journal.proven, int) or journal.proven < 0 or journal.range_size <= 0:
            raise ValueError("journal with a bad proven offset or range size")
        if journal.proven > identity.size or len(journal.ranges) < journal.proven // journal.range_size:
            raise ValueError("journal claims more than it describes")
        for named, suffix in (
            (journal.temp, TEMP_SUFFIX),
            *((part, STRIPE_SUFFIX) for part in journal.parts),
        ):
            if posixpath.dirname(named) != posixpath.dirname(identity.path):
                raise ValueError("journal names a file in another directory")
            if not posixpath.basename(named).endswith(suffix):
                raise ValueError("journal names a file that is not a temp file of ours")
        return journal

    def adoptable(self, identity: Identity) -> bool:
        """Return True when this journal describes ``identity`` (same path, object, version, options)."""
        return self.identity == identity


class JournalKeeper:
    """Publishes a delivery's journal, off the writer's path where the server allows it.

    The writer hands over the newest state (:meth:`submit`, never blocks). With a channel of its
    own (``inline=False``) a thread writes it by temp file and rename, skipping states that a newer
    one replaced before their turn. ``inline=True`` is for servers that must not see two SFTP
    channels at once (ProFTPD mixes up their handles): the writer's own thread writes the newest
    state when it calls :meth:`drain` between two writes. Failures to write a journal are logged:
    they cost only the resume of a later try, never the delivery.

    :param write: publishes ``content`` at the journal's path (by temp file and rename)
    :param describe: names the delivery in messages
    :param inline: write on the caller's thread, in :meth:`drain`
    """

    def __init__(self, write: Callable[[bytes], None], describe: str, *, inline: bool = False) -> None:
        self._write = write
        self._describe = describe
        self._pending: bytes | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False
        self.written = 0
        self._thread: threading.Thread | None = None
        if not inline:
            self._thread = threading.Thread(target=self._run, name="s3sftp-journal", daemon=True)
            self._thread.start()

    def submit(self, content: bytes) -> None:
        """Have ``content`` written as soon as the previous write is done (the newest state wins)."""
        with self._cond:
            if not self._closed:
                self._pending = content
                self._cond.notify()

    def drain(self) -> None:
        """Write the newest submitted state now (inline keepers; a threaded one writes on its own)."""
        if self._thread is not None:
            return
        with self._cond:
            content, self._pending = self._pending, None
        if content is not None:
            self._publish(content)

    def flush(self, timeout: float = 120.0) -> None:
        """Wait until every submitted state is written (or failed)."""
        self.drain()
        with self._cond:
            self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout=timeout)

    def close(self, timeout: float = 120.0) -> None:
        """Stop: nothing submitted later is written; a write under way is waited for."""
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._closed and self._pending is None:
                    return
                content, self._pending, self._busy = self._pending, None, True
            try:
                self._publish(content or b"")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _publish(self, content: bytes) -> None:
        try:
            self._write(content)
            self.written += 1
        except BaseException as err:  # a lost journal costs a later try's resume, not this delivery
            log.warning("Could not write the journal of %s: %s", self._describe, err)
