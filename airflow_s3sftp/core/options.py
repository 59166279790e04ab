# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""How to deliver: option groups with one source of defaults, and the one retry policy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from airflow_s3sftp.core import validate
from airflow_s3sftp.core.sftp import MAX_WRITE_SIZE
from airflow_s3sftp.exceptions import ArgumentTypeError

MiB = 1024 * 1024
MAX_BACKOFF = 60.0

Verify = Literal["none", "size", "checksum"]
IfExists = Literal["replace", "fail", "skip_identical"]
SkipIdenticalBy = Literal["content", "sidecar"]


@dataclass(frozen=True)
class Publishing:
    """Where and how the file is published.

    :param atomic: write a unique hidden temp file and rename it onto the final name once verified;
        False writes the final name directly (the previous version is gone as soon as it starts)
    :param if_exists: ``"replace"``, ``"fail"`` or ``"skip_identical"``
    :param create_dirs: create missing directories of the target (each one is logged)
    :param file_mode: permissions of the published file; None keeps the server's default
    :param sidecar: write ``<name>.<checksum>`` in ``sha256sum -c`` format after publishing
    :param done_marker: suffix of an empty marker file written last, e.g. ``".done"``
    :param stale_temp_after: seconds after which a leftover temp file of the same final name
        (left by a crashed worker) counts as abandoned and is removed, measured on the server's clock
    :param manifest: write ``<name>.manifest`` after publishing (before the done marker): the sha256
        of every ``range_size`` range, so a partner can name the bytes that differ
        (:mod:`airflow_s3sftp.core.manifest`, ``python -m airflow_s3sftp.verify``)
    """

    atomic: bool = True
    if_exists: IfExists = "replace"
    create_dirs: bool = False
    file_mode: int | None = 0o644
    sidecar: bool = False
    done_marker: str | None = None
    stale_temp_after: float = 86400.0
    manifest: bool = False

    def __post_init__(self) -> None:
        validate.flag("atomic", self.atomic)
        validate.flag("manifest", self.manifest)
        validate.choice("if_exists", self.if_exists, ("replace", "fail", "skip_identical"))
        validate.flag("create_dirs", self.create_dirs)
        validate.file_mode("file_mode", self.file_mode)
        validate.flag("sidecar", self.sidecar)
        if self.done_marker is not None:
            validate.name_part("done_marker", self.done_marker)
            if not self.done_marker.startswith(".") or len(self.done_marker) < 2:
                raise ValueError(
                    f"done_marker is a suffix starting with '.', e.g. '.done' (got {self.done_marker!r})"
                )
        validate.number("stale_temp_after", self.stale_temp_after, positive=True)


@dataclass(frozen=True)
class Checks:
    """How the bytes are proven.

    :param checksum: algorithm of the on-the-fly checksum (sha256, sha1, sha512, md5, blake2b), or None
    :param verify: before publishing check nothing, the remote size, or re-read and compare checksums
    :param skip_identical_by: with ``if_exists="skip_identical"``, prove identity by re-reading the
        remote file (``"content"``), or trust a sidecar that equals S3's own full-object checksum
        (``"sidecar"``: faster, but blind to a remote file changed behind its sidecar)
    :param range_size: bytes per range of the durable checkpoints and of the range manifest (each
        range gets its own sha256)
    """

    checksum: str | None = "sha256"
    verify: Verify = "size"
    skip_identical_by: SkipIdenticalBy = "content"
    range_size: int = 8 * MiB

    def __post_init__(self) -> None:
        validate.integer("range_size", self.range_size, minimum=64 * 1024)
        validate.choice("verify", self.verify, ("none", "size", "checksum"))
        validate.choice("skip_identical_by", self.skip_identical_by, ("content", "sidecar"))
        if self.checksum is not None:
            validate.algorithm("checksum", self.checksum)
            object.__setattr__(self, "checksum", self.checksum.lower())  # "SHA256" names sidecars .sha256
        if self.verify == "checksum" and self.checksum is None:
            raise ValueError("verify='checksum' needs a checksum algorithm (checksum=None was given)")


@dataclass(frozen=True)
class Streaming:
    """How the bytes move.

    :param chunk_size: bytes per S3 read and per queued chunk
    :param read_ahead: chunks read ahead of the SFTP writer
    :param write_size: bytes per SFTP WRITE; None asks the server (``limits@openssh.com``)
    :param strict_order: one write in flight at a time; None decides per server
    :param max_in_flight: pipelined WRITE requests outstanding at most
    :param parallel_parts: S3 ranged GETs in flight (1 = one stream)
    :param part_size: bytes per ranged GET
    :param fsync: ask the server to flush the file before publishing (``fsync@openssh.com``)
    :param io_timeout: seconds an SFTP request may stall before the connection counts as lost
    :param progress_interval: seconds between progress lines
    :param channels: SFTP channels per object (several fill a long link; see
        :mod:`airflow_s3sftp.core.parts`): None decides by the object's size and the measured
        round trip, 1 keeps one channel, ``n`` asks for up to ``n``
    :param stripe_size: bytes per stripe when an object is spread over several channels
    """

    chunk_size: int = MiB
    read_ahead: int = 8
    write_size: int | None = None
    strict_order: bool | None = None
    max_in_flight: int = 32
    parallel_parts: int = 1
    part_size: int = 16 * MiB
    fsync: bool = True
    io_timeout: float = 120.0
    progress_interval: float = 10.0
    channels: int | None = None
    stripe_size: int = 2 * MiB

    def __post_init__(self) -> None:
        validate.integer("channels", self.channels, minimum=1, optional=True)
        if self.channels is not None and self.channels > 64:
            raise ValueError(f"channels must be None (auto) or 1 to 64 (got {self.channels!r})")
        validate.integer("stripe_size", self.stripe_size, minimum=MiB)
        for name in ("chunk_size", "read_ahead", "max_in_flight", "parallel_parts", "part_size"):
            validate.integer(name, getattr(self, name), minimum=1)
        validate.integer("write_size", self.write_size, minimum=1, optional=True)
        if self.write_size is not None and self.write_size > MAX_WRITE_SIZE:
            raise ValueError(
                f"write_size {self.write_size} is above {MAX_WRITE_SIZE} bytes, more than SFTP servers "
                "accept in one WRITE (OpenSSH: 256 KiB); leave it None to ask the server"
            )
        validate.flag("strict_order", self.strict_order, optional=True)
        validate.flag("fsync", self.fsync)
        validate.number("io_timeout", self.io_timeout, positive=True)
        validate.number("progress_interval", self.progress_interval)


@dataclass(frozen=True)
class RetryPolicy:
    """The one retry policy: how often to reconnect or reopen, and how long to wait in between.

    :param retries: reconnects after a lost SSH connection, per object
    :param s3_retries: reopens of a broken S3 stream at the offset where it broke, per object
    :param delay: first wait in seconds, doubled on every further attempt (at most a minute)
    :param checkpoint_every: bytes between durable checkpoints of an object on the server (a journal
        beside the temp file, see :mod:`airflow_s3sftp.core.journal`) from which the next try of
        the task, a new process, resumes; None picks 1/32 of the object, at least ``range_size``;
        0 keeps no journal
    :param resume_after: seconds a leftover of an earlier try must have been idle (by the server's
        clock) before a new try adopts or removes it: a younger one may still be written by a live
        worker. Keep it above ``io_timeout``: a live writer whose file stays idle that long has
        given up on it
    """

    retries: int = 3
    s3_retries: int = 5
    delay: float = 1.0
    checkpoint_every: int | None = None
    resume_after: float = 180.0

    def __post_init__(self) -> None:
        validate.integer("connection_retries", self.retries, minimum=0)
        validate.integer("s3_retries", self.s3_retries, minimum=0)
        validate.number("connection_retry_delay", self.delay)
        validate.integer("checkpoint_every", self.checkpoint_every, minimum=0, optional=True)
        validate.number("resume_after", self.resume_after)

    def backoff(self, attempt: int) -> float:
        """Return the wait before retry number ``attempt`` (1-based): doubling, at most a minute."""
        return float(min(MAX_BACKOFF, self.delay * 2 ** max(0, attempt - 1)))


#: The keys of the operator's ``tuning`` dict: name -> (option group, field). The names are the
#: operator's former keyword arguments, so ``chunk_size=MiB`` became ``tuning={"chunk_size": MiB}``.
TUNING: dict[str, tuple[str, str]] = {
    "chunk_size": ("streaming", "chunk_size"),
    "read_ahead": ("streaming", "read_ahead"),
    "write_size": ("streaming", "write_size"),
    "strict_order": ("streaming", "strict_order"),
    "max_in_flight": ("streaming", "max_in_flight"),
    "parallel_parts": ("streaming", "parallel_parts"),
    "part_size": ("streaming", "part_size"),
    "fsync": ("streaming", "fsync"),
    "io_timeout": ("streaming", "io_timeout"),
    "progress_interval": ("streaming", "progress_interval"),
    "channels": ("streaming", "channels"),
    "stripe_size": ("streaming", "stripe_size"),
    "connection_retries": ("retry", "retries"),
    "connection_retry_delay": ("retry", "delay"),
    "s3_retries": ("retry", "s3_retries"),
    "checkpoint_every": ("retry", "checkpoint_every"),
    "resume_after": ("retry", "resume_after"),
    "range_size": ("checks", "range_size"),
    "stale_temp_after": ("publishing", "stale_temp_after"),
}

#: What users decide, each a parameter of its own (of :meth:`DeliveryOptions.build` and the operator).
DECISIONS = (
    "atomic",
    "if_exists",
    "create_dirs",
    "file_mode",
    "sidecar",
    "done_marker",
    "manifest",
    "checksum",
    "verify",
    "skip_identical_by",
)


def tuning_groups(tuning: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Return the ``tuning`` dict sorted into option groups: ``{"streaming": {"chunk_size": ...}, ...}``.

    Only the keys are checked here (a key that is no tuning knob raises ``ValueError`` naming the
    valid ones); the values are checked by the groups, each error naming its key.
    """
    groups: dict[str, dict[str, Any]] = {"publishing": {}, "checks": {}, "streaming": {}, "retry": {}}
    if tuning is None:
        return groups
    if not isinstance(tuning, Mapping):
        raise ArgumentTypeError(
            f"tuning must be a dict such as {{'chunk_size': 4194304}} or None, got {tuning!r} "
            f"({type(tuning).__name__})"
        )
    for key, value in tuning.items():
        if key not in TUNING:
            hint = f" ({key} is a parameter of its own, not a tuning key)" if key in DECISIONS else ""
            raise ValueError(
                f"tuning has an unknown key {key!r}{hint}; valid keys: {', '.join(sorted(TUNING))}"
            )
        group, name = TUNING[key]
        groups[group][name] = value
    return groups


@dataclass(frozen=True)
class DeliveryOptions:
    """Every setting of a delivery, in four groups; the operator's defaults come from here."""

    publishing: Publishing = field(default_factory=Publishing)
    checks: Checks = field(default_factory=Checks)
    streaming: Streaming = field(default_factory=Streaming)
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if self.publishing.sidecar and self.checks.checksum is None:
            raise ValueError("sidecar=True needs a checksum algorithm (checksum=None was given)")

    @classmethod
    def build(
        cls,
        *,
        atomic: bool = Publishing.atomic,
        if_exists: IfExists = Publishing.if_exists,
        create_dirs: bool = Publishing.create_dirs,
        file_mode: int | None = Publishing.file_mode,
        sidecar: bool = Publishing.sidecar,
        done_marker: str | None = Publishing.done_marker,
        manifest: bool = Publishing.manifest,
        checksum: str | None = Checks.checksum,
        verify: Verify = Checks.verify,
        skip_identical_by: SkipIdenticalBy = Checks.skip_identical_by,
        tuning: Mapping[str, Any] | None = None,
    ) -> DeliveryOptions:
        """Return the options of the users' decisions plus a ``tuning`` dict (keys of :data:`TUNING`).

        A bad value raises ``ValueError`` (or :class:`~airflow_s3sftp.exceptions.ArgumentTypeError`)
        naming the parameter or tuning key; an unknown tuning key names the valid ones.
        """
        groups = tuning_groups(tuning)
        return cls(
            publishing=Publishing(
                atomic=atomic,
                if_exists=if_exists,
                create_dirs=create_dirs,
                file_mode=file_mode,
                sidecar=sidecar,
                done_marker=done_marker,
                manifest=manifest,
                **groups["publishing"],
            ),
            checks=Checks(
                checksum=checksum, verify=verify, skip_identical_by=skip_identical_by, **groups["checks"]
            ),
            streaming=Streaming(**groups["streaming"]),
            retry=RetryPolicy(**groups["retry"]),
        )
