"""Security defaults: secrets never reach logs, errors or XCom; host keys checked; private temp files."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time

import pytest

from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from testservers.processes import TEST_PASSWORD

MiB = 1024 * 1024
AWS_SECRET = "AwsSecretKey-Do-Not-Log-7f3a9c"


@pytest.mark.requires_root  # logs in with the random password of the test user that root creates
def test_secrets_never_reach_logs_errors_or_xcom(
    sshd, moto, s3, bucket, remote_dir, set_connection, caplog, capfd
):
    set_connection(
        "sftp_password", sshd.connection(key_file=None, look_for_keys="false") | {"password": TEST_PASSWORD}
    )
    aws = moto.connection()
    aws["password"] = AWS_SECRET
    set_connection("aws_secret", aws)
    data = os.urandom(MiB)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    caplog.set_level(logging.DEBUG)

    op = S3ToSFTPStreamOperator(
        task_id="t",
        s3_bucket=bucket,
        s3_key="k",
        sftp_path=f"{remote_dir}/",
        sftp_conn_id="sftp_password",
        aws_conn_id="aws_secret",
    )
    xcom = op.execute(context={})  # type: ignore[arg-type]
    assert (remote_dir / "k").read_bytes() == data

    errors = []
    for key, sftp_path, expected in (
        ("missing", f"{remote_dir}/", FileNotFoundError),  # S3 error path
        ("k", f"{remote_dir}/nope/x/", FileNotFoundError),  # SFTP error path (create_dirs=False)
    ):
        failing = S3ToSFTPStreamOperator(
            task_id="t",
            s3_bucket=bucket,
            s3_key=key,
            sftp_path=sftp_path,
            create_dirs=False,
            sftp_conn_id="sftp_password",
            aws_conn_id="aws_secret",
        )
        with pytest.raises(expected, match="does not exist") as info:
            failing.execute(context={})  # type: ignore[arg-type]
        errors.append(
            "".join(repr(e) + str(e) for e in (info.value, info.value.__cause__, info.value.__context__))
        )
    wrong = sshd.connection(key_file=None, look_for_keys="false") | {"password": TEST_PASSWORD + "-wrong"}
    set_connection("sftp_wrong_password", wrong)
    with pytest.raises(PermissionError) as info:
        S3ToSFTPStreamOperator(
            task_id="t",
            s3_bucket=bucket,
            s3_key="k",
            sftp_path=f"{remote_dir}/",
            sftp_conn_id="sftp_wrong_password",
        ).execute(context={})  # type: ignore[arg-type]
    errors.append(str(info.value) + repr(info.value.__cause__))

    out, err = capfd.readouterr()
    emitted = "\n".join([caplog.text, out, err, json.dumps(xcom), *errors])
    assert len(caplog.records) > 5
    for secret in (TEST_PASSWORD, AWS_SECRET):
        assert secret not in emitted


def test_no_host_key_check_only_when_the_connection_says_so_and_it_warns(
    sshd, s3, bucket, remote_dir, set_connection, caplog
):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    set_connection("sftp_trusting", sshd.connection(host_key=None, no_host_key_check="true"))
    caplog.set_level(logging.WARNING)
    S3ToSFTPStreamOperator(
        task_id="t", s3_bucket=bucket, s3_key="k", sftp_path=f"{remote_dir}/", sftp_conn_id="sftp_trusting"
    ).execute(context={})  # type: ignore[arg-type]
    assert (remote_dir / "k").read_bytes() == b"x"
    assert "sets no_host_key_check: the host key of 127.0.0.1" in caplog.text


def test_temp_file_is_private_until_verified(sshd, s3, bucket, remote_dir):
    data = os.urandom(24 * MiB)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    modes: list[int] = []

    def watch() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (remote_dir / "k").exists():
            try:
                temp = next(remote_dir.glob(".k.*.s3sftp-part"), None)
                if temp is not None and temp.stat().st_size > 0:
                    modes.append(stat.S_IMODE(temp.stat().st_mode))
            except FileNotFoundError:
                pass
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    S3ToSFTPStreamOperator(
        task_id="t",
        s3_bucket=bucket,
        s3_key="k",
        sftp_path=f"{remote_dir}/",
        tuning={"chunk_size": 256 * 1024},
        file_mode=0o644,
    ).execute(context={})  # type: ignore[arg-type]
    watcher.join()
    assert modes, "never saw the temp file with data in it"
    assert set(modes) <= {0o600, 0o644}  # 0o644 only in the instant after verification, before the rename
    assert modes[0] == 0o600
    assert stat.S_IMODE((remote_dir / "k").stat().st_mode) == 0o644
