# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""A real CeleryExecutor deployment: the deployment fixture plus Redis and named Celery workers.

:func:`running_redis` starts Debian's ``redis-server`` on a free loopback port with its own
configuration (no persistence, no protected mode off loopback). :func:`running_celery_deployment` runs
the api-server, scheduler, dag-processor and triggerer of
:mod:`tests.integration.deployment.airflow_deployment` with ``CeleryExecutor`` on that Redis (broker and
result backend) and ``airflow celery worker`` processes, each in its own session, each reporting its
own name as the task instances' ``hostname`` (so a test sees which worker ran what).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.integration.deployment.airflow_deployment import REPO, Deployment, running_deployment
from testservers.processes import free_port

# Imported by the workers (their PYTHONPATH has the deployment home): the hostname a task instance records.
HOSTNAME_MODULE = """import os


def hostname():
    return os.environ["S3SFTP_WORKER_NAME"]
"""


@dataclass
class Redis:
    port: int
    process: subprocess.Popen[bytes]
    home: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def ping(self) -> bool:
        import redis

        with contextlib.closing(redis.Redis(port=self.port, socket_timeout=2)) as client:
            return bool(client.ping())


@contextlib.contextmanager
def running_redis(timeout: float = 15) -> Iterator[Redis]:
    """Start ``redis-server`` on 127.0.0.1 and a free port (no RDB, no AOF); stop it after."""
    home = Path(tempfile.mkdtemp(prefix="s3sftp-redis-"))
    port = free_port()
    config = home / "redis.conf"
    config.write_text(
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {port}",
                f"dir {home}",
                'save ""',
                "appendonly no",
                "daemonize no",
                f"logfile {home / 'redis.log'}",
                "databases 4",
            ]
        )
        + "\n"
    )
    process = subprocess.Popen(
        ["redis-server", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    redis = Redis(port=port, process=process, home=home)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                log = (home / "redis.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"redis-server exited with {process.returncode}:\n{log}")
            with contextlib.suppress(Exception):
                if redis.ping():
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not answer PING on port {port} within {timeout}s")
            time.sleep(0.1)
        yield redis
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        shutil.rmtree(home, ignore_errors=True)


def worker_component(name: str, concurrency: int) -> tuple[list[str], dict[str, str]]:
    """Return the arguments and environment of one ``airflow celery worker`` named ``name``."""
    return (
        [
            "celery",
            "worker",
            "--concurrency",
            str(concurrency),
            "--celery-hostname",
            f"{name}@%h",
            # Two workers on one machine would both serve logs on one port; the logs are local files here.
            "--skip-serve-logs",
        ],
        {
            "S3SFTP_WORKER_NAME": name,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "s3sftp_worker_name.hostname",
        },
    )


@contextlib.contextmanager
def running_celery_deployment(
    dag_files: list[Path],
    extra_env: dict[str, str],
    redis: Redis,
    workers: dict[str, int],
) -> Iterator[Deployment]:
    """A deployment whose executor is Celery on ``redis``, with ``workers`` (name -> concurrency)."""
    hostnames = Path(tempfile.mkdtemp(prefix="s3sftp-worker-name-"))
    (hostnames / "s3sftp_worker_name.py").write_text(HOSTNAME_MODULE)
    env = {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": f"{redis.url}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"{redis.url}/1",
        "PYTHONPATH": f"{REPO}{os.pathsep}{hostnames}",
        **extra_env,
    }
    components = {name: worker_component(name, concurrency) for name, concurrency in workers.items()}
    try:
        with running_deployment(dag_files, env, components) as deployment:
            yield deployment
    finally:
        shutil.rmtree(hostnames, ignore_errors=True)


def kill_worker(deployment: Deployment, name: str) -> list[int]:
    """SIGKILL worker ``name``: its whole process group and every descendant (task processes included).

    Return the pids killed. The worker gets no chance to ack, requeue or clean up anything.
    """
    process = deployment.processes.pop(name)
    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess as err:
        raise AssertionError(f"worker {name} was already gone before the kill") from err
    for member in tree:
        with contextlib.suppress(psutil.Error):
            member.send_signal(signal.SIGSTOP)  # nobody forks or reaps while the tree is being killed
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for member in tree:
        with contextlib.suppress(psutil.Error):
            member.kill()
    process.wait(10)
    psutil.wait_procs(tree, timeout=10)
    return [member.pid for member in tree]
