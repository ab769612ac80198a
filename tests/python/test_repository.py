"""Model repository extension through tritonclient: load, unload, config override, file
uploads, refusals, and a broken config that leaves the serving version in place."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from ferrum_checks import (
    assert_simple_result,
    expect_grpc_error,
    expect_http_error,
    grpc_simple_infer,
    http_simple_infer,
    simple_data,
)

EXPLICIT = ["--model-control-mode", "explicit"]


def index_states(client) -> dict:
    """name → (state, reason) of the unversioned or highest-version row per model."""
    rows = client.get_model_repository_index()
    if not isinstance(rows, list):  # gRPC returns a message
        rows = [
            {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
            for m in rows.models
        ]
    states = {}
    for row in rows:
        states[row["name"]] = (row.get("state", ""), row.get("reason", ""))
    return states


def identity_infer_http(client, model: str, values: np.ndarray):
    inp = httpclient.InferInput("INPUT0", [1, values.size], "FP32")
    inp.set_data_from_numpy(values.reshape(1, -1))
    return client.infer(model, [inp]).as_numpy("OUTPUT0")


@pytest.fixture
def explicit_server(server_factory, model_repository_copy):
    return server_factory(model_repository_copy, EXPLICIT + ["--load-model", "simple"])


def test_explicit_mode_loads_only_what_is_named(explicit_server):
    with httpclient.InferenceServerClient(explicit_server.http_url) as client:
        states = index_states(client)
        assert states["simple"][0] == "READY"
        assert states["identity_fp32"] == ("UNAVAILABLE", "not loaded")
        assert client.is_model_ready("simple")
        assert not client.is_model_ready("identity_fp32")


def test_load_and_unload_over_http(explicit_server):
    values = np.array([1.5, -2.25, 3.0], dtype=np.float32)
    with httpclient.InferenceServerClient(explicit_server.http_url) as client:
        client.load_model("identity_fp32")
        assert client.is_model_ready("identity_fp32")
        np.testing.assert_array_equal(identity_infer_http(client, "identity_fp32", values), values.reshape(1, -1))

        client.unload_model("identity_fp32")
        assert not client.is_model_ready("identity_fp32")
        expect_http_error(lambda: identity_infer_http(client, "identity_fp32", values), 503, "unloaded")
        # Unloading one model leaves the others serving.
        in0, in1 = simple_data()
        assert_simple_result(http_simple_infer(client, in0, in1), in0, in1)


def test_load_and_unload_over_grpc(explicit_server):
    with grpcclient.InferenceServerClient(explicit_server.grpc_url) as client:
        client.load_model("simple_string")
        assert client.is_model_ready("simple_string")
        assert index_states(client)["simple_string"][0] == "READY"
        client.unload_model("simple_string", unload_dependents=True)
        assert not client.is_model_ready("simple_string")
        expect_grpc_error(lambda: client.load_model("no_such_model"), "NOT_FOUND", "no_such_model")


def test_config_override(explicit_server):
    with httpclient.InferenceServerClient(explicit_server.http_url) as client:
        config = client.get_model_config("simple")
        assert config["max_batch_size"] == 8
        config["max_batch_size"] = 2
        client.load_model("simple", config=json.dumps(config))
        assert client.get_model_config("simple")["max_batch_size"] == 2
        in0, in1 = simple_data(batch=2)
        assert_simple_result(http_simple_infer(client, in0, in1), in0, in1)
        in0, in1 = simple_data(batch=3)
        expect_http_error(lambda: http_simple_infer(client, in0, in1), 400, "batch size 3")
        expect_http_error(lambda: client.load_model("simple", config="{not json"), 400, "config")


def test_file_upload_creates_a_model(explicit_server, tmp_path: Path):
    config = {
        "name": "uploaded",
        "backend": "identity",
        "max_batch_size": 4,
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
    }
    values = np.arange(5, dtype=np.float32)
    with httpclient.InferenceServerClient(explicit_server.http_url) as client:
        client.load_model("uploaded", config=json.dumps(config), files={"file:1/weights.bin": b"\x00\x01"})
        np.testing.assert_array_equal(identity_infer_http(client, "uploaded", values), values.reshape(1, -1))
    with grpcclient.InferenceServerClient(explicit_server.grpc_url) as client:
        config["name"] = "uploaded_grpc"
        client.load_model("uploaded_grpc", config=json.dumps(config), files={"file:1/notes.txt": b"hi"})
        assert client.is_model_ready("uploaded_grpc")


@pytest.mark.parametrize("path", ["../escaped.txt", "1/../../escaped.txt", "/tmp/ferrum-escaped.txt", "./1/x"])
def test_file_paths_outside_the_model_folder_are_refused(explicit_server, path):
    config = json.dumps({"name": "evil", "backend": "identity"})
    with httpclient.InferenceServerClient(explicit_server.http_url) as client:
        expect_http_error(
            lambda: client.load_model("evil", config=config, files={f"file:{path}": b"x"}),
            400,
            "relative path inside the model folder",
        )
    with grpcclient.InferenceServerClient(explicit_server.grpc_url) as client:
        expect_grpc_error(
            lambda: client.load_model("evil", config=config, files={f"file:{path}": b"x"}),
            "INVALID_ARGUMENT",
            "relative path inside the model folder",
        )
    assert not Path("/tmp/ferrum-escaped.txt").exists()


def test_broken_config_keeps_the_old_version_serving(explicit_server, model_repository_copy):
    (model_repository_copy / "simple" / "config.pbtxt").write_text('name: "simple"\nbackend: "add_sub"\nbogus {\n')
    with httpclient.InferenceServerClient(explicit_server.http_url) as client:
        expect_http_error(lambda: client.load_model("simple"), 400, "bogus")
        in0, in1 = simple_data()
        assert_simple_result(http_simple_infer(client, in0, in1), in0, in1)
        rows = client.get_model_repository_index()
        reasons = [r.get("reason", "") for r in rows if r["name"] == "simple"]
        assert any("bogus" in r for r in reasons), rows
        assert any(r.get("state") == "READY" for r in rows if r["name"] == "simple"), rows


def test_load_unload_refused_outside_explicit_mode(server):
    with httpclient.InferenceServerClient(server.http_url) as client:
        expect_http_error(lambda: client.load_model("simple"), 400, "not allowed", "'none'")
        expect_http_error(lambda: client.unload_model("simple"), 400, "not allowed")
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        expect_grpc_error(lambda: client.load_model("simple"), "UNIMPLEMENTED", "not allowed")
        expect_grpc_error(lambda: client.unload_model("simple"), "UNIMPLEMENTED", "not allowed")
        in0, in1 = simple_data()
        assert_simple_result(grpc_simple_infer(client, in0, in1), in0, in1)
