# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""An embedded S3 endpoint: moto's threaded server on a loopback port, in this process."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["EmbeddedS3Server"]

# moto accepts any credentials; these only have to be consistent between the seeding client and Airflow.
ACCESS_KEY = "demo-access-key"
SECRET_KEY = "demo-secret-key"
REGION = "us-east-1"


class EmbeddedS3Server:
    """
    Run moto's S3 server (``ThreadedMotoServer``) on ``127.0.0.1`` in a background thread.

    A real HTTP endpoint, so boto3 in another process (the Airflow task) talks to it like to S3. The
    objects live in this process's memory and vanish when it stops.

    :param host: loopback address to listen on
    :param port: port to listen on; 0 picks a free one
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self._server: Any = None

    def __enter__(self) -> EmbeddedS3Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        """Return the endpoint URL, e.g. ``http://127.0.0.1:41234``."""
        if self.port is None:
            raise RuntimeError("Start the embedded S3 server before asking for its endpoint")
        return f"http://{self.host}:{self.port}"

    def start(self) -> int:
        """Start serving and return the port."""
        from moto.server import ThreadedMotoServer

        # One line per HTTP request otherwise.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address=self.host, port=self._requested_port, verbose=False)
        self._server.start()
        self.port = int(self._server.get_host_and_port()[1])
        return self.port

    def stop(self) -> None:
        """Stop the server thread (idempotent)."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> Any:
        """Return a boto3 S3 client for this endpoint."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def connection(self) -> dict[str, Any]:
        """Return an Airflow ``aws`` connection (as a dict) for this endpoint."""
        return {
            "conn_type": "aws",
            "login": ACCESS_KEY,
            "password": SECRET_KEY,
            "extra": {"endpoint_url": self.endpoint_url, "region_name": REGION},
        }
