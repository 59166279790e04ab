# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The sans-IO poll and watch, driven against an in-memory file system with a hand-moved clock."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import json
import posixpath
import subprocess
import sys
from typing import Any

import pytest

from airflow_s3sftp.core import poll, stability
from airflow_s3sftp.core.manifest import RangeHasher, render_manifest
from airflow_s3sftp.core.poll import Claim, Claimed, Hash, ListDir, ReadSidecar, Stat, Watch
from airflow_s3sftp.exceptions import ManifestMismatchError

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


class FakeSFTP:
    """Files as ``{path: (content, mtime)}``, a clock moved by the test, and a log of every request."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, int]] = {}
        self.now = 0.0
        self.asked: list[str] = []

    def put(self, path: str, content: bytes, mtime: int = 1000) -> None:
        self.files[path] = (content, mtime)

    def _seen(self, size: int | None, mtime: int | None) -> stability.Observation:
        at = T0 + datetime.timedelta(seconds=self.now)
        return stability.Observation(at=at, size=size, mtime=mtime, monotonic=self.now, clock="fake")

    def observe(self, path: str) -> stability.Observation:
        self.asked.append(f"stat {path}")
        if path not in self.files:
            return self._seen(None, None)
        content, mtime = self.files[path]
        return self._seen(len(content), mtime)

    def read_sidecar(self, path: str, algorithm: str) -> str | None:
        self.asked.append(f"sidecar {path}")
        side = self.files.get(f"{path}.{algorithm}")
        return None if side is None else side[0].decode().split()[0]

    def digest(self, path: str, algorithm: str, size: int) -> str | None:
        self.asked.append(f"hash {path} {size}")
        content = self.files.get(path, (b"", 0))[0]
        if len(content) < size:
            return None
        return f"{algorithm}:{hashlib.new(algorithm, content[:size]).hexdigest()}"

    def list_files(self, directory: str, pattern: str) -> dict[str, stability.Observation]:
        self.asked.append(f"list {directory}")
        return {
            posixpath.basename(path): self._seen(len(content), mtime)
            for path, (content, mtime) in self.files.items()
            if posixpath.dirname(path) == directory and poll.matches(posixpath.basename(path), pattern)
        }

    def claim(self, source: str, target: str) -> Claimed:
        self.asked.append(f"claim {source} {target}")
        if source not in self.files:
            return Claimed.GONE
        if target in self.files:
            return Claimed.EXISTS
        self.files[target] = self.files.pop(source)
        return Claimed.CLAIMED


class AsyncFakeSFTP:
    """The same file system behind awaitable methods, as the async hook offers them."""

    def __init__(self, fake: FakeSFTP) -> None:
        self.fake = fake

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.fake, name)

        async def call(*args: Any) -> Any:
            await asyncio.sleep(0)
            return method(*args)

        return call


def sha(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


def policy(**kwargs: Any) -> stability.Policy:
    kwargs.setdefault("stable_for", 2.0)
    kwargs.setdefault("checksum", "sha256")
    return stability.Policy.build(target="sftp://h:22/in", **kwargs)


def poll_once(fs: FakeSFTP, path: str, state: stability.State, p: stability.Policy) -> stability.Verdict:
    return poll.drive(poll.poll_file(path, state, p), fs)


class TestPollFile:
    def test_a_waiting_poll_is_one_stat_and_a_stable_one_hashes_between_two_stats(self) -> None:
        fs = FakeSFTP()
        fs.put("/in/a.csv", b"abc")
        p = policy()
        first = poll_once(fs, "/in/a.csv", stability.State(), p)
        assert fs.asked == ["stat /in/a.csv"] and first.action is stability.Action.WAIT
        fs.now, fs.asked = 3.0, []
        second = poll_once(fs, "/in/a.csv", first.state, p)
        assert fs.asked == ["stat /in/a.csv", "hash /in/a.csv 3", "stat /in/a.csv"]
        assert second.action is stability.Action.WAIT and second.state.checksum == sha(b"abc")
        fs.now = 4.0
        third = poll_once(fs, "/in/a.csv", second.state, p)
        assert third.action is stability.Action.FIRE and third.checksum == sha(b"abc")

    def test_sidecar_is_read_between_the_stat_and_the_hash(self) -> None:
        fs = FakeSFTP()
        fs.put("/in/a.csv", b"abc")
        fs.put("/in/a.csv.sha256", (sha(b"abc").split(":")[1] + "  a.csv\n").encode())
        p = policy(expected_checksum_from="sidecar")
        state = poll_once(fs, "/in/a.csv", stability.State(), p).state
        fs.now, fs.asked = 3.0, []
        verdict = poll_once(fs, "/in/a.csv", state, p)
        assert fs.asked == ["stat /in/a.csv", "sidecar /in/a.csv", "hash /in/a.csv 3", "stat /in/a.csv"]
        assert verdict.action is stability.Action.FIRE

    def test_an_observation_in_hand_saves_the_first_stat(self) -> None:
        fs = FakeSFTP()
        fs.put("/in/a.csv", b"abc")
        seen = fs.observe("/in/a.csv")
        fs.asked = []
        verdict = poll.drive(poll.poll_file("/in/a.csv", stability.State(), policy(), seen), fs)
        assert fs.asked == [] and verdict.action is stability.Action.WAIT

    def test_sync_and_async_drivers_reach_the_same_verdicts(self) -> None:
        sync_fs, async_fs = FakeSFTP(), FakeSFTP()
        p = policy()
        states = [stability.State(), stability.State()]
        verdicts: list[tuple[stability.Verdict, stability.Verdict]] = []
        for now, content in [(0, b"ab"), (1, b"abc"), (2, b"abc"), (4.5, b"abc"), (5, b"abc")]:
            for fs in (sync_fs, async_fs):
                fs.now = now
                fs.put("/in/a", content)
            sync = poll.drive(poll.poll_file("/in/a", states[0], p), sync_fs)
            aio = asyncio.run(poll.adrive(poll.poll_file("/in/a", states[1], p), AsyncFakeSFTP(async_fs)))
            states = [sync.state, aio.state]
            verdicts.append((sync, aio))
        assert all(a == b for a, b in verdicts)
        assert sync_fs.asked == async_fs.asked
        assert verdicts[-1][0].action is stability.Action.FIRE


class TestPolicyObject:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {},
            {"checksum": None, "min_size": 0},
            {"expected_checksum": "MD5:" + "A" * 32, "expected_size": "12"},
            {"expected_checksum_from": "sidecar", "checksum": "sha512"},
        ],
    )
    def test_round_trips_through_json(self, kwargs: dict[str, Any]) -> None:
        built = policy(**kwargs)
        assert stability.Policy.from_dict(json.loads(json.dumps(built.to_dict()))) == built

    def test_a_tampered_policy_is_refused(self) -> None:
        data = policy().to_dict() | {"expected_checksum": "sha256:xyz"}
        with pytest.raises(ValueError, match="expected_checksum"):
            stability.Policy.from_dict(data)


class TestPattern:
    @pytest.mark.parametrize(
        ("path", "expected"),
        [("/inbound/*.csv", ("/inbound", "*.csv")), ("/in/report.csv", ("/in", "report.csv"))],
    )
    def test_split(self, path: str, expected: tuple[str, str]) -> None:
        assert poll.split_pattern(path) == expected

    @pytest.mark.parametrize(
        ("path", "message"),
        [("/inbound/", "ends with '/'"), ("*.csv", "no directory"), ("/in/*/x.csv", "only its last segment")],
    )
    def test_bad_paths(self, path: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            poll.split_pattern(path)

    def test_hidden_files_match_only_a_hidden_pattern(self) -> None:
        assert poll.matches("a.csv", "*.csv") and not poll.matches(".a.csv.s3sftp-part", "*")
        assert poll.matches(".a.csv", ".*.csv") and poll.matches(".anything", "")


def run_round(watch: Watch, fs: FakeSFTP) -> poll.Round:
    return poll.drive(watch.round(), fs)


def settle(watch: Watch, fs: FakeSFTP, rounds: int, step: float = 1.0) -> list[poll.Fired]:
    """Run ``rounds`` rounds ``step`` seconds apart; return everything fired."""
    fired: list[poll.Fired] = []
    for _ in range(rounds):
        fired += run_round(watch, fs).fired
        fs.now += step
    return fired


class TestWatch:
    def test_each_complete_file_fires_once_with_its_payload(self) -> None:
        fs = FakeSFTP()
        fs.put("/in/a.csv", b"alpha", mtime=7)
        fs.put("/in/b.txt", b"ignored")
        watch = Watch("/in", "*.csv", policy())

        fired = settle(watch, fs, 10)

        assert [f.payload() for f in fired] == [
            {
                "path": "/in/a.csv",
                "source_path": "/in/a.csv",
                "size": 5,
                "mtime": 7,
                "checksum": sha(b"alpha"),
            }
        ]
        assert not any("b.txt" in asked for asked in fs.asked)

    def test_a_growing_file_never_fires_with_a_partial_size(self) -> None:
        fs = FakeSFTP()
        watch = Watch("/in", "*", policy())
        fired: list[poll.Fired] = []
        for piece in range(1, 12):  # grows every second, for longer than stable_for
            fs.put("/in/big", b"x" * piece, mtime=1000 + piece)
            fired += run_round(watch, fs).fired
            fs.now += 1
        assert fired == []
        fired = settle(watch, fs, 6)
        assert [(f.size, f.mtime) for f in fired] == [(11, 1011)]

    def test_content_rewritten_under_the_same_size_and_mtime_does_not_fire_until_it_settles(self) -> None:
        fs = FakeSFTP()
        fs.put("/in/a", b"aaaa")
        watch = Watch("/in", "*", policy())
        fired = settle(watch, fs, 4)  # stable span reached at 3 s: first digest taken
        fs.put("/in/a", b"bbbb")  # same size, same mtime, new bytes
        fired += settle(watch, fs, 1)
        assert fired == []
        fired += settle(watch, fs, 6)
        assert [f.checksum for f in fired] == [sha(b"bbbb")]

    def test_a_burst_fires_every_file_in_name_order_in_one_round(self) -> None:
        fs = FakeSFTP()
        for name in ["e", "c", "a", "d", "b"]:
            fs.put(f"/in/{name}.csv", name.encode() * 10)
        watch = Watch("/in", "*.csv", policy(), claim_to="/claimed")
        rounds = [run_round(watch, fs) for fs.now in (0.0, 3.0, 4.0)]
        assert [len(r.fired) for r in rounds] == [0, 0, 5]
        assert [f.path for f in rounds[2].fired] == [f"/claimed/{n}.csv" for n in "abcde"]

    def test_claim_moves_the_file_and_names_the_new_path(self) -> None:
        fs = FakeSFTP()
        fs.put("/in/a.csv", b"alpha")
        watch = Watch("/in", "*.csv", policy(), claim_to="/claimed")

        fired = settle(watch, fs, 10)

        assert [(f.path, f.source_path) for f in fired] == [("/claimed/a.csv", "/in/a.csv")]
        assert list(fs.files) == ["/claimed/a.csv"]
        assert fs.asked.count("claim /in/a.csv /claimed/a.csv") == 1

    def test_a_taken_name_is_refused_once_and_retried_without_hashing_again(self) -> None:
        fs = FakeSFTP()
        fs.put("/in/a.csv", b"new")
        fs.put("/claimed/a.csv", b"older, still being processed")
        watch = Watch("/in", "*.csv", policy(), claim_to="/claimed")
        rounds = [run_round(watch, fs) for fs.now in (0.0, 3.0, 4.0, 5.0, 6.0)]
        assert [len(r.refused) for r in rounds] == [0, 0, 1, 0, 0]
        assert not any(r.fired for r in rounds)
        assert fs.files["/claimed/a.csv"][0] == b"older, still being processed"
        hashes = sum(asked.startswith("hash") for asked in fs.asked)
        del fs.files["/claimed/a.csv"]  # the consumer took the older file away
        fs.now = 7.0
        retried = run_round(watch, fs)
        assert [f.path for f in retried.fired] == ["/claimed/a.csv"]
        assert sum(asked.startswith("hash") for asked in fs.asked) == hashes
        assert fs.files["/claimed/a.csv"][0] == b"new"

    def test_a_file_claimed_by_another_watcher_does_not_fire(self) -> None:
        fs = FakeSFTP()
        fs.put("/in/a.csv", b"alpha")
        watch = Watch("/in", "*.csv", policy(), claim_to="/claimed")

        class Racing(FakeSFTP):
            def claim(self, source: str, target: str) -> Claimed:
                del fs.files[source]  # the other watcher won the rename
                return Claimed.GONE

        racing = Racing()
        racing.files, racing.asked = fs.files, fs.asked
        fired = []
        for racing.now in (0.0, 3.0, 4.0, 5.0):
            fired += poll.drive(watch.round(), racing).fired
        assert fired == []

    def test_without_claim_to_a_file_fires_again_only_when_it_changes_or_is_recreated(self) -> None:
        fs = FakeSFTP()
        fs.put("/in/a", b"one", mtime=100)
        watch = Watch("/in", "*", policy())
        assert len(settle(watch, fs, 6)) == 1
        assert settle(watch, fs, 10) == []  # unchanged: never again
        fs.put("/in/a", b"two", mtime=101)  # rewritten: fires once it is complete again
        assert [f.checksum for f in settle(watch, fs, 6)] == [sha(b"two")]
        del fs.files["/in/a"]
        settle(watch, fs, 1)
        fs.put("/in/a", b"two", mtime=101)  # removed and recreated, identical: a new file
        assert [f.checksum for f in settle(watch, fs, 6)] == [sha(b"two")]
        # A new watch (a triggerer restart) remembers nothing: the file fires once more.
        assert len(settle(Watch("/in", "*", policy()), fs, 6)) == 1

    def test_an_unreadable_file_is_reported_once_and_does_not_stop_the_others(self) -> None:
        fs = FakeSFTP()
        fs.put("/in/a.csv", b"alpha")
        fs.put("/in/b.csv", b"secret")
        fs.put("/in/c.csv", b"gamma")

        class Unreadable(FakeSFTP):
            def digest(self, path: str, algorithm: str, size: int) -> str | None:
                if path == "/in/b.csv":
                    raise PermissionError(f"Permission denied when reading {path}")
                return fs.digest(path, algorithm, size)

        io = Unreadable()
        io.files = fs.files
        watch = Watch("/in", "*.csv", policy(), claim_to="/claimed")
        rounds = []
        for io.now in (0.0, 3.0, 4.0, 5.0):
            fs.now = io.now
            rounds.append(poll.drive(watch.round(), io))
        assert [[name for name, _ in r.failed] for r in rounds] == [[], ["b.csv"], [], []]
        assert [f.path for r in rounds for f in r.fired] == ["/claimed/a.csv", "/claimed/c.csv"]
        fs.put("/in/b.csv", b"changed", mtime=2000)  # changed: watched again, and fails again once stable
        later = []
        for io.now in (6.0, 9.0):
            fs.now = io.now
            later.append(poll.drive(watch.round(), io))
        assert [[name for name, _ in r.failed] for r in later] == [[], ["b.csv"]]

    def test_files_claimed_before_an_error_still_fire(self) -> None:
        fs = FakeSFTP()
        fs.put("/in/a.csv", b"alpha")
        fs.put("/in/b.csv", b"beta")

        class Dropping(FakeSFTP):
            def claim(self, source: str, target: str) -> Claimed:
                if source == "/in/b.csv":
                    raise ConnectionError("SSH connection to h:22 failed")
                return fs.claim(source, target)

        io = Dropping()
        io.files = fs.files
        watch = Watch("/in", "*.csv", policy(), claim_to="/claimed")
        for io.now in (0.0, 3.0):
            poll.drive(watch.round(), io)
        io.now = 4.0
        with pytest.raises(ConnectionError):
            poll.drive(watch.round(), io)
        assert [f.path for f in watch.take_fired()] == ["/claimed/a.csv"]
        assert watch.take_fired() == []
        assert "/claimed/a.csv" in fs.files and "/in/b.csv" in fs.files

    def test_a_given_listing_is_used_instead_of_listing(self) -> None:
        fs = FakeSFTP()
        fs.put("/in/a.csv", b"alpha")
        fs.put("/in/b.csv", b"beta")
        watch = Watch("/in", "a*", policy())
        listing = fs.list_files("/in", "")
        fs.asked = []
        poll.drive(watch.round(listing), fs)
        assert fs.asked == []  # a waiting round on a shared listing asks nothing
        assert set(watch.states) == {"a.csv"}

    def test_requests_are_plain_values(self) -> None:
        requests = [
            Stat("/a"),
            ReadSidecar("/a", "sha256"),
            Hash("/a", "md5", 3),
            ListDir("/", "*"),
            Claim("/a", "/b"),
        ]
        assert all(dataclasses.is_dataclass(r) for r in requests)
        assert len(set(requests)) == len(requests)


def test_the_poll_imports_nothing_from_airflow() -> None:
    code = (
        "import sys, airflow_s3sftp.core.poll; print(any(m.split('.')[0] == 'airflow' for m in sys.modules))"
    )
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert output.stdout.strip() == "False"


class TestClaimEdges:
    """Claims refused for permission, appends racing the claim, and our own temp files."""

    def test_a_claim_refused_for_permission_is_retried_each_round_until_it_succeeds(self) -> None:
        fs = FakeSFTP()
        fs.put("/in/a.csv", b"alpha")
        watch = Watch("/in", "*.csv", policy(), claim_to="/claimed")

        class Refusing(FakeSFTP):
            allowed = False

            def claim(self, source: str, target: str) -> Claimed:
                if not self.allowed:
                    self.asked.append(f"refused {source}")
                    raise PermissionError(f"Permission denied when claiming {source}")
                return super().claim(source, target)

        io = Refusing()
        io.files, io.asked = fs.files, fs.asked
        rounds = []
        for io.now in (0.0, 3.0, 4.0, 5.0, 6.0):
            rounds.append(poll.drive(watch.round(), io))
        assert not any(r.fired for r in rounds) and not any(r.failed for r in rounds)
        blocked = [r.blocked for r in rounds if r.blocked]
        assert len(blocked) >= 2  # retried every round, not frozen until the file changes
        assert all(held.path == "/in/a.csv" for r in blocked for held, _ in r)
        hashes = sum(asked.startswith("hash") for asked in fs.asked)
        io.allowed, io.now = True, 7.0
        done = poll.drive(watch.round(), io)
        assert [f.path for f in done.fired] == ["/claimed/a.csv"] and done.blocked == []
        assert sum(asked.startswith("hash") for asked in fs.asked) == hashes  # no re-hash to retry

    def test_an_append_between_verdict_and_claim_is_rehashed(self) -> None:
        fs = FakeSFTP()
        fs.put("/in/a.csv", b"x" * 100, mtime=1000)
        watch = Watch("/in", "*.csv", policy(), claim_to="/claimed")

        class Appending(FakeSFTP):
            def claim(self, source: str, target: str) -> Claimed:
                content, _ = self.files[source]
                self.files[source] = (content + b"tail", 1001)
                return super().claim(source, target)

        io = Appending()
        io.files, io.asked = fs.files, fs.asked
        fired = []
        for io.now in (0.0, 3.0, 4.0, 5.0, 6.0):
            fired += poll.drive(watch.round(), io).fired
        assert len(fired) == 1
        assert (fired[0].size, fired[0].mtime) == (104, 1001)
        assert fired[0].checksum == sha(b"x" * 100 + b"tail")

    @pytest.mark.parametrize(
        "name",
        [
            ".a.csv.0123456789ab.s3sftp-part",
            ".a.csv.0123456789ab.s3sftp-old",
            ".x~0123.0123456789ab.s3sftp-part",
        ],
    )
    def test_our_temp_files_never_match_any_pattern(self, name: str) -> None:
        assert not poll.matches(name, ".*")
        assert not poll.matches(name, "*")
        assert poll.matches(".hidden", ".*")

    def test_healable_errors(self) -> None:
        from airflow_s3sftp.exceptions import (
            AuthenticationError,
            ConnectionLostError,
            HostKeyVerificationError,
        )

        assert poll.is_healable(ConnectionError("dropped")) and poll.is_healable(ConnectionLostError("x"))
        assert poll.is_healable(EOFError()) and poll.is_healable(TimeoutError())
        assert not poll.is_healable(AuthenticationError("refused"))
        assert not poll.is_healable(HostKeyVerificationError("changed"))
        assert not poll.is_healable(PermissionError("denied"))
        assert [poll.reconnect_delay(n) for n in (1, 2, 3, 7)] == [1.0, 2.0, 4.0, 30.0]


class ManifestFakeSFTP(FakeSFTP):
    """The fake file system answering the manifest requests, as both sensing hooks do."""

    def read_manifest(self, path: str) -> bytes | None:
        self.asked.append(f"manifest {path}")
        found = self.files.get(f"{path}.manifest")
        return None if found is None else found[0]

    def range_digests(self, path: str, range_size: int, size: int) -> tuple[tuple[str, ...], str] | None:
        self.asked.append(f"ranges {path} {range_size} {size}")
        content = self.files.get(path, (b"", 0))[0]
        if len(content) < size:
            return None
        hasher = RangeHasher(range_size)
        hasher.update(content[:size])
        return hasher.finish()


class TestPollFileWithAManifest:
    def deliver(self, fs: ManifestFakeSFTP, path: str, content: bytes) -> None:
        hasher = RangeHasher(4)
        hasher.update(content)
        fs.put(path, content)
        fs.put(f"{path}.manifest", render_manifest(hasher.manifest("f")).encode())

    def test_stable_file_reads_the_manifest_then_hashes_its_ranges_once(self) -> None:
        fs, p = ManifestFakeSFTP(), policy(expected_checksum_from="manifest")
        self.deliver(fs, "/in/f", b"0123456789")
        state = poll_once(fs, "/in/f", stability.State(), p).state
        fs.now = 3.5
        verdict = poll_once(fs, "/in/f", state, p)
        assert verdict.action is stability.Action.FIRE
        assert verdict.checksum == sha(b"0123456789")
        assert fs.asked == ["stat /in/f", "stat /in/f", "manifest /in/f", "ranges /in/f 4 10", "stat /in/f"]

    def test_missing_manifest_is_not_yet_and_a_flipped_byte_names_its_range(self) -> None:
        fs, p = ManifestFakeSFTP(), policy(expected_checksum_from="manifest", stable_for=0)
        fs.put("/in/f", b"0123456789")
        state = poll_once(fs, "/in/f", stability.State(), p).state
        fs.now = 1.5
        waiting = poll_once(fs, "/in/f", state, p)
        assert (waiting.action, waiting.reason) == (
            stability.Action.WAIT,
            "stable, but it has no manifest yet",
        )
        self.deliver(fs, "/in/f", b"0123456789")
        fs.put("/in/f", b"0123x56789")
        fs.now = 3.0
        with pytest.raises(ManifestMismatchError, match=r"in 1 range\(s\), first range 1 bytes 4-7: "):
            poll_once(fs, "/in/f", waiting.state, p)

    def test_the_watch_never_fires_for_the_manifests(self) -> None:
        fs = ManifestFakeSFTP()
        watch = Watch("/in", "*", policy(expected_checksum_from="manifest", stable_for=0))
        self.deliver(fs, "/in/a.csv", b"abcdef")
        poll.drive(watch.round(), fs)
        fs.now = 1.5
        found = poll.drive(watch.round(), fs)
        assert [fired.path for fired in found.fired] == ["/in/a.csv"]
