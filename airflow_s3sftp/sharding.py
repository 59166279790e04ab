# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Cut an S3 prefix into shards to ``.expand()`` a delivery over: hash shards, or key ranges from a sample.

A shard descriptor is a small dict that :class:`~airflow_s3sftp.operators.s3_to_sftp.S3ToSFTPStreamOperator`
takes as ``shard``: ``{"start_after": <key or None>, "end_at": <key or None>}`` (the keys ``K`` with
``start_after < K <= end_at``) or ``{"index": i, "count": n}`` (the keys whose blake2b hash modulo
``n`` is ``i``), each with an optional ``"label"``. Either family covers every key exactly once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from airflow.providers.common.compat.sdk import BaseOperator

from airflow_s3sftp.core import validate
from airflow_s3sftp.core.paths import parse_s3_prefix, prefix_as_directory
from airflow_s3sftp.core.shards import MAX_SHARDS, EvenSample, hash_shards, range_shards

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.providers.common.compat.sdk import Context

__all__ = ["S3PrefixShardsOperator", "hash_shards", "prefix_shards"]

#: Keys of the listing kept (evenly spaced) to place the range bounds: at most twice this many.
DEFAULT_SAMPLE = 10_000


def prefix_shards(
    *,
    s3_prefix: str,
    count: int,
    s3_bucket: str | None = None,
    aws_conn_id: str | None = "aws_default",
    sample: int = DEFAULT_SAMPLE,
) -> list[dict[str, Any]]:
    """Return up to ``count`` key range shards of ``s3_prefix``, balanced by object count.

    The prefix is listed once, page by page, keeping an evenly spaced sample of at most
    ``2 * sample`` keys (memory stays bounded whatever the prefix holds); the bounds are cut at
    evenly spaced sample keys, so each shard holds about ``1 / count`` of the keys listed (exactly,
    up to rounding, when the prefix holds at most ``2 * sample`` keys). The ranges cover the whole
    key space: a key written after the listing still falls in exactly one shard. A prefix with
    fewer than ``count`` keys gives fewer shards; an empty one gives one shard that covers it all.

    :param s3_prefix: the prefix, as the delivery takes it (``s3://bucket/prefix`` when
        ``s3_bucket`` is None); a prefix not ending in ``/`` is read as a directory
    :param count: shards wanted (1 to 100,000)
    :param s3_bucket: bucket of the prefix
    :param aws_conn_id: Airflow ``aws`` connection
    :param sample: keys to keep for placing the bounds (between ``sample`` and ``2 * sample``)
    """
    from airflow_s3sftp.hooks.s3_sftp import S3ToSFTPHook

    _check_count(count)
    validate.integer("sample", sample, minimum=1)
    bucket, prefix = parse_s3_prefix(s3_bucket, s3_prefix)
    prefix = prefix_as_directory(prefix)
    hook = S3ToSFTPHook(aws_conn_id=aws_conn_id)
    kept = EvenSample(sample)
    for key in hook.iter_keys(bucket, prefix):
        kept.offer(key)
    return range_shards(kept.keys, count)


def _check_count(count: object) -> None:
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"count must be an int (got {count!r})")
    if not 1 <= count <= MAX_SHARDS:
        raise ValueError(f"count must be between 1 and {MAX_SHARDS} (got {count})")


class S3PrefixShardsOperator(BaseOperator):
    """Return shard descriptors of an S3 prefix, to ``.expand(shard=...)`` a delivery over.

    ``method="range"`` lists the prefix once (see :func:`prefix_shards`) and returns key ranges
    balanced by object count; ``method="hash"`` lists nothing and returns ``count`` hash shards
    (:func:`~airflow_s3sftp.core.shards.hash_shards`). The return value (XCom) is a list of at
    most ``count`` small dicts::

        shards = S3PrefixShardsOperator(task_id="shards", s3_prefix="s3://b/px/", count=8)
        S3ToSFTPStreamOperator.partial(task_id="deliver", s3_prefix="s3://b/px/", ...).expand(
            shard=shards.output
        )

    :param s3_prefix: the prefix, as the delivery takes it (templated)
    :param count: shards wanted (1 to 100,000; keep it within ``[core] max_map_length``)
    :param s3_bucket: bucket of the prefix; None when ``s3_prefix`` is an ``s3://`` URL (templated)
    :param aws_conn_id: Airflow ``aws`` connection (templated)
    :param method: ``"range"`` (key ranges from a sampled listing) or ``"hash"`` (no listing)
    :param sample: with ``"range"``, keys kept to place the bounds (between ``sample`` and twice that)
    """

    template_fields: Sequence[str] = ("s3_prefix", "s3_bucket", "aws_conn_id")
    ui_color = "#f0eee4"

    def __init__(
        self,
        *,
        s3_prefix: str,
        count: int,
        s3_bucket: str | None = None,
        aws_conn_id: str | None = "aws_default",
        method: Literal["range", "hash"] = "range",
        sample: int = DEFAULT_SAMPLE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.s3_prefix = s3_prefix
        self.count = count
        self.s3_bucket = s3_bucket
        self.aws_conn_id = aws_conn_id
        self.method = method
        self.sample = sample
        _check_count(count)
        validate.integer("sample", sample, minimum=1)
        if method not in ("range", "hash"):
            raise ValueError(f"method must be 'range' or 'hash' (got {method!r})")

    def execute(self, context: Context) -> list[dict[str, Any]]:
        validate.string("s3_prefix", self.s3_prefix)
        validate.string("s3_bucket", self.s3_bucket, optional=True)
        if self.method == "hash":
            parse_s3_prefix(self.s3_bucket, self.s3_prefix)  # a bad prefix fails here, not in every shard
            shards = hash_shards(self.count)
        else:
            shards = prefix_shards(
                s3_prefix=self.s3_prefix,
                count=self.count,
                s3_bucket=self.s3_bucket,
                aws_conn_id=self.aws_conn_id,
                sample=self.sample,
            )
        self.log.info("Cut %s into %s %s shards", self.s3_prefix, len(shards), self.method)
        return shards
