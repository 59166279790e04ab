# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The Airflow-free core of airflow-s3sftp: moving bytes and judging files, with no Airflow import.

Airflow's shells (``hooks/``, ``operators/``, ``sensors/``, ``triggers/``) adapt connections and
task context to it; nothing here imports Airflow (a ruff rule in ``core/ruff.toml`` enforces it).

Delivery (S3 object -> SFTP file):

- :mod:`~airflow_s3sftp.core.delivery` -- ``Delivery`` owns one delivery from plan to publish:
  attempts and reconnects, digests, resume checkpoints, its unique temp file, cleanup, verify,
  publish, sidecar and done marker, the skip check. ``Source`` is the S3 side as the hook adapts it;
  ``DeliveryRecord`` is what it returns.
- :mod:`~airflow_s3sftp.core.batch` -- ``Batch`` delivers many objects: the first session alone,
  then worker threads on a pool of reused sessions, a plan consumed as it is listed (at most
  ``2 * max_concurrency`` ahead), ``BatchProgress``, one stop for a task-wide failure, a record
  (or an ``error``) per object handed to a sink; ``Summary``, the bounded XCom of many objects.
  The hook hands it adapters only: where sources and sessions come from.
- :mod:`~airflow_s3sftp.core.report` -- ``JsonLinesReport``: every record as a JSON line in one S3
  object, streamed in 5 MiB parts and completed even when the task fails; ``RecordSink``.
- :mod:`~airflow_s3sftp.core.shards` -- shard descriptors (key ranges, or a blake2b hash of the
  key modulo n), their strict parsing, ``hash_shards``, ``range_shards``, ``EvenSample``.
- :mod:`~airflow_s3sftp.core.sweep` -- ``LeftoverSweeper`` removes abandoned temp files (shared by
  the deliveries of one task).
- :mod:`~airflow_s3sftp.core.options` -- ``DeliveryOptions`` in four groups (``Publishing``,
  ``Checks``, ``Streaming``, ``RetryPolicy``); the operator's defaults come from them.
- :mod:`~airflow_s3sftp.core.session` -- ``SFTPSession`` (one connection, reused by many
  deliveries) and ``SessionPool`` (the sessions of one task).
- :mod:`~airflow_s3sftp.core.digests` -- ``Digests`` of one attempt and their ``Checkpoints``.
- :mod:`~airflow_s3sftp.core.reader`, :mod:`~airflow_s3sftp.core.ranged` -- read S3 ahead of the
  writer in order (one stream, or parallel ranges), hashing on the way.
- :mod:`~airflow_s3sftp.core.ordered` -- ``OrderedWriter``: append-only, refuses any other offset.
- :mod:`~airflow_s3sftp.core.sftp` -- SFTP wire primitives: pipelined in-order writes, pipelined
  reads, exclusive private create, fsync, publish by (posix-)rename, clear errors.
- :mod:`~airflow_s3sftp.core.servers` -- what a server is known to do (write ordering).
- :mod:`~airflow_s3sftp.core.integrity` -- which digest S3 vouches for (full-object checksum, MD5 ETag).
- :mod:`~airflow_s3sftp.core.paths` -- S3 keys to safe remote paths, temp names, plan clash checks
  (``check_plan`` for a list, ``PlanIndex`` on 8-byte digests for a plan listed page by page).
- :mod:`~airflow_s3sftp.core.sidecar` -- ``sha256sum -c`` sidecars, small files published by rename.
- :mod:`~airflow_s3sftp.core.checksums` -- algorithms and the ``"<algorithm>:<hex>"`` notation.
- :mod:`~airflow_s3sftp.core.manifest` -- range manifests (one sha256 per fixed-size range, beside
  the file as ``<name>.manifest``): render, strict parse, ``RangeHasher``, ``check_file`` naming
  the bad ranges; stdlib only, it is also ``python -m airflow_s3sftp.verify``.

Inbound (SFTP file -> S3 object):

- :mod:`~airflow_s3sftp.core.inbound` -- ``InboundTransfer`` owns one file from its first stat to
  the publish in S3 and the ``after`` step: pipelined in-order reads through the SFTP port (striped
  over several channels on a long link), SHA-256 and CRC-32 in order, a ``PutObject`` or a parallel
  multipart upload through the ``ObjectStore`` port (the hook adapts boto3), published only once the
  file is proven unchanged and equal to ``expected_checksum``; aborted on every failure.

Detection (is a remote file provably complete?):

- :mod:`~airflow_s3sftp.core.poll` -- the one poll sequence, sans I/O: asks for stats, sidecars,
  digests, listings and claims; the sensor and both triggers only drive it.
- :mod:`~airflow_s3sftp.core.stability` -- the verdict rules: observations in, verdict out.
- :mod:`~airflow_s3sftp.core.events` -- the triggers' error events: ``encode_error`` in the
  triggerer, ``decode_error`` in the task, the same exception class, message and fields.
"""

from __future__ import annotations
