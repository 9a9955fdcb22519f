"""The importable Python client against the real daemon."""

import pytest

from s3pool.client import Client, S3PoolClientError

pytestmark = pytest.mark.e2e


def test_python_client(daemon, s3, bucket, tmp_path):
    s3.put_object(Bucket=bucket, Key="x/1", Body=b"one")
    s3.put_object(Bucket=bucket, Key="x/2", Body=b"two")
    client = Client(port=daemon.port)
    path = client.pull(bucket, "x/1")
    assert open(path, "rb").read() == b"one"
    paths = client.pull(bucket, "x/2", "x/1")
    assert [open(p, "rb").read() for p in paths] == [b"two", b"one"]
    assert client.glob(bucket, "x/*") == ["x/1", "x/2"]
    assert client.glob(bucket, "nothing*") == []
    local = tmp_path / "up"
    local.write_bytes(b"up")
    client.push(bucket, "x/3", str(local))
    client.refresh(bucket)
    client.set("freshness_window", "5")
    status = client.status()
    assert status["freshness_window"] == "5" and int(status["pushes"]) == 1
    with pytest.raises(S3PoolClientError, match="x/none"):
        client.pull(bucket, "x/none")
