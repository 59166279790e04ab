# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Operator that streams S3 objects to an SFTP server in order, atomically and verified."""

from __future__ import annotations

import re
import socket
import warnings
from typing import TYPE_CHECKING, Any, Literal

from airflow.providers.common.compat.sdk import BaseOperator

from airflow_s3sftp.core import validate
from airflow_s3sftp.core.batch import summarize
from airflow_s3sftp.core.options import TUNING, Checks, DeliveryOptions, Publishing
from airflow_s3sftp.core.paths import (
    check_plan,
    glob_to_regex,
    parse_s3_location,
    parse_s3_prefix,
    prefix_as_directory,
    remote_path_for,
    safe_name,
)
from airflow_s3sftp.exceptions import DeliveryFailedError, S3SFTPDeprecationWarning
from airflow_s3sftp.hooks.s3_sftp import S3ToSFTPHook

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.providers.common.compat.sdk import Context


def _moved_into_tuning(tuning: dict[str, Any] | None, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """Return ``tuning`` with the former keyword arguments of its keys (popped from ``kwargs``) moved in.

    They still work for one release, with a :class:`~airflow_s3sftp.exceptions.S3SFTPDeprecationWarning`
    saying where they went; the same knob given both ways is refused.
    """
    moved = {name: kwargs.pop(name) for name in list(kwargs) if name in TUNING}
    if not moved:
        return tuning
    shown = ", ".join(f"{name!r}: {value!r}" for name, value in moved.items())
    warnings.warn(
        f"S3ToSFTPStreamOperator({', '.join(moved)}=...) is deprecated: pass tuning={{{shown}}}",
        S3SFTPDeprecationWarning,
        stacklevel=3,
    )
    if tuning is None:
        return moved
    if not isinstance(tuning, dict):
        return tuning  # refused, naming its type, when the options are built
    both = sorted(set(moved) & set(tuning))
    if both:
        raise ValueError(f"{', '.join(both)} given both as a keyword argument and in tuning: keep tuning")
    return {**tuning, **moved}


class S3ToSFTPStreamOperator(BaseOperator):
    """Stream S3 objects to an SFTP server without temp disk, so no partial file is ever visible.

    Bytes flow from one S3 GET straight into the SFTP file, written strictly in offset order
    (no seek, no holes), with bounded memory and a checksum computed on the fly. With
    ``atomic`` the data goes to a hidden temp name unique to this delivery
    (``.<name>.<token>.s3sftp-part``) in the target directory, is verified, and is renamed onto
    the final name (``posix-rename@openssh.com`` where the server offers it), so a
    partner watching the directory sees the old complete file or the new complete file and
    nothing in between. The bytes read are checked against S3's own integrity data when the
    object has it (a full-object checksum, or the MD5 ETag of a single-part object). A dropped
    or stalled SSH connection is retried within the task, resuming after the longest prefix of
    the temp file whose read-back digest matches what was sent, or starting again from byte 0
    with fresh digests. Whatever fails, the file this delivery created is removed and nothing
    else is; no partial file ever stands under a final name, in any mode. Every name the task
    creates (files, sidecars, done markers) is checked for clashes before a byte is written.

    One object (``s3_key``) returns its record (XCom), with the same keys on every path:
    ``s3_uri``, ``sftp_path``, ``size``, ``checksum`` (``"sha256:<hex>"``), ``etag``,
    ``version_id``, ``skipped``, ``attempts``, ``resumed_from``, ``seconds``, ``mb_per_s``,
    ``verified``, ``published_with``, ``source_check``, ``source_check_skipped`` (why S3's
    integrity data was not checked), ``s3_retries``, ``sidecar_path``, ``done_marker_path``. Many objects
    (``s3_prefix`` or ``s3_keys``) return ``{"objects": [records], "failed": [], "count",
    "transferred", "skipped", "bytes"}``; when some fail, the others still complete and the task
    fails with :class:`~airflow_s3sftp.exceptions.DeliveryFailedError` listing the failures.

    :param s3_key: key of one object, or an ``s3://bucket/key`` URL when ``s3_bucket`` is None (templated)
    :param sftp_path: remote file path; a path ending in ``/`` is a directory and the key's base
        name (or, with ``s3_prefix``, its path below the prefix) is appended (templated)
    :param s3_bucket: bucket of the objects (templated)
    :param s3_prefix: deliver every object below this "directory", keeping its path below it; a prefix
        not ending in ``/`` is read as a directory all the same (``px/day-1`` is ``px/day-1/`` and never
        takes ``px/day-10/...``) (templated)
    :param s3_keys: deliver these keys, each under its base name; a list (a string, e.g. a template
        rendered as text, is refused) (templated)
    :param s3_glob: with ``s3_prefix``, only keys whose path below the prefix matches this glob
        (``*`` stays within a path segment, ``**`` crosses segments: ``**/*.csv``)
    :param s3_regex: with ``s3_prefix``, only keys whose path below the prefix matches this regex
    :param max_concurrency: objects delivered at once in one task; each of up to this many SFTP
        sessions serves one object after another. On a link with a round trip under 10 ms the
        client's CPU is the limit, not round trips: then at most ``max_connections`` at once
    :param max_connections: SSH connections open at once at most in one task (partners cap them:
        OpenSSH's ``MaxStartups``, ``MaxSessions``); with ``max_concurrency`` above it, the sessions
        share the connections as SFTP channels of their own, spread evenly
    :param allow_empty: with ``s3_prefix``, succeed when nothing matches instead of failing
    :param aws_conn_id: Airflow ``aws`` connection (templated)
    :param sftp_conn_id: Airflow ``sftp`` connection (templated)
    :param atomic: write to a temp name and rename when verified; False writes the final name
        directly (still in order), for servers where rename is not possible: the previous version
        is gone as soon as the delivery starts, and a failed delivery removes its partial file
    :param checksum: algorithm of the on-the-fly checksum (sha256, sha1, sha512, md5, blake2b),
        None for none
    :param verify: before publishing, check nothing (``"none"``), the remote size (``"size"``),
        or re-read the remote file and compare checksums (``"checksum"``, reads it all back)
    :param if_exists: ``"replace"`` an existing file atomically, ``"fail"`` when one exists, or
        ``"skip_identical"``: skip when the remote file provably holds the same bytes
    :param skip_identical_by: how ``skip_identical`` proves identity: ``"content"`` re-reads and
        hashes the remote file (never skips differing bytes); ``"sidecar"`` trusts a
        ``<name>.<checksum>`` sidecar equal to S3's own full-object checksum (no read, but blind to
        a remote file changed behind its sidecar), falling back to the content
    :param create_dirs: create missing directories of ``sftp_path`` (each is logged); by default
        a missing directory fails the task, so a typo never hides a file in a new directory
    :param file_mode: permissions given to the file after verification (the temp file is 0600);
        None keeps the server's default
    :param sidecar: after publishing, write ``<name>.<checksum>`` (e.g. ``report.csv.sha256``) in
        the format ``sha256sum -c`` accepts
    :param done_marker: after publishing (and the sidecar), create an empty ``<name><done_marker>``
        file, e.g. ``".done"``
    :param manifest: after publishing (before the done marker), write ``<name>.manifest``: the
        sha256 of every ``range_size`` range, so a partner can name the bytes that differ (see
        ``docs/manifest.md``)
    :param tuning: how the bytes move, as one dict (not templated: checked when the DAG is parsed);
        an unknown key fails naming the valid ones, a bad value fails naming its key. Keys:
        ``chunk_size`` (bytes per S3 read and queued chunk, 1 MiB), ``read_ahead`` (chunks read
        ahead of the writer, 8), ``parallel_parts`` / ``part_size`` (S3 ranged GETs in flight,
        1, and bytes per GET, 16 MiB), ``write_size`` (bytes per SFTP WRITE, None asks the
        server), ``max_in_flight`` (pipelined WRITEs, 32), ``strict_order`` (one WRITE in flight;
        None decides per server), ``channels`` / ``stripe_size`` (SFTP channels per object, None
        decides, and bytes per stripe, 8 MiB), ``fsync`` (True), ``io_timeout`` (seconds an SFTP
        request may stall, 120), ``progress_interval`` (seconds between progress lines, 10),
        ``connection_retries`` / ``connection_retry_delay`` (reconnects per object, 3, and the
        first wait, 1.0 s, doubled each time), ``s3_retries`` (reopens of a broken S3 stream, 5),
        ``checkpoint_every`` / ``resume_after`` (bytes between durable checkpoints, None picks,
        0 keeps none; seconds a leftover must be idle before a new try adopts it, 180),
        ``range_size`` (bytes per checkpoint and manifest range, 8 MiB), ``stale_temp_after``
        (seconds, on the server's clock, after which a crashed worker's temp file of one of
        this task's final names is removed, 86400); see :mod:`airflow_s3sftp.core.options`.
        The former keyword arguments of these names still work for one release, with an
        :class:`~airflow_s3sftp.exceptions.S3SFTPDeprecationWarning`
    """

    template_fields: Sequence[str] = (
        "s3_bucket",
        "s3_key",
        "s3_prefix",
        "s3_keys",
        "sftp_path",
        "aws_conn_id",
        "sftp_conn_id",
    )
    ui_color = "#f0eee4"

    def __init__(
        self,
        *,
        sftp_path: str,
        s3_key: str | None = None,
        s3_bucket: str | None = None,
        s3_prefix: str | None = None,
        s3_keys: list[str] | None = None,
        s3_glob: str | None = None,
        s3_regex: str | None = None,
        max_concurrency: int = 16,
        max_connections: int = 4,
        allow_empty: bool = False,
        aws_conn_id: str | None = "aws_default",
        sftp_conn_id: str = "sftp_default",
        atomic: bool = Publishing.atomic,
        checksum: str | None = Checks.checksum,
        verify: Literal["none", "size", "checksum"] = Checks.verify,
        if_exists: Literal["replace", "fail", "skip_identical"] = Publishing.if_exists,
        skip_identical_by: Literal["content", "sidecar"] = Checks.skip_identical_by,
        create_dirs: bool = Publishing.create_dirs,
        file_mode: int | None = Publishing.file_mode,
        sidecar: bool = Publishing.sidecar,
        done_marker: str | None = Publishing.done_marker,
        manifest: bool = Publishing.manifest,
        tuning: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        tuning = _moved_into_tuning(tuning, kwargs)
        super().__init__(**kwargs)
        self.s3_bucket = s3_bucket
        self.s3_key = s3_key
        self.s3_prefix = s3_prefix
        self.s3_keys = s3_keys
        self.s3_glob = s3_glob
        self.s3_regex = s3_regex
        self.max_concurrency = max_concurrency
        self.max_connections = max_connections
        self.allow_empty = allow_empty
        self.sftp_path = sftp_path
        self.aws_conn_id = aws_conn_id
        self.sftp_conn_id = sftp_conn_id
        self.atomic = atomic
        self.checksum = checksum
        self.verify = verify
        self.if_exists = if_exists
        self.skip_identical_by = skip_identical_by
        self.create_dirs = create_dirs
        self.file_mode = file_mode
        self.sidecar = sidecar
        self.done_marker = done_marker
        self.manifest = manifest
        self.tuning = tuning
        self._check_arguments()  # a bad argument fails the DAG at parse time
        self._delivered: list[tuple[str, str, str]] = []  # (bucket, key, sftp path), for lineage

    def _check_arguments(self) -> None:
        """Refuse bad non-templated arguments (types, ranges, patterns), naming the parameter."""
        validate.integer("max_concurrency", self.max_concurrency, minimum=1)
        validate.integer("max_connections", self.max_connections, minimum=1)
        validate.flag("allow_empty", self.allow_empty)
        validate.text("s3_glob", self.s3_glob, optional=True)
        validate.text("s3_regex", self.s3_regex, optional=True)
        if self.s3_regex is not None:
            try:
                re.compile(self.s3_regex)
            except re.error as err:
                raise ValueError(
                    f"s3_regex {self.s3_regex!r} is not a valid regular expression: {err}"
                ) from err
        self.delivery_options()

    def _check_templated(self) -> None:
        """Refuse bad templated arguments once rendered, naming the parameter."""
        # Types here; the content (empty keys, NUL, '..') is checked where the paths are made.
        validate.string("sftp_path", self.sftp_path)
        validate.string("s3_key", self.s3_key, optional=True)
        validate.string("s3_bucket", self.s3_bucket, optional=True)
        validate.string("s3_prefix", self.s3_prefix, optional=True)
        if self.s3_keys is not None:
            validate.string_list("s3_keys", self.s3_keys)
        validate.text("aws_conn_id", self.aws_conn_id, optional=True)
        validate.text("sftp_conn_id", self.sftp_conn_id)

    def delivery_options(self) -> DeliveryOptions:
        """Return the validated delivery options (raises ``ValueError`` on a bad value)."""
        return DeliveryOptions.build(
            atomic=self.atomic,
            if_exists=self.if_exists,
            create_dirs=self.create_dirs,
            file_mode=self.file_mode,
            sidecar=self.sidecar,
            done_marker=self.done_marker,
            manifest=self.manifest,
            checksum=self.checksum,
            verify=self.verify,
            skip_identical_by=self.skip_identical_by,
            tuning=self.tuning,
        )

    def _hook(self) -> S3ToSFTPHook:
        return S3ToSFTPHook(aws_conn_id=self.aws_conn_id, sftp_conn_id=self.sftp_conn_id)

    def plan(self, hook: S3ToSFTPHook) -> list[tuple[str, str, str]]:
        """Return ``(bucket, key, remote path)`` for every object this task delivers."""
        self._check_templated()
        chosen = [self.s3_key is not None, self.s3_prefix is not None, self.s3_keys is not None]
        if sum(chosen) != 1:
            raise ValueError("Set exactly one of s3_key, s3_prefix or s3_keys")
        if (self.s3_glob or self.s3_regex) and self.s3_prefix is None:
            raise ValueError("s3_glob and s3_regex filter the keys under s3_prefix; set s3_prefix")
        if self.s3_key is not None:
            bucket, key = parse_s3_location(self.s3_bucket, self.s3_key)
            planned = [(bucket, key, remote_path_for(self.sftp_path, key))]
        elif not self.sftp_path.endswith("/"):
            raise ValueError(
                f"sftp_path must be a directory ending in '/' for many objects (got {self.sftp_path!r})"
            )
        elif self.s3_keys is not None:
            pairs = [parse_s3_location(self.s3_bucket, key) for key in self.s3_keys]
            planned = [(bucket, key, remote_path_for(self.sftp_path, key)) for bucket, key in pairs]
        else:
            bucket, prefix = parse_s3_prefix(self.s3_bucket, self.s3_prefix or "")
            prefix = prefix_as_directory(prefix)  # "px/day-1" never takes "px/day-10/..."
            planned = []
            pattern = re.compile(self.s3_regex) if self.s3_regex else None
            glob = glob_to_regex(self.s3_glob) if self.s3_glob else None
            for key in hook.list_keys(bucket, prefix):
                relative = key[len(prefix) :].lstrip("/")
                if not relative or key.endswith("/"):
                    continue  # the prefix itself, or a "directory" marker
                if glob and not glob.match(relative):
                    continue
                if pattern and not pattern.search(relative):
                    continue
                parts = [safe_name(part, key) for part in relative.split("/")]
                planned.append((bucket, key, self.sftp_path + "/".join(parts)))
            if not planned and not self.allow_empty:
                raise FileNotFoundError(
                    f"No S3 objects under s3://{bucket}/{prefix} match"
                    + (f" glob {self.s3_glob!r}" if self.s3_glob else "")
                    + (f" regex {self.s3_regex!r}" if self.s3_regex else "")
                    + " (allow_empty=True accepts that)"
                )
        options = self.delivery_options()
        check_plan(
            [(f"s3://{bucket}/{key}", path) for bucket, key, path in planned],
            sidecar_suffix=f".{options.checks.checksum}" if options.publishing.sidecar else None,
            done_marker=options.publishing.done_marker,
            manifest=options.publishing.manifest,
        )
        return planned

    def execute(self, context: Context) -> dict[str, Any]:
        options = self.delivery_options()
        hook = self._hook()
        planned = self.plan(hook)
        self._delivered = planned
        if self.s3_key is not None:
            bucket, key, path = planned[0]
            self.log.info("Delivering s3://%s/%s to %s on %s", bucket, key, path, hook.sftp_endpoint)
            return hook.stream_object(bucket, key, path, options)
        return self._deliver_many(hook, planned, options)

    def _deliver_many(
        self, hook: S3ToSFTPHook, planned: list[tuple[str, str, str]], options: DeliveryOptions
    ) -> dict[str, Any]:
        self.log.info(
            "Delivering %s objects with up to %s at once on up to %s SSH connections",
            len(planned),
            self.max_concurrency,
            self.max_connections,
        )
        records = hook.stream_objects(
            planned, options, max_concurrency=self.max_concurrency, max_connections=self.max_connections
        )
        summary = summarize(records)
        done, failed = summary["objects"], summary["failed"]
        self.log.info(
            "Delivered %s of %s objects (%s skipped as identical, %s bytes), %s failed",
            len(done),
            len(records),
            summary["skipped"],
            summary["bytes"],
            len(failed),
        )
        if failed:
            lines = "\n".join(
                f"  {record['s3_uri']} -> {record['sftp_path']}: {record['error']}" for record in failed
            )
            raise DeliveryFailedError(
                f"{len(failed)} of {len(records)} objects failed (the other {len(done)} were delivered "
                f"completely):\n{lines}",
                summary,
            )
        return summary

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Return the S3 objects read (``s3://bucket``) and the SFTP files written (``sftp://host:port``)."""
        from airflow.providers.common.compat.openlineage.facet import Dataset
        from airflow.providers.openlineage.extractors import OperatorLineage

        hook = self._hook().sftp_hook
        host = hook.remote_host
        try:
            host = socket.gethostbyname(host)
        except OSError:
            self.log.debug("Could not resolve %s for lineage; using it as given", host)
        namespace = f"sftp://{host}:{hook.port or 22}"
        planned = self._delivered or self.plan(self._hook())
        return OperatorLineage(
            inputs=[Dataset(namespace=f"s3://{bucket}", name=key) for bucket, key, _ in planned],
            outputs=[Dataset(namespace=namespace, name=path) for _, _, path in planned],
        )
