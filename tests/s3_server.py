"""moto's S3 server on 127.0.0.1 for the tests, with the environment pointed at it (the endpoint,
test credentials, the AWS config files pointed away so that no user setting leaks in)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

_NAMES = ("WASMIG_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_CONFIG_FILE",
          "AWS_SHARED_CREDENTIALS_FILE", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")


@contextmanager
def moto_s3(aws_dir: Path) -> Iterator[str]:
    """The server running, its endpoint (``http://127.0.0.1:PORT``) in ``WASMIG_S3_ENDPOINT`` and
    the credentials in the environment (processes started meanwhile inherit them); all restored
    after. ``aws_dir``: where the (empty) AWS config files are said to be."""
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in _NAMES}
    os.environ.update(WASMIG_S3_ENDPOINT=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_CONFIG_FILE=str(aws_dir / "config"), AWS_SHARED_CREDENTIALS_FILE=str(aws_dir / "credentials"),
                      AWS_DEFAULT_REGION="us-east-1")
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        os.environ.pop(k, None)
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
