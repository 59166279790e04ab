"""Shard descriptors: strict validation, hash and range membership, cover-once, the even sample."""

from __future__ import annotations

import itertools
import random

import pytest

from airflow_s3sftp.core.shards import (
    EvenSample,
    Shard,
    hash_shards,
    key_hash,
    parse_shard,
    range_shards,
    within,
)

KEYS = sorted(f"px/{random.Random(7).randrange(10**9):09d}/{i}.csv" for i in range(5000))


def owners(shards: list[dict[str, object]], keys: list[str]) -> dict[str, list[int]]:
    parsed = [parse_shard(shard) for shard in shards]
    return {
        key: [i for i, shard in enumerate(parsed) if shard is not None and shard.holds(key)] for key in keys
    }


@pytest.mark.parametrize("count", [1, 2, 7, 64])
def test_hash_shards_hold_every_key_exactly_once(count):
    shards = hash_shards(count)
    assert len(shards) == count
    held = owners(shards, KEYS)
    assert all(len(found) == 1 for found in held.values())
    sizes = [sum(1 for found in held.values() if found == [i]) for i in range(count)]
    assert min(sizes) > 0.6 * len(KEYS) / count, sizes  # blake2b spreads evenly


def test_the_key_hash_is_stable_across_processes_and_versions():
    # blake2b, 8 bytes, big-endian: pinned, so a rerun in another process puts a key in the same shard.
    assert key_hash("px/a.csv") == int.from_bytes(
        __import__("hashlib").blake2b(b"px/a.csv", digest_size=8).digest(), "big"
    )
    assert key_hash("") == 0xE4A6A0577479B2B4  # blake2b-64 of the empty string


@pytest.mark.parametrize(("keys", "count"), [(5000, 1), (5000, 2), (5000, 3), (5000, 8), (50, 50), (50, 60)])
def test_range_shards_cover_the_key_space_exactly_once_and_balance(keys, count):
    sample = KEYS[:: len(KEYS) // keys][:keys]
    shards = range_shards(sample, count)
    assert len(shards) == min(count, len(sample)), "fewer keys than shards: one shard per key"
    assert shards[0]["start_after"] is None and shards[-1]["end_at"] is None
    held = owners(shards, [*KEYS, "a-before-everything", "zz-after-everything", "px/5"])
    assert all(len(found) == 1 for found in held.values())
    sizes = [sum(1 for key in sample if held[key] == [i]) for i in range(len(shards))]
    assert max(sizes) - min(sizes) <= 1, sizes


def test_an_empty_sample_gives_one_shard_for_everything():
    assert range_shards([], 8) == [{"start_after": None, "end_at": None, "label": "range 1 of 1"}]


def test_even_sample_stays_bounded_and_evenly_spaced():
    sample = EvenSample(100)
    for i in range(100_000):
        sample.offer(f"{i:06d}")
    assert sample.seen == 100_000
    assert 100 <= len(sample.keys) <= 200
    positions = [int(key) for key in sample.keys]
    gaps = {b - a for a, b in itertools.pairwise(positions)}
    assert len(gaps) == 1, "one stride between kept keys"
    shards = range_shards(sample.keys, 4)
    held = owners(shards, [f"{i:06d}" for i in range(100_000)])
    sizes = [sum(1 for found in held.values() if found == [i]) for i in range(4)]
    assert max(sizes) - min(sizes) <= 2 * (positions[1] - positions[0]), sizes


def test_a_range_listing_stops_after_its_end():
    shard = parse_shard({"start_after": "px/b", "end_at": "px/d"})
    listed: list[str] = []

    def listing():
        for key in ["px/c", "px/d", "px/e", "px/f"]:
            listed.append(key)
            yield key

    assert list(within(shard, listing())) == ["px/c", "px/d"]
    assert listed == ["px/c", "px/d", "px/e"], "nothing is listed past the first key after end_at"


def test_start_after_and_end_at_are_exclusive_and_inclusive():
    shard = Shard(start_after="k2", end_at="k4")
    assert [k for k in ["k1", "k2", "k3", "k4", "k5"] if shard.holds(k)] == ["k3", "k4"]


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("index=1", TypeError, "shard must be a dict"),
        ([1, 2], TypeError, "shard must be a dict"),
        ({}, ValueError, "shard must hold"),
        ({"label": "x"}, ValueError, "shard must hold"),
        ({"index": 1}, ValueError, "shard must hold"),
        ({"index": 0, "count": 2, "end_at": "k"}, ValueError, "shard must hold"),
        ({"start_after": "a", "stop": "b"}, ValueError, r"got keys \['start_after', 'stop'\]"),
        ({"index": "0", "count": 2}, TypeError, r"shard\['index'\] must be an int"),
        ({"index": True, "count": 2}, TypeError, r"shard\['index'\] must be an int"),
        ({"index": 0, "count": 0}, ValueError, r"shard\['count'\] must be between 1"),
        ({"index": 2, "count": 2}, ValueError, r"shard\['index'\] must be in 0\.\.1"),
        ({"index": -1, "count": 2}, ValueError, r"shard\['index'\] must be in"),
        ({"start_after": 5, "end_at": None}, TypeError, r"shard\['start_after'\] must be a full S3 key"),
        ({"start_after": "", "end_at": None}, TypeError, r"shard\['start_after'\]"),
        ({"start_after": "b", "end_at": "a"}, ValueError, "shard is empty: end_at 'a' must come after"),
        ({"start_after": "a", "end_at": "a"}, ValueError, "shard is empty"),
        ({"index": 0, "count": 2, "label": ""}, TypeError, r"shard\['label'\] must be a non-empty string"),
        ({"index": 0, "count": 2, "label": 3}, TypeError, r"shard\['label'\]"),
    ],
)
def test_bad_shards_are_refused_naming_shard(value, error, match):
    with pytest.raises(error, match=match):
        parse_shard(value)


def test_good_shards_round_trip():
    for value in [
        {"start_after": None, "end_at": "k"},
        {"start_after": "k", "end_at": None},
        {"start_after": "a", "end_at": "b", "label": "first"},
        {"index": 3, "count": 8, "label": "hash 4 of 8"},
    ]:
        shard = parse_shard(value)
        assert shard is not None and shard.to_dict() == value
    assert parse_shard(None) is None


@pytest.mark.parametrize("count", [0, -1, 100_001, 2.0, True, "8"])
def test_hash_shards_refuse_a_bad_count(count):
    with pytest.raises((TypeError, ValueError), match="count must be"):
        hash_shards(count)
