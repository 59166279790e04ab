"""Bad input that needs its own servers: IAM-checking S3, unreachable SFTP hosts and ports."""

from __future__ import annotations

import time
from collections.abc import Iterator

import boto3
import pytest

from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from testservers.processes import MotoServer, free_port, start_moto


@pytest.fixture(scope="module")
def iam_s3() -> Iterator[tuple[MotoServer, dict[str, str]]]:
    """A moto server that checks credentials and policies, with a bucket, an object and a user
    who may do nothing."""
    server = start_moto(enforce_iam_after=4)
    s3 = server.client()
    s3.create_bucket(Bucket="locked-bucket")
    s3.put_object(Bucket="locked-bucket", Key="secret.csv", Body=b"a,b\n")
    iam = boto3.client(
        "iam",
        endpoint_url=server.endpoint_url,
        aws_access_key_id="x",
        aws_secret_access_key="x",
        region_name="us-east-1",
    )
    iam.create_user(UserName="no-rights")
    key = iam.create_access_key(UserName="no-rights")["AccessKey"]
    yield server, {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    server.stop()


def aws_conn(server: MotoServer, key_id: str, secret: str) -> dict[str, object]:
    return {
        "conn_type": "aws",
        "login": key_id,
        "password": secret,
        "extra": {"endpoint_url": server.endpoint_url, "region_name": "us-east-1"},
    }


def run(**kwargs: object) -> dict[str, object]:
    return S3ToSFTPStreamOperator(task_id="t", **kwargs).execute(context={})  # type: ignore[arg-type]


def test_access_denied_on_s3(iam_s3, remote_dir, set_connection):
    server, key = iam_s3
    set_connection("aws_no_rights", aws_conn(server, key["id"], key["secret"]))
    with pytest.raises(
        PermissionError,
        match=r"Access to s3://locked-bucket/secret.csv denied: .* aws connection 'aws_no_rights'",
    ):
        run(
            s3_bucket="locked-bucket",
            s3_key="secret.csv",
            sftp_path=f"{remote_dir}/",
            aws_conn_id="aws_no_rights",
        )
    assert list(remote_dir.iterdir()) == []


def test_wrong_aws_credentials(iam_s3, remote_dir, set_connection):
    server, _ = iam_s3
    set_connection("aws_wrong", aws_conn(server, "AKIAWRONGWRONGWRONG1", "wrong-secret-value"))
    with pytest.raises(PermissionError, match=r"Access to s3://locked-bucket/secret.csv denied") as info:
        run(
            s3_bucket="locked-bucket",
            s3_key="secret.csv",
            sftp_path=f"{remote_dir}/",
            aws_conn_id="aws_wrong",
        )
    assert "wrong-secret-value" not in str(info.value)
    assert list(remote_dir.iterdir()) == []


def test_unknown_sftp_host(s3, bucket, remote_dir, sshd, set_connection):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    set_connection(
        "sftp_nowhere",
        sshd.connection()
        | {
            "host": "no-such-host.invalid",
            "extra": {"key_file": str(sshd.key_file), "conn_retry_attempts": 1},
        },
    )
    with pytest.raises(ConnectionError, match=r"no-such-host\.invalid"):
        run(s3_bucket=bucket, s3_key="k", sftp_path=f"{remote_dir}/", sftp_conn_id="sftp_nowhere")


def test_refused_port(s3, bucket, remote_dir, sshd, set_connection):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    port = free_port()  # nothing listens there
    set_connection("sftp_closed", sshd.connection() | {"port": port})
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"Cannot connect to SFTP server 127.0.0.1:{port}"):
        run(s3_bucket=bucket, s3_key="k", sftp_path=f"{remote_dir}/", sftp_conn_id="sftp_closed")
    assert time.monotonic() - started < 60
    assert list(remote_dir.iterdir()) == []
