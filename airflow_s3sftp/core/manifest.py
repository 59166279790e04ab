# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Range manifests: one sha256 per fixed-size byte range of a file, to say *which* bytes are wrong.

A manifest sits beside its file as ``<name>.manifest`` and reads::

    # airflow-s3sftp manifest 1
    # name: report.csv
    # size: 268435456
    # range_size: 8388608
    # sha256: <hex of the whole file>
    <sha256 hex of range 0>  0
    <sha256 hex of range 1>  1

Range ``i`` covers bytes ``[i * range_size, min((i + 1) * range_size, size))``; the last one may be
short and an empty file has no range lines. The format is checkable with coreutils alone (``dd`` +
``sha256sum``, see ``docs/manifest.md``).

This module imports the standard library only, so it also runs on its own where the package is not
installed: ``python3 manifest.py FILE MANIFEST`` is the same check as
``python -m airflow_s3sftp.verify FILE MANIFEST``.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol

MAGIC = "# airflow-s3sftp manifest 1"
SUFFIX = ".manifest"
ALGORITHM = "sha256"
DIGEST_HEX_LENGTH = 64
# Large enough for 200,000 ranges (1.5 TiB at 8 MiB ranges); a bigger "manifest" is not one of ours.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
READ_BLOCK = 1024 * 1024

_HEX = re.compile(r"[0-9a-f]{64}")
_NUMBER = re.compile(r"0|[1-9][0-9]*")
_HEADER_KEYS = ("name", "size", "range_size", ALGORITHM)

Reader = Callable[[int], bytes]


def manifest_path(path: str) -> str:
    """Return the manifest of ``path``: ``<path>.manifest`` (``report.csv.manifest``)."""
    return f"{path}{SUFFIX}"


def range_count(size: int, range_size: int) -> int:
    """Return how many ranges of ``range_size`` bytes cover ``size`` bytes (0 for an empty file)."""
    return -(-size // range_size)


def range_bounds(index: int, size: int, range_size: int) -> tuple[int, int]:
    """Return ``(start, stop)`` of range ``index``: its first byte and one past its last byte."""
    start = index * range_size
    return start, min(start + range_size, size)


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"Manifest name must be a non-empty string, got {name!r}")
    if "/" in name or "\n" in name or "\r" in name or "\0" in name:
        raise ValueError(f"Manifest name {name!r} must be a bare file name (no '/', line break or NUL)")
    return name


def _check_int(label: str, value: object, minimum: int) -> int:
    # bool is an int subclass: True as a size is a caller's mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Manifest {label} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_digest(label: str, value: object) -> str:
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise ValueError(
            f"Manifest {label} must be {DIGEST_HEX_LENGTH} lower-case hex characters, got {value!r}"
        )
    return value


@dataclass(frozen=True)
class Manifest:
    """One file's size, range size, whole-file sha256 and one sha256 per range, validated on creation.

    :param name: the file's base name, as it was published.
    :param size: the file's size in bytes.
    :param range_size: the length of every range but the last, in bytes (at least 1).
    :param whole: the sha256 (hex) of the whole file.
    :param ranges: the sha256 (hex) of each range, in order; ``ceil(size / range_size)`` of them.
    """

    name: str
    size: int
    range_size: int
    whole: str
    ranges: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_int("size", self.size, 0)
        _check_int("range_size", self.range_size, 1)
        _check_digest("sha256", self.whole)
        if not isinstance(self.ranges, tuple):
            raise ValueError(f"Manifest ranges must be a tuple, got {type(self.ranges).__name__}")
        expected = range_count(self.size, self.range_size)
        if len(self.ranges) != expected:
            raise ValueError(
                f"Manifest of {self.size} bytes in ranges of {self.range_size} needs {expected} "
                f"range digests, got {len(self.ranges)}"
            )
        for index, digest in enumerate(self.ranges):
            _check_digest(f"range {index}", digest)

    def bounds(self, index: int) -> tuple[int, int]:
        """Return ``(start, stop)`` of range ``index``: its first byte and one past its last byte."""
        if not 0 <= index < len(self.ranges):
            raise IndexError(f"Manifest of {self.name!r} has no range {index}")
        return range_bounds(index, self.size, self.range_size)


def render_manifest(manifest: Manifest) -> str:
    """Return the text of ``manifest``, ending with a newline (what ``parse_manifest`` reads back)."""
    lines = [
        MAGIC,
        f"# name: {manifest.name}",
        f"# size: {manifest.size}",
        f"# range_size: {manifest.range_size}",
        f"# {ALGORITHM}: {manifest.whole}",
    ]
    lines.extend(f"{digest}  {index}" for index, digest in enumerate(manifest.ranges))
    return "\n".join(lines) + "\n"


def parse_manifest(text: str) -> Manifest:
    """Return the manifest in ``text``, raising ``ValueError`` that names the first malformed line.

    The parse is strict: the magic line, the four headers in their order, then exactly one
    ``<sha256>  <index>`` line per range, indices from 0 in order, lower-case hex, LF line ends.
    """
    if len(text) > MAX_MANIFEST_BYTES:
        raise ValueError(f"Manifest is {len(text)} characters, more than {MAX_MANIFEST_BYTES}")
    if not text:
        raise ValueError("Manifest is empty")
    if not text.endswith("\n"):
        raise ValueError("Manifest does not end with a line break (truncated?)")
    lines = text[:-1].split("\n")
    for number, line in enumerate(lines, start=1):
        if "\r" in line:
            raise ValueError(f"Manifest line {number} has a carriage return (CRLF line ends?)")
    if lines[0] != MAGIC:
        raise ValueError(f"Manifest line 1 is {lines[0][:80]!r}, expected {MAGIC!r}")
    if len(lines) < 1 + len(_HEADER_KEYS):
        raise ValueError(f"Manifest has {len(lines)} lines, too few for its {len(_HEADER_KEYS)} header lines")
    values: dict[str, str] = {}
    for offset, key in enumerate(_HEADER_KEYS):
        number = offset + 2
        prefix = f"# {key}: "
        line = lines[number - 1]
        if not line.startswith(prefix):
            raise ValueError(f"Manifest line {number} is {line[:80]!r}, expected '{prefix}...'")
        values[key] = line[len(prefix) :]
    numbers: dict[str, int] = {}
    for offset, key in ((2, "size"), (3, "range_size")):
        if not _NUMBER.fullmatch(values[key]):
            raise ValueError(
                f"Manifest line {offset + 1}: {key} {values[key][:80]!r} is not a decimal integer"
            )
        numbers[key] = int(values[key])
    if numbers["range_size"] < 1:
        raise ValueError("Manifest line 4: range_size must be at least 1")
    try:
        _check_name(values["name"])
    except ValueError as err:
        raise ValueError(f"Manifest line 2: {err}") from None
    if not _HEX.fullmatch(values[ALGORITHM]):
        raise ValueError(
            f"Manifest line 5: {ALGORITHM} {values[ALGORITHM][:80]!r} is not "
            f"{DIGEST_HEX_LENGTH} lower-case hex characters"
        )
    size, range_size = numbers["size"], numbers["range_size"]
    expected = range_count(size, range_size)
    body = lines[1 + len(_HEADER_KEYS) :]
    ranges: list[str] = []
    for index, line in enumerate(body):
        number = index + 2 + len(_HEADER_KEYS)
        digest, sep, label = line.partition("  ")
        if not sep:
            raise ValueError(f"Manifest line {number} is {line[:80]!r}, expected '<sha256>  {index}'")
        if not _HEX.fullmatch(digest):
            raise ValueError(
                f"Manifest line {number}: {digest[:80]!r} is not "
                f"{DIGEST_HEX_LENGTH} lower-case hex characters"
            )
        if label != str(index):
            raise ValueError(
                f"Manifest line {number}: range index {label[:80]!r}, expected {index} (in order from 0)"
            )
        if index >= expected:
            raise ValueError(
                f"Manifest line {number}: range {index} is beyond the {expected} ranges that cover "
                f"{size} bytes in ranges of {range_size}"
            )
        ranges.append(digest)
    if len(ranges) != expected:
        raise ValueError(
            f"Manifest has {len(ranges)} range lines after line {1 + len(_HEADER_KEYS)}; {size} bytes "
            f"in ranges of {range_size} need {expected} (truncated?)"
        )
    return Manifest(values["name"], size, range_size, values[ALGORITHM], tuple(ranges))


class RangeHasher:
    """Hash a stream fed in order: one sha256 per ``range_size`` bytes and one of the whole.

    :param range_size: the length of every range but the last, in bytes (at least 1).
    :param whole: also hash the whole stream (a delivery that hashes it already says False)
    """

    def __init__(self, range_size: int, *, whole: bool = True) -> None:
        self.range_size = _check_int("range_size", range_size, 1)
        self._whole: Any = hashlib.sha256() if whole else None
        self._range = hashlib.sha256()
        self._in_range = 0
        self._ranges: list[str] = []
        self._size = 0
        self._finished: tuple[tuple[str, ...], str] | None = None

    @property
    def size(self) -> int:
        """Return the number of bytes fed so far."""
        return self._size

    @property
    def completed(self) -> tuple[str, ...]:
        """Return the digests of the ranges completed so far (full ranges only until ``finish``)."""
        return tuple(self._ranges)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next bytes of the stream."""
        if self._finished is not None:
            raise ValueError("RangeHasher is finished: it takes no more bytes")
        view = memoryview(data).cast("B")
        if self._whole is not None:
            self._whole.update(view)
        self._size += len(view)
        while view:
            take = min(len(view), self.range_size - self._in_range)
            self._range.update(view[:take])
            self._in_range += take
            view = view[take:]
            if self._in_range == self.range_size:
                self._ranges.append(self._range.hexdigest())
                self._range = hashlib.sha256()
                self._in_range = 0

    def finish(self) -> tuple[tuple[str, ...], str]:
        """Close the last (short) range and return ``(range digests, whole digest)``; idempotent."""
        if self._finished is None:
            if self._in_range:
                self._ranges.append(self._range.hexdigest())
                self._in_range = 0
            whole = self._whole.hexdigest() if self._whole is not None else ""
            self._finished = (tuple(self._ranges), whole)
        return self._finished

    def snapshot(self) -> tuple[Any, ...]:
        """Return a copy of the state, to continue from later with :meth:`restored`."""
        whole = self._whole.copy() if self._whole is not None else None
        return tuple(self._ranges), self._range.copy(), self._in_range, self._size, whole

    @classmethod
    def restored(cls, range_size: int, state: tuple[Any, ...]) -> RangeHasher:
        """Return a hasher continuing from a :meth:`snapshot`."""
        ranges, current, in_range, size, whole = state
        hasher = cls(range_size, whole=whole is not None)
        hasher._ranges, hasher._range, hasher._in_range, hasher._size = (
            list(ranges),
            current.copy(),
            in_range,
            size,
        )
        hasher._whole = whole.copy() if whole is not None else None
        return hasher

    def manifest(self, name: str) -> Manifest:
        """Finish and return the manifest of what was fed, for the file published as ``name``."""
        ranges, whole = self.finish()
        return Manifest(name, self._size, self.range_size, whole, ranges)


@dataclass(frozen=True)
class BadRange:
    """A range whose bytes differ from the manifest, or bytes the manifest does not cover.

    ``start`` and ``stop`` are the manifest's offsets (``stop`` is one past the last byte); for bytes
    beyond the manifest's size, ``index`` is the range count and ``expected`` is None. ``actual`` is
    None when the file has none of the range's bytes.
    """

    index: int
    start: int
    stop: int
    expected: str | None
    actual: str | None
    reason: str

    @property
    def last(self) -> int:
        """Return the offset of the range's last byte."""
        return self.stop - 1

    def describe(self) -> str:
        """Return one line naming the range, its bytes, both digests and why it is bad."""
        return (
            f"range {self.index} bytes {self.start}-{self.last}: expected {self.expected or '-'}, "
            f"actual {self.actual or '-'} ({self.reason})"
        )


def _reader_of(source: IO[bytes] | Reader) -> Reader:
    read = getattr(source, "read", None)
    if callable(read):
        return read  # type: ignore[no-any-return]
    if callable(source):
        return source
    raise TypeError(f"check_file needs a binary file object or a read(n) callable, got {source!r}")


class _Sink(Protocol):
    def update(self, data: bytes, /) -> None: ...


def _read_into(read: Reader, sinks: tuple[_Sink, ...], length: int) -> int:
    """Feed up to ``length`` bytes from ``read`` to ``sinks``; return how many there were (fewer at EOF)."""
    got = 0
    while got < length:
        block = read(min(READ_BLOCK, length - got))
        if not isinstance(block, bytes | bytearray | memoryview):
            raise TypeError(f"read() returned {type(block).__name__}, expected bytes")
        if not block:
            break
        for sink in sinks:
            sink.update(block)
        got += len(block)
    return got


def compare_ranges(
    manifest: Manifest,
    size: int,
    ranges: Sequence[str],
    whole: str | None = None,
    extra_digest: str | None = None,
) -> list[BadRange]:
    """Return the ranges of a file that differ from ``manifest``, from the file's size and range digests.

    This is the one comparison rule, for :func:`check_file` and for the sensor. ``ranges`` are the
    sha256 digests of the file's first ``min(size, manifest.size)`` bytes cut at the manifest's range
    bounds (the range holding the end of a short file is short). A short file has its short range and
    every range after it reported (``actual`` None for ranges with no bytes); bytes past
    ``manifest.size`` are one more entry (``expected`` None, ``actual`` is ``extra_digest``).

    :param manifest: what the file should hold.
    :param size: the file's size.
    :param ranges: the file's range digests, as above.
    :param whole: the sha256 of the file when ``size`` equals the manifest's, to catch a manifest
        whose ranges all match but whose whole-file line does not: ``ValueError`` (not one we wrote).
    :param extra_digest: the sha256 of the bytes past ``manifest.size``, when known.
    """
    covered = min(size, manifest.size)
    if len(ranges) != range_count(covered, manifest.range_size):
        raise ValueError(
            f"{len(ranges)} range digests given for {covered} bytes in ranges of {manifest.range_size}"
        )
    bad: list[BadRange] = []
    for index, expected in enumerate(manifest.ranges):
        start, stop = manifest.bounds(index)
        if start >= size:
            bad.append(BadRange(index, start, stop, expected, None, f"missing: the file ends at byte {size}"))
        elif stop > size:
            bad.append(
                BadRange(index, start, stop, expected, ranges[index], f"short: the file ends at byte {size}")
            )
        elif ranges[index] != expected:
            bad.append(BadRange(index, start, stop, expected, ranges[index], "digest differs"))
    if size > manifest.size:
        bad.append(
            BadRange(
                len(manifest.ranges),
                manifest.size,
                size,
                None,
                extra_digest,
                f"extra: the file is {size} bytes, the manifest says {manifest.size}",
            )
        )
    if not bad and whole is not None and whole != manifest.whole:
        raise ValueError(
            f"Manifest of {manifest.name!r} is inconsistent: every range matches but its {ALGORITHM} "
            f"of the whole file ({manifest.whole}) does not ({whole})"
        )
    return bad


def check_file(source: IO[bytes] | Reader, manifest: Manifest) -> list[BadRange]:
    """Read a file from its start and return the ranges that differ from ``manifest`` (empty: all match).

    A file shorter than the manifest says has its short range and every range after it reported
    (``actual`` is None for ranges with no bytes); a longer one has its extra bytes reported as one
    entry past the last range. A manifest whose ranges all match but whose whole-file digest does
    not is inconsistent (not written by us): ``ValueError``.

    :param source: a binary file object positioned at the file's start, or a ``read(n)`` callable.
    :param manifest: what the file should hold.
    """
    read = _reader_of(source)
    hasher = RangeHasher(manifest.range_size)
    size = _read_into(read, (hasher,), manifest.size)
    tail = hashlib.sha256()
    extra = 0
    if size == manifest.size:
        while got := _read_into(read, (tail,), READ_BLOCK):
            extra += got
    ranges, whole = hasher.finish()
    return compare_ranges(
        manifest, size + extra, ranges, whole, extra_digest=tail.hexdigest() if extra else None
    )


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Check FILE against MANIFEST: print "OK" and return 0, or each bad range and return 1; 2 on errors."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Check a file against its airflow-s3sftp range manifest and name the bad ranges.",
    )
    parser.add_argument("file", help="the data file to check")
    parser.add_argument("manifest", help="its manifest (usually FILE.manifest)")
    args = parser.parse_args(argv)
    try:
        with open(args.manifest, "rb") as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
        manifest = parse_manifest(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        print(f"error: manifest {args.manifest}: {err}", file=sys.stderr)
        return 2
    try:
        with open(args.file, "rb") as data:
            bad = check_file(data, manifest)
    except OSError as err:
        print(f"error: file {args.file}: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"error: manifest {args.manifest}: {err}", file=sys.stderr)
        return 2
    if not bad:
        print("OK")
        return 0
    for entry in bad:
        print(entry.describe())
    print(
        f"BAD: {sum(entry.expected is not None for entry in bad)} of {len(manifest.ranges)} ranges differ"
        + ("; extra bytes after the end" if bad[-1].expected is None else ""),
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
