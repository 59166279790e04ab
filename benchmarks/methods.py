# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""One benchmark transfer in a fresh process: ``python -m benchmarks.methods`` (run by the runner).

The runner passes the job as JSON in ``S3SFTP_BENCH`` and the Airflow connections ``bench_aws``
and ``bench_sftp`` as ``AIRFLOW_CONN_*`` variables. The last stdout line is ``BENCH-RESULT {json}``:
wall time of the transfer alone (imports and process start excluded), CPU time and RSS of this
process (and of its children, for the OpenSSH client), and per-phase times where they exist.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

RESULT_PREFIX = "BENCH-RESULT "
AWS_CONN_ID = "bench_aws"
SFTP_CONN_ID = "bench_sftp"
Job = dict[str, Any]


def _mib(kib: float) -> float:
    return round(kib / 1024, 1)


# -- the methods -----------------------------------------------------------------------------------


def openssh_sftp(job: Job) -> dict[str, Any]:
    """Put the local copy with OpenSSH's ``sftp -b``: the write-side limit of this server."""
    sftp = job["sftp"]
    # Beside the source, so the temp-disk probe (TMPDIR) sees only what the method itself writes.
    batch = Path(job["local_source"]).with_suffix(".batch")
    batch.write_text(f'put "{job["local_source"]}" "{job["remote_path"]}"\n')
    command = [
        shutil.which("sftp") or "sftp",
        "-b",
        str(batch),
        "-P",
        str(sftp["port"]),
        "-i",
        sftp["key_file"],
        "-o",
        "Compression=no",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={sftp['known_hosts']}",
        f"{sftp['user']}@127.0.0.1",
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    batch.unlink()
    return {}


def _paramiko_client(job: Job) -> Any:
    import base64

    import paramiko

    sftp = job["sftp"]
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key_type, key_data = sftp["host_key"].split()
    client.get_host_keys().add(
        f"[127.0.0.1]:{sftp['port']}",
        key_type,
        paramiko.PKey.from_type_string(key_type, base64.b64decode(key_data)),
    )
    client.connect(
        "127.0.0.1",
        port=sftp["port"],
        username=sftp["user"],
        key_filename=sftp["key_file"],
        look_for_keys=False,
        allow_agent=False,
    )
    return client


def paramiko_putfo(job: Job) -> dict[str, Any]:
    """The hand-written streaming version: ``sftp.putfo(s3.get_object()["Body"])``."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=job["s3_endpoint"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client = _paramiko_client(job)
    try:
        sftp = client.open_sftp()
        body = s3.get_object(Bucket=job["bucket"], Key=job["key"])["Body"]
        sftp.putfo(body, job["remote_path"])
        sftp.close()
    finally:
        client.close()
    return {}


def stock_operator(job: Job) -> dict[str, Any]:
    """The amazon provider's ``S3ToSFTPOperator``: download to a temp file, then ``put`` it."""
    import paramiko
    from airflow.providers.amazon.aws.transfers.s3_to_sftp import S3ToSFTPOperator
    from boto3.s3.transfer import S3Transfer  # noqa: F401 - loads the class the client method uses

    phases: dict[str, float] = {}

    def timed(owner: Any, name: str, phase: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return original(*args, **kwargs)
            finally:
                phases[phase] = round(phases.get(phase, 0.0) + time.monotonic() - started, 3)

        setattr(owner, name, wrapper)

    # Timing only: splits the stock operator's time into its S3 download and its SFTP put.
    import boto3.s3.inject

    timed(boto3.s3.inject, "download_file", "download_s")
    timed(paramiko.SFTPClient, "put", "put_s")
    operator = S3ToSFTPOperator(
        task_id="stock",
        s3_bucket=job["bucket"],
        s3_key=job["key"],
        sftp_path=job["remote_path"],
        sftp_conn_id=SFTP_CONN_ID,
        aws_conn_id=AWS_CONN_ID,
    )
    operator.execute(context={})  # type: ignore[arg-type]
    return {"phases": phases}


def rclone(job: Job) -> dict[str, Any]:
    """``rclone copyto`` from an S3 remote to an SFTP remote, both configured by environment."""
    sftp = job["sftp"]
    env = dict(os.environ)
    env.update(
        RCLONE_CONFIG_SRC_TYPE="s3",
        RCLONE_CONFIG_SRC_PROVIDER="Other",
        RCLONE_CONFIG_SRC_ENDPOINT=job["s3_endpoint"],
        RCLONE_CONFIG_SRC_ACCESS_KEY_ID="testing",
        RCLONE_CONFIG_SRC_SECRET_ACCESS_KEY="testing",
        RCLONE_CONFIG_SRC_REGION="us-east-1",
        RCLONE_CONFIG_DST_TYPE="sftp",
        RCLONE_CONFIG_DST_HOST="127.0.0.1",
        RCLONE_CONFIG_DST_PORT=str(sftp["port"]),
        RCLONE_CONFIG_DST_USER=sftp["user"],
        RCLONE_CONFIG_DST_KEY_FILE=sftp["key_file"],
        RCLONE_CONFIG_DST_KNOWN_HOSTS_FILE=sftp["known_hosts"],
    )
    subprocess.run(
        [
            shutil.which("rclone") or "rclone",
            "copyto",
            f"src:{job['bucket']}/{job['key']}",
            f"dst:{job['remote_path']}",
        ],
        check=True,
        env=env,
    )
    return {}


def _patch_window(window: int, packet: int) -> None:
    """Open the SFTP channel with a larger paramiko window and packet size (measurement only)."""
    import paramiko

    original = paramiko.SSHClient.open_sftp

    def open_sftp(self: paramiko.SSHClient) -> paramiko.SFTPClient:
        transport = self.get_transport()
        if transport is not None:
            transport.default_window_size = window
            transport.default_max_packet_size = packet
        return original(self)

    paramiko.SSHClient.open_sftp = open_sftp  # type: ignore[method-assign]


def ours(job: Job) -> dict[str, Any]:
    """``S3ToSFTPStreamOperator`` with the variant's arguments (and measurement-only patches)."""
    from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator

    variant = job.get("variant", {})
    patches = variant.get("patches", {})
    if "window" in patches:
        _patch_window(**patches["window"])
    if patches.get("no_source_check"):
        from airflow_s3sftp.core import delivery

        delivery.choose_source_check = lambda head, preferred=None: None  # type: ignore[assignment]
    overrides = variant.get("options", {})
    if overrides:
        original = S3ToSFTPStreamOperator.delivery_options

        def delivery_options(self: S3ToSFTPStreamOperator) -> Any:
            from airflow_s3sftp.core.options import DeliveryOptions

            return DeliveryOptions.from_flat(**{**original(self).flat(), **overrides})

        S3ToSFTPStreamOperator.delivery_options = delivery_options  # type: ignore[method-assign]

    operator = S3ToSFTPStreamOperator(
        task_id="ours",
        s3_bucket=job["bucket"],
        s3_key=job["key"],
        sftp_path=job["remote_path"],
        aws_conn_id=AWS_CONN_ID,
        sftp_conn_id=SFTP_CONN_ID,
        **variant.get("op", {}),
    )
    record = operator.execute(context={})  # type: ignore[arg-type]
    return {"record": record}


METHODS: dict[str, Callable[[Job], dict[str, Any]]] = {
    "openssh-sftp": openssh_sftp,
    "stock": stock_operator,
    "putfo": paramiko_putfo,
    "rclone": rclone,
    "ours": ours,
}


def _warm_up(kind: str) -> None:
    """Import what the method will use before the clock starts, so RSS growth is the transfer's own."""
    if kind in ("putfo", "stock", "ours"):
        import boto3
        import paramiko  # noqa: F401

        boto3.session.Session().client("s3", region_name="us-east-1")  # loads the S3 service model
    if kind == "stock":
        import airflow.providers.amazon.aws.transfers.s3_to_sftp  # noqa: F401
    if kind == "ours":
        import airflow_s3sftp.operators.s3_to_sftp  # noqa: F401


def main() -> int:
    job: Job = json.loads(os.environ["S3SFTP_BENCH"])
    run = METHODS[job["kind"]]
    _warm_up(job["kind"])

    me = psutil.Process()
    rss_before = me.memory_info().rss
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    extra = run(job)
    seconds = time.monotonic() - started
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
        "seconds": round(seconds, 3),
        "cpu_s": round(
            self_after.ru_utime - self_before.ru_utime + self_after.ru_stime - self_before.ru_stime, 3
        ),
        "children_cpu_s": round(
            children_after.ru_utime
            - children_before.ru_utime
            + children_after.ru_stime
            - children_before.ru_stime,
            3,
        ),
        "rss_before_mib": round(rss_before / 2**20, 1),
        "peak_rss_mib": _mib(self_after.ru_maxrss),
        "children_peak_rss_mib": _mib(children_after.ru_maxrss),
        **extra,
    }
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
