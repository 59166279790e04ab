"""S3ToSFTPHook's reading of S3's refusals, for what moto does not enforce (SSE-C keys)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from airflow_s3sftp.hooks.s3_sftp import S3ToSFTPHook

KEY = "s3sftp-customer-key-0123456789ab"


def refused(code: str, operation: str = "HeadObject") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "refused"}}, operation)


@pytest.mark.parametrize("code", ["400", "InvalidRequest"])
def test_an_sse_c_read_without_a_key_says_where_the_key_goes(code):
    hook = S3ToSFTPHook(aws_conn_id=None)
    with (
        pytest.raises(
            PermissionError, match=r"S3 refused to read s3://b/k .*SSECustomerKey in the extra_args"
        ),
        hook._reading("b", "k"),
    ):
        raise refused(code)


def test_a_refused_read_with_a_key_names_the_key_and_never_shows_it():
    hook = S3ToSFTPHook(
        aws_conn_id=None, extra_args={"SSECustomerAlgorithm": "AES256", "SSECustomerKey": KEY}
    )
    with (
        pytest.raises(PermissionError, match="SSE-C customer key is this object's") as info,
        hook._reading("b", "k"),
    ):
        raise refused("403")
    assert KEY not in str(info.value)
    # A key was given: a 400 is S3's own answer, not a missing key.
    with pytest.raises(ClientError), hook._reading("b", "k"):
        raise refused("400")


def test_read_args_keep_only_what_a_read_takes():
    hook = S3ToSFTPHook(
        aws_conn_id=None,
        requester_pays=True,
        extra_args={
            "SSECustomerAlgorithm": "AES256",
            "SSECustomerKey": KEY,
            "ACL": "private",
            "ServerSideEncryption": "AES256",
        },
    )
    assert hook.s3_read_args == {
        "SSECustomerAlgorithm": "AES256",
        "SSECustomerKey": KEY,
        "RequestPayer": "requester",
    }
    assert S3ToSFTPHook(aws_conn_id=None).s3_read_args == {}
