"""Clear errors from the object store: credentials it refuses and a missing bucket are one line
naming the store and what to check, never a traceback.

Reproduced against the previous store: with wrong credentials, `l2s store info` and `verify`
crashed with ``PermissionError: Forbidden`` from ``Store.open``, and `l2s sql` said "cannot
write None: Forbidden. Check that its folder exists and is writable."

The refusing server is a second moto server on loopback with authentication on
(``INITIAL_NO_AUTH_ACTION_COUNT=0``: every request must carry a key that its IAM knows, and
none does), started here and stopped by its PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
from typer.testing import CliRunner

from l2s_data.cli import app
from l2s_data.errors import StoreAccessError, StoreNotFoundError
from l2s_data.store import Store

pytestmark = pytest.mark.slow


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def refusing_s3():
    """A moto S3 server that refuses every request's credentials; yields its URL."""
    port = _port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=5)
                break
            except OSError:
                assert server.poll() is None, "the moto server exited at start"
                time.sleep(0.1)
        yield url
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def s3_env(monkeypatch):
    """Point S3 clients at ``url`` with these credentials; no cached client survives."""
    import s3fs

    def use(url: str, key: str = "AKIAWRONGWRONGWRONG1", secret: str = "wrong-secret"):
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        s3fs.S3FileSystem.clear_instance_cache()

    yield use
    s3fs.S3FileSystem.clear_instance_cache()


def _no_traceback(r) -> str:
    """The command failed with its own one-line error (an uncaught exception would be
    ``r.exception`` itself, printed as a traceback)."""
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    assert "Traceback" not in r.output and r.output.startswith("error:"), r.output
    return r.output


def test_credentials_the_server_refuses_are_a_clear_error(refusing_s3, s3_env):
    s3_env(refusing_s3)
    url = f"s3://l2s-test/{uuid.uuid4().hex[:8]}/store"
    with pytest.raises(StoreAccessError, match="refused access") as err:
        Store.open(url)
    assert "AWS_ACCESS_KEY_ID" in str(err.value) and url in str(err.value)
    runner = CliRunner()
    for args in (["store", "info"], ["store", "verify"], ["store", "gc"], ["sql", "SELECT 1"]):
        r = runner.invoke(app, [*args, "--store", url])
        out = _no_traceback(r)
        assert "credentials" in out and url in out, (args, out)
        assert "cannot write None" not in out


def test_a_missing_bucket_is_a_clear_error(s3_endpoint, s3_env):
    s3_env(s3_endpoint, "testing", "testing")
    url = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/store"
    with pytest.raises(StoreNotFoundError, match="bucket 'no-such-bucket-") as err:
        Store.open(url)
    assert url in str(err.value)
    r = CliRunner().invoke(app, ["store", "info", "--store", url])
    out = _no_traceback(r)
    assert url in out
