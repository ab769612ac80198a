"""Object-store (S3) model repositories, against a real S3-compatible server.

Each test module run starts moto in server mode (``moto_server``) on a free loopback port
with authentication on: requests must carry a valid SigV4 signature of an access key moto
knows, so the server's own signing is checked by a real S3 implementation. Models from
model_repository/ are uploaded with boto3; Ferrum is started with
``--model-repository s3://127.0.0.1:<port>/<bucket>/<prefix>`` (or ``s3://<bucket>/<prefix>``
with ``AWS_ENDPOINT_URL``) and talked to with tritonclient.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from ferrum_checks import assert_simple_result, http_simple_infer, simple_data
from ferrum_harness import default_model_repository, free_port

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

# Longest wait for anything the server does on its own (a poll picking up a change).
TIMEOUT = 60.0
# Actions moto lets through unauthenticated: the IAM set-up below, then nothing.
_SETUP_ACTIONS = 6
_ALL_S3 = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
_LIST_ONLY = {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}


class Moto:
    """A running moto server and the access keys made on it."""

    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.keys: dict[str, tuple[str, str]] = {}

    def client(self, user: str = "writer"):
        key, secret = self.keys[user]
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=key,
            aws_secret_access_key=secret,
        )

    def env(self, cache: Path, user: str = "reader", **extra: str) -> dict:
        """The server's environment: the user's key, a private cache, no host AWS files."""
        key, secret = self.keys[user]
        env = {
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_SHARED_CREDENTIALS_FILE": str(cache / "no-credentials"),
            "AWS_CONFIG_FILE": str(cache / "no-config"),
            "FERRUM_CACHE_DIR": str(cache),
        }
        env.update(extra)
        return env


def _moto_command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    if script.is_file():
        return [str(script), "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


@pytest.fixture(scope="module")
def moto(tmp_path_factory) -> Iterator[Moto]:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(_SETUP_ACTIONS))
    with open(log, "wb") as out:
        process = subprocess.Popen(
            _moto_command(port), stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env
        )
    server = Moto(process, port)
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert process.poll() is None, f"moto_server exited:\n{log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"moto_server did not listen:\n{log.read_text()}"
                time.sleep(0.1)
        iam = boto3.client(
            "iam", endpoint_url=server.url, region_name="us-east-1",
            aws_access_key_id="setup", aws_secret_access_key="setup",
        )
        # Six unauthenticated actions: two users, their policies, their keys. "writer" may
        # do anything in S3; "reader" may only list (ListBucket), not download.
        for user, statement in (("writer", _ALL_S3), ("reader", _LIST_ONLY)):
            iam.create_user(UserName=user)
            iam.put_user_policy(
                UserName=user, PolicyName="s3",
                PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [statement]}),
            )
            key = iam.create_access_key(UserName=user)["AccessKey"]
            server.keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def bucket(moto: Moto) -> str:
    name = f"models-{uuid.uuid4().hex[:12]}"
    moto.client().create_bucket(Bucket=name)
    return name


def upload_model(s3, bucket: str, prefix: str, model: str, as_name: Optional[str] = None,
                 versions: Optional[dict[str, str]] = None) -> None:
    """Uploads model_repository/<model> as <prefix>/<as_name>; ``versions`` maps a version
    folder of the source to the one it is uploaded as (default: as they are)."""
    source = default_model_repository() / model
    name = as_name or model
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(source).as_posix()
        top, _, rest = rel.partition("/")
        if versions is not None and rest:
            if top not in versions:
                continue
            rel = f"{versions[top]}/{rest}"
        body = path.read_bytes()
        if rel == "config.pbtxt" and name != model:
            body = body.replace(f'name: "{model}"'.encode(), f'name: "{name}"'.encode())
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}/{rel}", Body=body)


def delete_model(s3, bucket: str, prefix: str, model: str) -> None:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{model}/")
    for item in listed.get("Contents", []):
        s3.delete_object(Bucket=bucket, Key=item["Key"])


def start(server_factory, tmp_path: Path, moto: Moto, url: str, args=(), **kwargs):
    """Starts Ferrum on an empty local repository plus the S3 one."""
    local = tmp_path / "local"
    local.mkdir(exist_ok=True)
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    env = kwargs.pop("env", None) or moto.env(cache, user=kwargs.pop("user", "writer"))
    return server_factory(local, ["--model-repository", url, *args], env=env, **kwargs)


def client(server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http_url, network_timeout=60.0)


def wait_until(what: str, check, server) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        assert server.is_running(), server.describe()
        assert time.monotonic() < deadline, f"timed out waiting until {what}\n{server.describe()}"
        time.sleep(0.1)


def ready_versions(server, model: str) -> set[str]:
    with client(server) as c:
        index = c.get_model_repository_index()
    return {
        row.get("version", "") for row in index
        if row["name"] == model and row.get("state") == "READY"
    }


def infer_simple(server) -> None:
    with client(server) as c:
        in0, in1 = simple_data(seed=7)
        assert_simple_result(http_simple_infer(c, in0, in1), in0, in1)


def test_serves_models_from_a_bucket_and_reuses_the_cache(server_factory, tmp_path, moto, bucket):
    s3 = moto.client()
    upload_model(s3, bucket, "repo", "simple")
    upload_model(s3, bucket, "repo", "onnx_mlp")
    url = f"s3://127.0.0.1:{moto.port}/{bucket}/repo"
    server = start(server_factory, tmp_path, moto, url)
    infer_simple(server)
    x = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
    with client(server) as c:
        assert c.is_model_ready("onnx_mlp")
        inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        out = c.infer("onnx_mlp", [inp]).as_numpy("OUTPUT0")
    import onnxruntime as ort  # the reference the onnxruntime tests use too

    session = ort.InferenceSession(
        str(default_model_repository() / "onnx_mlp" / "1" / "model.onnx"),
        providers=["CPUExecutionProvider"],
    )
    expected = session.run(None, {"INPUT0": x})[0]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    server.stop_and_check()

    # A restart with the same cache downloads nothing: the "reader" key may list the bucket
    # but not read objects, and the server still starts and serves both models.
    again = start(server_factory, tmp_path, moto, url, user="reader")
    infer_simple(again)
    with client(again) as c:
        assert c.is_model_ready("onnx_mlp")
    again.stop_and_check()

    # With a fresh cache the same key cannot download, and the server says why.
    cold = start(
        server_factory, tmp_path, moto, url, wait_ready=False,
        env=moto.env(tmp_path / "cold", user="reader"),
    )
    assert cold.wait_exit(timeout=TIMEOUT) != 0, cold.describe()
    log = cold.stderr_text() + cold.stdout_text()
    assert "AccessDenied" in log and "denied" in log, cold.describe()


def test_poll_mode_follows_the_bucket(server_factory, tmp_path, moto, bucket):
    s3 = moto.client()
    upload_model(s3, bucket, "repo", "simple")
    upload_model(s3, bucket, "repo", "simple", as_name="second")
    server = start(
        server_factory, tmp_path, moto, f"s3://127.0.0.1:{moto.port}/{bucket}/repo",
        ["--model-control-mode", "poll", "--repository-poll-secs", "1"],
    )
    assert ready_versions(server, "simple") == {"1"}
    assert ready_versions(server, "second") == {"1"}

    # A new version is served after a poll (the default policy serves the latest).
    upload_model(s3, bucket, "repo", "simple", versions={"1": "2"})
    wait_until("version 2 serves", lambda: ready_versions(server, "simple") == {"2"}, server)
    infer_simple(server)

    # A changed config.pbtxt is applied: serve every version.
    config = (default_model_repository() / "simple" / "config.pbtxt").read_text()
    s3.put_object(Bucket=bucket, Key="repo/simple/config.pbtxt",
                  Body=(config + "\nversion_policy: { all { } }\n").encode())
    wait_until("both versions serve", lambda: ready_versions(server, "simple") == {"1", "2"},
               server)

    # A model removed from the bucket is unloaded.
    delete_model(s3, bucket, "repo", "second")
    wait_until("the removed model is gone", lambda: not ready_versions(server, "second"), server)
    with client(server) as c:
        assert not c.is_model_ready("second")
    infer_simple(server)


def test_a_version_still_being_uploaded_is_not_served(server_factory, tmp_path, moto, bucket):
    s3 = moto.client()
    upload_model(s3, bucket, "repo", "simple")
    cache = tmp_path / "cache"
    cache.mkdir()
    # Two listings 2 s apart must agree before a model is taken; polls run every second.
    server = start(
        server_factory, tmp_path, moto, f"s3://127.0.0.1:{moto.port}/{bucket}/repo",
        ["--model-control-mode", "poll", "--repository-poll-secs", "1"],
        env=moto.env(cache, user="writer", FERRUM_S3_SETTLE_SECS="2"),
    )
    assert ready_versions(server, "simple") == {"1"}

    # Version 2 is uploaded piece by piece: its files keep changing.
    s3.put_object(Bucket=bucket, Key="repo/simple/2/.gitkeep", Body=b"")
    stop = threading.Event()
    errors: list[BaseException] = []

    def keep_uploading() -> None:
        writer = moto.client()
        part = 0
        try:
            while not stop.is_set():
                part += 1
                writer.put_object(Bucket=bucket, Key="repo/simple/2/weights.bin",
                                  Body=f"part {part}".encode())
                time.sleep(0.05)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    uploader = threading.Thread(target=keep_uploading, daemon=True)
    uploader.start()
    try:
        # A model uploaded at the same time, and left alone, is taken: polls are running.
        upload_model(s3, bucket, "repo", "simple", as_name="marker")
        wait_until("the marker model serves", lambda: ready_versions(server, "marker") == {"1"},
                   server)
        assert not errors, errors
        # All that time, version 2 was still changing: it is not served, version 1 is.
        assert ready_versions(server, "simple") == {"1"}
        with client(server) as c:
            assert not c.is_model_ready("simple", "2")
        infer_simple(server)
    finally:
        stop.set()
        uploader.join(timeout=30)
    assert not errors, errors

    # Once the upload is over, version 2 is taken.
    wait_until("version 2 serves", lambda: ready_versions(server, "simple") == {"2"}, server)
    infer_simple(server)


def test_watch_mode_polls_the_bucket(server_factory, tmp_path, moto, bucket):
    s3 = moto.client()
    upload_model(s3, bucket, "repo", "simple")
    server = start(
        server_factory, tmp_path, moto, f"s3://127.0.0.1:{moto.port}/{bucket}/repo",
        ["--model-control-mode", "watch", "--repository-poll-secs", "1"],
    )
    assert ready_versions(server, "simple") == {"1"}
    upload_model(s3, bucket, "repo", "simple", versions={"1": "3"})
    wait_until("version 3 serves", lambda: ready_versions(server, "simple") == {"3"}, server)
    assert "object-store repositories send no file events" in server.stderr_text() + server.stdout_text()


def test_explicit_mode_fetches_on_load(server_factory, tmp_path, moto, bucket):
    s3 = moto.client()
    cache = tmp_path / "cache"
    cache.mkdir()
    # The s3://bucket/prefix form, with the endpoint in AWS_ENDPOINT_URL.
    server = start(
        server_factory, tmp_path, moto, f"s3://{bucket}/deep/repo",
        ["--model-control-mode", "explicit"],
        env=moto.env(cache, user="writer", AWS_ENDPOINT_URL=moto.url),
    )
    with client(server) as c:
        with pytest.raises(InferenceServerException, match="simple"):
            c.load_model("simple")
        upload_model(s3, bucket, "deep/repo", "simple")
        c.load_model("simple")
        assert c.is_model_ready("simple", "1")
        infer_simple(server)

        # A new version in the bucket changes nothing until the next load...
        upload_model(s3, bucket, "deep/repo", "simple", versions={"1": "2"})
        assert ready_versions(server, "simple") == {"1"}
        # ...which fetches the model's current objects.
        c.load_model("simple")
        assert ready_versions(server, "simple") == {"2"}
        infer_simple(server)

        c.unload_model("simple")
        wait_until("simple is unloaded", lambda: not c.is_model_ready("simple"), server)


def test_a_completion_marker_holds_back_unfinished_versions(server_factory, tmp_path, moto,
                                                            bucket):
    s3 = moto.client()
    upload_model(s3, bucket, "repo", "simple")
    s3.put_object(Bucket=bucket, Key="repo/simple/1/_COMPLETE", Body=b"")
    cache = tmp_path / "cache"
    cache.mkdir()
    server = start(
        server_factory, tmp_path, moto, f"s3://127.0.0.1:{moto.port}/{bucket}/repo",
        ["--model-control-mode", "explicit", "--load-model", "simple"],
        env=moto.env(cache, user="writer", FERRUM_S3_COMPLETE_MARKER="_COMPLETE"),
    )
    assert ready_versions(server, "simple") == {"1"}
    with client(server) as c:
        # Version 2's files are there, its marker is not: it is not taken.
        upload_model(s3, bucket, "repo", "simple", versions={"1": "2"})
        c.load_model("simple")
        assert ready_versions(server, "simple") == {"1"}
        infer_simple(server)
        # The marker comes last; the next load takes version 2.
        s3.put_object(Bucket=bucket, Key="repo/simple/2/_COMPLETE", Body=b"")
        c.load_model("simple")
        assert ready_versions(server, "simple") == {"2"}
        infer_simple(server)


def _tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = dict(not_valid_before=now - datetime.timedelta(hours=1),
                 not_valid_after=now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ferrum test CA")])
    ca = (
        x509.CertificateBuilder(**valid)
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder(**valid)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return paths


def test_https_endpoint_with_a_ca_bundle(server_factory, tmp_path, moto):
    ca, cert, key = _tls_files(tmp_path)
    port = free_port()
    log = tmp_path / "moto-tls.log"
    with open(log, "wb") as out:
        tls_moto = subprocess.Popen(
            [*_moto_command(port), "-c", str(cert), "-k", str(key)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )
    try:
        s3 = boto3.client("s3", endpoint_url=f"https://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="k", aws_secret_access_key="s", verify=str(ca))
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert tls_moto.poll() is None, log.read_text()
            try:
                s3.create_bucket(Bucket="tls-models")
                break
            except Exception:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        upload_model(s3, "tls-models", "repo", "simple")
        url = f"s3://https://127.0.0.1:{port}/tls-models/repo"
        cache = tmp_path / "cache"
        cache.mkdir()
        env = moto.env(cache, user="writer", AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")

        # Without the CA the certificate is refused, and the server says so.
        untrusted = start(server_factory, tmp_path, moto, url, env=env, wait_ready=False)
        assert untrusted.wait_exit(timeout=TIMEOUT) != 0, untrusted.describe()
        text = untrusted.stderr_text() + untrusted.stdout_text()
        assert "cannot reach the object store" in text and "certificate" in text.lower(), text

        server = start(server_factory, tmp_path, moto, url, env={**env, "AWS_CA_BUNDLE": str(ca)})
        infer_simple(server)
        server.stop_and_check()
    finally:
        tls_moto.terminate()
        try:
            tls_moto.wait(timeout=10)
        except subprocess.TimeoutExpired:
            tls_moto.kill()
            tls_moto.wait(timeout=10)


@pytest.mark.parametrize("problem", ["bad_secret", "missing_bucket", "unreachable"])
def test_start_up_fails_with_the_reason(server_factory, tmp_path, moto, bucket, problem):
    upload_model(moto.client(), bucket, "repo", "simple")
    cache = tmp_path / "cache"
    cache.mkdir()
    env = moto.env(cache, user="writer")
    url = f"s3://127.0.0.1:{moto.port}/{bucket}/repo"
    if problem == "bad_secret":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
        expected = ["denied", "SignatureDoesNotMatch"]
    elif problem == "missing_bucket":
        url = f"s3://127.0.0.1:{moto.port}/no-such-bucket-{uuid.uuid4().hex[:8]}/repo"
        expected = ["does not exist", "no-such-bucket"]
    else:
        url = f"s3://127.0.0.1:{free_port()}/{bucket}/repo"
        expected = ["cannot reach the object store"]
    server = start(server_factory, tmp_path, moto, url, env=env, wait_ready=False)
    assert server.wait_exit(timeout=TIMEOUT) != 0, server.describe()
    log = server.stderr_text() + server.stdout_text()
    for text in expected:
        assert text in log, server.describe()
