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
from airflow_s3sftp.core.batch import Summary
from airflow_s3sftp.core.options import TUNING, Checks, DeliveryOptions, Publishing
from airflow_s3sftp.core.paths import (
    DigestSet,
    PlanIndex,
    check_plan,
    glob_to_regex,
    parse_s3_location,
    parse_s3_prefix,
    prefix_as_directory,
    remote_path_for,
    safe_name,
)
from airflow_s3sftp.core.report import JsonLinesReport, RecordSink, open_report
from airflow_s3sftp.core.shards import Shard, parse_shard, within
from airflow_s3sftp.exceptions import DeliveryFailedError, S3SFTPDeprecationWarning
from airflow_s3sftp.hooks.s3_sftp import S3ToSFTPHook

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

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


#: Objects named one by one in OpenLineage; a task of more names its prefix and directory instead.
_LINEAGE_MAX = 1000


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
    integrity data was not checked), ``s3_retries``, ``sidecar_path``, ``done_marker_path`` (and
    ``report`` when one is asked for). Many objects (``s3_prefix`` or ``s3_keys``) return a summary
    whose size does not grow with the object count: ``{"count", "transferred", "skipped", "bytes",
    "failed_count", "failed": [the first 20 failure records], "report": <uri or None>, "shard":
    <descriptor or None>}``; the per-object records go to ``report``. When some fail, the others
    still complete and the task fails with :class:`~airflow_s3sftp.exceptions.DeliveryFailedError`
    naming (the first 20 of) the failures.

    With ``s3_prefix`` the prefix is listed page by page, twice: first to check every name for
    clashes against a compact index (32 to 64 bytes per object, see
    :class:`~airflow_s3sftp.core.paths.PlanIndex`), then again, each object delivered as it is
    listed; memory stays flat in the object count apart from that index.

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
    :param report: ``s3://bucket/key.jsonl``: write every object's record there as one JSON line,
        as the task goes (the empty object is written first, so a wrong bucket fails before any
        delivery; the lines go up in parts of 5 MiB and the object is completed even when the task
        fails). Not under ``s3_prefix``. A failure to write it fails the task with
        :class:`~airflow_s3sftp.exceptions.ReportError` naming it, after the deliveries (templated)
    :param shard: with ``s3_prefix``, deliver one shard of it: ``{"start_after": <key or None>,
        "end_at": <key or None>}`` (the keys ``K`` with ``start_after < K <= end_at``; the listing
        starts after ``start_after``) or ``{"index": i, "count": n}`` (the keys whose blake2b hash
        modulo ``n`` is ``i``), with an optional ``"label"``; see :mod:`airflow_s3sftp.sharding`
        (templated)
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
        "report",
        "shard",
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
        report: str | None = None,
        shard: dict[str, Any] | None = None,
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
        self.report = report
        self.shard = shard
        self.tuning = tuning
        self._check_arguments()  # a bad argument fails the DAG at parse time
        self._delivered: list[tuple[str, str, str]] = []  # (bucket, key, sftp path), for lineage
        self._lineage_capped = False  # more objects than _LINEAGE_MAX: lineage names the prefix
        self._listed_count: int | None = None  # objects the first listing of a prefix found

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
        chosen = [self.s3_key is not None, self.s3_prefix is not None, self.s3_keys is not None]
        if sum(chosen) != 1:
            raise ValueError("Set exactly one of s3_key, s3_prefix or s3_keys")
        if (self.s3_glob or self.s3_regex) and self.s3_prefix is None:
            raise ValueError("s3_glob and s3_regex filter the keys under s3_prefix; set s3_prefix")

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
        """Return ``(bucket, key, remote path)`` for every object this task delivers (listing it all).

        :meth:`execute` does not hold the plan of a prefix in memory: it delivers as it lists.
        """
        return list(self._plan(hook))

    def _plan(self, hook: S3ToSFTPHook) -> Iterable[tuple[str, str, str]]:
        """Return the checked ``(bucket, key, remote path)`` triples; bad values and clashes raise here.

        Every name the task creates is checked for clashes before this returns. With ``s3_prefix``
        the prefix (its shard) is listed twice, page by page: first to check every name against a
        compact index, then again, as the deliveries go; objects that appear between the two
        listings are left for the next run (their names were not checked).
        """
        self._check_templated()
        shard = self._shard()
        options = self.delivery_options()
        clash_rules: dict[str, Any] = {
            "sidecar_suffix": f".{options.checks.checksum}" if options.publishing.sidecar else None,
            "done_marker": options.publishing.done_marker,
            "manifest": options.publishing.manifest,
        }
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
            below = len(self.sftp_path)
            index = PlanIndex(
                **clash_rules,
                source_of=lambda path: f"s3://{bucket}/{prefix_as_directory(prefix)}{path[below:]}",
            )
            listed = DigestSet()
            for bucket, key, path in self._matching(hook, shard):
                index.add(f"s3://{bucket}/{key}", path)
                listed.add(key)
            self.log.info(
                "Listed %s objects%s; their names do not clash (index: %s bytes)",
                len(listed),
                f" in shard {shard.name()}" if shard is not None else "",
                index.nbytes + listed.nbytes,
            )
            if not listed and not self.allow_empty:
                raise FileNotFoundError(self._nothing_matches(shard))
            self._listed_count = len(listed)
            return self._listed_again(hook, shard, listed)
        check_plan([(f"s3://{bucket}/{key}", path) for bucket, key, path in planned], **clash_rules)
        return planned  # a list: the batch knows the total

    def _nothing_matches(self, shard: Shard | None) -> str:
        bucket, prefix = parse_s3_prefix(self.s3_bucket, self.s3_prefix or "")
        return (
            f"No S3 objects under s3://{bucket}/{prefix_as_directory(prefix)} match"
            + (f" glob {self.s3_glob!r}" if self.s3_glob else "")
            + (f" regex {self.s3_regex!r}" if self.s3_regex else "")
            + (f" in shard {shard.name()}" if shard is not None else "")
            + " (allow_empty=True accepts that)"
        )

    def _listed_again(
        self, hook: S3ToSFTPHook, shard: Shard | None, listed: DigestSet
    ) -> Iterator[tuple[str, str, str]]:
        """Yield the objects of the first listing as the second one finds them (a page at a time)."""
        later = 0
        for item in self._matching(hook, shard):
            if item[1] in listed:
                yield item
            else:
                later += 1
        if later:
            self.log.warning(
                "%s objects appeared under the prefix after its names were checked; the next run takes them",
                later,
            )

    def _shard(self) -> Shard | None:
        """Return the validated ``shard`` (None for none); only with ``s3_prefix``."""
        shard = parse_shard(self.shard)
        if shard is not None and self.s3_prefix is None:
            raise ValueError("shard cuts the keys under s3_prefix into parts; set s3_prefix")
        return shard

    def _matching(self, hook: S3ToSFTPHook, shard: Shard | None) -> Iterator[tuple[str, str, str]]:
        """Yield the objects under ``s3_prefix`` (in ``shard``, matching the filters) page by page."""
        bucket, prefix = parse_s3_prefix(self.s3_bucket, self.s3_prefix or "")
        prefix = prefix_as_directory(prefix)  # "px/day-1" never takes "px/day-10/..."
        pattern = re.compile(self.s3_regex) if self.s3_regex else None
        glob = glob_to_regex(self.s3_glob) if self.s3_glob else None
        keys = hook.iter_keys(bucket, prefix, start_after=shard.start_after if shard else None)
        for key in within(shard, keys):
            relative = key[len(prefix) :].lstrip("/")
            if not relative or key.endswith("/"):
                continue  # the prefix itself, or a "directory" marker
            if glob and not glob.match(relative):
                continue
            if pattern and not pattern.search(relative):
                continue
            yield bucket, key, self.sftp_path + "/".join(safe_name(part, key) for part in relative.split("/"))

    def _report(self, hook: S3ToSFTPHook) -> JsonLinesReport | None:
        """Return the opened report (its empty object written), or None when none is asked for."""
        if self.report is None:
            return None
        files_bucket, files_prefix = None, None
        if isinstance(self.s3_prefix, str):
            files_bucket, prefix = parse_s3_prefix(self.s3_bucket, self.s3_prefix)
            files_prefix = prefix_as_directory(prefix)
        report = open_report(
            self.report, hook.s3_client, files_bucket=files_bucket, files_prefix=files_prefix
        )
        self.log.info("Writing every object's record to %s", self.report)
        return report

    def execute(self, context: Context) -> dict[str, Any]:
        options = self.delivery_options()
        hook = self._hook()
        self._check_templated()
        shard = self._shard()
        report = self._report(hook)
        return RecordSink(Summary(), report).run(lambda sink: self._deliver(hook, options, shard, sink))

    def _deliver(
        self, hook: S3ToSFTPHook, options: DeliveryOptions, shard: Shard | None, sink: RecordSink
    ) -> dict[str, Any]:
        if self.s3_key is not None:
            ((bucket, key, path),) = self.plan(hook)
            self._delivered = [(bucket, key, path)]
            self.log.info("Delivering s3://%s/%s to %s on %s", bucket, key, path, hook.sftp_endpoint)
            try:
                record = hook.stream_object(bucket, key, path, options)
            except Exception as err:
                sink(
                    {
                        "s3_uri": f"s3://{bucket}/{key}",
                        "sftp_path": path,
                        "error": f"{type(err).__name__}: {err}",
                    }
                )
                raise
            sink(record)
            return {**record, "report": self.report} if self.report is not None else record
        summary = sink.summary
        self._delivered, self._lineage_capped = [], False
        where = f" ({shard.name()})" if shard is not None else ""
        self.log.info(
            "Delivering the objects%s with up to %s at once on up to %s SSH connections, as they are listed",
            where,
            self.max_concurrency,
            self.max_connections,
        )
        self._listed_count = None
        planned = self._plan(hook)
        hook.deliver_objects(
            self._for_lineage(planned),
            options,
            sink,
            max_concurrency=self.max_concurrency,
            max_connections=self.max_connections,
            total=self._listed_count,
        )
        result = {
            **summary.to_dict(),
            "report": self.report,
            "shard": shard.to_dict() if shard is not None else None,
        }
        self.log.info(
            "Delivered %s of %s objects%s (%s skipped as identical, %s bytes), %s failed",
            summary.done,
            summary.count,
            where,
            summary.skipped,
            summary.bytes,
            summary.failed_count,
        )
        if summary.failed_count:
            raise DeliveryFailedError(
                f"{summary.failed_count} of {summary.count} objects failed (the other {summary.done} were "
                f"delivered completely):\n{summary.failures_text()}",
                result,
            )
        return result

    def _for_lineage(self, planned: Iterable[tuple[str, str, str]]) -> Iterable[tuple[str, str, str]]:
        """Pass the plan through, keeping the first ``_LINEAGE_MAX`` objects for lineage."""
        if isinstance(planned, list):
            self._delivered = planned[:_LINEAGE_MAX]
            self._lineage_capped = len(planned) > _LINEAGE_MAX
            return planned
        return self._passed_through(planned)

    def _passed_through(self, planned: Iterable[tuple[str, str, str]]) -> Iterator[tuple[str, str, str]]:
        for item in planned:
            if len(self._delivered) < _LINEAGE_MAX:
                self._delivered.append(item)
            else:
                self._lineage_capped = True
            yield item

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
        if self._lineage_capped:
            # More objects than lineage should carry one by one: the prefix and the directory.
            bucket, prefix = parse_s3_prefix(self.s3_bucket, self.s3_prefix or "")
            return OperatorLineage(
                inputs=[Dataset(namespace=f"s3://{bucket}", name=prefix_as_directory(prefix))],
                outputs=[Dataset(namespace=namespace, name=self.sftp_path)],
            )
        planned = self._delivered or self.plan(self._hook())
        return OperatorLineage(
            inputs=[Dataset(namespace=f"s3://{bucket}", name=key) for bucket, key, _ in planned],
            outputs=[Dataset(namespace=namespace, name=path) for _, _, path in planned],
        )
