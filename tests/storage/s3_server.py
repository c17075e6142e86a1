"""A local S3 for tests: moto's server mode on 127.0.0.1, a free port, no network needed."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from tests.processes import free_port

# moto accepts any credentials; these only have to be present and the same everywhere.
ACCESS_KEY_ID = "modelport-test"
SECRET_ACCESS_KEY = "modelport-test-secret"  # a fake key for a local fake S3
REGION = "us-east-1"


@dataclass
class MotoS3:
    """A running moto server and what a client needs to talk to it."""

    server: ThreadedMotoServer
    endpoint_url: str
    _client: Any = field(default=None, repr=False)

    @classmethod
    def start(cls) -> MotoS3:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        return cls(server, f"http://{host}:{port}")

    def stop(self) -> None:
        """Stop serving and close the listening socket, so clients are refused at once (as
        with a server that went away) instead of waiting on a socket nobody reads."""
        self.server.stop()
        wsgi_server = getattr(self.server, "_server", None)
        if wsgi_server is not None:
            wsgi_server.server_close()

    def client(self) -> Any:
        """A plain boto3 client, for a test to look at (or tamper with) the bucket directly.
        Made once: building a client costs a tenth of a second; using one from many threads
        is safe."""
        if self._client is None:
            self._client = boto3.session.Session(
                aws_access_key_id=ACCESS_KEY_ID,
                aws_secret_access_key=SECRET_ACCESS_KEY,
                region_name=REGION,
            ).client("s3", endpoint_url=self.endpoint_url)
        return self._client

    def new_bucket(self) -> str:
        """A bucket of its own for one test (moto keeps every bucket in process memory)."""
        name = f"modelport-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


def closed_port_url() -> str:
    """An http:// URL on 127.0.0.1 where nothing listens: an S3 that is unreachable."""
    return f"http://127.0.0.1:{free_port()}"
