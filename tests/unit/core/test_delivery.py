"""The delivery owner on an in-memory SFTP server: every attempt path, no network."""

from __future__ import annotations

import base64
import hashlib
import io
import zlib

import pytest

from airflow_s3sftp.core.delivery import AUTO_MIN_ROUND_TRIP, Delivery, Source
from airflow_s3sftp.core.options import TUNING, DeliveryOptions
from airflow_s3sftp.core.parts import Striping, part_token
from airflow_s3sftp.core.session import SessionPool
from airflow_s3sftp.core.sweep import LeftoverSweeper
from airflow_s3sftp.exceptions import ConnectionLostError, SupersededError
from tests.unit.core.fake_sftp import FakeFS, FakeRemote, Killed, session_factory

KiB = 1024
DATA = bytes(range(256)) * 4 * 300  # 300 KiB
RECORD_KEYS = {
    "s3_uri", "sftp_path", "size", "checksum", "etag", "version_id", "skipped", "attempts", "resumed_from",
    "seconds", "mb_per_s", "verified", "published_with", "source_check", "source_check_skipped", "s3_retries", "sidecar_path",
    "done_marker_path",
}  # fmt: skip


def crc32_head(data: bytes) -> dict[str, str]:
    """What boto3 uploads carry by default: a full-object CRC32 (not our sha256)."""
    return {"ChecksumCRC32": base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()}


def source(data: bytes = DATA, head: dict[str, str] | None = None) -> Source:
    return Source(
        uri="s3://b/k",
        size=len(data),
        open=lambda start, end=None: io.BytesIO(data[start : None if end is None else end + 1]),
        head=crc32_head(data) if head is None else head,
        etag="e",
    )


def deliver(fs: FakeFS, path: str = "/in/k", data: bytes = DATA, head=None, **given):  # type: ignore[no-untyped-def]
    """Deliver ``data`` to ``path`` on ``fs``; ``given`` holds decisions and tuning keys alike."""
    tuning = {"chunk_size": 16 * KiB, "connection_retry_delay": 0}
    tuning |= {name: value for name, value in given.items() if name in TUNING}
    decisions = {name: value for name, value in given.items() if name not in TUNING}
    options = DeliveryOptions.build(**decisions, tuning=tuning)
    with SessionPool(session_factory(fs), 1) as pool:
        return Delivery(source(data, head), path, options, pool, sleep=lambda s: None).run()


def names(fs: FakeFS) -> list[str]:
    return sorted(fs.files)


def test_happy_path_record_has_every_key_and_leaves_only_the_file():
    fs = FakeFS()
    record = deliver(fs, sidecar=True, done_marker=".done")
    assert bytes(fs.files["/in/k"]) == DATA
    assert set(record.to_dict()) == RECORD_KEYS
    assert record.checksum == "sha256:" + hashlib.sha256(DATA).hexdigest()
    assert record.source_check == "S3 ChecksumCRC32"
    assert (record.attempts, record.resumed_from, record.published_with) == (1, 0, "posix-rename")
    assert names(fs) == ["/in/k", "/in/k.done", "/in/k.sha256"]


@pytest.mark.parametrize(
    "flat",
    [{}, {"checksum": None}, {"verify": "checksum"}, {"parallel_parts": 2, "part_size": 64 * KiB},
     {"atomic": False}, {"sidecar": True}],
    ids=["default", "no-checksum", "verify-checksum", "parallel-parts", "non-atomic", "sidecar"],
)  # fmt: skip
@pytest.mark.parametrize("cut", ["open", 1, 100 * KiB, len(DATA), "chmod", "posix-rename"])
def test_one_cut_anywhere_is_recovered_byte_identical(flat, cut):
    """A lost connection at any point costs one attempt; digests restart from a known state."""
    fs = FakeFS()
    if isinstance(cut, int):
        fs.cut_after_bytes.append(cut)
    else:
        fs.cut_at.append(cut)
    record = deliver(fs, **flat)
    assert bytes(fs.files["/in/k"]) == DATA
    if not (cut == "posix-rename" and flat.get("atomic") is False):  # no rename to cut without atomic
        assert record.attempts == 2, record
    assert record.checksum in (None, "sha256:" + hashlib.sha256(DATA).hexdigest())
    expected = {"/in/k"} | ({"/in/k.sha256"} if flat.get("sidecar") else set())
    assert set(names(fs)) == expected
    assert fs.connections == record.attempts


def test_mid_object_cut_resumes_after_the_proven_prefix():
    fs = FakeFS(cut_after_bytes=[200 * KiB])
    record = deliver(fs)
    assert 100 * KiB < record.resumed_from < len(DATA)  # the applied writes, proven by read-back
    assert bytes(fs.files["/in/k"]) == DATA


def test_a_prefix_that_does_not_read_back_restarts_from_byte_zero_with_fresh_digests():
    fs = FakeFS(cut_after_bytes=[200 * KiB])
    options = DeliveryOptions.build(tuning={"chunk_size": 16 * KiB, "connection_retry_delay": 0})

    def corrupt(seconds: float) -> None:  # between the attempts, someone scribbles on our temp file
        (temp,) = [path for path in fs.files if path.endswith(".s3sftp-part")]
        fs.files[temp][5] ^= 0xFF

    with SessionPool(session_factory(fs), 1) as pool:
        record = Delivery(source(), "/in/k", options, pool, sleep=corrupt).run()
    assert record.resumed_from == 0
    assert record.attempts == 2
    assert bytes(fs.files["/in/k"]) == DATA


def test_retries_exhausted_non_atomic_removes_the_partial_and_says_the_old_version_is_gone():
    fs = FakeFS(cut_after_bytes=[50 * KiB, 100 * KiB, 150 * KiB])
    fs.files["/in/k"] = bytearray(b"previous version")
    with pytest.raises(
        ConnectionLostError, match=r"after 3 attempts.*partial '/in/k' was removed.*previous version"
    ):
        deliver(fs, atomic=False, connection_retries=2)
    assert names(fs) == []


def test_retries_exhausted_atomic_keeps_the_old_version_and_removes_our_temp():
    fs = FakeFS(cut_after_bytes=[50 * KiB, 100 * KiB])
    fs.files["/in/k"] = bytearray(b"previous version")
    with pytest.raises(ConnectionLostError, match="after 2 attempts"):
        deliver(fs, connection_retries=1)
    assert names(fs) == ["/in/k"]
    assert bytes(fs.files["/in/k"]) == b"previous version"


def test_a_removed_temp_file_ends_in_superseded_and_never_deletes_the_other_writers_file():
    fs = FakeFS()

    def other_writer(step: str, path: str) -> None:
        if step == "chmod" and path.endswith(".s3sftp-part"):
            del fs.files[path]  # a cleanup took our temp file away...
            fs.files["/in/k"] = bytearray(b"the other writer's complete file")  # ...and published its own

    fs.on_step = other_writer
    with pytest.raises(SupersededError, match="removed by someone else"):
        deliver(fs)
    assert names(fs) == ["/in/k"]
    assert bytes(fs.files["/in/k"]) == b"the other writer's complete file"


def test_a_server_without_posix_rename_gets_the_fallback_with_a_unique_backup():
    fs = FakeFS(posix_rename=False)
    fs.files["/in/k"] = bytearray(b"old")
    record = deliver(fs)
    assert record.published_with == "rename-with-backup"
    assert names(fs) == ["/in/k"]
    assert bytes(fs.files["/in/k"]) == DATA


def test_skip_identical_proves_by_content_and_the_sidecar_mode_trusts_the_sidecar():
    data = b"x" * 5000
    head = {"ChecksumSHA256": base64.b64encode(hashlib.sha256(data).digest()).decode()}
    fs = FakeFS()
    deliver(fs, data=data, head=head, sidecar=True)
    fs.files["/in/k"][10] ^= 1  # same size, one byte changed behind the sidecar's back
    again = deliver(fs, data=data, head=head, if_exists="skip_identical", sidecar=True)
    assert again.skipped is False
    assert bytes(fs.files["/in/k"]) == data
    skipped = deliver(fs, data=data, head=head, if_exists="skip_identical", sidecar=True)
    assert skipped.skipped is True and set(skipped.to_dict()) == RECORD_KEYS
    fs.files["/in/k"][10] ^= 1
    trusted = deliver(fs, data=data, head=head, if_exists="skip_identical", skip_identical_by="sidecar")
    assert trusted.skipped is True  # the documented, faster mode: blind to this change


def test_sessions_are_reused_across_objects():
    fs = FakeFS()
    options = DeliveryOptions.build(tuning={"chunk_size": 16 * KiB})
    with SessionPool(session_factory(fs), 2) as pool:
        for n in range(5):
            Delivery(source(), f"/in/k{n}", options, pool).run()
        assert pool.opened == 1
    assert fs.connections == 1


def test_sweeper_removes_only_abandoned_temp_files_of_the_tasks_names():
    fs = FakeFS()
    fs.files.update({
        "/in/.k.0123456789ab.s3sftp-part": bytearray(b"old"),
        "/in/.k.0123456789ac.s3sftp-part": bytearray(b"fresh"),
        "/in/.j.0123456789ab.s3sftp-part": bytearray(b"another name"),
        "/in/.k.s3sftp-part": bytearray(b"not our shape"),
    })  # fmt: skip
    fs.mtimes.update({"/in/.k.0123456789ab.s3sftp-part": fs.now - 100, "/in/.j.0123456789ab.s3sftp-part": 0})
    fs.mtimes["/in/.k.s3sftp-part"] = 0
    sweeper = LeftoverSweeper(50, ["/in/k"])
    assert sweeper.sweep(FakeRemote(fs), "/in", fs.now) == ["/in/.k.0123456789ab.s3sftp-part"]  # type: ignore[arg-type]
    assert sweeper.sweep(FakeRemote(fs), "/in", fs.now + 1000) == []  # once per directory  # type: ignore[arg-type]


# --- several channels per object (core/parts.py) ---------------------------------------------------------

BIG = bytes(range(256)) * 4 * 1024 * 9 + b"tail"  # 9 MiB + 4 bytes: 10 stripes of 1 MiB, the last short


def striped_fs(**settings) -> FakeFS:  # type: ignore[no-untyped-def]
    return FakeFS(**{"copy_data": True, "lanes_granted": 4, "round_trip": 0.1} | settings)


def test_striping_cuts_the_object_into_stripes_dealt_round_robin():
    striping = Striping(channels=4, stripe_size=KiB)
    pieces = striping.pieces(10 * KiB + 5)
    assert [lane for lane, *_ in pieces] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2]
    assert [at for *_, at in pieces] == list(range(0, 11 * KiB, KiB))
    assert pieces[4] == (0, KiB, KiB, 4 * KiB) and pieces[-1] == (2, 2 * KiB, 5, 10 * KiB)
    assert striping.part_sizes(10 * KiB + 5) == [3 * KiB, 3 * KiB, 2 * KiB + 5, 2 * KiB]
    assert part_token("0123456789ab", 1) != part_token("0123456789ab", 2)


@pytest.mark.parametrize("channels", [None, 3])
def test_a_striped_delivery_joins_exact_bytes_and_leaves_only_the_file(channels, monkeypatch):
    monkeypatch.setattr("airflow_s3sftp.core.delivery.AUTO_MIN_SIZE", 4 * 1024 * KiB)  # auto: a "big" object
    fs = striped_fs()
    record = deliver(fs, data=BIG, head={}, channels=channels, stripe_size=1024 * KiB, chunk_size=300 * KiB)
    assert bytes(fs.files["/in/k"]) == BIG
    assert names(fs) == ["/in/k"]
    assert fs.joins == 1
    assert record.checksum == "sha256:" + hashlib.sha256(BIG).hexdigest()


@pytest.mark.parametrize(
    ("min_size", "round_trip", "striped"),
    [(len(BIG), AUTO_MIN_ROUND_TRIP, True), (len(BIG) + 1, 1.0, False), (len(BIG), AUTO_MIN_ROUND_TRIP * 0.99, False)],
)  # fmt: skip
def test_auto_stripes_from_the_measured_size_and_round_trip_on(min_size, round_trip, striped, monkeypatch):
    monkeypatch.setattr("airflow_s3sftp.core.delivery.AUTO_MIN_SIZE", min_size)
    fs = striped_fs(round_trip=round_trip)
    deliver(fs, data=BIG, head={}, stripe_size=1024 * KiB)
    assert bytes(fs.files["/in/k"]) == BIG
    assert fs.joins == (1 if striped else 0)


@pytest.mark.parametrize(
    ("settings", "why"),
    [({"copy_data": False}, "no copy-data"), ({"lanes_granted": 1}, "one extra channel"),
     ({"free": 10 * 1024 * KiB}, "no room for twice the object"), ({"round_trip": 0.0001}, "a short link (auto)")],
)  # fmt: skip
def test_one_channel_when_parts_cannot_or_need_not_be_used(settings, why):
    fs = striped_fs(**settings)
    channels = None if "round_trip" in settings else 4
    deliver(fs, data=BIG, head={}, channels=channels, stripe_size=1024 * KiB)
    assert bytes(fs.files["/in/k"]) == BIG, why
    assert fs.joins == 0, why


@pytest.mark.parametrize("cut", [1, 2 * 1024 * KiB, len(BIG) - 1, "join"])
def test_a_cut_in_a_part_or_the_join_recovers_and_removes_every_part(cut):
    fs = striped_fs()
    if isinstance(cut, int):
        fs.cut_after_bytes.append(cut)
    else:
        fs.cut_at.append(cut)
    record = deliver(fs, data=BIG, head={}, channels=4, stripe_size=1024 * KiB)
    assert record.attempts == 2
    assert bytes(fs.files["/in/k"]) == BIG
    assert names(fs) == ["/in/k"]


# --- durable checkpoints: a new process adopts what an earlier try proved (core/journal.py) --------------

RESUMABLE = {
    "checkpoint_every": 1024 * KiB,
    "range_size": 1024 * KiB,
    "resume_after": 30,
    "chunk_size": 256 * KiB,
}


def killed_after(fs: FakeFS, nbytes: int, data: bytes = BIG, **flat):  # type: ignore[no-untyped-def]
    """A try whose connection dies for good after ``nbytes``: what a killed worker leaves behind."""
    fs.cut_after_bytes.extend([nbytes, 1, 1, 1])
    with pytest.raises(ConnectionLostError, match="kept: the next try of the task resumes"):
        deliver(fs, data=data, head={}, connection_retries=0, **(RESUMABLE | flat))
    fs.cut_after_bytes.clear()
    fs.now += 60  # the next try comes later; the leftovers have been idle since


def ours(fs: FakeFS) -> list[str]:
    return [
        name for name in names(fs) if name.endswith((".s3sftp-part", ".s3sftp-journal", ".s3sftp-stripe"))
    ]


@pytest.mark.parametrize("side_channel", [True, False], ids=["journal-on-its-channel", "journal-inline"])
def test_a_new_process_resumes_from_the_journal_and_leaves_only_the_file(side_channel):
    fs = FakeFS(side_channel=side_channel)
    killed_after(fs, 6 * 1024 * KiB)
    assert len(ours(fs)) == 2  # the temp file and its journal, kept on purpose
    written = fs.written
    record = deliver(fs, data=BIG, head={}, **RESUMABLE)  # a new Delivery: nothing in memory
    assert 4 * 1024 * KiB <= record.resumed_from <= 6 * 1024 * KiB
    journals = fs.written - written - (len(BIG) - record.resumed_from)
    assert 0 <= journals < 16 * KiB  # only the rest was sent, and a few small journals
    assert bytes(fs.files["/in/k"]) == BIG
    assert names(fs) == ["/in/k"]
    assert record.checksum == "sha256:" + hashlib.sha256(BIG).hexdigest()


def test_a_changed_object_is_never_mixed_with_an_earlier_try_and_nothing_of_it_remains():
    fs = FakeFS()
    killed_after(fs, 6 * 1024 * KiB)
    changed = BIG[:100] + b"X" + BIG[101:]
    record = deliver(fs, data=changed, head={}, **RESUMABLE)
    assert record.resumed_from == 0
    assert bytes(fs.files["/in/k"]) == changed
    assert names(fs) == ["/in/k"]


@pytest.mark.parametrize(("verify", "flip", "adopted"), [
    ("size", 100, 0),  # range 0 reads back otherwise: nothing adopted
    ("size", 3 * 1024 * KiB + 5, 3 * 1024 * KiB),  # ranges 0-2 still prove themselves
    ("checksum", 3 * 1024 * KiB + 5, 3 * 1024 * KiB),
])  # fmt: skip
def test_a_flipped_byte_in_a_leftover_is_never_published(verify, flip, adopted):
    fs = FakeFS()
    killed_after(fs, 6 * 1024 * KiB, verify=verify)
    (temp,) = [p for p in ours(fs) if len(fs.files[p]) > 1 << 20]
    fs.files[temp][flip] ^= 0xFF
    record = deliver(fs, data=BIG, head={}, verify=verify, **RESUMABLE)
    assert record.resumed_from == adopted
    assert bytes(fs.files["/in/k"]) == BIG
    assert names(fs) == ["/in/k"]


def test_a_leftover_written_moments_ago_is_left_to_its_writer():
    fs = FakeFS()
    killed_after(fs, 6 * 1024 * KiB)
    fs.now -= 59  # written a second ago: maybe a live worker
    leftovers = {p: bytes(fs.files[p]) for p in ours(fs)}
    record = deliver(fs, data=BIG, head={}, **RESUMABLE)
    assert record.resumed_from == 0
    assert bytes(fs.files["/in/k"]) == BIG
    assert {p: bytes(fs.files[p]) for p in leftovers if p in fs.files}.keys() <= leftovers.keys()
    temp = max(leftovers, key=lambda p: len(leftovers[p]))
    assert bytes(fs.files[temp]) == leftovers[temp]  # never touched


def test_small_objects_keep_no_journal():
    fs = FakeFS()
    deliver(fs, **RESUMABLE)  # 300 KiB: below one checkpoint
    assert fs.syncs == 0
    assert names(fs) == ["/in/k"]


@pytest.mark.parametrize("striped", [False, True], ids=["one-channel", "striped"])
def test_after_a_kill_9_the_next_try_adopts_or_removes_every_leftover(striped):
    fs = striped_fs() if striped else FakeFS()
    fs.kill_after_bytes = 6 * 1024 * KiB
    flat = RESUMABLE | ({"channels": 4, "stripe_size": 1024 * KiB} if striped else {})
    with pytest.raises(Killed):
        deliver(fs, data=BIG, head={}, **flat)
    fs.killed = False
    leftovers = ours(fs)
    assert len(leftovers) == (6 if striped else 2)  # temp (+ 4 parts) + journal: nothing cleaned up
    fs.now += 60
    record = deliver(fs, data=BIG, head={}, **flat)
    assert (record.resumed_from > 0) is not striped  # parts are never adopted: joined only when complete
    assert bytes(fs.files["/in/k"]) == BIG
    assert names(fs) == ["/in/k"]


def test_a_killed_small_delivery_leaves_nothing_once_the_next_try_comes():
    fs = FakeFS()
    fs.kill_after_bytes = 100 * KiB
    with pytest.raises(Killed):
        deliver(fs, **RESUMABLE)  # 300 KiB: no journal, just a temp file
    fs.killed = False
    assert len(ours(fs)) == 1
    fs.now += 10  # too recent: maybe a live writer; left alone
    deliver(fs, **RESUMABLE)
    assert len(ours(fs)) == 1
    fs.now += 60  # idle past resume_after: an earlier try's
    deliver(fs, path="/in/k", **RESUMABLE)
    assert names(fs) == ["/in/k"]
