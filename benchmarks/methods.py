# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""One benchmark transfer in a fresh process: ``python -m benchmarks.methods`` (run by the runner).

The runner passes the job as JSON in ``S3SFTP_BENCH`` (``@<path>``: in that file) and the Airflow connections ``bench_aws``
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
import threading
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


def peak_rss() -> int:
    """Return this process's peak RSS in bytes since it started or since :func:`reset_peak_rss`.

    ``VmHWM`` of ``/proc/self/status``, not ``getrusage().ru_maxrss``: Linux keeps in ``ru_maxrss``
    the peak of the image replaced by ``exec``, so a child started by a big parent (the benchmark's
    harness holds every object's digest) reports the parent's RSS as its own peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Start :func:`peak_rss` again from the current RSS (Linux ``clear_refs``); return False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


# -- the methods -----------------------------------------------------------------------------------


def _sftp_command(job: Job, batch: Path) -> list[str]:
    sftp = job["sftp"]
    return [
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


def openssh_sftp(job: Job) -> dict[str, Any]:
    """Put the local copy with OpenSSH's ``sftp -b``: the write-side limit of this server."""
    # Beside the source, so the temp-disk probe (TMPDIR) sees only what the method itself writes.
    batch = Path(job["local_source"]).with_suffix(".batch")
    batch.write_text(f'put "{job["local_source"]}" "{job["remote_path"]}"\n')
    subprocess.run(_sftp_command(job, batch), check=True, stdout=subprocess.DEVNULL)
    batch.unlink()
    return {}


class RequestCounter:
    """Count, in this process, SSH handshakes and SFTP requests by kind, and latency-bound round trips.

    A round trip is counted when a request leaves while no other request of that session is
    waiting for its reply: pipelined requests (writes behind writes) ride on the trip already
    counted, a request sent after waiting for the previous reply starts a new one. Measurement
    only: it wraps paramiko's private ``SFTPClient._async_request``, which every request goes through.
    """

    def __init__(self) -> None:
        import collections
        import threading

        self.requests: collections.Counter[str] = collections.Counter()
        self.trace: list[str] = []  # the first requests in order, "+" where a round trip starts
        self.round_trips = 0
        self.handshakes = 0
        self._lock = threading.Lock()

    def install(self) -> RequestCounter:
        import paramiko
        from paramiko.sftp import CMD_EXTENDED, CMD_NAMES

        counter = self
        send = paramiko.SFTPClient._async_request  # type: ignore[attr-defined]
        start_client = paramiko.Transport.start_client

        def _async_request(client: Any, fileobj: Any, kind: int, *args: Any) -> Any:
            name = CMD_NAMES.get(kind, str(kind))
            if kind == CMD_EXTENDED and args:
                name = f"extended:{args[0]}"
            with counter._lock:
                counter.requests[name] += 1
                waits = not len(client._expecting)
                if waits:
                    counter.round_trips += 1
                if len(counter.trace) < 200:
                    counter.trace.append(("+" if waits else "") + name.removeprefix("extended:"))
            return send(client, fileobj, kind, *args)

        def counted_start_client(transport: Any, *args: Any, **kwargs: Any) -> Any:
            with counter._lock:
                counter.handshakes += 1
            return start_client(transport, *args, **kwargs)

        paramiko.SFTPClient._async_request = _async_request  # type: ignore[attr-defined]
        paramiko.Transport.start_client = counted_start_client  # type: ignore[method-assign]
        return self

    def report(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "round_trips": self.round_trips,
            "ssh_handshakes": self.handshakes,
            "trace": self.trace,
        }


def _files_batch(job: Job) -> Path:
    batch = Path(job["local_dir"]) / "put.batch"
    lines = [f'put "{local}" "{remote}"' for local, remote in job["files"]]
    batch.write_text("\n".join(lines) + "\n")
    return batch


def many_openssh(job: Job) -> dict[str, Any]:
    """Put every local copy over one ``sftp -b`` connection: the reference for many small files."""
    batch = _files_batch(job)
    subprocess.run(_sftp_command(job, batch), check=True, stdout=subprocess.DEVNULL)
    batch.unlink()
    return {"files": len(job["files"])}


def many_rclone(job: Job) -> dict[str, Any]:
    """``rclone copy`` of the prefix (or of the listed subset) from S3 to the SFTP directory."""
    command = [
        shutil.which("rclone") or "rclone",
        "copy",
        f"src:{job['bucket']}/{job['prefix']}",
        f"dst:{job['remote_dir']}",
    ]
    if job.get("subset"):
        listing = Path(job["local_dir"]) / "rclone.files"
        listing.write_text("\n".join(key[len(job["prefix"]) :] for key in job["keys"]) + "\n")
        command += ["--files-from", str(listing)]
    subprocess.run(command, check=True, env=_rclone_env(job))
    return {"files": len(job["keys"])}


def many_stock(job: Job) -> dict[str, Any]:
    """Loop the amazon provider's ``S3ToSFTPOperator`` over the keys, one operator per key."""
    from airflow.providers.amazon.aws.transfers.s3_to_sftp import S3ToSFTPOperator

    for number, key in enumerate(job["keys"]):
        S3ToSFTPOperator(
            task_id=f"stock_{number}",
            s3_bucket=job["bucket"],
            s3_key=key,
            sftp_path=f"{job['remote_dir']}/{key[len(job['prefix']) :]}",
            sftp_conn_id=SFTP_CONN_ID,
            aws_conn_id=AWS_CONN_ID,
        ).execute(context={})  # type: ignore[arg-type]
    return {"files": len(job["keys"])}


def many_ours(job: Job) -> dict[str, Any]:
    """``S3ToSFTPStreamOperator(s3_prefix=...)`` with its defaults, counting SFTP requests."""
    from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator

    counter = RequestCounter().install()
    operator = S3ToSFTPStreamOperator(
        task_id="ours_many",
        s3_bucket=job["bucket"],
        s3_prefix=job["prefix"],
        sftp_path=job["remote_dir"] + "/",
        aws_conn_id=AWS_CONN_ID,
        sftp_conn_id=SFTP_CONN_ID,
        **job.get("variant", {}).get("op", {}),
    )
    summary = operator.execute(context={})  # type: ignore[arg-type]
    return {
        "files": summary["count"] - summary["failed_count"],
        "record": None,  # the records go to a report (report=) when one is asked for, not into XCom
        "sftp": counter.report(),
    }


def _frames(frame: Any) -> list[Any]:
    """Return ``frame`` and its callers, innermost first."""
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    return frames


def scale_ours(job: Job) -> dict[str, Any]:
    """``S3ToSFTPStreamOperator(s3_prefix=..., report=...)`` over many small objects: the XCom's size."""
    from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator

    def operator_for(prefix: str, remote_dir: str, report: str | None) -> S3ToSFTPStreamOperator:
        return S3ToSFTPStreamOperator(
            task_id="ours_scale",
            s3_bucket=job["bucket"],
            s3_prefix=prefix,
            sftp_path=remote_dir + "/",
            aws_conn_id=AWS_CONN_ID,
            sftp_conn_id=SFTP_CONN_ID,
            report=report,
            **job.get("variant", {}).get("op", {}),
        )

    traced = os.environ.get("S3SFTP_BENCH_TRACEMALLOC") == "1"
    import tracemalloc

    # S3SFTP_BENCH_SAMPLE=<seconds>: RSS sampled that often while the task runs; a timeline every 5 s of
    # RSS, threads (and traced memory), and the thread stacks each time the RSS reaches a new high.
    timeline: list[tuple[float, float, int, float]] = []
    stop_sampling = threading.Event()

    # Each time the peak RSS passes its highest by 2 MiB: when, and what every thread was doing then.
    highs: list[dict[str, Any]] = []

    def sample(every: float) -> None:
        me = psutil.Process()
        high = psutil.Process().memory_info().rss
        last_logged = -5.0
        while not stop_sampling.wait(every):
            # The high-water mark: a peak shorter than the sampling interval still moves it.
            rss = max(me.memory_info().rss, peak_rss())
            now = time.monotonic() - (started or sampling_from)
            if rss > high + 2 * 2**20 and len(highs) < 40:
                high = rss
                highs.append(
                    {
                        "t": round(now, 2),
                        "phase": "task" if started else "warm-up",
                        "rss_mib": round(rss / 2**20, 1),
                        "stacks": [
                            " <- ".join(
                                f"{Path(f.f_code.co_filename).name}:{f.f_lineno}:{f.f_code.co_name}"
                                for f in _frames(frame)[:8]
                            )
                            for frame in sys._current_frames().values()
                        ],
                    }
                )
            if now - last_logged >= 5:
                last_logged = now
                traced_mib = tracemalloc.get_traced_memory()[0] / 2**20 if traced else 0.0
                timeline.append(
                    (round(now, 1), round(rss / 2**20, 1), me.num_threads(), round(traced_mib, 1))
                )

    sampling_from, started = time.monotonic(), 0.0
    if every := float(os.environ.get("S3SFTP_BENCH_SAMPLE", "0")):
        threading.Thread(target=sample, args=(every,), daemon=True).start()
    # A small delivery first, in this process: lazy imports, clients, threads and sessions are then
    # there, so the RSS growth measured below is what the object count costs.
    warm_up = operator_for(job["warm_up_prefix"], job["warm_up_dir"], job.get("warm_up_report"))
    peak_before_warm_up = peak_rss()
    warm_up.execute(context={})  # type: ignore[arg-type]
    peak_before_task = peak_rss()
    peak_reset = reset_peak_rss()  # the task's own peak, not the warm-up's
    rss_warm = psutil.Process().memory_info().rss
    # S3SFTP_BENCH_TRACEMALLOC=1: where the memory the task still holds at its end was allocated.
    if traced:
        tracemalloc.start(8)
        before = tracemalloc.take_snapshot()
    started = time.monotonic()
    counter = RequestCounter().install()
    operator = operator_for(job["prefix"], job["remote_dir"], job.get("report"))
    summary = operator.execute(context={})  # type: ignore[arg-type]
    seconds = time.monotonic() - started
    stop_sampling.set()
    peak = peak_rss()
    held: list[str] = []
    if traced:
        stats = tracemalloc.take_snapshot().compare_to(before, "traceback")
        held = [
            f"{stat.size_diff / 2**20:.1f} MiB in {stat.count_diff} blocks:\n  "
            + "\n  ".join(stat.traceback.format()[-8:])
            for stat in stats[:12]
        ]
        tracemalloc.stop()
    return {
        "timeline": timeline,
        "rss_highs": highs,
        "tracemalloc_top": held,
        "files": summary["count"] - summary["failed_count"],
        "summary": summary,
        "xcom_bytes": len(json.dumps(summary)),
        "task_seconds": round(seconds, 3),
        "rss_after_warm_up_mib": round(rss_warm / 2**20, 1),
        "peak_rss_before_warm_up_mib": round(peak_before_warm_up / 2**20, 1),
        "peak_rss_before_task_mib": round(peak_before_task / 2**20, 1),
        "peak_reset_after_warm_up": peak_reset,
        "rss_growth_after_warm_up_mib": round((peak - rss_warm) / 2**20, 1),
        "sftp": counter.report(),
    }


def imports_only(job: Job) -> dict[str, Any]:
    """Do nothing after the imports: the RSS and CPU baseline of a task process."""
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


def _rclone_env(job: Job) -> dict[str, str]:
    """Return the environment configuring ``src:`` (S3) and ``dst:`` (SFTP) remotes for rclone.

    The CA bundle variables these machines export make rclone's S3 client fail to start against
    a plain-http endpoint (FIELD_NOTES), so they are cleared for the child.
    """
    sftp = job["sftp"]
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE")}
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
    return env


def rclone(job: Job) -> dict[str, Any]:
    """``rclone copyto`` from an S3 remote to an SFTP remote, both configured by environment."""
    subprocess.run(
        [
            shutil.which("rclone") or "rclone",
            "copyto",
            f"src:{job['bucket']}/{job['key']}",
            f"dst:{job['remote_path']}",
        ],
        check=True,
        env=_rclone_env(job),
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
    if patches.get("no_botocore_checksum"):
        # botocore >= 1.36 validates GetObject's checksum itself ("when_supported"): a second
        # sha256/crc pass over bytes the delivery hashes and checks against S3's checksum anyway.
        os.environ["AWS_RESPONSE_CHECKSUM_VALIDATION"] = "when_required"
    operator = S3ToSFTPStreamOperator(
        task_id="ours",
        s3_bucket=job["bucket"],
        s3_key=job["key"],
        sftp_path=job["remote_path"],
        aws_conn_id=AWS_CONN_ID,
        sftp_conn_id=SFTP_CONN_ID,
        **variant.get("op", {}),
    )
    counter = RequestCounter().install()
    if variant.get("no_source_check"):
        # The operator's own path with a hook whose sources carry none of S3's integrity data.
        hook = _unchecked_source_hook()(aws_conn_id=AWS_CONN_ID, sftp_conn_id=SFTP_CONN_ID)
        options = operator.delivery_options()
        record = hook.stream_object(job["bucket"], job["key"], job["remote_path"], options)
    else:
        record = operator.execute(context={})  # type: ignore[arg-type]
    return {"record": record, "sftp": counter.report()}


def _unchecked_source_hook() -> type:
    """Return an ``S3ToSFTPHook`` whose sources offer no S3 checksum or ETag to check (measurement only)."""
    import dataclasses

    from airflow_s3sftp.hooks.s3_sftp import S3ToSFTPHook

    class UncheckedSourceHook(S3ToSFTPHook):
        def source(self, bucket: str, key: str) -> Any:
            return dataclasses.replace(super().source(bucket, key), head={})

    return UncheckedSourceHook


# -- inbound (SFTP -> S3) ----------------------------------------------------------------------


def _s3_client(job: Job) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=job["s3_endpoint"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def in_openssh_get(job: Job) -> dict[str, Any]:
    """OpenSSH ``sftp -b get`` of the remote file(s) to local disk: the read-side limit."""
    target = Path(job["local_target"])
    batch = target.parent / f"{target.name}.batch"
    remote = (
        job["remote_path"] if job.get("files") else f'"{job["remote_path"]}"'
    )  # a glob must stay unquoted
    batch.write_text(f'get {remote} "{target}"\n')
    subprocess.run(_sftp_command(job, batch), check=True, stdout=subprocess.DEVNULL)
    batch.unlink()
    return {}


def in_boto3_upload(job: Job) -> dict[str, Any]:
    """boto3 ``upload_file`` of a local copy to the same S3: the write-side limit."""
    _s3_client(job).upload_file(job["local_source"], job["bucket"], job["key"])
    return {}


def in_stock(job: Job) -> dict[str, Any]:
    """The amazon provider's ``SFTPToS3Operator`` (``use_temp_file`` from the variant)."""
    from airflow.providers.amazon.aws.transfers.sftp_to_s3 import SFTPToS3Operator

    variant = job.get("variant", {})
    for remote, key in job.get("files") or [(job["remote_path"], job["key"])]:
        SFTPToS3Operator(
            task_id="stock",
            sftp_conn_id=SFTP_CONN_ID,
            sftp_path=remote,
            s3_conn_id=AWS_CONN_ID,
            s3_bucket=job["bucket"],
            s3_key=key,
            use_temp_file=variant.get("use_temp_file", True),
        ).execute(context={})  # type: ignore[arg-type]
    return {}


def in_rclone(job: Job) -> dict[str, Any]:
    """``rclone copyto`` (one file) or ``rclone copy`` (a directory) from SFTP to S3."""
    command = (
        ["copy", f"dst:{job['remote_dir']}", f"src:{job['bucket']}/{job['prefix']}"]
        if job.get("files")
        else ["copyto", f"dst:{job['remote_path']}", f"src:{job['bucket']}/{job['key']}"]
    )
    subprocess.run([shutil.which("rclone") or "rclone", *command], check=True, env=_rclone_env(job))
    return {}


def in_ours(job: Job) -> dict[str, Any]:
    """``SFTPToS3StreamOperator``: one file with its expected checksum, or a glob into a prefix."""
    from airflow_s3sftp.operators.sftp_to_s3 import SFTPToS3StreamOperator

    variant = job.get("variant", {})
    where = (
        {"sftp_path": job["remote_dir"] + "/*", "s3_prefix": job["prefix"]}
        if job.get("files")
        else {
            "sftp_path": job["remote_path"],
            "s3_key": job["key"],
            "expected_checksum": "sha256:" + job["sha256"],
        }
    )
    operator = SFTPToS3StreamOperator(
        task_id="ours",
        s3_bucket=job["bucket"],
        aws_conn_id=AWS_CONN_ID,
        sftp_conn_id=SFTP_CONN_ID,
        **where,
        **variant.get("op", {}),
    )
    counter = RequestCounter().install()
    record = operator.execute(context={})  # type: ignore[arg-type]
    if job.get("files"):
        record = {k: v for k, v in record.items() if k != "failed"}
    return {"record": record, "sftp": counter.report()}


METHODS: dict[str, Callable[[Job], dict[str, Any]]] = {
    "openssh-sftp": openssh_sftp,
    "stock": stock_operator,
    "putfo": paramiko_putfo,
    "rclone": rclone,
    "ours": ours,
    "imports": imports_only,
    "many-openssh": many_openssh,
    "many-rclone": many_rclone,
    "many-stock": many_stock,
    "many-ours": many_ours,
    "scale-ours": scale_ours,
    "in-openssh-get": in_openssh_get,
    "in-boto3-upload": in_boto3_upload,
    "in-stock": in_stock,
    "in-rclone": in_rclone,
    "in-ours": in_ours,
}


def _warm_up(kind: str) -> None:
    """Import what the method will use before the clock starts, so RSS growth is the transfer's own."""
    if kind in (
        "putfo",
        "stock",
        "ours",
        "imports",
        "many-stock",
        "many-ours",
        "scale-ours",
        "in-boto3-upload",
        "in-stock",
        "in-ours",
    ):
        import boto3
        import paramiko  # noqa: F401

        boto3.session.Session().client("s3", region_name="us-east-1")  # loads the S3 service model
    if kind in ("stock", "many-stock"):
        import airflow.providers.amazon.aws.transfers.s3_to_sftp
    if kind in ("ours", "imports", "many-ours"):
        import airflow_s3sftp.operators.s3_to_sftp
    if kind == "in-stock":
        import airflow.providers.amazon.aws.transfers.sftp_to_s3  # noqa: F401
    if kind == "in-ours":
        import airflow_s3sftp.operators.sftp_to_s3  # noqa: F401


def _sample_stacks(path: str) -> None:
    """Count, every 20 ms, where each thread is (innermost frames of the package and paramiko) into ``path``.

    A poor man's profiler for machines without py-spy (``S3SFTP_BENCH_STACKS=<file>``): it shows
    where threads wait, which is what a long link is about.
    """
    import atexit
    import collections
    import threading
    import traceback

    counts: collections.Counter[str] = collections.Counter()

    def sample() -> None:
        names = {
            t.ident: t.name.split("-")[0] + "-" + t.name.split("-")[1] if "-" in t.name else t.name
            for t in threading.enumerate()
        }
        for ident, frame in sys._current_frames().items():
            if ident == threading.get_ident():
                continue
            stack = traceback.extract_stack(frame)
            ours = [f for f in stack if "airflow_s3sftp" in f.filename][-3:]  # the package's innermost
            where = " < ".join(
                f"{Path(f.filename).name}:{f.name}:{f.lineno}" for f in reversed([*ours, *stack[-2:]])
            )
            counts[f"{names.get(ident, ident)} | {where}"] += 1

    def loop() -> None:
        while True:
            sample()
            time.sleep(0.02)

    threading.Thread(target=loop, daemon=True, name="stack-sampler").start()
    atexit.register(
        lambda: Path(path).write_text("\n".join(f"{n:6d} {k}" for k, n in counts.most_common(60)) + "\n")
    )


def main() -> int:
    if stacks := os.environ.get("S3SFTP_BENCH_STACKS"):
        _sample_stacks(stacks)
    raw = os.environ["S3SFTP_BENCH"]
    job: Job = json.loads(Path(raw[1:]).read_text() if raw.startswith("@") else raw)
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
        "peak_rss_mib": round(peak_rss() / 2**20, 1),
        "children_peak_rss_mib": _mib(children_after.ru_maxrss),
        **extra,
    }
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
