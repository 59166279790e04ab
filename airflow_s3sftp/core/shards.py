# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Shards of an S3 prefix: key ranges (``start_after < key <= end_at``) or a stable hash of the key."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

_RANGE_KEYS = frozenset({"start_after", "end_at", "label"})
_HASH_KEYS = frozenset({"index", "count", "label"})
#: Most shards a prefix is cut into (a mapped task each; Airflow's ``max_map_length`` is 1024 by default).
MAX_SHARDS = 100_000


def key_hash(key: str) -> int:
    """Return the stable 64-bit hash of an S3 key that hash shards use (blake2b, 8 bytes, big-endian)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class Shard:
    """One shard of a prefix: a key range, or the keys whose hash modulo ``count`` is ``index``.

    A range holds the keys ``K`` with ``start_after < K <= end_at`` in S3's listing order (UTF-8
    bytes, which Python's ``str`` order agrees with); ``None`` leaves that side open. The listing
    starts at ``start_after`` (S3's ``StartAfter``) and stops after ``end_at``, so a range shard
    lists only its range.
    """

    start_after: str | None = None
    end_at: str | None = None
    index: int | None = None
    count: int | None = None
    label: str | None = None

    @property
    def hashed(self) -> bool:
        """Return True for a hash shard."""
        return self.count is not None

    def name(self) -> str:
        """Return the label, or a description of the shard, for logs and reports."""
        if self.label is not None:
            return self.label
        if self.hashed:
            return f"hash {self.index} of {self.count}"
        return f"keys after {self.start_after!r} up to {self.end_at!r}"

    def holds(self, key: str) -> bool:
        """Return True when ``key`` belongs to this shard."""
        if self.count is not None:
            return key_hash(key) % self.count == self.index
        if self.start_after is not None and key <= self.start_after:
            return False
        return self.end_at is None or key <= self.end_at

    def past_end(self, key: str) -> bool:
        """Return True when ``key`` (and so every key listed after it) lies beyond a range shard."""
        return not self.hashed and self.end_at is not None and key > self.end_at

    def to_dict(self) -> dict[str, Any]:
        """Return the descriptor that :func:`parse_shard` reads back."""
        if self.hashed:
            shard: dict[str, Any] = {"index": self.index, "count": self.count}
        else:
            shard = {"start_after": self.start_after, "end_at": self.end_at}
        if self.label is not None:
            shard["label"] = self.label
        return shard


def parse_shard(value: object) -> Shard | None:
    """Return the :class:`Shard` a ``shard`` argument describes (None for None), or raise naming ``shard``.

    ``{"start_after": <key or None>, "end_at": <key or None>}`` or ``{"index": i, "count": n}``
    (``0 <= i < n``), each with an optional ``"label"`` string; anything else is refused.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(
            f"shard must be a dict like {{'start_after': ..., 'end_at': ...}} or {{'index': i, 'count': n}} "
            f"(got {type(value).__name__} {value!r})"
        )
    keys = set(value)
    label = value.get("label")
    if label is not None and (not isinstance(label, str) or not label):
        raise TypeError(f"shard['label'] must be a non-empty string (got {label!r})")
    if keys and keys <= _RANGE_KEYS and keys & {"start_after", "end_at"}:
        bounds = {}
        for name in ("start_after", "end_at"):
            bound = value.get(name)
            if bound is not None and (not isinstance(bound, str) or not bound or "\x00" in bound):
                raise TypeError(f"shard[{name!r}] must be a full S3 key or None (got {bound!r})")
            bounds[name] = bound
        start, end = bounds["start_after"], bounds["end_at"]
        if start is not None and end is not None and end <= start:
            raise ValueError(
                f"shard is empty: end_at {end!r} must come after start_after {start!r} in S3's key order"
            )
        return Shard(start_after=start, end_at=end, label=label)
    if keys and keys <= _HASH_KEYS and {"index", "count"} <= keys:
        index, count = value["index"], value["count"]
        for name, number in (("index", index), ("count", count)):
            if isinstance(number, bool) or not isinstance(number, int):
                raise TypeError(f"shard[{name!r}] must be an int (got {number!r})")
        if not 1 <= count <= MAX_SHARDS:
            raise ValueError(f"shard['count'] must be between 1 and {MAX_SHARDS} (got {count})")
        if not 0 <= index < count:
            raise ValueError(f"shard['index'] must be in 0..{count - 1} for count {count} (got {index})")
        return Shard(index=index, count=count, label=label)
    raise ValueError(
        "shard must hold 'start_after' and/or 'end_at' (a key range), or 'index' and 'count' (a hash "
        f"shard), plus an optional 'label'; got keys {sorted(map(str, keys))}"
    )


def hash_shards(count: int) -> list[dict[str, Any]]:
    """Return ``count`` hash shard descriptors that together hold every key exactly once."""
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"count must be an int (got {count!r})")
    if not 1 <= count <= MAX_SHARDS:
        raise ValueError(f"count must be between 1 and {MAX_SHARDS} (got {count})")
    return [{"index": i, "count": count, "label": f"hash {i + 1} of {count}"} for i in range(count)]


def range_shards(sample: list[str], count: int) -> list[dict[str, Any]]:
    """Return key range descriptors cut at evenly spaced keys of ``sample`` (sorted, evenly spaced).

    The ranges ``(None, b1], (b1, b2], ..., (b_{n-1}, None)`` cover the whole key space, so every
    key (even one written after the sample was taken) falls in exactly one. Fewer than ``count``
    distinct sample keys give fewer shards (at least one).
    """
    bounds: list[str] = []
    for i in range(1, count):
        position = (i * len(sample)) // count - 1
        if 0 <= position < len(sample) and (not bounds or sample[position] > bounds[-1]):
            bounds.append(sample[position])
    edges: list[str | None] = [None, *bounds, None]
    total = len(edges) - 1
    return [
        {"start_after": edges[i], "end_at": edges[i + 1], "label": f"range {i + 1} of {total}"}
        for i in range(total)
    ]


class EvenSample:
    """Keep an evenly spaced sample of at most ``2 * size`` keys from a listing of any length.

    Every key is offered in listing order; when the sample passes ``2 * size`` keys, every other
    one is dropped and the stride doubles, so memory stays bounded and the kept keys stay evenly
    spaced (within one stride) over everything offered.
    """

    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._stride = 1
        self._seen = 0
        self.keys: list[str] = []

    def offer(self, key: str) -> None:
        """Offer the next key of the listing."""
        if self._seen % self._stride == 0:
            self.keys.append(key)
            if len(self.keys) > 2 * self._size:
                self.keys = self.keys[::2]
                self._stride *= 2
        self._seen += 1

    @property
    def seen(self) -> int:
        """Return how many keys were offered."""
        return self._seen


def within(shard: Shard | None, keys: Iterable[str]) -> Iterator[str]:
    """Yield the keys of a listing that belong to ``shard`` (all of them for None); stop past a range."""
    for key in keys:
        if shard is None:
            yield key
            continue
        if shard.past_end(key):
            return
        if shard.holds(key):
            yield key


def describe(shard: Mapping[str, Any] | None) -> str:
    """Return a shard descriptor's label or description (for messages)."""
    parsed = parse_shard(dict(shard) if shard is not None else None)
    return parsed.name() if parsed is not None else "the whole prefix"
