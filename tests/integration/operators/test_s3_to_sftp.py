"""S3ToSFTPStreamOperator against a real OpenSSH sshd and moto's S3 server."""

from __future__ import annotations

import hashlib
import os
import random
import stat
import threading
from pathlib import Path

import paramiko
import pytest

from airflow_s3sftp.core.paths import TEMP_SUFFIX
from airflow_s3sftp.core.sftp import read_range
from airflow_s3sftp.exceptions import AuthenticationError, HostKeyVerificationError
from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from tests.conftest import open_sftp

MiB = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(task_id: str = "deliver", **kwargs: object) -> dict[str, object]:
    op = S3ToSFTPStreamOperator(task_id=task_id, **kwargs)  # type: ignore[arg-type]
    return op.execute(context={})  # type: ignore[arg-type]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


class Observer(threading.Thread):
    """Polls a directory over its own SFTP session and checks every file it sees against the truth.

    The final name must always hold one of the complete ``allowed_final`` contents; a temp file
    must always be a byte-exact prefix of ``new`` at its current size (checked at its tail and at
    random offsets below it).
    """

    def __init__(
        self, sshd, directory: Path, final_name: str, new: bytes, allowed_final: list[bytes]
    ) -> None:  # type: ignore[no-untyped-def]
        super().__init__(daemon=True)
        self.client, self.sftp = open_sftp(sshd)
        self.directory, self.final_name = str(directory), final_name
        self.new, self.allowed = new, {sha256(b): len(b) for b in allowed_final}
        self.stop = threading.Event()
        self.violations: list[str] = []
        self.final_seen: list[str] = []
        self.temp_sizes: list[int] = []
        self.transient_errors: list[str] = []
        self.crashed: str | None = None
        self.seen = threading.Condition()  # notified whenever final_seen grows
        self.polls = 0
        self.rng = random.Random(7)

    def check_temp(self, path: str, size: int) -> None:
        if size > len(self.new):
            self.violations.append(f"temp file larger than the source: {size}")
            return
        for offset in [max(0, size - 65536)] + [self.rng.randrange(0, max(size, 1)) for _ in range(3)]:
            end = min(offset + 65536, size)
            got = b"".join(read_range(self.sftp, path, end, start=offset))
            if got != self.new[offset:end]:
                self.violations.append(f"temp file at size {size} differs from the source at {offset}")
        self.temp_sizes.append(size)

    def check_final(self, path: str) -> None:
        digest = sha256(b"".join(read_range(self.sftp, path, None)))  # size of the file as opened
        if digest not in self.allowed:
            self.violations.append(f"final name held content {digest} that was never complete")
        elif not self.final_seen or self.final_seen[-1] != digest:
            with self.seen:
                self.final_seen.append(digest)
                self.seen.notify_all()

    def run(self) -> None:
        try:
            self._poll()
        except BaseException as err:
            self.crashed = repr(err)
            raise
        finally:
            with self.seen:
                self.seen.notify_all()  # a waiter must not outlive the poller

    def _poll(self) -> None:
        while not self.stop.is_set():
            self.polls += 1
            try:
                for attrs in self.sftp.listdir_attr(self.directory):
                    path = f"{self.directory}/{attrs.filename}"
                    if attrs.filename == self.final_name:
                        self.check_final(path)
                    elif attrs.filename.endswith(TEMP_SUFFIX):
                        self.check_temp(path, attrs.st_size or 0)
            except (OSError, EOFError) as err:
                self.transient_errors.append(repr(err))  # renamed away mid-read: look again
                continue
            self.stop.wait(0.002)  # pacing, not synchronisation

    def wait_for_final(self, content: bytes, timeout: float = 60.0) -> None:
        """Wait until the observer has read ``content`` under the final name."""
        with self.seen:
            self.seen.wait_for(
                lambda: (self.final_seen and self.final_seen[-1] == sha256(content)) or not self.is_alive(),
                timeout,
            )
        assert self.final_seen and self.final_seen[-1] == sha256(content), (
            f"the observer did not see the expected content within {timeout}s: {self.transient_errors}, {self.crashed}"
        )

    def __enter__(self) -> Observer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=30)
        self.sftp.close()
        self.client.close()


def test_observer_never_sees_partial_final_and_temp_is_always_a_prefix(sshd, s3, bucket, remote_dir):
    data = os.urandom(48 * MiB + 12345)
    s3.put_object(Bucket=bucket, Key="daily/big.bin", Body=data)
    with Observer(sshd, remote_dir, "big.bin", data, [data]) as observer:
        # Small chunks make the transfer long enough for the observer to catch it mid-way.
        result = run(
            s3_bucket=bucket,
            s3_key="daily/big.bin",
            sftp_path=f"{remote_dir}/",
            tuning={"chunk_size": 256 * 1024},
        )
        observer.wait_for_final(data)
    assert observer.violations == []
    assert observer.temp_sizes, "the observer never caught the transfer in progress"
    assert min(observer.temp_sizes) < len(data)
    assert observer.final_seen == [sha256(data)]
    assert sha256((remote_dir / "big.bin").read_bytes()) == sha256(data)
    assert result["checksum"] == f"sha256:{sha256(data)}"
    assert leftovers(remote_dir) == []


def test_replace_shows_old_or_new_complete_file_only(sshd, s3, bucket, remote_dir):
    old, new = os.urandom(20 * MiB + 1), os.urandom(24 * MiB + 3)
    (remote_dir / "report.csv").write_bytes(old)
    s3.put_object(Bucket=bucket, Key="report.csv", Body=new)
    with Observer(sshd, remote_dir, "report.csv", new, [old, new]) as observer:
        observer.wait_for_final(old)  # a loaded machine may start the observer late
        result = run(
            s3_bucket=bucket,
            s3_key="report.csv",
            sftp_path=str(remote_dir / "report.csv"),
            tuning={"chunk_size": 256 * 1024},
        )
        observer.wait_for_final(new)
    assert observer.violations == []
    assert observer.final_seen == [sha256(old), sha256(new)], (observer.transient_errors, observer.crashed)
    assert (remote_dir / "report.csv").read_bytes() == new
    assert result["published_with"] == "posix-rename"


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [(0, 4 * MiB), (1, 4 * MiB), (3 * 65536 + 17, 65536), (5 * MiB + 7, MiB), (2 * MiB, MiB)],
    ids=["empty", "one-byte", "odd-multi-chunk", "multi-chunk-odd", "exact-chunks"],
)
def test_bytes_land_exactly(s3, bucket, remote_dir, size, chunk_size):
    data = os.urandom(size)
    s3.put_object(Bucket=bucket, Key="in/data.bin", Body=data)
    result = run(
        s3_bucket=bucket,
        s3_key="in/data.bin",
        sftp_path=str(remote_dir / "out.bin"),
        tuning={"chunk_size": chunk_size},
    )
    assert (remote_dir / "out.bin").read_bytes() == data
    assert result["size"] == size
    assert result["checksum"] == f"sha256:{sha256(data)}"
    assert leftovers(remote_dir) == []


@pytest.mark.parametrize(
    "name", ["with space.csv", "naïve файл 数据.bin", "semi;colon&amp.txt"], ids=["space", "unicode", "punct"]
)
def test_names_with_spaces_and_unicode(s3, bucket, remote_dir, name):
    data = os.urandom(1000)
    s3.put_object(Bucket=bucket, Key=f"dir with space/{name}", Body=data)
    run(s3_key=f"s3://{bucket}/dir with space/{name}", sftp_path=f"{remote_dir}/sub dir/", create_dirs=True)
    assert (remote_dir / "sub dir" / name).read_bytes() == data


@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "sha512", "md5", "blake2b"])
def test_checksum_algorithms_and_read_back_verification(s3, bucket, remote_dir, algorithm):
    data = os.urandom(3 * MiB + 5)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    result = run(
        s3_bucket=bucket, s3_key="k", sftp_path=str(remote_dir / "f"), checksum=algorithm, verify="checksum"
    )
    assert result["checksum"] == f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
    assert result["verified"] == "checksum"


def test_xcom_record_is_json_able_and_complete(s3, bucket, remote_dir):
    import json

    s3.put_object(Bucket=bucket, Key="x.json", Body=b"{}")
    result = run(s3_bucket=bucket, s3_key="x.json", sftp_path=f"{remote_dir}/")
    assert json.loads(json.dumps(result)) == result
    assert result["s3_uri"] == f"s3://{bucket}/x.json"
    assert result["sftp_path"] == f"{remote_dir}/x.json"
    assert {"size", "checksum", "seconds"} <= result.keys()
    assert result["source_check"] is not None  # moto stores a CRC32 and an MD5 ETag


def test_final_mode_applied_after_verification(s3, bucket, remote_dir):
    s3.put_object(Bucket=bucket, Key="m", Body=b"mode")
    run(s3_bucket=bucket, s3_key="m", sftp_path=str(remote_dir / "m"), file_mode=0o640)
    assert stat.S_IMODE((remote_dir / "m").stat().st_mode) == 0o640


def test_non_atomic_mode_writes_final_name_in_order(s3, bucket, remote_dir):
    data = os.urandom(2 * MiB)
    s3.put_object(Bucket=bucket, Key="n", Body=data)
    result = run(
        s3_bucket=bucket,
        s3_key="n",
        sftp_path=str(remote_dir / "n"),
        atomic=False,
        tuning={"strict_order": True},
    )
    assert (remote_dir / "n").read_bytes() == data
    assert result["published_with"] == "direct"


# ---- bad input: a clear error naming the thing, and nothing left on the server ----


def test_missing_key(s3, bucket, remote_dir):
    with pytest.raises(FileNotFoundError, match=rf"S3 object s3://{bucket}/nope/missing.csv does not exist"):
        run(s3_bucket=bucket, s3_key="nope/missing.csv", sftp_path=f"{remote_dir}/")
    assert list(remote_dir.iterdir()) == []


def test_missing_bucket(remote_dir):
    with pytest.raises(FileNotFoundError, match=r"S3 bucket 'no-such-bucket-x1' does not exist"):
        run(s3_bucket="no-such-bucket-x1", s3_key="a.csv", sftp_path=f"{remote_dir}/")
    assert list(remote_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("bucket_arg", "key", "message"),
    [
        (None, "", "Empty S3 key|No S3 bucket"),
        ("b-1", "", "Empty S3 key for bucket 'b-1'"),
        (None, "s3://only-bucket", "must name both a bucket and a key"),
        (None, "s3://only-bucket/", "must name both a bucket and a key"),
        (None, "plain-key", "No S3 bucket"),
        ("b-1", "s3://b-2/k", "s3_bucket must be None"),
    ],
)
def test_invalid_location(remote_dir, bucket_arg, key, message):
    with pytest.raises(ValueError, match=message):
        run(s3_bucket=bucket_arg, s3_key=key, sftp_path=f"{remote_dir}/")


def test_refused_login(sshd, s3, bucket, remote_dir, set_connection):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    set_connection("sftp_wrong_user", sshd.connection() | {"login": "nobody-here"})
    with pytest.raises(
        AuthenticationError, match=rf"127.0.0.1:{sshd.port} refused the login of user .nobody-here."
    ):
        run(s3_bucket=bucket, s3_key="k", sftp_path=f"{remote_dir}/", sftp_conn_id="sftp_wrong_user")
    assert list(remote_dir.iterdir()) == []


def test_unknown_host_key(sshd, s3, bucket, remote_dir, set_connection):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    set_connection("sftp_no_key", sshd.connection(host_key=None))
    with pytest.raises(HostKeyVerificationError, match=rf"Host key of SFTP server .*:{sshd.port} is unknown"):
        run(s3_bucket=bucket, s3_key="k", sftp_path=f"{remote_dir}/", sftp_conn_id="sftp_no_key")
    assert list(remote_dir.iterdir()) == []


def test_changed_host_key(sshd, s3, bucket, remote_dir, set_connection, tmp_path):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    other = paramiko.Ed25519Key.from_private_key_file(str(sshd.key_file))  # any other ed25519 key
    set_connection("sftp_other_key", sshd.connection(host_key=f"ssh-ed25519 {other.get_base64()}"))
    with pytest.raises(HostKeyVerificationError, match="does not match the one configured"):
        run(s3_bucket=bucket, s3_key="k", sftp_path=f"{remote_dir}/", sftp_conn_id="sftp_other_key")
    assert list(remote_dir.iterdir()) == []


def test_permission_denied_on_target_directory(s3, bucket, remote_dir):
    locked = remote_dir / "locked"
    locked.mkdir(mode=0o755)
    os.chown(locked, 0, 0) if os.geteuid() == 0 else locked.chmod(0o555)
    s3.put_object(Bucket=bucket, Key="k", Body=b"x" * 100)
    with pytest.raises(
        PermissionError, match=rf"SFTP create '{locked}/\.k\.[0-9a-f]{{12}}{TEMP_SUFFIX}' failed"
    ):
        run(s3_bucket=bucket, s3_key="k", sftp_path=f"{locked}/")
    assert list(locked.iterdir()) == []


def test_target_is_a_directory(s3, bucket, remote_dir):
    (remote_dir / "adir").mkdir()
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    with pytest.raises(IsADirectoryError, match=rf"SFTP target '{remote_dir}/adir' is a directory"):
        run(s3_bucket=bucket, s3_key="k", sftp_path=str(remote_dir / "adir"))
    assert leftovers(remote_dir) == []


def test_if_exists_fail(s3, bucket, remote_dir):
    (remote_dir / "keep.txt").write_bytes(b"old")
    s3.put_object(Bucket=bucket, Key="keep.txt", Body=b"new")
    with pytest.raises(FileExistsError, match="already exists"):
        run(s3_bucket=bucket, s3_key="keep.txt", sftp_path=f"{remote_dir}/", if_exists="fail")
    assert (remote_dir / "keep.txt").read_bytes() == b"old"
    assert leftovers(remote_dir) == []


def test_missing_directory_without_create_dirs(s3, bucket, remote_dir):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    with pytest.raises(FileNotFoundError, match=r"SFTP directory '.*/missing/deeper' does not exist"):
        run(s3_bucket=bucket, s3_key="k", sftp_path=f"{remote_dir}/missing/deeper/", create_dirs=False)
    assert list(remote_dir.iterdir()) == []


def test_create_dirs_makes_parents_and_logs_each(s3, bucket, remote_dir, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="airflow_s3sftp")
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    run(s3_bucket=bucket, s3_key="k", sftp_path=f"{remote_dir}/a/b/c/", create_dirs=True)
    assert (remote_dir / "a" / "b" / "c" / "k").read_bytes() == b"x"
    created = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Created SFTP directory")]
    assert created == [
        f"Created SFTP directory {remote_dir}/{p} (create_dirs=True)" for p in ("a", "a/b", "a/b/c")
    ]


def test_a_typo_in_the_directory_fails_by_default_and_creates_nothing(s3, bucket, remote_dir):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    with pytest.raises(
        FileNotFoundError,
        match=r"'.*/uplaod' does not exist: check the path for a typo, or set create_dirs=True",
    ):
        run(s3_bucket=bucket, s3_key="k", sftp_path=f"{remote_dir}/uplaod/")
    assert list(remote_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"verify": "everything"}, "verify must be"),
        ({"if_exists": "merge"}, "if_exists must be"),
        ({"checksum": "crc99"}, "Unsupported checksum algorithm 'crc99'"),
        ({"checksum": None, "verify": "checksum"}, "verify='checksum' needs a checksum"),
    ],
)
def test_invalid_options(s3, bucket, remote_dir, kwargs, message):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    with pytest.raises(ValueError, match=message):
        run(s3_bucket=bucket, s3_key="k", sftp_path=f"{remote_dir}/", **kwargs)
    assert list(remote_dir.iterdir()) == []


@pytest.mark.parametrize("key", ["evil/..", "evil/.", "back\\slash", "nul\x00byte", "trailing/"])
def test_keys_cannot_escape_the_target_directory(remote_dir, key):
    with pytest.raises(ValueError, match="safe remote file name"):
        run(s3_bucket="any-bucket", s3_key=key, sftp_path=f"{remote_dir}/")
    assert list(remote_dir.iterdir()) == []
