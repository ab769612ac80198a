"""Server process behaviour: custom repositories, flags, clean shutdown.

These start their own servers through the ``server_factory`` fixture, which
is also the example to follow for tests that need a special repository.
"""

from __future__ import annotations

import shutil
import socket

import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from ferrum_checks import (
    assert_simple_result,
    expect_http_error,
    grpc_simple_infer,
    http_simple_infer,
    simple_data,
)


def _refuses_connections(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_custom_repository_subset(server_factory, model_repository_copy):
    shutil.rmtree(model_repository_copy / "simple_string")
    shutil.rmtree(model_repository_copy / "simple_identity")
    shutil.rmtree(model_repository_copy / "pytorch_mlp", ignore_errors=True)
    srv = server_factory(model_repository_copy)

    with httpclient.InferenceServerClient(srv.http_url) as client:
        index = client.get_model_repository_index()
        assert [e["name"] for e in index] == ["simple"]
        assert index[0]["state"] == "READY"
        expect_http_error(lambda: client.get_model_metadata("simple_string"), 404, "simple_string")
        in0, in1 = simple_data(seed=31)
        assert_simple_result(http_simple_infer(client, in0, in1), in0, in1)
    with grpcclient.InferenceServerClient(srv.grpc_url) as client:
        in0, in1 = simple_data(seed=32)
        assert_simple_result(grpc_simple_infer(client, in0, in1), in0, in1)

    assert srv.stop() == 0, srv.describe()


def test_sigterm_exits_zero(server_factory):
    srv = server_factory()
    with httpclient.InferenceServerClient(srv.http_url) as client:
        assert client.is_server_ready()
    assert srv.stop(timeout=30) == 0, srv.describe()
    assert _refuses_connections(srv.http_port)
    assert _refuses_connections(srv.grpc_port)


def test_metrics_endpoint(server):
    resp = requests.get(f"http://{server.metrics_url}/metrics", timeout=30)
    assert resp.status_code == 200
    assert resp.headers.get("Content-Type", "").startswith("text/plain")


def test_allow_metrics_false(server_factory):
    srv = server_factory(extra_args=["--allow-metrics", "false"])
    with httpclient.InferenceServerClient(srv.http_url) as client:
        in0, in1 = simple_data(seed=33)
        assert_simple_result(http_simple_infer(client, in0, in1), in0, in1)
    assert _refuses_connections(srv.metrics_port)


def test_unknown_flag_fails_fast(server_factory):
    srv = server_factory(extra_args=["--no-such-flag"], wait_ready=False)
    code = srv.wait_exit(timeout=30)
    assert code != 0, srv.describe()
    assert "no-such-flag" in srv.stderr_text() + srv.stdout_text()
