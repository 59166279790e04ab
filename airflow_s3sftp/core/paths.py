# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Derive remote paths from S3 keys without ever leaving the target directory."""

from __future__ import annotations

import hashlib
import posixpath
import re
import secrets
from array import array
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

TEMP_SUFFIX = ".s3sftp-part"  # a delivery's temp file: always a byte-exact prefix of the object
STRIPE_SUFFIX = ".s3sftp-stripe"  # a part file of a striped delivery (core/parts.py): its stripes, in order
JOURNAL_SUFFIX = ".s3sftp-journal"  # a delivery's durable checkpoint (core/journal.py): small JSON
MANIFEST_SUFFIX = ".manifest"  # core.manifest.manifest_path: <name>.manifest
BACKUP_SUFFIX = ".s3sftp-old"
#: Every suffix of the hidden files a delivery writes beside its final name.
HIDDEN_SUFFIXES = (TEMP_SUFFIX, STRIPE_SUFFIX, JOURNAL_SUFFIX, BACKUP_SUFFIX)
#: The longest file name (one path segment, in bytes) servers take unless they say otherwise:
#: NAME_MAX of ext4, xfs, btrfs and most other filesystems.
NAME_MAX = 255
_SHORT_HEAD = 32  # bytes of a long final name kept at the start of its short temp name


def name_bytes(name: str) -> int:
    """Return the length of ``name`` on the wire (UTF-8), which is what a server's name limit counts."""
    return len(name.encode("utf-8", "surrogateescape"))


def short_stem(name: str) -> str:
    """Return the short stand-in of a long file name in its temp names: ``<first 32 bytes>~<hash>``.

    Recognisable (it starts like the final name) and unique to it (16 hex digits of its sha256).
    """
    head = name.encode("utf-8", "surrogateescape")[:_SHORT_HEAD].decode("utf-8", "ignore")
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{head}~{digest}"


def _hidden(path: str, token: str, suffix: str, name_max: int) -> str:
    """Return ``.<name>.<token><suffix>`` beside ``path``, or its short form when that is too long."""
    directory, name = posixpath.split(path)
    hidden = f".{name}.{token}{suffix}"
    if name_bytes(hidden) > name_max:
        hidden = f".{short_stem(name)}.{token}{suffix}"
    return posixpath.join(directory, hidden)


def parse_s3_location(bucket: str | None, key: str) -> tuple[str, str]:
    """Return ``(bucket, key)`` from a bucket and key, or from an ``s3://bucket/key`` URL in ``key``."""
    key = (key or "").strip()
    if key.startswith("s3://"):
        if bucket:
            raise ValueError(f"s3_key {key!r} is an s3:// URL, so s3_bucket must be None (got {bucket!r})")
        bucket, _, key = key[len("s3://") :].partition("/")
        if not bucket or not key:
            raise ValueError(f"S3 URL 's3://{bucket}/{key}' must name both a bucket and a key")
    if not bucket:
        raise ValueError("No S3 bucket: set s3_bucket or pass s3_key as 's3://bucket/key'")
    if not key:
        raise ValueError(f"Empty S3 key for bucket {bucket!r}")
    return bucket, key


def parse_s3_prefix(bucket: str | None, prefix: str) -> tuple[str, str]:
    """Return ``(bucket, prefix)`` from a bucket and prefix (may be empty) or an ``s3://`` URL."""
    prefix = (prefix or "").strip()
    if prefix.startswith("s3://"):
        if bucket:
            raise ValueError(
                f"s3_prefix {prefix!r} is an s3:// URL, so s3_bucket must be None (got {bucket!r})"
            )
        bucket, _, prefix = prefix[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError("No S3 bucket: set s3_bucket or pass s3_prefix as 's3://bucket/prefix'")
    return bucket, prefix


def prefix_as_directory(prefix: str) -> str:
    """Return ``prefix`` as the directory it names: ``px/day-1`` and ``px/day-1/`` are both ``px/day-1/``.

    So a prefix never cuts a key segment in two: ``px/day-1`` does not take ``px/day-10/b.csv``
    or ``px/day-11.csv``. An empty prefix is the whole bucket.
    """
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a path glob: ``*`` and ``?`` stay within one path segment, ``**`` crosses segments.

    As in ``glob.glob(recursive=True)``, ``**/`` also matches no directory at all, so ``**/*.csv``
    matches ``a.csv`` and ``x/y/a.csv``.
    """
    parts = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            parts.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            parts.append("[^/]")
            i += 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


def safe_name(name: str, source: str) -> str:
    """Return ``name`` if it is a plain file name, else raise ``ValueError`` naming ``source``."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise ValueError(f"{source!r} does not give a safe remote file name (got {name!r})")
    return name


def remote_path_for(sftp_path: str, key: str) -> str:
    """Return the final remote path: ``sftp_path``, or the key's base name below it if it ends in ``/``.

    Names taken from a key are checked so that ``..``, absolute keys, backslashes and NUL bytes
    cannot place the file outside the directory.
    """
    if not sftp_path or "\x00" in sftp_path:
        raise ValueError(f"Invalid sftp_path {sftp_path!r}")
    if sftp_path.endswith("/"):
        return sftp_path + safe_name(key.rsplit("/", 1)[-1], key)
    _directory, name = posixpath.split(sftp_path)
    safe_name(name, sftp_path)
    return sftp_path


_TOKEN = re.compile(r"[0-9a-f]{12}")


def new_token() -> str:
    """Return a random token that makes a temp name unique to one delivery."""
    return secrets.token_hex(6)


def temp_path_for(path: str, token: str, name_max: int = NAME_MAX) -> str:
    """Return the temp name of ``path`` for one delivery: hidden, same directory, unique by ``token``.

    ``/in/x.csv`` becomes ``/in/.x.csv.<token>.s3sftp-part``: two deliveries never share a temp
    file, and a leftover is recognisable as ours and as belonging to ``x.csv``. When that name
    would pass ``name_max`` bytes, the final name is replaced by :func:`short_stem` (its first
    bytes and a hash), so every legal final name can be delivered atomically.
    """
    return _hidden(path, token, TEMP_SUFFIX, name_max)


def hidden_path_for(path: str, token: str, suffix: str, name_max: int = NAME_MAX) -> str:
    """Return a hidden file of ``path`` shaped like its temp file but ending in ``suffix``."""
    return _hidden(path, token, suffix, name_max)


def backup_path_for(path: str, token: str, name_max: int = NAME_MAX) -> str:
    """Return where the previous version waits while a server without posix-rename replaces it."""
    return _hidden(path, token, BACKUP_SUFFIX, name_max)


def leftover_of(name: str) -> str | None:
    """Return the final name a temp or backup file name belongs to, or None when it is not ours.

    For the short form of a long name this is its :func:`short_stem`.
    """
    for suffix in HIDDEN_SUFFIXES:
        if name.startswith(".") and name.endswith(suffix):
            base, _, token = name[1 : -len(suffix)].rpartition(".")
            if base and _TOKEN.fullmatch(token):
                return base
    return None


def is_reserved_name(name: str) -> bool:
    """Return True for names shaped like our temp or backup files (never valid delivery targets)."""
    return name.startswith(".") and name.endswith(HIDDEN_SUFFIXES)


def check_plan(
    planned: list[tuple[str, str]],
    *,
    sidecar_suffix: str | None,
    done_marker: str | None,
    manifest: bool = False,
    name_max: int = NAME_MAX,
) -> None:
    """Refuse, before a byte is written, a plan in which two names that the task creates collide.

    ``planned`` holds ``(source, final remote path)`` pairs. Every name the task creates counts:
    the final names, their sidecars (``<name><sidecar_suffix>``) and done markers
    (``<name><done_marker>``); a final name shaped like our temp files is refused too, since a
    cleanup could take it for a leftover. A file name that is also a directory of another
    file's path clashes. Every name (and the temp names they are written under) must fit in
    ``name_max`` bytes. The ``ValueError`` names both sources, or the name and by how much it
    is too long.
    """
    sources = {path: source for source, path in planned}
    created: dict[str, tuple[str, str]] = {}  # remote path -> (source, what the path is)
    directories: dict[str, str] = {}  # directory a created file needs -> that file's source
    for source, path in planned:
        directory, name = posixpath.split(path)
        if is_reserved_name(name):
            owner = leftover_of(name) or name[1:].rsplit(".s3sftp-", 1)[0]
            twin = sources.get(posixpath.join(directory, owner))
            raise ValueError(
                f"{source!r} would land on {path!r}, a name reserved for airflow-s3sftp's temp files "
                f"(hidden names ending in {', '.join(HIDDEN_SUFFIXES)})"
                + (f", shaped like a temp file of {twin!r}" if twin else "")
                + "; rename it or filter it out"
            )
        names = [(path, "the file")]
        if sidecar_suffix:
            names.append((path + sidecar_suffix, "the checksum sidecar"))
        if manifest:
            names.append((path + MANIFEST_SUFFIX, "the range manifest"))
        if done_marker:
            names.append((path + done_marker, "the done marker"))
        for name, role in names:
            check_name_length(name, name_max, f"{role} of {source!r}")
            other = created.get(name)
            if other is not None:
                raise ValueError(
                    f"S3 sources {other[0]!r} and {source!r} clash: {name!r} would be both "
                    f"{other[1]} of {other[0]!r} and {role} of {source!r}"
                )
            created[name] = (source, role)
        parent = directory
        while parent not in ("", "/") and parent not in directories:
            directories[parent] = source
            parent = posixpath.dirname(parent)
    for name, (source, role) in created.items():
        holder = directories.get(name)
        if holder is not None:
            raise ValueError(
                f"S3 sources {source!r} and {holder!r} clash: {name!r} would be both {role} of "
                f"{source!r} and a directory holding {holder!r}"
            )


def check_name_length(path: str, name_max: int, what: str) -> None:
    """Refuse ``path`` when a segment, or the temp name it is written under, passes ``name_max`` bytes."""
    for segment in path.split("/"):
        length = name_bytes(segment)
        if length > name_max:
            raise ValueError(
                f"The name {segment!r} ({what}) is too long: {length} bytes, {length - name_max} over "
                f"the server's limit of {name_max} bytes"
            )
    longest = max(HIDDEN_SUFFIXES, key=len)
    temp = posixpath.basename(hidden_path_for(path, "0" * 12, longest, name_max))
    if name_bytes(temp) > name_max:
        raise ValueError(
            f"The temp name of {path!r} ({what}) cannot fit the server's name limit of {name_max} bytes"
        )


class DigestSet:
    """A set of 8-byte digests of strings in one flat array: 16 to 32 bytes per member, not ~100.

    Open addressing with linear probing in an ``array('Q')`` kept at most half full (it doubles
    when it passes that): 8 bytes a slot, two to four slots a member. Zero marks an empty slot, so
    a digest of zero is stored as one. Two different strings share a digest with a chance of about
    ``n**2 / 2**65`` (1e-7 at a million members); a shared digest reads as "already there".
    """

    def __init__(self, capacity: int = 1024) -> None:
        size = 1024
        while size < 2 * capacity:
            size *= 2
        self._slots = array("Q", bytes(8 * size))
        self._mask = size - 1
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Return the bytes the slots take."""
        return len(self._slots) * self._slots.itemsize

    @staticmethod
    def digest(text: str) -> int:
        """Return the 8-byte digest of ``text`` (blake2b), never zero."""
        value = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest())
        return value or 1

    def _find(self, value: int) -> int:
        slots, mask = self._slots, self._mask
        index = value & mask
        while True:
            held = slots[index]
            if held == 0 or held == value:
                return index
            index = (index + 1) & mask

    def __contains__(self, text: object) -> bool:
        if not isinstance(text, str):
            return False
        return self._slots[self._find(self.digest(text))] != 0

    def add(self, text: str) -> bool:
        """Add ``text``; return False when it (or a string with its digest) was already there."""
        value = self.digest(text)
        index = self._find(value)
        if self._slots[index] != 0:
            return False
        self._slots[index] = value
        self._count += 1
        if 2 * self._count > len(self._slots):
            self._grow()
        return True

    def _grow(self) -> None:
        old = self._slots
        self._slots = array("Q", bytes(16 * len(old)))
        self._mask = len(self._slots) - 1
        for value in old:
            if value:
                self._slots[self._find(value)] = value


class PlanIndex:
    """Name-clash checks for a plan that arrives one object at a time (a listing, page by page).

    The same rules as :func:`check_plan` (a final name shaped like our temp files; two objects onto
    one name; an object onto another's sidecar, manifest or done marker; a file name that is also
    a directory of another's path; names too long for the server), checked as each object comes
    up against the objects before it, so the later object of a clashing pair is the one refused.
    Memory: a :class:`DigestSet` member per object (its final path) and per directory, 16 to 32
    bytes each.

    :param sidecar_suffix: suffix of the checksum sidecars, None for none
    :param done_marker: suffix of the done markers, None for none
    :param manifest: range manifests are written
    :param name_max: the longest name (one path segment, in bytes) the server takes
    :param source_of: returns the source of an earlier object from its final path, for messages
        (the index keeps digests only)
    """

    def __init__(
        self,
        *,
        sidecar_suffix: str | None,
        done_marker: str | None,
        manifest: bool = False,
        name_max: int = NAME_MAX,
        source_of: Callable[[str], str] | None = None,
    ) -> None:
        self._source_of = source_of or (lambda path: f"the object delivered to {path!r}")
        self._roles: list[tuple[str, str]] = [("", "the file")]
        if sidecar_suffix:
            self._roles.append((sidecar_suffix, "the checksum sidecar"))
        if manifest:
            self._roles.append((MANIFEST_SUFFIX, "the range manifest"))
        if done_marker:
            self._roles.append((done_marker, "the done marker"))
        self._name_max = name_max
        self._files = DigestSet()  # final paths planned so far
        self._directories = DigestSet()  # every directory a planned file needs

    @property
    def nbytes(self) -> int:
        """Return the bytes the index takes."""
        return self._files.nbytes + self._directories.nbytes

    def _owner(self, name: str) -> tuple[str, str] | None:
        """Return ``(final path, role)`` of an earlier object that creates ``name``, or None."""
        for suffix, role in self._roles:
            if name.endswith(suffix):
                owner = name[: len(name) - len(suffix)] if suffix else name
                if owner and owner in self._files:
                    return owner, role
        return None

    def add(self, source: str, path: str) -> None:
        """Check an object's names against the objects before it, then add them; ``ValueError`` on a clash."""
        directory, name = posixpath.split(path)
        if is_reserved_name(name):
            raise ValueError(
                f"{source!r} would land on {path!r}, a name reserved for airflow-s3sftp's temp files "
                f"(hidden names ending in {', '.join(HIDDEN_SUFFIXES)}); rename it or filter it out"
            )
        names = [(path + suffix, role) for suffix, role in self._roles]
        seen: dict[str, str] = {}
        for created, role in names:
            check_name_length(created, self._name_max, f"{role} of {source!r}")
            if created in seen:
                raise ValueError(f"{created!r} would be both {seen[created]} and {role} of {source!r}")
            seen[created] = role
            owner = self._owner(created)
            if owner is not None:
                other = self._source_of(owner[0])
                raise ValueError(
                    f"S3 sources {other!r} and {source!r} clash: {created!r} would be both {owner[1]} of "
                    f"{other!r} and {role} of {source!r}"
                )
            if created in self._directories:
                raise ValueError(
                    f"S3 sources {source!r} and an earlier object clash: {created!r} would be both {role} "
                    f"of {source!r} and a directory holding the earlier object's file"
                )
        parent = directory
        while parent not in ("", "/"):
            owner = self._owner(parent)
            if owner is not None:
                other = self._source_of(owner[0])
                raise ValueError(
                    f"S3 sources {other!r} and {source!r} clash: {parent!r} would be both {owner[1]} of "
                    f"{other!r} and a directory holding {source!r}"
                )
            parent = posixpath.dirname(parent)
        self._files.add(path)
        parent = directory
        while parent not in ("", "/") and self._directories.add(parent):
            parent = posixpath.dirname(parent)
