# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""DeliveryOptions.build: the users' decisions plus one tuning dict, sorted into the option groups."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from airflow_s3sftp.core.options import (
    DECISIONS,
    TUNING,
    Checks,
    DeliveryOptions,
    Publishing,
    RetryPolicy,
    Streaming,
    tuning_groups,
)
from airflow_s3sftp.exceptions import ArgumentTypeError

MiB = 1024 * 1024
GROUPS = {"publishing": Publishing, "checks": Checks, "streaming": Streaming, "retry": RetryPolicy}


def test_every_option_is_a_decision_or_a_tuning_key_exactly_once() -> None:
    fields = {(group, item.name) for group, kind in GROUPS.items() for item in dataclasses.fields(kind)}
    decisions = {(group, name) for group, kind in GROUPS.items() for name in DECISIONS if hasattr(kind, name)}
    tuned = set(TUNING.values())
    assert len(tuned) == len(TUNING) and not decisions & tuned
    assert decisions | tuned == fields


def test_no_arguments_are_the_defaults() -> None:
    assert DeliveryOptions.build() == DeliveryOptions()
    assert DeliveryOptions.build(tuning={}) == DeliveryOptions()


def test_tuning_keys_land_in_their_groups_under_their_field_names() -> None:
    options = DeliveryOptions.build(
        atomic=False,
        manifest=True,
        verify="checksum",
        tuning={
            "chunk_size": 4 * MiB,
            "strict_order": True,
            "connection_retries": 7,
            "connection_retry_delay": 0.5,
            "range_size": MiB,
            "stale_temp_after": 60,
            "checkpoint_every": 0,
        },
    )
    assert (options.publishing.atomic, options.publishing.manifest, options.checks.verify) == (
        False,
        True,
        "checksum",
    )
    assert (options.streaming.chunk_size, options.streaming.strict_order) == (4 * MiB, True)
    assert (options.retry.retries, options.retry.delay, options.retry.checkpoint_every) == (7, 0.5, 0)
    assert (options.checks.range_size, options.publishing.stale_temp_after) == (MiB, 60)
    # Nothing else moved.
    assert options.streaming.read_ahead == Streaming.read_ahead
    assert options.retry.s3_retries == RetryPolicy.s3_retries


def test_an_unknown_key_names_every_valid_one() -> None:
    with pytest.raises(ValueError, match="tuning has an unknown key 'chunksize'") as err:
        DeliveryOptions.build(tuning={"chunksize": MiB})
    for key in TUNING:
        assert key in str(err.value)


def test_a_decision_in_tuning_says_it_is_a_parameter_of_its_own() -> None:
    with pytest.raises(ValueError, match=r"unknown key 'atomic' \(atomic is a parameter of its own"):
        DeliveryOptions.build(tuning={"atomic": False})


@pytest.mark.parametrize("tuning", ["chunk_size=1", [("chunk_size", 1)], 42])
def test_tuning_that_is_no_dict_is_refused_naming_its_type(tuning: Any) -> None:
    with pytest.raises(ArgumentTypeError, match=f"tuning must be a dict .* got .*{type(tuning).__name__}"):
        tuning_groups(tuning)


@pytest.mark.parametrize(
    ("tuning", "message"),
    [
        ({"chunk_size": 0}, "chunk_size must be at least 1"),
        ({"chunk_size": "1MiB"}, "chunk_size must be an integer"),
        ({"connection_retries": -1}, "connection_retries must be at least 0"),
        ({"connection_retry_delay": float("nan")}, "connection_retry_delay must be a finite number"),
        ({"strict_order": "yes"}, "strict_order must be True, False or None"),
        ({"write_size": 1024 * 1024}, "write_size 1048576 is above"),
        ({"channels": 65}, "channels must be None"),
        ({"range_size": 1024}, "range_size must be at least"),
        ({"stale_temp_after": 0}, "stale_temp_after must be positive"),
        ({"resume_after": -1}, "resume_after must be at least"),
        ({"checkpoint_every": 1.5}, "checkpoint_every must be an integer"),
    ],
)
def test_a_bad_value_names_its_key(tuning: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeliveryOptions.build(tuning=tuning)
