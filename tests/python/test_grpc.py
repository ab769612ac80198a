"""KServe v2 over gRPC, driven by tritonclient.grpc (plus a few raw stub calls)."""

from __future__ import annotations

import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import serialize_byte_tensor

from ferrum_checks import (
    MAX_BATCH,
    MODEL_NAMES,
    MODELS,
    assert_exact,
    assert_simple_result,
    config_tensor,
    grpc_simple_infer,
    grpc_simple_inputs,
    simple_data,
)

TIMEOUT = 60


@pytest.fixture(scope="module")
def raw_stub(server):
    """A bare generated stub, for requests tritonclient would not build."""
    channel = grpc.insecure_channel(
        server.grpc_url,
        options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ],
    )
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


# ------------------------------------------------------------------- health


def test_server_live_and_ready(grpc_client):
    assert grpc_client.is_server_live(client_timeout=TIMEOUT)
    assert grpc_client.is_server_ready(client_timeout=TIMEOUT)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_model_ready(grpc_client, model):
    assert grpc_client.is_model_ready(model, client_timeout=TIMEOUT)
    assert grpc_client.is_model_ready(model, model_version="1", client_timeout=TIMEOUT)


def test_unknown_model_not_ready(grpc_client):
    # Triton answers ModelReady for an unknown model with OK and ready=false
    # (no error status), so tritonclient returns False instead of raising.
    assert grpc_client.is_model_ready("no_such_model", client_timeout=TIMEOUT) is False
    assert grpc_client.is_model_ready("simple", model_version="99", client_timeout=TIMEOUT) is False


# ----------------------------------------------------------------- metadata


def test_server_metadata(grpc_client, http_client):
    meta = grpc_client.get_server_metadata(client_timeout=TIMEOUT)
    assert meta.name
    assert meta.version
    assert len(meta.extensions) > 0
    assert all(meta.extensions)
    assert "binary_tensor_data" in meta.extensions
    # Both protocols describe the same server.
    http_meta = http_client.get_server_metadata()
    assert meta.name == http_meta["name"]
    assert meta.version == http_meta["version"]
    assert list(meta.extensions) == http_meta["extensions"]


def _tensor_view(tensors):
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors]


@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("version", ["", "1"])
def test_model_metadata(grpc_client, model, version):
    meta = grpc_client.get_model_metadata(model, model_version=version, client_timeout=TIMEOUT)
    want = MODELS[model]
    assert meta.name == model
    assert "1" in meta.versions
    assert _tensor_view(meta.inputs) == want["inputs"]
    assert _tensor_view(meta.outputs) == want["outputs"]


def test_model_metadata_matches_http(grpc_client, http_client):
    for model in MODEL_NAMES:
        g = grpc_client.get_model_metadata(model, as_json=True, client_timeout=TIMEOUT)
        h = http_client.get_model_metadata(model)
        assert g["name"] == h["name"]
        assert g["versions"] == h["versions"]
        assert g.get("platform", "") == h.get("platform", "")


def _config_view(tensors):
    return [
        {"name": t.name, "data_type": model_config_pb2.DataType.Name(t.data_type), "dims": list(t.dims)}
        for t in tensors
    ]


@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("version", ["", "1"])
def test_model_config(grpc_client, model, version):
    resp = grpc_client.get_model_config(model, model_version=version, client_timeout=TIMEOUT)
    cfg = resp.config
    want = MODELS[model]
    assert cfg.name == model
    assert cfg.backend == want["backend"]
    assert cfg.max_batch_size == MAX_BATCH
    assert _config_view(cfg.input) == [config_tensor(t) for t in want["inputs"]]
    assert _config_view(cfg.output) == [config_tensor(t) for t in want["outputs"]]


def test_model_config_matches_http(grpc_client, http_client):
    for model in MODEL_NAMES:
        cfg = grpc_client.get_model_config(model, client_timeout=TIMEOUT).config
        h = http_client.get_model_config(model)
        assert cfg.name == h["name"]
        assert cfg.max_batch_size == h["max_batch_size"]
        assert [i.name for i in cfg.input] == [i["name"] for i in h["input"]]
        assert [list(i.dims) for i in cfg.input] == [i["dims"] for i in h["input"]]


# ------------------------------------------------------------ simple infer


def test_simple_infer(grpc_client):
    in0, in1 = simple_data(seed=101)
    result = grpc_simple_infer(grpc_client, in0, in1)
    assert_simple_result(result, in0, in1)
    resp = result.get_response()
    assert resp.model_name == "simple"
    assert resp.model_version in ("", "1")
    assert sorted(o.name for o in resp.outputs) == ["OUTPUT0", "OUTPUT1"]
    for out in resp.outputs:
        assert out.datatype == "INT32"
        assert list(out.shape) == [1, 16]
    # tritonclient only reads raw_output_contents (one entry per output, in
    # the order of resp.outputs); typed contents would decode as empty.
    assert len(resp.raw_output_contents) == len(resp.outputs)


def test_simple_infer_no_requested_outputs(grpc_client):
    in0, in1 = simple_data(seed=102)
    result = grpc_simple_infer(grpc_client, in0, in1, outputs=None)
    assert_simple_result(result, in0, in1)


@pytest.mark.parametrize("batch", [3, MAX_BATCH])
def test_simple_infer_batch(grpc_client, batch):
    in0, in1 = simple_data(batch=batch, seed=100 + batch)
    result = grpc_simple_infer(grpc_client, in0, in1)
    assert_simple_result(result, in0, in1)
    for out in result.get_response().outputs:
        assert list(out.shape) == [batch, 16]


def test_requested_output_subset(grpc_client):
    in0, in1 = simple_data(batch=2, seed=103)
    result = grpc_simple_infer(grpc_client, in0, in1, outputs=["OUTPUT1"])
    resp = result.get_response()
    assert [o.name for o in resp.outputs] == ["OUTPUT1"]
    assert len(resp.raw_output_contents) == 1
    assert result.as_numpy("OUTPUT0") is None
    assert_exact(result.as_numpy("OUTPUT1"), in0 - in1, "OUTPUT1")


def test_explicit_model_version(grpc_client):
    in0, in1 = simple_data(seed=104)
    result = grpc_simple_infer(grpc_client, in0, in1, model_version="1")
    assert_simple_result(result, in0, in1)
    assert result.get_response().model_version in ("", "1")


def test_request_id_echoed(grpc_client):
    in0, in1 = simple_data(seed=105)
    result = grpc_simple_infer(grpc_client, in0, in1, request_id="grpc-req-7")
    assert result.get_response().id == "grpc-req-7"
    assert_simple_result(result, in0, in1)


def test_raw_stub_simple_infer(raw_stub):
    """A ModelInferRequest built by hand, the way non-Python clients do it."""
    in0, in1 = simple_data(seed=106)
    req = service_pb2.ModelInferRequest(model_name="simple", model_version="1", id="raw")
    for name, arr in (("INPUT0", in0), ("INPUT1", in1)):
        tensor = req.inputs.add()
        tensor.name = name
        tensor.datatype = "INT32"
        tensor.shape.extend(arr.shape)
        req.raw_input_contents.append(arr.tobytes())
    resp = raw_stub.ModelInfer(req, timeout=TIMEOUT)
    assert resp.id == "raw"
    got = {o.name: np.frombuffer(raw, np.int32).reshape(list(o.shape))
           for o, raw in zip(resp.outputs, resp.raw_output_contents)}
    assert_exact(got["OUTPUT0"], in0 + in1)
    assert_exact(got["OUTPUT1"], in0 - in1)


# ----------------------------------------------------------------- strings

UTF8_STRINGS = ["", "hello", "héllo wörld ✓", "日本語テキスト", "emoji 🚀", "tab\tnew\nline \"q\""]


def _string_infer(client, arr: np.ndarray):
    inp = grpcclient.InferInput("INPUT0", list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr)
    return client.infer(
        "simple_identity", [inp], outputs=[grpcclient.InferRequestedOutput("OUTPUT0")],
        client_timeout=TIMEOUT,
    )


def test_string_roundtrip_utf8(grpc_client):
    arr = np.array([[s.encode("utf-8") for s in UTF8_STRINGS]], dtype=np.object_)
    result = _string_infer(grpc_client, arr)
    assert_exact(result.as_numpy("OUTPUT0"), arr)
    assert result.get_response().outputs[0].datatype == "BYTES"


def test_string_roundtrip_non_utf8(grpc_client):
    raw = [b"\xff\xfe\xfd", b"", b"\x00", b"\x80abc\x00def", bytes(range(256)), b"ok"]
    arr = np.array(raw, dtype=np.object_).reshape(2, 3)
    result = _string_infer(grpc_client, arr)
    assert_exact(result.as_numpy("OUTPUT0"), arr)
    blob = result.get_response().raw_output_contents[0]
    assert blob == serialize_byte_tensor(arr).item()


def test_string_all_empty(grpc_client):
    arr = np.array([[b"", b"", b""]], dtype=np.object_)
    result = _string_infer(grpc_client, arr)
    assert_exact(result.as_numpy("OUTPUT0"), arr)


# ------------------------------------------------------------ fp32 identity


def _identity_infer(client, arr: np.ndarray):
    inp = grpcclient.InferInput("INPUT0", list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr)
    return client.infer(
        "identity_fp32", [inp], outputs=[grpcclient.InferRequestedOutput("OUTPUT0")],
        client_timeout=TIMEOUT,
    )


@pytest.mark.parametrize("seed", [111, 112, 113])
def test_identity_fp32_dynamic_length(grpc_client, seed):
    rng = np.random.default_rng(seed)
    length = int(rng.integers(1, 300))
    batch = int(rng.integers(1, MAX_BATCH + 1))
    arr = (rng.standard_normal((batch, length)) * 1e3).astype(np.float32)
    result = _identity_infer(grpc_client, arr)
    assert_exact(result.as_numpy("OUTPUT0"), arr, f"[{batch},{length}]")
    out = result.get_response().outputs[0]
    assert out.datatype == "FP32"
    assert list(out.shape) == [batch, length]


def test_identity_fp32_special_values(grpc_client):
    arr = np.array([[np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, -3.4028235e38]], dtype=np.float32)
    result = _identity_infer(grpc_client, arr)
    assert_exact(result.as_numpy("OUTPUT0"), arr)


def test_identity_fp32_large(grpc_client):
    # 12 MiB request and response: above tonic's 4 MiB default message limit.
    # tritonclient itself allows messages up to 2 GiB.
    arr = np.random.default_rng(121).standard_normal((1, 3 * 1024 * 1024)).astype(np.float32)
    result = _identity_infer(grpc_client, arr)
    assert_exact(result.as_numpy("OUTPUT0"), arr)


# ------------------------------------------------------------ repository


def test_repository_index(grpc_client):
    index = grpc_client.get_model_repository_index(client_timeout=TIMEOUT)
    by_name = {m.name: m for m in index.models}
    for model in MODEL_NAMES:
        assert model in by_name, f"{model} missing from {index}"
        assert by_name[model].state == "READY"
        assert by_name[model].version == "1"


def test_repository_index_matches_http(grpc_client, http_client):
    g = grpc_client.get_model_repository_index(as_json=True, client_timeout=TIMEOUT)
    h = http_client.get_model_repository_index()
    g_set = {(m["name"], m.get("version", ""), m.get("state", "")) for m in g.get("models", [])}
    h_set = {(m["name"], m.get("version", ""), m.get("state", "")) for m in h}
    assert g_set == h_set


# ------------------------------------------------------------- concurrency


def test_concurrent_async_infer(grpc_client):
    """Many requests in flight at once on one channel; each answer must
    belong to its own request (also exercises batching, if any)."""
    done: "queue.Queue" = queue.Queue()
    expected = {}
    for i in range(48):
        in0, in1 = simple_data(batch=1 + i % 3, seed=2000 + i)
        rid = f"g{i}"
        expected[rid] = (in0, in1)
        grpc_client.async_infer(
            "simple", grpc_simple_inputs(in0, in1),
            callback=lambda result, error: done.put((result, error)),
            outputs=[grpcclient.InferRequestedOutput(o) for o in ("OUTPUT0", "OUTPUT1")],
            request_id=rid, client_timeout=TIMEOUT,
        )
    seen = set()
    for _ in range(len(expected)):
        result, error = done.get(timeout=TIMEOUT)
        assert error is None, error
        rid = result.get_response().id
        assert rid in expected and rid not in seen
        seen.add(rid)
        assert_simple_result(result, *expected[rid])
