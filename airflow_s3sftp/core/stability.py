# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Decide from size, mtime and digest observations whether a remote file has stopped changing."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from airflow_s3sftp.core.checksums import format_checksum, new_hasher, parse_checksum
from airflow_s3sftp.core.manifest import ALGORITHM as MANIFEST_ALGORITHM
from airflow_s3sftp.core.manifest import Manifest, compare_ranges, parse_manifest
from airflow_s3sftp.exceptions import ChecksumMismatchError, ManifestMismatchError, VerificationError

#: SFTP v3 carries mtimes in whole seconds: a write within the second of the last mtime leaves it unchanged.
MTIME_RESOLUTION = 1.0
STATE_VERSION = 1
#: Where the expected content can come from besides ``expected_checksum``: the sidecar
#: ``<path>.<algorithm>``, or the range manifest ``<path>.manifest`` (:mod:`~airflow_s3sftp.core.manifest`).
EXPECTED_CHECKSUM_SOURCES = ("sidecar", "manifest")

# Monotonic readings only compare within one process; this names the process that took them.
_PROCESS_CLOCK = uuid.uuid4().hex


def utcnow() -> datetime.datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.datetime.now(datetime.UTC)


def parse_utc(value: str) -> datetime.datetime:
    """Return the timezone-aware UTC datetime of an ISO 8601 string that carries its offset."""
    moment = datetime.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"Observation time {value!r} has no timezone; expected UTC")
    return moment.astimezone(datetime.UTC)


@dataclass(frozen=True)
class Observation:
    """
    One look at the remote path: its size and mtime, or that it does not exist.

    ``at`` is timezone-aware UTC and survives a reschedule or a deferral; ``monotonic`` is only compared
    with readings of the same process (``clock``), where it is immune to wall-clock jumps.
    """

    at: datetime.datetime
    size: int | None
    mtime: int | None
    monotonic: float | None = None
    clock: str | None = None

    @classmethod
    def take(cls, size: int | None, mtime: int | None) -> Observation:
        """Return an observation stamped now; pass ``None`` for both values when the path is missing."""
        return cls(at=utcnow(), size=size, mtime=mtime, monotonic=time.monotonic(), clock=_PROCESS_CLOCK)

    @property
    def exists(self) -> bool:
        """Return whether the path existed when observed."""
        return self.size is not None

    def same_file_as(self, other: Observation) -> bool:
        """Return whether both observations saw an existing file with the same size and mtime."""
        return self.exists and other.exists and (self.size, self.mtime) == (other.size, other.mtime)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able form for XCom, the task state store or trigger arguments."""
        return {
            "at": self.at.astimezone(datetime.UTC).isoformat(),
            "size": self.size,
            "mtime": self.mtime,
            "monotonic": self.monotonic,
            "clock": self.clock,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Observation:
        """Rebuild an observation written by :meth:`to_dict`."""
        size, mtime, monotonic = data.get("size"), data.get("mtime"), data.get("monotonic")
        return cls(
            at=parse_utc(str(data["at"])),
            size=None if size is None else int(size),
            mtime=None if mtime is None else int(mtime),
            monotonic=None if monotonic is None else float(monotonic),
            clock=data.get("clock"),
        )


def elapsed(earlier: Observation, later: Observation) -> float:
    """Return the seconds between two observations: monotonic within a process, UTC across processes."""
    if (
        earlier.clock is not None
        and earlier.clock == later.clock
        and earlier.monotonic is not None
        and later.monotonic is not None
    ):
        return max(0.0, later.monotonic - earlier.monotonic)
    # A wall clock that stepped back must not make a file look stable sooner.
    return max(0.0, (later.at - earlier.at).total_seconds())


@dataclass(frozen=True)
class Policy:
    """
    What "complete" means for one path; build it with :meth:`build`, which validates every argument.

    :param target: how messages name the file, e.g. ``sftp://host:22/in/data.csv`` (never a secret)
    :param stable_for: seconds over which size and mtime must not change
    :param min_size: smallest size that can fire
    :param expected_size: exact size the file must reach, or ``None``
    :param algorithm: digest algorithm to prove the content with, or ``None`` for size and mtime only
    :param expected_checksum: ``"<algorithm>:<hex>"`` the content must equal, or ``None``
    :param expected_checksum_from: ``"sidecar"`` to take the expected digest from the sidecar
        ``<path>.<algorithm>`` once the file is stable (see :func:`assess_sidecar`), ``"manifest"`` to
        check the file range by range against ``<path>.manifest`` (see :func:`assess_manifest`), or
        ``None``
    """

    target: str
    stable_for: float
    min_size: int = 1
    expected_size: int | None = None
    algorithm: str | None = "sha256"
    expected_checksum: str | None = None
    expected_checksum_from: str | None = None

    @classmethod
    def build(
        cls,
        *,
        target: str,
        stable_for: float | datetime.timedelta,
        checksum: str | None,
        expected_size: int | str | None = None,
        expected_checksum: str | None = None,
        expected_checksum_from: str | None = None,
        min_size: int = 1,
    ) -> Policy:
        """Return a validated policy, raising ``ValueError`` that names ``target`` for a bad argument."""
        seconds = stable_for.total_seconds() if isinstance(stable_for, datetime.timedelta) else stable_for
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds):
            raise ValueError(
                f"stable_for for {target} must be a finite number of seconds or a timedelta, "
                f"got {stable_for!r}"
            )
        if seconds < 0:
            raise ValueError(f"stable_for for {target} must not be negative, got {stable_for!r}")
        if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
            raise ValueError(f"min_size for {target} must be a non-negative integer, got {min_size!r}")
        if checksum is not None and (not isinstance(checksum, str) or not checksum.strip()):
            raise ValueError(
                f"checksum for {target} must name a digest algorithm such as 'sha256', or be None for size "
                f"and mtime only; got {checksum!r}"
            )
        size: int | None = None
        if expected_size is not None and expected_size != "":
            try:
                size = int(expected_size)
            except (TypeError, ValueError):
                raise ValueError(
                    f"expected_size for {target} must be an integer, got {expected_size!r}"
                ) from None
            if size < 0 or size < min_size:
                raise ValueError(f"expected_size {size} for {target} is below min_size {min_size}")
        algorithm = None
        if checksum:
            new_hasher(checksum)  # refuses an unsupported name with a ValueError that lists the choices
            algorithm = checksum.lower()
        expected = None
        if expected_checksum:
            try:
                expected_algorithm, hexdigest = parse_checksum(expected_checksum)
            except ValueError as err:
                raise ValueError(f"expected_checksum for {target}: {err}") from err
            # The algorithm of the expected value wins: that is the digest we can compare.
            algorithm = expected_algorithm
            expected = format_checksum(expected_algorithm, hexdigest)
        if expected_checksum_from is not None:
            if expected_checksum_from not in EXPECTED_CHECKSUM_SOURCES:
                choices = ", ".join(map(repr, EXPECTED_CHECKSUM_SOURCES))
                raise ValueError(
                    f"expected_checksum_from for {target} must be one of {choices} or None, "
                    f"got {expected_checksum_from!r}"
                )
            if expected is not None:
                raise ValueError(
                    f"{target}: pass either expected_checksum or expected_checksum_from, not both"
                )
            if algorithm is None:
                raise ValueError(
                    f"{target}: expected_checksum_from={expected_checksum_from!r} needs a checksum "
                    "algorithm (it names the sidecar, e.g. <path>.sha256); checksum=None was given"
                )
            if expected_checksum_from == "manifest" and algorithm != MANIFEST_ALGORITHM:
                raise ValueError(
                    f"{target}: expected_checksum_from='manifest' compares {MANIFEST_ALGORITHM} digests "
                    f"(the manifest format's); checksum must be {MANIFEST_ALGORITHM!r}, got {checksum!r}"
                )
        return cls(
            target=target,
            stable_for=float(seconds),
            min_size=min_size,
            expected_size=size,
            algorithm=algorithm,
            expected_checksum=expected,
            expected_checksum_from=expected_checksum_from,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able form: the one object that travels to a trigger and back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        """Rebuild a policy written by :meth:`to_dict`, validating it again."""
        algorithm, expected = data.get("algorithm"), data.get("expected_checksum")
        return cls.build(
            target=str(data["target"]),
            stable_for=data["stable_for"],
            # The expected checksum's algorithm won at build time; only one of the two matters now.
            checksum=None if expected else algorithm,
            expected_size=data.get("expected_size"),
            expected_checksum=expected,
            expected_checksum_from=data.get("expected_checksum_from"),
            min_size=data.get("min_size", 1),
        )

    @property
    def required_span(self) -> float:
        """Return how long size and mtime must be seen unchanged, widened by the mtime resolution."""
        return self.stable_for + MTIME_RESOLUTION


@dataclass(frozen=True)
class State:
    """
    What earlier polls established, in O(1) space however long the wait.

    :param since: first observation of the current run of unchanged size and mtime
    :param last: latest observation
    :param checksum: digest taken during the current run, ``"<algorithm>:<hex>"``
    :param checksum_poll: the poll that took ``checksum``
    :param polls: how many observations were assessed so far
    """

    since: Observation | None = None
    last: Observation | None = None
    checksum: str | None = None
    checksum_poll: int | None = None
    polls: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able form that survives a reschedule or a deferral."""
        return {
            "version": STATE_VERSION,
            "since": None if self.since is None else self.since.to_dict(),
            "last": None if self.last is None else self.last.to_dict(),
            "checksum": self.checksum,
            "checksum_poll": self.checksum_poll,
            "polls": self.polls,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> State:
        """Rebuild a state written by :meth:`to_dict`, raising ``ValueError`` for an unknown version."""
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"Unsupported stability state version {data.get('version')!r}")
        since, last, poll = data.get("since"), data.get("last"), data.get("checksum_poll")
        return cls(
            since=None if since is None else Observation.from_dict(since),
            last=None if last is None else Observation.from_dict(last),
            checksum=data.get("checksum"),
            checksum_poll=None if poll is None else int(poll),
            polls=int(data.get("polls", 0)),
        )


class Action(enum.StrEnum):
    """What the caller does next."""

    WAIT = "wait"  # poll again later
    READ_SIDECAR = "read_sidecar"  # read ``<path>.<algorithm>``, then call :func:`assess_sidecar`
    READ_MANIFEST = "read_manifest"  # read ``<path>.manifest``, then call :func:`assess_manifest`
    HASH_RANGES = "hash_ranges"  # hash the manifest's ranges, stat again, then call :func:`assess_ranges`
    HASH = "hash"  # read the content, stat again, then call :func:`assess_digest`
    FIRE = "fire"  # the file is complete


@dataclass(frozen=True)
class Verdict:
    """
    The outcome of one assessment: an action, the state to carry on, and a reason for the log.

    ``algorithm`` names the digest to read (``READ_SIDECAR``) or compute (``HASH``); ``expected_checksum``
    is what a ``HASH`` must find, when it was resolved during this poll (from a sidecar); ``manifest`` is
    what a ``HASH_RANGES`` must find; ``checksum`` is the digest that fired.
    """

    action: Action
    state: State
    reason: str
    algorithm: str | None = None
    checksum: str | None = None
    expected_checksum: str | None = None
    manifest: Manifest | None = None


def _describe(observation: Observation) -> str:
    return f"size {observation.size}, mtime {observation.mtime}"


def assess(state: State, observation: Observation, policy: Policy) -> Verdict:
    """
    Fold a size-and-mtime observation into ``state`` and say what to do next.

    Raises :class:`~airflow_s3sftp.exceptions.VerificationError` when a stable file is larger than
    ``expected_size``: waiting cannot fix it.
    """
    polls = state.polls + 1
    if not observation.exists:
        return Verdict(Action.WAIT, State(polls=polls, last=observation), f"{policy.target} does not exist")
    if state.since is not None and state.since.same_file_as(observation):
        since = state.since
        current = dataclasses.replace(state, last=observation, polls=polls)
    else:
        since = observation
        current = State(since=observation, last=observation, polls=polls)
    span = elapsed(since, observation)
    if span < policy.required_span:
        return Verdict(
            Action.WAIT,
            current,
            f"{_describe(observation)} unchanged for {span:.1f}s of {policy.required_span:.1f}s",
        )
    size = int(observation.size or 0)
    if policy.expected_size is not None and size > policy.expected_size:
        raise VerificationError(
            f"{policy.target}: size {size} exceeds expected_size {policy.expected_size} "
            f"and has not changed for {span:.1f}s"
        )
    if size < policy.min_size:
        return Verdict(Action.WAIT, current, f"size {size} is below min_size {policy.min_size}")
    if policy.expected_size is not None and size < policy.expected_size:
        return Verdict(
            Action.WAIT, current, f"size {size} has not reached expected_size {policy.expected_size}"
        )
    if policy.algorithm is None:
        return Verdict(Action.FIRE, current, f"{_describe(observation)} unchanged for {span:.1f}s")
    if policy.expected_checksum_from == "sidecar":
        # Only now: a waiting poll stays one STAT, and the uploader writes the sidecar after the file.
        return Verdict(
            Action.READ_SIDECAR,
            current,
            f"{_describe(observation)} unchanged for {span:.1f}s, reading the {policy.algorithm} sidecar",
            algorithm=policy.algorithm,
        )
    if policy.expected_checksum_from == "manifest":
        return Verdict(
            Action.READ_MANIFEST,
            current,
            f"{_describe(observation)} unchanged for {span:.1f}s, reading its manifest",
            algorithm=policy.algorithm,
        )
    return Verdict(
        Action.HASH,
        current,
        f"{_describe(observation)} unchanged for {span:.1f}s, hashing the content",
        algorithm=policy.algorithm,
    )


def assess_sidecar(state: State, recorded: str | None, policy: Policy) -> Verdict:
    """
    Fold the digest read from the sidecar into the state of a :attr:`Action.READ_SIDECAR` verdict.

    A missing sidecar, or one without a valid digest, is "not yet": the uploader writes it after the file.
    Otherwise the file is hashed and its digest must equal the sidecar's, exactly as with
    ``expected_checksum``.

    :param state: the state of the ``READ_SIDECAR`` verdict
    :param recorded: the hex digest in the sidecar, or ``None`` when there is none
    :param policy: the policy the state was built with
    """
    algorithm = policy.algorithm
    if algorithm is None or policy.expected_checksum_from != "sidecar":
        raise ValueError(f"{policy.target}: the policy takes no expected checksum from a sidecar")
    if recorded is None:
        return Verdict(Action.WAIT, state, f"stable, but its sidecar holds no {algorithm} digest yet")
    expected = format_checksum(algorithm, recorded)
    return Verdict(
        Action.HASH,
        state,
        f"the sidecar expects {expected}, hashing the content",
        algorithm=algorithm,
        expected_checksum=expected,
    )


def assess_manifest(state: State, raw: bytes | None, policy: Policy) -> Verdict:
    """
    Fold the manifest read beside the file into the state of a :attr:`Action.READ_MANIFEST` verdict.

    A missing manifest is "not yet": the uploader writes it after the file. A malformed one fails at once
    (:class:`~airflow_s3sftp.exceptions.VerificationError` naming the line): manifests are published by
    rename, so a bad one will not mend itself. Otherwise the file's ranges are hashed next.

    :param state: the state of the ``READ_MANIFEST`` verdict
    :param raw: the bytes of ``<path>.manifest`` (at most
        :data:`~airflow_s3sftp.core.manifest.MAX_MANIFEST_BYTES` and one more), or ``None`` when missing
    :param policy: the policy the state was built with
    """
    if policy.expected_checksum_from != "manifest":
        raise ValueError(f"{policy.target}: the policy takes no manifest")
    if raw is None:
        return Verdict(Action.WAIT, state, "stable, but it has no manifest yet")
    try:
        manifest = parse_manifest(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise VerificationError(f"{policy.target}: its manifest is malformed: {err}") from err
    return Verdict(
        Action.HASH_RANGES,
        state,
        f"the manifest expects {manifest.size} bytes in {len(manifest.ranges)} ranges of "
        f"{manifest.range_size}, hashing the ranges",
        algorithm=MANIFEST_ALGORITHM,
        manifest=manifest,
    )


def ranges_to_hash(state: State, manifest: Manifest) -> int:
    """Return how many bytes a ``HASH_RANGES`` reads: the file's stable size, at most the manifest's."""
    before = state.last
    size = before.size if before is not None and before.size is not None else 0
    return min(size, manifest.size)


def assess_ranges(
    state: State,
    observation: Observation,
    answer: tuple[tuple[str, ...], str] | None,
    policy: Policy,
    manifest: Manifest,
) -> Verdict:
    """
    Fold the file's range digests into the state of a :attr:`Action.HASH_RANGES` verdict.

    :param state: the state of the ``HASH_RANGES`` verdict, whose ``last`` is the observation before hashing
    :param observation: a fresh stat taken after the ranges were read
    :param answer: ``(range digests, sha256 of the bytes read)`` of the first :func:`ranges_to_hash` bytes,
        cut at the manifest's range bounds, or ``None`` when the read came up short
    :param policy: the policy the state was built with
    :param manifest: the ``HASH_RANGES`` verdict's manifest

    Raises :class:`~airflow_s3sftp.exceptions.ManifestMismatchError` naming the first bad range when a stable
    file differs from its manifest (also in size), :class:`~airflow_s3sftp.exceptions.VerificationError`
    when every range matches but the manifest's whole-file digest does not.
    """
    before = state.last
    if answer is None or before is None or not before.same_file_as(observation):
        restarted = State(
            since=observation if observation.exists else None, last=observation, polls=state.polls
        )
        return Verdict(Action.WAIT, restarted, "the file changed while it was being hashed")
    size = int(before.size or 0)
    ranges, whole = answer
    try:
        bad = compare_ranges(manifest, size, ranges, whole if size == manifest.size else None)
    except ValueError as err:
        raise VerificationError(f"{policy.target}: {err}") from err
    if bad:
        first = bad[0]
        raise ManifestMismatchError(
            policy.target,
            first.describe(),
            f"{MANIFEST_ALGORITHM}:{first.expected}" if first.expected else "-",
            f"{MANIFEST_ALGORITHM}:{first.actual}" if first.actual else "-",
            len(bad),
        )
    checksum = format_checksum(MANIFEST_ALGORITHM, whole)
    current = dataclasses.replace(state, last=observation)
    return Verdict(
        Action.FIRE,
        current,
        f"all {len(manifest.ranges)} ranges match the manifest",
        checksum=checksum,
    )


def assess_digest(
    state: State,
    observation: Observation,
    checksum: str | None,
    policy: Policy,
    expected_checksum: str | None = None,
) -> Verdict:
    """
    Fold a digest into the state of a :attr:`Action.HASH` verdict and say what to do next.

    :param state: the state of the ``HASH`` verdict, whose ``last`` is the observation before hashing
    :param observation: a fresh stat taken after the content was read
    :param checksum: ``"<algorithm>:<hex>"`` of the content, or ``None`` when the read came up short
    :param policy: the policy the state was built with
    :param expected_checksum: the ``HASH`` verdict's ``expected_checksum`` (read from a sidecar), which
        stands in for the policy's

    Raises :class:`~airflow_s3sftp.exceptions.ChecksumMismatchError` when a stable file differs from the
    expected checksum.
    """
    expected = expected_checksum if expected_checksum is not None else policy.expected_checksum
    if policy.expected_checksum_from is not None and expected_checksum is None:
        raise ValueError(f"{policy.target}: no expected checksum was read from the sidecar")
    before = state.last
    if checksum is None or before is None or not before.same_file_as(observation):
        restarted = State(
            since=observation if observation.exists else None, last=observation, polls=state.polls
        )
        return Verdict(Action.WAIT, restarted, "the file changed while it was being hashed")
    current = dataclasses.replace(state, last=observation)
    if expected is not None:
        source = "the sidecar" if expected_checksum is not None else "expected_checksum"
        if checksum == expected:
            return Verdict(Action.FIRE, current, f"content matches {source}", checksum=checksum)
        raise ChecksumMismatchError(policy.target, expected, checksum)
    if state.checksum is not None and state.checksum_poll is not None and state.checksum_poll < state.polls:
        if state.checksum == checksum:
            return Verdict(
                Action.FIRE,
                current,
                f"digest unchanged since poll {state.checksum_poll} (now poll {state.polls})",
                checksum=checksum,
            )
        # Same size and mtime, new content: a writer that preserves mtimes. Start over from here,
        # keeping this digest as the first of the new run.
        restarted = State(
            since=observation,
            last=observation,
            checksum=checksum,
            checksum_poll=state.polls,
            polls=state.polls,
        )
        return Verdict(Action.WAIT, restarted, "content changed while size and mtime did not")
    first = dataclasses.replace(current, checksum=checksum, checksum_poll=state.polls)
    return Verdict(Action.WAIT, first, f"first digest {checksum}, confirming at the next poll")


def result(path: str, verdict: Verdict) -> dict[str, Any]:
    """Return the XCom summary of a :attr:`Action.FIRE` verdict."""
    state = verdict.state
    last, since = state.last, state.since
    if verdict.action is not Action.FIRE or last is None or since is None:
        raise ValueError(f"No result for {path}: the verdict is {verdict.action.value}, not fire")
    return {
        "path": path,
        "size": last.size,
        "mtime": last.mtime,
        "checksum": verdict.checksum,
        "stable_since": since.at.isoformat(),
        "observed_at": last.at.isoformat(),
        "stable_seconds": round(elapsed(since, last), 3),
        "polls": state.polls,
    }


def format_seconds(seconds: float) -> str:
    """Return a duration rounded for a message: ``"8.1 s"``, ``"42 s"``, ``"3725 s (1 h 2 min)"``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    text = f"{round(seconds)} s"
    if seconds >= 60:
        minutes = int(seconds // 60)
        hours, minutes = divmod(minutes, 60)
        text += (
            f" ({hours} h {minutes} min)"
            if hours and minutes
            else f" ({hours} h)"
            if hours
            else f" ({minutes} min)"
        )
    return text


def timeout_message(target: str, state: State, reason: str | None, waited: float, timeout: float) -> str:
    """
    Return why a sensor gave up: the path, what was seen last and why it was not complete, the time waited.

    :param target: the path as shown to users (``host:port:/path``)
    :param state: the observations so far; ``state.last`` is the last one
    :param reason: the last verdict's reason, or None before the first poll
    :param waited: seconds waited so far
    :param timeout: the sensor's timeout in seconds
    """
    last = state.last
    if last is None:
        seen = "never observed (no poll finished)"
    elif not last.exists:
        seen = f"no such file at the last poll ({last.at.astimezone(datetime.UTC):%Y-%m-%dT%H:%M:%SZ})"
    else:
        mtime = (
            "unknown"
            if last.mtime is None
            else f"{datetime.datetime.fromtimestamp(last.mtime, datetime.UTC):%Y-%m-%dT%H:%M:%SZ}"
        )
        seen = (
            f"last seen {last.size:,} bytes with mtime {mtime} "
            f"at {last.at.astimezone(datetime.UTC):%Y-%m-%dT%H:%M:%SZ}"
        )
    why = f"; not complete because {reason}" if reason else ""
    return (
        f"SFTP file {target} was not complete after {format_seconds(waited)}, timeout "
        f"{format_seconds(timeout)}, {state.polls} polls: {seen}{why}"
    )
