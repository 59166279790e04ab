# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The digests of one attempt (our checksum and S3's integrity check) and their resume checkpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_s3sftp.core.checksums import format_checksum, new_hasher
from airflow_s3sftp.core.manifest import RangeHasher

if TYPE_CHECKING:
    from airflow_s3sftp.core.integrity import SourceCheck
    from airflow_s3sftp.core.reader import Hasher


class Digests:
    """The hashers fed with the bytes of one attempt, in order.

    ``algorithm`` is our checksum (None for none); ``source_check`` is the digest S3 vouches for.
    When both use the same algorithm one hasher serves both. Every attempt starts from a known
    state: :meth:`fresh` at byte 0, or a :meth:`snapshot` taken at a resumed offset.
    """

    def __init__(
        self,
        algorithm: str | None,
        source_check: SourceCheck | None,
        states: tuple[Any, Any],
        ranges: RangeHasher | None = None,
    ) -> None:
        self.algorithm = algorithm
        self.source_check = source_check
        self._ours, self._source = states
        self.ranges = ranges

    @classmethod
    def fresh(
        cls, algorithm: str | None, source_check: SourceCheck | None, range_size: int | None = None
    ) -> Digests:
        """Return digests of zero bytes (with a sha256 per ``range_size`` range when asked)."""
        ours = new_hasher(algorithm) if algorithm else None
        shared = source_check is not None and ours is not None and source_check.algorithm == algorithm
        source = None if source_check is None or shared else source_check.new_hasher()
        ranges = RangeHasher(range_size, whole=False) if range_size else None
        return cls(algorithm, source_check, (ours, source), ranges)

    @property
    def hashers(self) -> list[Hasher]:
        """Return the distinct hashers to feed."""
        return [hasher for hasher in (self._ours, self._source, self.ranges) if hasher is not None]

    @property
    def resumable(self) -> bool:
        """Return True when a prefix on the server can be proven against these digests."""
        return self._ours is not None

    def snapshot(self) -> tuple[Any, ...]:
        """Return copies of the hasher states (a few hundred bytes, and a digest per range)."""
        return (
            self._ours.copy() if self._ours is not None else None,
            self._source.copy() if self._source is not None else None,
            self.ranges.snapshot() if self.ranges is not None else None,
        )

    def restored(self, states: tuple[Any, ...]) -> Digests:
        """Return digests continuing from ``states`` (copies, so the snapshot stays reusable)."""
        ours, source, ranges = states
        return Digests(
            self.algorithm,
            self.source_check,
            (ours.copy() if ours is not None else None, source.copy() if source is not None else None),
            RangeHasher.restored(self.ranges.range_size, ranges) if self.ranges and ranges else None,
        )

    def prefix_digest(self, states: tuple[Any, ...]) -> bytes | None:
        """Return our digest of the bytes up to a snapshot, or None without a checksum."""
        ours = states[0]
        return ours.copy().digest() if ours is not None else None

    def checksum(self) -> str | None:
        """Return ``"<algorithm>:<hex>"`` of the bytes so far, or None without a checksum."""
        if self._ours is None or self.algorithm is None:
            return None
        return format_checksum(self.algorithm, self._ours.copy().hexdigest())

    def source_problem(self) -> str | None:
        """Return None when the bytes match S3's own integrity data (or S3 has none), else why not."""
        if self.source_check is None:
            return None
        hasher = self._source if self._source is not None else self._ours
        return self.source_check.problem(hasher.copy().digest())


class Checkpoints:
    """Digest states at recent chunk boundaries, so a retry can prove and reuse a prefix.

    Only the latest ``keep`` are kept: when a connection drops, the server holds everything up
    to a few chunks behind the reader, so older states are never the best resume point, and
    memory stays flat whatever the object size.
    """

    def __init__(self, keep: int = 64) -> None:
        self._points: dict[int, tuple[Any, ...]] = {}
        self._keep = keep

    def record(self, offset: int, digests: Digests) -> None:
        """Remember the digest states after the first ``offset`` bytes."""
        self._points[offset] = digests.snapshot()
        if len(self._points) > self._keep:
            del self._points[min(self._points)]

    def best_at_or_below(self, size: int) -> tuple[int, tuple[Any, ...]] | None:
        """Return ``(offset, states)`` for the largest recorded offset ``<= size``, or None."""
        offsets = [offset for offset in self._points if 0 < offset <= size]
        if not offsets:
            return None
        best = max(offsets)
        return best, self._points[best]

    def forget_after(self, offset: int) -> None:
        """Drop states past ``offset``: the bytes behind them will be written again."""
        for point in [point for point in self._points if point > offset]:
            del self._points[point]
