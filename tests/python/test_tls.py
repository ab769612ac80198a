"""TLS on the HTTP and gRPC ports (``--http-use-ssl*``, ``--grpc-use-ssl*`` and the
certificate flags), driven by the official clients over TLS.

Certificates are made at test time with the ``openssl`` command: a CA, a server certificate
for 127.0.0.1/localhost, a second server certificate (for the reload test), a client
certificate signed by the CA and one signed by an unrelated CA.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import gevent.ssl
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from ferrum_harness import ServerError, copy_model_repository, ready_timeout

TIMEOUT_S = 30.0
MODEL = "simple"

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="the openssl command makes the test certificates"
)


# ------------------------------------------------------------------ certificates


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60
    )


def _make_ca(folder: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
        "-subj", f"/CN=Ferrum test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )


def _make_leaf(folder: Path, name: str, ca: str, extensions: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=Ferrum test {name}",
        cwd=folder,
    )
    (folder / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=folder,
    )


SERVER_EXTENSIONS = (
    "basicConstraints=CA:FALSE\n"
    "keyUsage=critical,digitalSignature\n"
    "extendedKeyUsage=serverAuth\n"
    "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
)
CLIENT_EXTENSIONS = (
    "basicConstraints=CA:FALSE\n"
    "keyUsage=critical,digitalSignature\n"
    "extendedKeyUsage=clientAuth\n"
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A folder of PEM files: ca, server, server2 (same CA), client (signed by ca),
    stranger (a client certificate from the unrelated CA other_ca); each X has X.pem/X.key."""
    folder = tmp_path_factory.mktemp("pki")
    _make_ca(folder, "ca")
    _make_ca(folder, "other_ca")
    _make_leaf(folder, "server", "ca", SERVER_EXTENSIONS)
    _make_leaf(folder, "server2", "ca", SERVER_EXTENSIONS)
    _make_leaf(folder, "client", "ca", CLIENT_EXTENSIONS)
    _make_leaf(folder, "stranger", "other_ca", CLIENT_EXTENSIONS)
    return folder


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return copy_model_repository(tmp_path_factory.mktemp("tls-repo") / "models", [MODEL])


def _der(pem_path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem_path.read_text())


# ----------------------------------------------------------------------- clients


def http_client(server, pki: Path, client: str | None = None, tls: bool = True):
    """tritonclient.http over TLS, trusting the test CA, presenting ``client`` if given."""
    if not tls:
        return httpclient.InferenceServerClient(
            server.http_url, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S
        )
    options = {"ca_certs": str(pki / "ca.pem")}
    if client is not None:
        options["certfile"] = str(pki / f"{client}.pem")
        options["keyfile"] = str(pki / f"{client}.key")
    return httpclient.InferenceServerClient(
        server.http_url,
        ssl=True,
        ssl_options=options,
        ssl_context_factory=gevent.ssl.create_default_context,
        connection_timeout=TIMEOUT_S,
        network_timeout=TIMEOUT_S,
    )


def grpc_client(server, pki: Path, client: str | None = None, tls: bool = True):
    """tritonclient.grpc over TLS, trusting the test CA, presenting ``client`` if given."""
    if not tls:
        return grpcclient.InferenceServerClient(server.grpc_url)
    kwargs = {}
    if client is not None:
        kwargs = {
            "private_key": str(pki / f"{client}.key"),
            "certificate_chain": str(pki / f"{client}.pem"),
        }
    return grpcclient.InferenceServerClient(
        server.grpc_url, ssl=True, root_certificates=str(pki / "ca.pem"), **kwargs
    )


def infer_simple(client, module) -> None:
    """Runs the add/sub model and checks both outputs."""
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"),
              module.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    if module is grpcclient:
        result = client.infer(MODEL, inputs, client_timeout=TIMEOUT_S)
    else:
        result = client.infer(MODEL, inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def is_ready(client) -> bool:
    try:
        if isinstance(client, grpcclient.InferenceServerClient):
            return client.is_server_ready(client_timeout=2.0)
        return client.is_server_ready()
    except Exception:  # not listening yet, or the handshake failed: try again
        return False


def wait_ready_over_tls(server, pki: Path, client: str | None = None) -> None:
    """Readiness through the TLS ports (the harness probes in plain text)."""
    deadline = time.monotonic() + ready_timeout()
    while True:
        if not server.is_running():
            raise ServerError(f"ferrum exited before it was ready\n{server.describe()}")
        with_http = http_client(server, pki, client)
        with_grpc = grpc_client(server, pki, client)
        try:
            if is_ready(with_http) and is_ready(with_grpc):
                return
        finally:
            with_http.close()
            with_grpc.close()
        if time.monotonic() >= deadline:
            raise ServerError(f"ferrum not ready over TLS\n{server.describe()}")
        time.sleep(0.1)


def tls_flags(pki: Path, cert: str = "server", mutual: bool = False) -> list[str]:
    flags = []
    for protocol in ("http", "grpc"):
        flags += [
            f"--{protocol}-use-ssl-mutual" if mutual else f"--{protocol}-use-ssl", "true",
            f"--{protocol}-server-cert", str(pki / f"{cert}.pem"),
            f"--{protocol}-server-key", str(pki / f"{cert}.key"),
        ]
        if mutual:
            flags += [f"--{protocol}-root-cert", str(pki / "ca.pem")]
    return flags


def start_tls_server(server_factory, repo: Path, pki: Path, flags, client=None):
    server = server_factory(repo, flags, wait_ready=False)
    wait_ready_over_tls(server, pki, client)
    return server


def presented_certificate(port: int, pki: Path, alpn: str) -> bytes:
    """The DER certificate the server presents to a new TLS connection."""
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    context.set_alpn_protocols([alpn])
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.getpeercert(binary_form=True)


# ------------------------------------------------------------------------- tests


def test_official_clients_infer_over_tls_and_metrics_stay_plain(server_factory, repo, pki):
    server = start_tls_server(server_factory, repo, pki, tls_flags(pki))
    with http_client(server, pki) as client:
        assert client.is_server_live()
        infer_simple(client, httpclient)
    with grpc_client(server, pki) as client:
        assert client.is_server_live(client_timeout=TIMEOUT_S)
        infer_simple(client, grpcclient)
    # The metrics port is not affected by the TLS flags.
    url = f"http://{server.metrics_url}/metrics"
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        assert response.status == 200
        assert b"nv_inference_request_success" in response.read()


def test_plain_text_clients_fail_on_tls_ports(server_factory, repo, pki):
    server = start_tls_server(server_factory, repo, pki, tls_flags(pki))
    with http_client(server, pki, tls=False) as client:
        with pytest.raises(Exception):
            client.is_server_live()
    with grpc_client(server, pki, tls=False) as client:
        with pytest.raises(InferenceServerException) as refused:
            client.is_server_live(client_timeout=TIMEOUT_S)
        assert refused.value.status() == "StatusCode.UNAVAILABLE", refused.value
    # A client that does trust the server still gets through afterwards.
    with http_client(server, pki) as client:
        infer_simple(client, httpclient)


def test_mutual_tls_refuses_clients_without_a_certificate_from_the_root_ca(
    server_factory, repo, pki
):
    server = start_tls_server(
        server_factory, repo, pki, tls_flags(pki, mutual=True), client="client"
    )
    for client in (None, "stranger"):
        with http_client(server, pki, client) as refused:
            with pytest.raises(Exception):
                refused.is_server_live()
        with grpc_client(server, pki, client) as refused:
            with pytest.raises(InferenceServerException) as error:
                refused.is_server_live(client_timeout=TIMEOUT_S)
            assert error.value.status() == "StatusCode.UNAVAILABLE", error.value
    with http_client(server, pki, "client") as accepted:
        infer_simple(accepted, httpclient)
    with grpc_client(server, pki, "client") as accepted:
        infer_simple(accepted, grpcclient)


def _replace(source: Path, target: Path) -> None:
    """Replaces ``target`` with a copy of ``source`` in one step (as certificate tools do)."""
    staging = target.with_name(target.name + ".new")
    shutil.copyfile(source, staging)
    os.replace(staging, target)


def test_replaced_certificate_files_are_served_to_new_connections(
    server_factory, repo, pki, tmp_path
):
    live = tmp_path / "live"
    live.mkdir()
    shutil.copyfile(pki / "server.pem", live / "tls.pem")
    shutil.copyfile(pki / "server.key", live / "tls.key")
    flags = []
    for protocol in ("http", "grpc"):
        flags += [
            f"--{protocol}-use-ssl",
            f"--{protocol}-server-cert", str(live / "tls.pem"),
            f"--{protocol}-server-key", str(live / "tls.key"),
        ]
    server = start_tls_server(server_factory, repo, pki, flags)
    old, new = _der(pki / "server.pem"), _der(pki / "server2.pem")
    assert old != new
    ports = ((server.http_port, "http/1.1"), (server.grpc_port, "h2"))
    for port, alpn in ports:
        assert presented_certificate(port, pki, alpn) == old

    # Only the certificate replaced: it does not match the key, so the old pair stays.
    _replace(pki / "server2.pem", live / "tls.pem")
    for port, alpn in ports:
        assert presented_certificate(port, pki, alpn) == old
    # Now the key too: new connections get the new certificate, without a restart.
    _replace(pki / "server2.key", live / "tls.key")
    for port, alpn in ports:
        assert presented_certificate(port, pki, alpn) == new
    with http_client(server, pki) as client:
        infer_simple(client, httpclient)
    with grpc_client(server, pki) as client:
        infer_simple(client, grpcclient)
    assert "reloaded the TLS certificate" in server.stderr_text()
    assert server.is_running()


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_cert", "--grpc-server-cert '{pki}/absent.pem': cannot read it"),
        ("not_pem", "--http-server-cert '{pki}/ca.key': no PEM certificate"),
        ("wrong_key", "--http-server-key '{pki}/client.key' is not the private key of the "
                      "certificate in --http-server-cert '{pki}/server.pem'"),
        ("no_key_flag", "--grpc-use-ssl needs --grpc-server-key"),
        ("mutual_without_root", "--http-use-ssl-mutual needs --http-root-cert"),
    ],
)
def test_bad_tls_files_stop_the_start_with_a_clear_message(
    server_factory, repo, pki, case, expected
):
    cert, key = str(pki / "server.pem"), str(pki / "server.key")
    flags = {
        "missing_cert": ["--grpc-use-ssl", "--grpc-server-cert", str(pki / "absent.pem"),
                         "--grpc-server-key", key],
        "not_pem": ["--http-use-ssl", "--http-server-cert", str(pki / "ca.key"),
                    "--http-server-key", key],
        "wrong_key": ["--http-use-ssl", "--http-server-cert", cert,
                      "--http-server-key", str(pki / "client.key")],
        "no_key_flag": ["--grpc-use-ssl=true", "--grpc-server-cert", cert],
        "mutual_without_root": ["--http-use-ssl-mutual", "--http-server-cert", cert,
                                "--http-server-key", key],
    }[case]
    server = server_factory(repo, flags, wait_ready=False)
    code = server.wait_exit(timeout=TIMEOUT_S)
    assert code != 0, server.describe()
    assert expected.format(pki=pki) in server.stderr_text(), server.describe()
