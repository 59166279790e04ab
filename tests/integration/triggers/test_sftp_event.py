# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""SFTPFileStableEventTrigger driven with asyncio against a real OpenSSH server."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from airflow_s3sftp.hooks.sftp_sensing import SFTPSensingHook, SFTPSensingHookAsync, asyncssh_options
from airflow_s3sftp.triggers.sftp import SFTPFileStableEventTrigger
from tests.integration.sftp_writers import SlowWriter, random_bytes, sha256
from testservers.processes import SSHDServer

STABLE_FOR = 0.5
POKE = 0.25


def owned_dir(parent: Path, name: str, sshd: SSHDServer) -> Path:
    path = parent / name
    path.mkdir()
    os.chown(path, sshd.root.stat().st_uid, sshd.root.stat().st_gid)
    return path


def make_trigger(path: Path | str, **kwargs: Any) -> SFTPFileStableEventTrigger:
    kwargs.setdefault("stable_for", STABLE_FOR)
    kwargs.setdefault("poke_interval", POKE)
    return SFTPFileStableEventTrigger(str(path), **kwargs)


async def collect(
    events: AsyncIterator[Any], seconds: float, stop_after: int | None = None
) -> list[dict[str, Any]]:
    """Return the payloads an event stream yields within ``seconds`` (or once ``stop_after`` arrived).

    Fewer than ``stop_after`` events in time is a failure, not a short list. A plain window (no
    ``stop_after``) may end empty: a caller asserting that something never fires must also prove
    that the trigger kept polling (a file that does fire in the same window, say), or a hang passes.
    """
    payloads: list[dict[str, Any]] = []

    async def gather() -> None:
        async for event in events:
            payloads.append(event.payload)
            if stop_after is not None and len(payloads) >= stop_after:
                return

    try:
        await asyncio.wait_for(gather(), seconds)
    except TimeoutError:
        if stop_after is not None:
            raise AssertionError(
                f"{len(payloads)} of {stop_after} events within {seconds}s: {payloads}"
            ) from None
    with contextlib.suppress(AttributeError):
        await events.aclose()  # type: ignore[attr-defined]
    return payloads


def watch(
    trigger: SFTPFileStableEventTrigger, seconds: float, stop_after: int | None = None
) -> list[dict[str, Any]]:
    return asyncio.run(collect(trigger.run(), seconds, stop_after))


def test_every_file_fires_once_claimed_with_its_checksum(sshd: SSHDServer, remote_dir: Path) -> None:
    """One file written slowly in pieces (out of order), one at once, one not matching the glob."""
    inbound, claimed = owned_dir(remote_dir, "inbound", sshd), owned_dir(remote_dir, "claimed", sshd)
    slow_data, quick_data = random_bytes(400_000), random_bytes(50_000)
    (inbound / "quick.csv").write_bytes(quick_data)
    (inbound / "notes.txt").write_bytes(b"not for us")
    writer = SlowWriter(sshd, str(inbound / "slow.csv"), slow_data, pieces=6, pause=0.4, out_of_order=True)
    writer.start()
    trigger = make_trigger(inbound / "*.csv", claim_to=str(claimed))

    events = watch(trigger, 30, stop_after=2)
    fired_at = time.monotonic()
    writer.join_checked()
    # Nothing else fires afterwards (both files are gone from the watched directory), while a new
    # file in the same window proves the trigger kept polling.
    (inbound / "canary.csv").write_bytes(b"canary")
    assert [e["path"] for e in watch(trigger, 3.0)] == [str(claimed / "canary.csv")]

    by_name = {Path(event["source_path"]).name: event for event in events}
    assert set(by_name) == {"slow.csv", "quick.csv"}
    for name, data in [("slow.csv", slow_data), ("quick.csv", quick_data)]:
        event = by_name[name]
        assert event["path"] == str(claimed / name) and event["source_path"] == str(inbound / name)
        assert event["checksum"] == sha256(data) and event["size"] == len(data)
        assert event["mtime"] == int((claimed / name).stat().st_mtime)
        assert (claimed / name).read_bytes() == data
    assert writer.finished_at is not None and fired_at > writer.finished_at
    assert sorted(p.name for p in inbound.iterdir()) == ["notes.txt"]


def test_a_claim_never_overwrites(sshd: SSHDServer, remote_dir: Path) -> None:
    inbound, claimed = owned_dir(remote_dir, "inbound", sshd), owned_dir(remote_dir, "claimed", sshd)
    (inbound / "a.csv").write_bytes(b"today")
    (claimed / "a.csv").write_bytes(b"yesterday, still being processed")
    (inbound / "b.csv").write_bytes(b"stable as long as a.csv: proves the trigger polled")

    events = watch(make_trigger(inbound / "*.csv", claim_to=str(claimed)), 4.0)

    assert [e["path"] for e in events] == [str(claimed / "b.csv")]
    assert (claimed / "a.csv").read_bytes() == b"yesterday, still being processed"
    assert (inbound / "a.csv").read_bytes() == b"today"


@pytest.mark.parametrize("missing", ["watched", "claim_to"])
def test_a_missing_directory_stops_the_watch_naming_it(
    sshd: SSHDServer, remote_dir: Path, missing: str
) -> None:
    inbound = remote_dir if missing == "claim_to" else remote_dir / "absent"
    claim_to = remote_dir / "absent" if missing == "claim_to" else owned_dir(remote_dir, "claimed", sshd)
    (remote_dir / "a.csv").write_bytes(b"complete")
    trigger = make_trigger(inbound / "*.csv", claim_to=str(claim_to))

    error = NotADirectoryError if missing == "claim_to" else FileNotFoundError
    with pytest.raises(error, match=f"sftp://127.0.0.1:{sshd.port}{remote_dir / 'absent'}"):
        watch(trigger, 15)
    assert (remote_dir / "a.csv").read_bytes() == b"complete"


def test_without_claim_to_a_file_fires_again_only_after_it_changed(
    sshd: SSHDServer, remote_dir: Path
) -> None:
    target = remote_dir / "report.csv"
    target.write_bytes(b"version 1")
    trigger = make_trigger(remote_dir / "report.csv")

    async def scenario() -> list[dict[str, Any]]:
        # One generator for the whole test (a new one would be a trigger restart), consumed in the background.
        events: list[dict[str, Any]] = []
        arrived = asyncio.Condition()

        async def consume() -> None:
            async for event in trigger.run():
                async with arrived:
                    events.append(event.payload)
                    arrived.notify_all()

        async def until(count: int, seconds: float = 10) -> None:
            async with arrived:
                await asyncio.wait_for(arrived.wait_for(lambda: len(events) >= count), seconds)

        consumer = asyncio.create_task(consume())
        await until(1)
        # A window of ten polls with the file unchanged: nothing more (the second event below proves
        # the trigger kept polling through it).
        with contextlib.suppress(TimeoutError):
            await until(2, seconds=2.5)
            raise AssertionError(f"fired again for an unchanged file: {events}")
        target.write_bytes(b"version 2, longer")
        await until(2)
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        return events

    events = asyncio.run(scenario())

    assert [e["checksum"] for e in events] == [sha256(b"version 1"), sha256(b"version 2, longer")]
    assert all(e["path"] == e["source_path"] == str(target) for e in events)


def test_watchers_share_one_listing(sshd: SSHDServer, remote_dir: Path) -> None:
    """Two watchers with one shared_stream_key: one listing loop, each its own pattern and claims."""
    claimed = owned_dir(remote_dir, "claimed", sshd)
    (remote_dir / "a.csv").write_bytes(b"csv")
    (remote_dir / "b.json").write_bytes(b"json")
    csv = make_trigger(remote_dir / "*.csv", claim_to=str(claimed))
    json_ = make_trigger(remote_dir / "*.json", claim_to=str(claimed))
    assert csv.shared_stream_key() == json_.shared_stream_key() is not None
    assert make_trigger(remote_dir / "*.csv", poke_interval=1).shared_stream_key() != csv.shared_stream_key()

    async def fan_out() -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
        queues: list[asyncio.Queue[Any]] = [asyncio.Queue(), asyncio.Queue()]
        listings = 0

        async def produce() -> None:
            nonlocal listings
            async for raw in SFTPFileStableEventTrigger.open_shared_stream(csv.serialize()[1]):
                listings += 1
                for queue in queues:
                    queue.put_nowait(raw)

        async def subscription(queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
            while True:
                yield await queue.get()

        producer = asyncio.create_task(produce())
        got = await asyncio.gather(
            collect(csv.filter_shared_stream(subscription(queues[0])), 10, stop_after=1),
            collect(json_.filter_shared_stream(subscription(queues[1])), 10, stop_after=1),
        )
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
        return got[0], got[1], listings

    csv_events, json_events, listings = asyncio.run(fan_out())

    assert [e["path"] for e in csv_events] == [str(claimed / "a.csv")]
    assert [e["path"] for e in json_events] == [str(claimed / "b.json")]
    assert listings >= 4  # the stability span needed several listings, all from the one producer


def test_serialize_returns_exactly_the_constructor_arguments() -> None:
    from airflow.sdk import Asset, AssetWatcher
    from airflow.triggers.base import BaseEventTrigger

    kwargs = {
        "path": "/inbound/*.csv",
        "sftp_conn_id": "partner",
        "stable_for": 30,
        "checksum": "sha512",
        "claim_to": "/claimed",
        "poke_interval": 10,
        "expected_checksum_from": "sidecar",
    }
    trigger = SFTPFileStableEventTrigger(**kwargs)
    classpath, serialized = trigger.serialize()

    assert classpath == "airflow_s3sftp.triggers.sftp.SFTPFileStableEventTrigger"
    assert serialized == kwargs
    assert list(serialized) == list(inspect.signature(SFTPFileStableEventTrigger).parameters)
    assert isinstance(trigger, BaseEventTrigger)
    assert BaseEventTrigger.hash(classpath, serialized) == BaseEventTrigger.hash(
        *SFTPFileStableEventTrigger(**kwargs).serialize()
    )
    Asset("inbound", watchers=[AssetWatcher(name="inbound_watcher", trigger=trigger)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": "/inbound/"}, "ends with '/'"),
        ({"path": "/in*/a.csv"}, "only its last segment"),
        ({"path": "/in/*.csv", "claim_to": "claimed"}, "absolute directory"),
        ({"path": "/in/*.csv", "claim_to": "/in/"}, "is the watched directory"),
        ({"path": "/in/*.csv", "stable_for": -1}, "stable_for"),
        ({"path": "/in/*.csv", "checksum": "crc32"}, "Unsupported checksum algorithm"),
        ({"path": "/in/*.csv", "poke_interval": 0}, "poke_interval"),
    ],
)
def test_bad_arguments_fail_at_parse_time(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SFTPFileStableEventTrigger(**kwargs)


def test_airflow_without_event_triggers_gets_a_clear_import_error() -> None:
    """Airflow 2.x has no BaseEventTrigger: importing the event trigger names the version it needs."""
    code = (
        "import airflow.triggers.base as base; del base.BaseEventTrigger\n"
        "import airflow_s3sftp.triggers.sftp as module\n"
        "assert module.SFTPFileStableTrigger\n"
        "from airflow_s3sftp.triggers.sftp import SFTPFileStableEventTrigger\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert (
        "ImportError: airflow_s3sftp.triggers.sftp.SFTPFileStableEventTrigger needs Airflow 3.0+"
        in result.stderr
    )


class TestConnectionExtrasParity:
    """The async hook honours ``ciphers``, ``disabled_algorithms`` and ``compress`` as the sync one does."""

    def test_options(self) -> None:
        assert asyncssh_options({}) == {"compression_algs": ["none"]}
        assert asyncssh_options({"compress": True})["compression_algs"][0] == "zlib@openssh.com"
        options = asyncssh_options(
            {"ciphers": ["aes256-ctr", "aes128-ctr"], "disabled_algorithms": {"ciphers": ["aes128-ctr"]}}
        )
        assert options["encryption_algs"] == ["aes256-ctr"]
        assert (
            "hmac-sha1" not in asyncssh_options({"disabled_algorithms": {"macs": ["hmac-sha1"]}})["mac_algs"]
        )
        with pytest.raises(ValueError, match="disabled_algorithms key 'compression'"):
            asyncssh_options({"disabled_algorithms": {"compression": ["zlib"]}})

    def test_ciphers_apply_to_the_handshake(
        self, sshd: SSHDServer, remote_dir: Path, set_connection: Any
    ) -> None:
        """A cipher the server does not offer (OpenSSH 9 dropped 3des-cbc) fails the async handshake.

        The sync ``SSHHook`` sets ``ciphers`` on the transport only after connecting, so they take effect
        at the next re-key there; the async hook applies them from the first key exchange.
        """
        (remote_dir / "a").write_bytes(b"x")
        set_connection("sftp_ciphers", sshd.connection(ciphers=["3des-cbc"]))

        async def observe() -> Any:
            async with SFTPSensingHookAsync("sftp_ciphers") as io:
                return await io.observe(str(remote_dir / "a"))

        with pytest.raises(ConnectionError, match=f"SSH connection to 127.0.0.1:{sshd.port} failed"):
            asyncio.run(observe())
        set_connection("sftp_ciphers", sshd.connection(ciphers=["aes192-ctr"]))
        assert asyncio.run(observe()).size == 1

    @pytest.mark.parametrize("keep", ["aes192-ctr", None], ids=["one-cipher-left", "none-left"])
    def test_disabled_algorithms_agree_on_a_real_server(
        self, sshd: SSHDServer, remote_dir: Path, set_connection: Any, keep: str | None
    ) -> None:
        (remote_dir / "a").write_bytes(b"x")
        server_ciphers = [
            "chacha20-poly1305@openssh.com",
            "aes128-ctr",
            "aes192-ctr",
            "aes256-ctr",
            "aes128-gcm@openssh.com",
            "aes256-gcm@openssh.com",
        ]
        disabled = [name for name in server_ciphers if name != keep]
        set_connection("sftp_disabled", sshd.connection(disabled_algorithms={"ciphers": disabled}))

        async def async_observe() -> Any:
            async with SFTPSensingHookAsync("sftp_disabled") as io:
                return await io.observe(str(remote_dir / "a"))

        def sync_observe() -> Any:
            io = SFTPSensingHook("sftp_disabled")
            try:
                return io.observe(str(remote_dir / "a"))
            finally:
                io.close()

        if keep is not None:
            assert sync_observe().size == async_observe_size(async_observe) == 1
            return
        # Final on both sides, a ValueError naming the extra (the sync side: ConnectionConfigError).
        with pytest.raises(ValueError, match="share no algorithm: check its ciphers and disabled_algorithms"):
            sync_observe()
        with pytest.raises(ValueError, match="disabled_algorithms leaves no ciphers"):
            asyncio.run(async_observe())


def async_observe_size(observe: Any) -> int:
    return int(asyncio.run(observe()).size)


def sync_rounds(watch: Any) -> list[Any]:
    """Drive watch rounds over paramiko until one fires (at most eight)."""
    from airflow_s3sftp.core import poll

    rounds: list[poll.Round] = []
    io = SFTPSensingHook("sftp_default")
    try:
        while len(rounds) < 8 and not any(r.fired for r in rounds):
            rounds.append(poll.drive(watch.round(), io))
            time.sleep(0.25)
    finally:
        io.close()
    return rounds


async def async_rounds(watch: Any) -> list[Any]:
    """Drive watch rounds over asyncssh until one fires (at most eight)."""
    from airflow_s3sftp.core import poll

    rounds: list[poll.Round] = []
    async with SFTPSensingHookAsync("sftp_default") as io:
        while len(rounds) < 8 and not any(r.fired for r in rounds):
            rounds.append(await poll.adrive(watch.round(), io))
            await asyncio.sleep(0.25)
    return rounds


def test_the_sync_twin_answers_a_watch_as_the_async_one_does(sshd: SSHDServer, remote_dir: Path) -> None:
    """The same watch rounds, driven once over paramiko and once over asyncssh, list, hash and claim alike."""
    from airflow_s3sftp.core import poll, stability

    results = {}
    for flavour in ("sync", "async"):
        inbound = owned_dir(remote_dir, f"in-{flavour}", sshd)
        claimed = owned_dir(remote_dir, f"claimed-{flavour}", sshd)
        (inbound / "a.csv").write_bytes(b"alpha")
        (inbound / "b.csv").write_bytes(b"beta")
        (claimed / "b.csv").write_bytes(b"taken")
        (inbound / ".hidden.csv").write_bytes(b"temp")
        policy = stability.Policy.build(target=str(inbound), stable_for=0, checksum="sha256")
        watch = poll.Watch(str(inbound), "*.csv", policy, str(claimed))
        rounds = sync_rounds(watch) if flavour == "sync" else asyncio.run(async_rounds(watch))
        fired = [f for r in rounds for f in r.fired]
        refused = [f.source_path for r in rounds for f in r.refused]
        results[flavour] = (
            [(Path(f.path).relative_to(claimed).as_posix(), f.size, f.checksum) for f in fired],
            [Path(p).name for p in refused],
            sorted(p.name for p in inbound.iterdir()),
            (claimed / "b.csv").read_bytes(),
        )
    assert (
        results["sync"]
        == results["async"]
        == (
            [("a.csv", 5, sha256(b"alpha"))],
            ["b.csv"],
            [".hidden.csv", "b.csv"],
            b"taken",
        )
    )
