# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The one poll sequence, sans I/O: generators that ask for stats, digests, listings and claims.

A poll is written once here and driven by three callers: the sensor (sync I/O, :func:`drive`), the
deferrable trigger and the event trigger (async I/O, :func:`adrive`). A generator yields a request
(:class:`Stat`, :class:`ReadSidecar`, :class:`Hash`, :class:`ReadManifest`, :class:`HashRanges`,
:class:`ListDir`, :class:`Claim`), receives the
answer, and returns a verdict; the rules it applies live in :mod:`airflow_s3sftp.core.stability`.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import posixpath
from collections.abc import Awaitable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from airflow_s3sftp.core import stability
from airflow_s3sftp.core.manifest import SUFFIX as MANIFEST_SUFFIX
from airflow_s3sftp.core.paths import is_reserved_name
from airflow_s3sftp.exceptions import AuthenticationError, HostKeyVerificationError, VerificationError

if TYPE_CHECKING:
    from collections.abc import Mapping

T = TypeVar("T")


class Claimed(enum.StrEnum):
    """The outcome of a :class:`Claim`."""

    CLAIMED = "claimed"  # renamed into the claim directory: ours
    GONE = "gone"  # the source vanished: someone else claimed or removed it
    EXISTS = "exists"  # the target name is taken: refused, nothing was overwritten


class SensingIO(Protocol):
    """What a driver needs: one method per request. Sync hooks return values, async hooks awaitables."""

    def observe(self, path: str) -> Any: ...  # -> Observation

    def read_sidecar(self, path: str, algorithm: str) -> Any: ...  # -> hex digest or None

    def digest(self, path: str, algorithm: str, size: int) -> Any: ...  # -> "<algo>:<hex>" or None

    def read_manifest(self, path: str) -> Any: ...  # -> bytes of <path>.manifest or None

    def range_digests(self, path: str, range_size: int, size: int) -> Any: ...  # -> (ranges, whole) or None

    def list_files(self, directory: str, pattern: str) -> Any: ...  # -> {name: Observation}

    def claim(self, source: str, target: str) -> Any: ...  # -> Claimed


@dataclass(frozen=True)
class Stat:
    """Ask for the size and mtime of ``path``; the answer is a :class:`~stability.Observation`."""

    path: str

    def ask(self, io: SensingIO) -> Any:
        return io.observe(self.path)


@dataclass(frozen=True)
class ReadSidecar:
    """Ask for the hex digest in ``<path>.<algorithm>``; the answer is the digest or ``None``."""

    path: str
    algorithm: str

    def ask(self, io: SensingIO) -> Any:
        return io.read_sidecar(self.path, self.algorithm)


@dataclass(frozen=True)
class Hash:
    """Ask for the digest of the first ``size`` bytes; the answer is ``"<algorithm>:<hex>"`` or ``None``."""

    path: str
    algorithm: str
    size: int

    def ask(self, io: SensingIO) -> Any:
        return io.digest(self.path, self.algorithm, self.size)


@dataclass(frozen=True)
class ReadManifest:
    """Ask for the bytes of ``<path>.manifest`` (bounded); the answer is ``bytes``, or ``None`` if missing."""

    path: str

    def ask(self, io: SensingIO) -> Any:
        return io.read_manifest(self.path)


@dataclass(frozen=True)
class HashRanges:
    """Ask for the sha256 of each ``range_size`` range of the first ``size`` bytes, and of all of them.

    The answer is ``(range digests, whole digest)`` in hex, or ``None`` when the file is shorter.
    """

    path: str
    range_size: int
    size: int

    def ask(self, io: SensingIO) -> Any:
        return io.range_digests(self.path, self.range_size, self.size)


@dataclass(frozen=True)
class ListDir:
    """Ask for the regular files in ``directory`` whose name matches ``pattern``: ``{name: Observation}``."""

    directory: str
    pattern: str

    def ask(self, io: SensingIO) -> Any:
        return io.list_files(self.directory, self.pattern)


@dataclass(frozen=True)
class Claim:
    """Ask to rename ``source`` to ``target`` without overwriting; the answer is a :class:`Claimed`."""

    source: str
    target: str

    def ask(self, io: SensingIO) -> Any:
        return io.claim(self.source, self.target)


#: Reconnects in a row that the sensor's poll or the deferred trigger makes after a dropped connection.
RECONNECT_ATTEMPTS = 5


def reconnect_delay(attempt: int) -> float:
    """Return the wait before reconnect number ``attempt`` (1-based): 1, 2, 4... seconds, at most 30."""
    return float(min(30.0, 2.0 ** max(0, attempt - 1)))


def is_healable(err: BaseException) -> bool:
    """Return True for a dropped or refused connection, which a reconnect may heal.

    A refused login or an unknown or changed host key is final: it never heals by reconnecting.
    """
    if isinstance(err, (AuthenticationError, HostKeyVerificationError)):
        return False
    return isinstance(err, (ConnectionError, EOFError, TimeoutError))


Request = Stat | ReadSidecar | Hash | ReadManifest | HashRanges | ListDir | Claim
Poll = Generator[Request, Any, T]


def drive(poll: Poll[T], io: SensingIO) -> T:
    """
    Run ``poll`` to its end with a synchronous ``io``; return what it returns.

    An error answering a request is thrown into the generator at the ``yield`` that asked, so the poll
    can handle it (a watch skips one unreadable file) or let it propagate to the caller.
    """
    try:
        request = next(poll)
        while True:
            try:
                answer = request.ask(io)
            except Exception as err:
                request = poll.throw(err)
            else:
                request = poll.send(answer)
    except StopIteration as stop:
        result: T = stop.value
        return result


async def adrive(poll: Poll[T], io: SensingIO) -> T:
    """Run ``poll`` to its end with an asynchronous ``io`` (methods return awaitables), as :func:`drive`."""
    try:
        request = next(poll)
        while True:
            try:
                pending: Awaitable[Any] = request.ask(io)
                answer = await pending
            except Exception as err:
                request = poll.throw(err)
            else:
                request = poll.send(answer)
    except StopIteration as stop:
        result: T = stop.value
        return result


def poll_file(
    path: str,
    state: stability.State,
    policy: stability.Policy,
    seen: stability.Observation | None = None,
) -> Poll[stability.Verdict]:
    """
    Poll one file: stat; once size and mtime are stable, read the sidecar if asked, hash, stat again.

    With a manifest as the expected content, the manifest is read instead of a sidecar and the file is
    hashed range by range (:class:`ReadManifest`, :class:`HashRanges`), then stat'ed again.

    :param path: the remote file
    :param state: what earlier polls established
    :param policy: what "complete" means
    :param seen: an observation already taken (e.g. by a directory listing), saving the first stat
    """
    observation = seen if seen is not None else (yield Stat(path))
    verdict = stability.assess(state, observation, policy)
    if verdict.action is stability.Action.READ_SIDECAR and verdict.algorithm is not None:
        recorded = yield ReadSidecar(path, verdict.algorithm)
        verdict = stability.assess_sidecar(verdict.state, recorded, policy)
    if verdict.action is stability.Action.READ_MANIFEST:
        raw = yield ReadManifest(path)
        verdict = stability.assess_manifest(verdict.state, raw, policy)
    if verdict.action is stability.Action.HASH_RANGES and verdict.manifest is not None:
        manifest = verdict.manifest
        length = stability.ranges_to_hash(verdict.state, manifest)
        answer = yield HashRanges(path, manifest.range_size, length)
        after = yield Stat(path)
        return stability.assess_ranges(verdict.state, after, answer, policy, manifest)
    if verdict.action is stability.Action.HASH and verdict.algorithm is not None:
        before = verdict.state.last
        size = before.size if before is not None and before.size is not None else 0
        checksum = yield Hash(path, verdict.algorithm, size)
        after = yield Stat(path)
        verdict = stability.assess_digest(verdict.state, after, checksum, policy, verdict.expected_checksum)
    return verdict


def split_pattern(path: str) -> tuple[str, str]:
    """
    Split a watched path into its directory and the pattern of its last segment.

    Only the last segment may hold glob characters (``*``, ``?``, ``[``): ``/inbound/*.csv`` watches
    ``/inbound`` for ``*.csv``; a plain path watches exactly that name.
    """
    directory, pattern = posixpath.split(path)
    if not pattern:
        raise ValueError(f"Watched path {path!r} ends with '/': name the files, e.g. {path}*.csv")
    if not directory:
        raise ValueError(f"Watched path {path!r} has no directory: use an absolute path like /inbound/*.csv")
    if any(char in directory for char in "*?["):
        raise ValueError(f"Watched path {path!r}: only its last segment may be a glob, not {directory!r}")
    return directory, pattern


def matches(name: str, pattern: str) -> bool:
    """Return whether a file name matches the last-segment glob (case-sensitive, dotfiles only if asked).

    An empty pattern matches every name. Our own temp and backup files (hidden names ending in
    ``.s3sftp-part`` or ``.s3sftp-old``) never match a pattern.
    """
    if not pattern:
        return True  # a shared listing: every watcher applies its own pattern
    if is_reserved_name(name):
        return False  # airflow-s3sftp's own in-flight temp and backup files, whatever the pattern
    if name.startswith(".") and not pattern.startswith("."):
        return False  # hidden files, e.g. an uploader's temp files, are not candidates
    return fnmatch.fnmatchcase(name, pattern)


@dataclass(frozen=True)
class Fired:
    """One file that became provably complete, and where it is now; :meth:`payload` is the event."""

    path: str
    source_path: str
    size: int
    mtime: int
    checksum: str | None

    def payload(self) -> dict[str, Any]:
        """Return the event payload: ``path``, ``source_path``, ``size``, ``mtime``, ``checksum``."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Round:
    """
    What one watch round found.

    :param fired: files to fire for, in name order
    :param refused: complete files whose claim was refused because the target exists (reported once)
    :param failed: ``(name, error)`` of files that could not be read or differ from their manifest
        (reported once per size and mtime)
    :param blocked: ``(file, error)`` of complete files whose claim the server refused for permission in
        this round; they are retried every round (the caller throttles the warning)
    """

    fired: list[Fired]
    refused: list[Fired]
    failed: list[tuple[str, Exception]]
    blocked: list[tuple[Fired, OSError]] = field(default_factory=list)


#: Errors that concern one file and must not stop the watch of the others (a file that differs from
#: its manifest, or whose manifest is malformed, is a VerificationError).
PER_FILE_ERRORS = (PermissionError, IsADirectoryError, VerificationError)


@dataclass
class Watch:
    """
    Watch a directory for files matching a glob and report each once it is provably complete.

    Every matching file gets its own :class:`~stability.State`, folded under ``policy`` exactly as the
    sensor does. A complete file is claimed first when ``claim_to`` is set (renamed into it, refusing to
    overwrite), and reported with its new path. Without ``claim_to`` the watch remembers each reported
    file's ``(size, mtime)`` and reports it again only when that changes (or the file is removed and
    recreated) and it is complete again. The memory lives in this object: a new watch reports every
    complete file it finds.

    :param directory: the watched directory
    :param pattern: glob for the file names (last path segment)
    :param policy: what "complete" means, shared by every file
    :param claim_to: directory to rename complete files into, or ``None``
    """

    directory: str
    pattern: str
    policy: stability.Policy
    claim_to: str | None = None
    states: dict[str, stability.State] = field(default_factory=dict)
    reported: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    # Complete files whose claim was refused: retried each round (one rename) while unchanged.
    refused: dict[str, Fired] = field(default_factory=dict)
    # Files that failed with a per-file error: skipped while their size and mtime stay the same.
    failed: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    # Files claimed or found complete whose event the caller has not taken yet (see take_fired).
    pending: list[Fired] = field(default_factory=list)
    # Claimed files that changed between the verdict and the claim: fired once they settle.
    settling: dict[str, Fired] = field(default_factory=dict)
    # Claims refused for permission in the current round (see Round.blocked).
    blocked: list[tuple[Fired, OSError]] = field(default_factory=list)

    @property
    def _companion(self) -> str | None:
        """Return the suffix of the files the policy reads beside each file (``.manifest``, ``.sha256``)."""
        source = self.policy.expected_checksum_from
        if source == "manifest":
            return MANIFEST_SUFFIX
        if source == "sidecar" and self.policy.algorithm is not None:
            return f".{self.policy.algorithm}"
        return None

    def take_fired(self) -> list[Fired]:
        """Return and forget the files to fire for, also after a round that raised half-way."""
        fired, self.pending = self.pending, []
        return fired

    def round(self, listing: Mapping[str, stability.Observation] | None = None) -> Poll[Round]:
        """
        List the directory (unless ``listing`` is given), assess every match, hash, claim; return the round.

        Files are visited in name order. A file gone from the listing is forgotten. A file that cannot be
        read (:data:`PER_FILE_ERRORS`) is reported in :attr:`Round.failed` and skipped until it changes;
        any other error propagates, and the files completed before it stay in :meth:`take_fired`.
        """
        if listing is None:
            listing = yield ListDir(self.directory, self.pattern)
        candidates = {
            name: seen
            for name, seen in listing.items()
            if matches(name, self.pattern)
            # The manifests or sidecars the policy reads beside the files are not files to fire for.
            and not (self._companion is not None and name.endswith(self._companion))
        }
        for memory in (self.states, self.reported, self.refused, self.failed):
            for name in [name for name in memory if name not in candidates]:
                del memory[name]
        refused: list[Fired] = []
        failed: list[tuple[str, Exception]] = []
        self.blocked = []
        for name in sorted(self.settling):
            yield from self._settle(self.settling.pop(name), checked=False)
        for name in sorted(candidates):
            seen = candidates[name]
            identity = (seen.size, seen.mtime)
            if self.reported.get(name) == identity or self.failed.get(name) == identity:
                continue
            self.failed.pop(name, None)
            try:
                newly_refused = yield from self._visit(name, seen)
            except PER_FILE_ERRORS as err:
                self.states.pop(name, None)
                self.failed[name] = identity
                failed.append((name, err))
                continue
            if newly_refused is not None:
                refused.append(newly_refused)
        blocked, self.blocked = self.blocked, []
        return Round(self.take_fired(), refused, failed, blocked)

    def _visit(self, name: str, seen: stability.Observation) -> Poll[Fired | None]:
        """Poll one file; claim it when complete. Return it when its claim was newly refused."""
        if name in self.refused:
            held = self.refused[name]
            if (held.size, held.mtime) == (seen.size, seen.mtime):
                yield from self._claim(held)
                return None
            del self.refused[name]
        source = posixpath.join(self.directory, name)
        verdict = yield from poll_file(source, self.states.get(name, stability.State()), self.policy, seen)
        if verdict.action is not stability.Action.FIRE:
            self.states[name] = verdict.state
            return None
        self.states.pop(name, None)
        last = verdict.state.last
        if last is None or last.size is None or last.mtime is None:
            return None  # a fire verdict always carries its observation
        found = Fired(source, source, last.size, last.mtime, verdict.checksum)
        if self.claim_to is None:
            self.reported[name] = (last.size, last.mtime)
            self.pending.append(found)
            return None
        claimed = yield from self._claim(found)
        blocked = any(held is found for held, _ in self.blocked)
        return found if claimed is None and name in self.refused and not blocked else None

    def _claim(self, found: Fired) -> Poll[Fired | None]:
        """Claim ``found``; queue and return it with its new path, or ``None`` when it is gone or refused.

        A claim refused because the name is taken, or for permission, is kept in :attr:`refused` and
        tried again next round (one rename) while the file stays unchanged.
        """
        name = posixpath.basename(found.source_path)
        if self.claim_to is None:
            raise ValueError("this watch claims nothing: claim_to is None")
        target = posixpath.join(self.claim_to, name)
        try:
            outcome = yield Claim(found.source_path, target)
        except PermissionError as err:
            # Fixing the directory's permissions does not change the file: retry every round.
            self.refused[name] = found
            self.blocked.append((found, err))
            return None
        if outcome is Claimed.CLAIMED:
            self.refused.pop(name, None)
            moved = dataclasses.replace(found, path=target)
            return (yield from self._settle(moved))
        if outcome is Claimed.EXISTS:
            self.refused[name] = found
        return None

    def _settle(self, moved: Fired, *, checked: bool = True) -> Poll[Fired | None]:
        """Queue a claimed file once its payload provably describes it; return it when queued.

        A writer may have appended between the verdict and the rename (the claim moves an open file):
        the claimed file is stat'ed, and when size or mtime differ from the verdict's it is hashed again
        between two equal stats; a file still changing waits for the next round (``checked=False``:
        its checksum is not proven yet).
        """
        name = posixpath.basename(moved.path)
        now = yield Stat(moved.path)
        if not now.exists:
            return None  # removed or moved on by someone else since the claim
        if checked and (now.size, now.mtime) == (moved.size, moved.mtime):
            self.pending.append(moved)
            return moved
        size = now.size if now.size is not None else 0
        checksum = None
        if self.policy.algorithm is not None:
            checksum = yield Hash(moved.path, self.policy.algorithm, size)
        again = yield Stat(moved.path)
        if (checksum is None and self.policy.algorithm is not None) or not now.same_file_as(again):
            self.settling[name] = dataclasses.replace(moved, size=size, mtime=now.mtime or 0)
            return None  # still changing: look again next round
        settled = dataclasses.replace(moved, size=size, mtime=now.mtime or 0, checksum=checksum)
        self.pending.append(settled)
        return settled
