"""Restricted API groups (``--http-restricted-api``, ``--grpc-restricted-protocol``), as
tritonserver defines them: a request to an endpoint of a restricted group without the
header (HTTP) or metadata key ``triton-grpc-protocol-<key>`` (gRPC) with the right value is
refused (HTTP 403, gRPC UNAVAILABLE, with Triton's message); with it, the request goes
through; groups no flag names are open to everyone.

The server here restricts health and inference to ``infer-key: infer-value`` and every
other group but metadata to ``admin-key: admin-value``, on both protocols.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from ferrum_harness import ServerError, copy_model_repository, ready_timeout

TIMEOUT_S = 30.0
MODEL = "simple"
PREFIX = "triton-grpc-protocol-"
INFER = ("infer-key", "infer-value")
ADMIN = ("admin-key", "admin-value")
ADMIN_GROUPS = "model-repository,shared-memory,model-config,statistics,trace,logging"
FLAGS = [
    "--http-restricted-api", f"health,inference:{INFER[0]}={INFER[1]}",
    f"--http-restricted-api={ADMIN_GROUPS}:{ADMIN[0]}={ADMIN[1]}",
    "--grpc-restricted-protocol", f"health,inference:{INFER[0]}={INFER[1]}",
    "--grpc-restricted-protocol", f"{ADMIN_GROUPS}:{ADMIN[0]}={ADMIN[1]}",
]


def http_refusal(key: str) -> str:
    return f"This API is restricted, expecting header '{key}'"


def grpc_refusal(key: str) -> str:
    return f"This protocol is restricted, expecting header '{PREFIX}{key}'"


@pytest.fixture(scope="module")
def restricted_server(tmp_path_factory):
    """A server with the restrictions above (mode none), ready once its restricted health
    endpoints answer the right header."""
    from ferrum_harness import start_server

    folder = tmp_path_factory.mktemp("restricted")
    repo = copy_model_repository(folder / "models", [MODEL])
    server = start_server(repo, FLAGS, wait_ready=False, log_dir=folder / "logs")
    deadline = time.monotonic() + ready_timeout()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        while True:
            if not server.is_running():
                raise ServerError(f"ferrum exited before it was ready\n{server.describe()}")
            try:
                response = requests.get(
                    f"{server.http_base}/v2/health/ready", headers=dict([INFER]), timeout=2
                )
                if response.status_code == 200 and client.is_server_ready(
                    headers={PREFIX + INFER[0]: INFER[1]}, client_timeout=2
                ):
                    break
            except (requests.RequestException, InferenceServerException):
                pass  # not listening yet
            if time.monotonic() >= deadline:
                raise ServerError(f"ferrum not ready\n{server.describe()}")
            time.sleep(0.1)
    except BaseException:
        server.kill()
        raise
    finally:
        client.close()
    yield server
    server.stop_and_check()


# ------------------------------------------------------------------------- HTTP

M = f"/v2/models/{MODEL}"
V = f"{M}/versions/1"
# Every HTTP endpoint: method, path, the header it needs (None: open to all).
HTTP_ENDPOINTS = [
    ("GET", "/v2/health/live", INFER),
    ("GET", "/v2/health/ready", INFER),
    ("GET", f"{M}/ready", INFER),
    ("GET", f"{V}/ready", INFER),
    ("GET", "/v2", None),
    ("GET", M, None),
    ("GET", V, None),
    ("POST", f"{M}/infer", INFER),
    ("POST", f"{V}/infer", INFER),
    ("POST", f"{M}/generate", INFER),
    ("POST", f"{V}/generate", INFER),
    ("POST", f"{M}/generate_stream", INFER),
    ("POST", f"{V}/generate_stream", INFER),
    ("GET", f"{M}/config", ADMIN),
    ("GET", f"{V}/config", ADMIN),
    ("GET", "/v2/models/stats", ADMIN),
    ("GET", f"{M}/stats", ADMIN),
    ("GET", f"{V}/stats", ADMIN),
    ("GET", "/v2/logging", ADMIN),
    ("POST", "/v2/logging", ADMIN),
    ("GET", "/v2/trace/setting", ADMIN),
    ("POST", "/v2/trace/setting", ADMIN),
    ("GET", f"{M}/trace/setting", ADMIN),
    ("POST", f"{M}/trace/setting", ADMIN),
    ("GET", "/v2/systemsharedmemory/status", ADMIN),
    ("GET", "/v2/systemsharedmemory/region/r/status", ADMIN),
    ("POST", "/v2/systemsharedmemory/region/r/register", ADMIN),
    ("POST", "/v2/systemsharedmemory/unregister", ADMIN),
    ("POST", "/v2/systemsharedmemory/region/r/unregister", ADMIN),
    ("GET", "/v2/cudasharedmemory/status", ADMIN),
    ("GET", "/v2/cudasharedmemory/region/r/status", ADMIN),
    ("POST", "/v2/cudasharedmemory/region/r/register", ADMIN),
    ("POST", "/v2/cudasharedmemory/unregister", ADMIN),
    ("POST", "/v2/cudasharedmemory/region/r/unregister", ADMIN),
    ("POST", "/v2/repository/index", ADMIN),
    ("POST", "/v2/repository/models/no_such_model/load", ADMIN),
    ("POST", "/v2/repository/models/no_such_model/unload", ADMIN),
]


def http_call(server, method: str, path: str, headers: dict) -> requests.Response:
    return requests.request(
        method, server.http_base + path, headers=headers, json={}, timeout=TIMEOUT_S
    )


@pytest.mark.parametrize("method, path, needs", HTTP_ENDPOINTS)
def test_every_http_endpoint_checks_its_groups_header(restricted_server, method, path, needs):
    if needs is None:
        response = http_call(restricted_server, method, path, {})
        assert response.status_code == 200, response.text
        return
    key, value = needs
    other = ADMIN if needs == INFER else INFER
    for headers in ({}, {key: value + "x"}, {key: ""}, dict([other])):
        response = http_call(restricted_server, method, path, headers)
        assert response.status_code == 403, (headers, response.text)
        assert response.json() == {"error": http_refusal(key)}, headers
    response = http_call(restricted_server, method, path, {key: value})
    assert response.status_code != 403, response.text
    assert "restricted" not in response.text


def test_tritonclient_http_with_and_without_the_header(restricted_server):
    client = httpclient.InferenceServerClient(
        restricted_server.http_url, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S
    )
    try:
        inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"),
                  httpclient.InferInput("INPUT1", [1, 16], "INT32")]
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(a)
        with pytest.raises(InferenceServerException) as refused:
            client.infer(MODEL, inputs)
        assert refused.value.status() == "403"
        assert http_refusal(INFER[0]) in refused.value.message()
        result = client.infer(MODEL, inputs, headers=dict([INFER]))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)

        with pytest.raises(InferenceServerException) as refused:
            client.get_model_repository_index()
        assert refused.value.status() == "403"
        index = client.get_model_repository_index(headers=dict([ADMIN]))
        assert [entry["name"] for entry in index] == [MODEL]
        # Metadata is open to everyone.
        assert client.get_server_metadata()["name"]
        assert client.get_model_metadata(MODEL)["name"] == MODEL
    finally:
        client.close()


def test_the_header_lets_a_load_through_to_the_control_mode_check(restricted_server):
    """With the header, a load reaches the core, which refuses it outside explicit mode."""
    client = httpclient.InferenceServerClient(restricted_server.http_url)
    try:
        with pytest.raises(InferenceServerException) as refused:
            client.load_model(MODEL)
        assert refused.value.status() == "403"
        with pytest.raises(InferenceServerException) as refused:
            client.load_model(MODEL, headers=dict([ADMIN]))
        assert refused.value.status() == "400"
        assert "explicit model load / unload is not allowed" in refused.value.message()
        with pytest.raises(InferenceServerException) as refused:
            client.unload_model(MODEL, headers=dict([ADMIN]))
        assert "explicit model load / unload is not allowed" in refused.value.message()
        assert client.is_model_ready(MODEL, headers=dict([INFER]))
    finally:
        client.close()


# ------------------------------------------------------------------------- gRPC

S = service_pb2
# Every gRPC method: name, request, the metadata it needs (None: open to all).
GRPC_METHODS = [
    ("ServerLive", S.ServerLiveRequest(), INFER),
    ("ServerReady", S.ServerReadyRequest(), INFER),
    ("ModelReady", S.ModelReadyRequest(name=MODEL), INFER),
    ("ServerMetadata", S.ServerMetadataRequest(), None),
    ("ModelMetadata", S.ModelMetadataRequest(name=MODEL), None),
    ("ModelInfer", S.ModelInferRequest(model_name=MODEL), INFER),
    ("ModelConfig", S.ModelConfigRequest(name=MODEL), ADMIN),
    ("ModelStatistics", S.ModelStatisticsRequest(name=MODEL), ADMIN),
    ("RepositoryIndex", S.RepositoryIndexRequest(), ADMIN),
    ("RepositoryModelLoad", S.RepositoryModelLoadRequest(model_name="no_such_model"), ADMIN),
    ("RepositoryModelUnload", S.RepositoryModelUnloadRequest(model_name="no_such_model"),
     ADMIN),
    ("SystemSharedMemoryStatus", S.SystemSharedMemoryStatusRequest(), ADMIN),
    ("SystemSharedMemoryRegister", S.SystemSharedMemoryRegisterRequest(name="r"), ADMIN),
    ("SystemSharedMemoryUnregister", S.SystemSharedMemoryUnregisterRequest(name="r"), ADMIN),
    ("CudaSharedMemoryStatus", S.CudaSharedMemoryStatusRequest(), ADMIN),
    ("CudaSharedMemoryRegister", S.CudaSharedMemoryRegisterRequest(name="r"), ADMIN),
    ("CudaSharedMemoryUnregister", S.CudaSharedMemoryUnregisterRequest(name="r"), ADMIN),
    ("TraceSetting", S.TraceSettingRequest(), ADMIN),
    ("LogSettings", S.LogSettingsRequest(), ADMIN),
]


@pytest.fixture(scope="module")
def stub(restricted_server):
    channel = grpc.insecure_channel(restricted_server.grpc_url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def grpc_metadata(pair) -> list:
    return [(PREFIX + pair[0], pair[1])]


@pytest.mark.parametrize("method, request_, needs", GRPC_METHODS)
def test_every_grpc_method_checks_its_groups_metadata(stub, method, request_, needs):
    call = getattr(stub, method)
    if needs is None:
        call(request_, timeout=TIMEOUT_S)
        return
    key, value = needs
    other = ADMIN if needs == INFER else INFER
    for metadata in ([], [(PREFIX + key, value + "x")], [(key, value)], grpc_metadata(other)):
        with pytest.raises(grpc.RpcError) as refused:
            call(request_, metadata=metadata, timeout=TIMEOUT_S)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, metadata
        assert refused.value.details() == grpc_refusal(key), metadata
    try:
        call(request_, metadata=grpc_metadata(needs), timeout=TIMEOUT_S)
    except grpc.RpcError as error:  # the request itself may be wrong; it was not refused
        assert "restricted" not in (error.details() or ""), error.details()


def test_a_stream_without_the_metadata_is_refused(stub):
    request = S.ModelInferRequest(model_name=MODEL)
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.ModelStreamInfer(iter([request]), timeout=TIMEOUT_S))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert refused.value.details() == grpc_refusal(INFER[0])
    # With it, the stream opens and answers the (incomplete) request with an in-stream error.
    replies = list(stub.ModelStreamInfer(
        iter([request]), metadata=grpc_metadata(INFER), timeout=TIMEOUT_S
    ))
    assert len(replies) == 1 and replies[0].error_message, replies


def test_tritonclient_grpc_with_and_without_the_metadata(restricted_server):
    client = grpcclient.InferenceServerClient(restricted_server.grpc_url)
    try:
        inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
                  grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(a)
        with pytest.raises(InferenceServerException, match="This protocol is restricted"):
            client.infer(MODEL, inputs, client_timeout=TIMEOUT_S)
        result = client.infer(
            MODEL, inputs, headers={PREFIX + INFER[0]: INFER[1]}, client_timeout=TIMEOUT_S
        )
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - a)
        with pytest.raises(InferenceServerException, match="This protocol is restricted"):
            client.unload_model(MODEL, headers={PREFIX + INFER[0]: INFER[1]})
        with pytest.raises(InferenceServerException,
                           match="explicit model load / unload is not allowed"):
            client.unload_model(MODEL, headers={PREFIX + ADMIN[0]: ADMIN[1]})
        assert client.get_server_metadata().name
    finally:
        client.close()


# ------------------------------------------------- files a client may not choose


def test_clients_cannot_point_the_log_or_trace_at_a_file(restricted_server, stub, tmp_path):
    """Even with the group's header, the log and trace file stay start-up settings (as with
    Triton): a client choosing them could create, truncate or append to any file the server
    may write."""
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    admin = dict([ADMIN])
    for path, body, message in [
        ("/v2/logging", {"log_file": str(target)}, "log file location"),
        ("/v2/trace/setting", {"trace_file": str(target), "trace_level": ["TIMESTAMPS"]},
         "trace file location"),
        (f"{M}/trace/setting", {"trace_file": str(target)}, "trace file location"),
    ]:
        response = requests.post(
            restricted_server.http_base + path, json=body, headers=admin, timeout=TIMEOUT_S
        )
        assert response.status_code == 400, response.text
        assert response.json() == {
            "error": f"{message} can not be updated through network protocol"
        }
    # A null log_file changes nothing and is accepted, as Triton does.
    response = requests.post(
        restricted_server.http_base + "/v2/logging", json={"log_file": None}, headers=admin,
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    metadata = grpc_metadata(ADMIN)
    with pytest.raises(grpc.RpcError) as refused:
        stub.LogSettings(
            S.LogSettingsRequest(settings={
                "log_file": S.LogSettingsRequest.SettingValue(string_param=str(target))
            }),
            metadata=metadata, timeout=TIMEOUT_S,
        )
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "log file location can not be updated" in refused.value.details()
    with pytest.raises(grpc.RpcError) as refused:
        stub.TraceSetting(
            S.TraceSettingRequest(settings={
                "trace_file": S.TraceSettingRequest.SettingValue(value=[str(target)])
            }),
            metadata=metadata, timeout=TIMEOUT_S,
        )
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "trace file location can not be updated" in refused.value.details()
    assert target.read_text() == "keep me"
    settings = requests.get(
        restricted_server.http_base + "/v2/trace/setting", headers=admin, timeout=TIMEOUT_S
    ).json()
    assert settings["trace_file"] == "" and settings["trace_level"] == ["OFF"], settings


# ---------------------------------------------------------------- flag errors


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--http-restricted-api", "inference,infer:k=v"], "unknown API group 'infer'"),
        (["--grpc-restricted-protocol", "health:a=1", "--grpc-restricted-protocol",
          "health,trace:b=2"], "'health' is named in more than one restriction"),
        (["--http-restricted-api", "inference"],
         "--http-restricted-api 'inference' is not <api>[,<api>...]:<key>=<value>"),
    ],
)
def test_bad_restriction_flags_stop_the_start(server_factory, tmp_path: Path, flags, expected):
    repo = copy_model_repository(tmp_path / "models", [MODEL])
    server = server_factory(repo, flags, wait_ready=False)
    assert server.wait_exit(timeout=TIMEOUT_S) != 0, server.describe()
    assert expected in server.stderr_text(), server.describe()
