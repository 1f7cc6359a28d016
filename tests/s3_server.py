"""A real S3-compatible server on loopback for the tests: moto's standalone server (PyPI `moto[server]`),
started in its own process by the tests, with authentication ON (moto's IAM checks every request after
the first few), so wrong credentials are refused the way AWS refuses them.

`s3_server` (session): starts the server, creates an IAM user with full access, yields its endpoint and
keys. `s3_home` (per test): a fresh bucket, the standard AWS_* variables set for this test (children
inherit them), NX_STATE in tmp, and `s3://<bucket>/root` as the data root URL.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import pytest

# moto lets this many requests through unauthenticated: the three IAM calls that create the test user
BOOTSTRAP_CALLS = 3


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    key_id: str
    secret: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_REGION": self.region}

    def client(self, key_id: str | None = None, secret: str | None = None):
        import botocore.session

        return botocore.session.Session().create_client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=key_id or self.key_id, aws_secret_access_key=secret or self.secret)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(log_path: str | None = None) -> tuple[subprocess.Popen, S3Server]:
    """Start moto_server on a free loopback port with IAM authentication; return (process, server)."""
    import botocore.session

    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(BOOTSTRAP_CALLS)}
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        env.pop(k, None)
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not start on port {port}")
            time.sleep(0.1)
    endpoint = f"http://127.0.0.1:{port}"
    iam = botocore.session.Session().create_client("iam", endpoint_url=endpoint, region_name="us-east-1",
                                                   aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
    iam.create_user(UserName="nx-tests")
    iam.put_user_policy(UserName="nx-tests", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="nx-tests")["AccessKey"]
    return proc, S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    proc, server = start(str(tmp_path_factory.mktemp("moto") / "moto.log"))
    try:
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def s3_home(s3_server, tmp_path, monkeypatch):
    """A fresh bucket with this test's AWS settings in the environment; returns `s3://bucket/root`."""
    bucket = f"nx-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("NX_STATE", str(tmp_path / "state"))
    return f"s3://{bucket}/root"
