"""KServe v2 over HTTP/REST, driven by tritonclient.http (plus a few raw requests)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from ferrum_checks import (
    MAX_BATCH,
    MODEL_NAMES,
    MODELS,
    assert_exact,
    assert_simple_result,
    config_tensor,
    http_simple_infer,
    http_simple_inputs,
    simple_data,
)

RAW_TIMEOUT = 60


# ------------------------------------------------------------------- health


def test_server_live_and_ready(http_client):
    assert http_client.is_server_live()
    assert http_client.is_server_ready()


def test_health_endpoints_raw(server):
    for path in ("/v2/health/live", "/v2/health/ready"):
        resp = requests.get(server.http_base + path, timeout=RAW_TIMEOUT)
        assert resp.status_code == 200, path


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_model_ready(http_client, model):
    assert http_client.is_model_ready(model)
    assert http_client.is_model_ready(model, model_version="1")


def test_unknown_model_not_ready(http_client):
    # tritonclient maps any non-200 answer to False.
    assert not http_client.is_model_ready("no_such_model")
    assert not http_client.is_model_ready("simple", model_version="99")


# ----------------------------------------------------------------- metadata


def test_server_metadata(http_client):
    meta = http_client.get_server_metadata()
    assert isinstance(meta["name"], str) and meta["name"]
    assert isinstance(meta["version"], str) and meta["version"]
    exts = meta["extensions"]
    assert isinstance(exts, list) and exts
    assert all(isinstance(e, str) and e for e in exts)
    assert "binary_tensor_data" in exts


def _tensor_view(tensors):
    return [{"name": t["name"], "datatype": t["datatype"], "shape": t["shape"]} for t in tensors]


@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("version", ["", "1"])
def test_model_metadata(http_client, model, version):
    meta = http_client.get_model_metadata(model, model_version=version)
    want = MODELS[model]
    assert meta["name"] == model
    assert "1" in meta["versions"]
    assert all(isinstance(v, str) for v in meta["versions"])
    assert isinstance(meta.get("platform"), str)
    assert _tensor_view(meta["inputs"]) == want["inputs"]
    assert _tensor_view(meta["outputs"]) == want["outputs"]


def _config_view(tensors):
    return [{"name": t["name"], "data_type": t["data_type"], "dims": t["dims"]} for t in tensors]


@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("version", ["", "1"])
def test_model_config(http_client, model, version):
    cfg = http_client.get_model_config(model, model_version=version)
    want = MODELS[model]
    assert cfg["name"] == model
    assert cfg["backend"] == want["backend"]
    # Triton's JSON ModelConfig: snake_case proto field names, enum names as
    # strings and int64 values (dims, max_batch_size) as JSON numbers.
    assert cfg["max_batch_size"] == MAX_BATCH
    assert _config_view(cfg["input"]) == [config_tensor(t) for t in want["inputs"]]
    assert _config_view(cfg["output"]) == [config_tensor(t) for t in want["outputs"]]
    assert "maxBatchSize" not in cfg and "dataType" not in json.dumps(cfg)


# ------------------------------------------------------------ simple infer


@pytest.mark.parametrize(
    "binary_in,binary_out",
    [(False, False), (True, True), (True, False), (False, True)],
    ids=["json", "binary", "binary-in-json-out", "json-in-binary-out"],
)
def test_simple_infer(http_client, binary_in, binary_out):
    in0, in1 = simple_data(seed=1)
    result = http_simple_infer(http_client, in0, in1, binary_in=binary_in, binary_out=binary_out)
    assert_simple_result(result, in0, in1)
    resp = result.get_response()
    assert resp["model_name"] == "simple"
    assert resp.get("model_version", "1") == "1"
    names = [o["name"] for o in resp["outputs"]]
    assert sorted(names) == ["OUTPUT0", "OUTPUT1"]
    for out in resp["outputs"]:
        assert out["datatype"] == "INT32"
        assert out["shape"] == [1, 16]
        has_binary = "binary_data_size" in out.get("parameters", {})
        assert has_binary == binary_out, out
        assert ("data" in out) == (not binary_out), out


def test_simple_infer_no_requested_outputs(http_client):
    # With no outputs listed, tritonclient sets parameters.binary_data_output
    # and the server must return every output, in binary.
    in0, in1 = simple_data(seed=2)
    result = http_simple_infer(http_client, in0, in1, binary_in=True, binary_out=None)
    assert_simple_result(result, in0, in1)
    for out in result.get_response()["outputs"]:
        assert out["parameters"]["binary_data_size"] == 16 * 4


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("batch", [3, MAX_BATCH])
def test_simple_infer_batch(http_client, batch, binary):
    in0, in1 = simple_data(batch=batch, seed=batch)
    result = http_simple_infer(http_client, in0, in1, binary_in=binary, binary_out=binary)
    assert_simple_result(result, in0, in1)
    for out in result.get_response()["outputs"]:
        assert out["shape"] == [batch, 16]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_requested_output_subset(http_client, binary):
    in0, in1 = simple_data(batch=2, seed=3)
    result = http_simple_infer(
        http_client, in0, in1, binary_in=binary, binary_out=binary, outputs=["OUTPUT1"]
    )
    outputs = result.get_response()["outputs"]
    assert [o["name"] for o in outputs] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    assert_exact(result.as_numpy("OUTPUT1"), in0 - in1, "OUTPUT1")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_explicit_model_version(http_client, binary):
    in0, in1 = simple_data(seed=4)
    result = http_simple_infer(
        http_client, in0, in1, binary_in=binary, binary_out=binary, model_version="1"
    )
    assert_simple_result(result, in0, in1)
    assert result.get_response().get("model_version", "1") == "1"


def test_request_id_echoed(http_client):
    in0, in1 = simple_data(seed=5)
    result = http_simple_infer(http_client, in0, in1, request_id="req-42")
    assert result.get_response()["id"] == "req-42"
    assert_simple_result(result, in0, in1)


def test_edge_values_int32(http_client):
    # Values whose sum and difference stay inside INT32.
    in0 = np.array([[0, 1, -1, 2**30, -(2**30), 123456789, -123456789, 7] * 2], dtype=np.int32)
    in1 = np.array([[0, -1, 1, 2**30 - 1, -(2**30), -987654, 987654, -7] * 2], dtype=np.int32)
    for binary in (False, True):
        result = http_simple_infer(http_client, in0, in1, binary_in=binary, binary_out=binary)
        assert_simple_result(result, in0, in1)


# ---------------------------------------------------------- raw wire checks


def _raw_binary_simple_body(in0: np.ndarray, in1: np.ndarray, out_binary: bool = True):
    header = {
        "inputs": [
            {"name": "INPUT0", "shape": list(in0.shape), "datatype": "INT32",
             "parameters": {"binary_data_size": in0.nbytes}},
            {"name": "INPUT1", "shape": list(in1.shape), "datatype": "INT32",
             "parameters": {"binary_data_size": in1.nbytes}},
        ],
        "outputs": [
            {"name": "OUTPUT0", "parameters": {"binary_data": out_binary}},
            {"name": "OUTPUT1", "parameters": {"binary_data": out_binary}},
        ],
    }
    head = json.dumps(header).encode()
    return head, head + in0.tobytes() + in1.tobytes()


def _split_binary_response(resp: requests.Response):
    """Return (json_header, {output name: raw bytes}) of a binary response."""
    length = int(resp.headers["Inference-Header-Content-Length"])
    body = resp.content
    assert 0 < length <= len(body)
    header = json.loads(body[:length])
    blobs, offset = {}, length
    for out in header["outputs"]:
        size = out.get("parameters", {}).get("binary_data_size")
        if size is not None:
            blobs[out["name"]] = body[offset:offset + size]
            offset += size
    assert offset == len(body), "bytes after the last binary output"
    return header, blobs


def test_raw_binary_request_lowercase_header(server):
    # HTTP header names are case-insensitive; the server must not insist on
    # tritonclient's spelling of Inference-Header-Content-Length.
    in0, in1 = simple_data(seed=6)
    head, body = _raw_binary_simple_body(in0, in1)
    resp = requests.post(
        f"{server.http_base}/v2/models/simple/infer",
        data=body,
        headers={"inference-header-content-length": str(len(head))},
        timeout=RAW_TIMEOUT,
    )
    assert resp.status_code == 200, resp.text[:500]
    header, blobs = _split_binary_response(resp)
    assert sorted(o["name"] for o in header["outputs"]) == ["OUTPUT0", "OUTPUT1"]
    assert_exact(np.frombuffer(blobs["OUTPUT0"], np.int32).reshape(1, 16), in0 + in1)
    assert_exact(np.frombuffer(blobs["OUTPUT1"], np.int32).reshape(1, 16), in0 - in1)


def test_raw_json_request_with_content_type(server):
    in0, in1 = simple_data(seed=7)
    body = {
        "id": "raw-json",
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": in0.ravel().tolist()},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": in1.ravel().tolist()},
        ],
    }
    resp = requests.post(
        f"{server.http_base}/v2/models/simple/infer", json=body, timeout=RAW_TIMEOUT
    )
    assert resp.status_code == 200, resp.text[:500]
    # No binary outputs: the whole body is the JSON document (Triton sends no
    # Inference-Header-Content-Length then; if one is sent it must cover it all).
    length = resp.headers.get("Inference-Header-Content-Length")
    assert length is None or int(length) == len(resp.content)
    doc = resp.json()
    assert doc["id"] == "raw-json"
    assert doc["model_name"] == "simple"
    by_name = {o["name"]: o for o in doc["outputs"]}
    assert sorted(by_name) == ["OUTPUT0", "OUTPUT1"]
    assert by_name["OUTPUT0"]["data"] == (in0 + in1).ravel().tolist()
    assert by_name["OUTPUT1"]["data"] == (in0 - in1).ravel().tolist()
    assert by_name["OUTPUT0"]["shape"] == [1, 16]


def test_raw_binary_response_framing(server):
    in0, in1 = simple_data(batch=3, seed=8)
    head, body = _raw_binary_simple_body(in0, in1)
    resp = requests.post(
        f"{server.http_base}/v2/models/simple/infer",
        data=body,
        headers={"Inference-Header-Content-Length": str(len(head))},
        timeout=RAW_TIMEOUT,
    )
    assert resp.status_code == 200, resp.text[:500]
    header, blobs = _split_binary_response(resp)
    for out in header["outputs"]:
        assert out["parameters"]["binary_data_size"] == 3 * 16 * 4
        assert "data" not in out
    assert_exact(np.frombuffer(blobs["OUTPUT0"], np.int32).reshape(3, 16), in0 + in1)


# ----------------------------------------------------------------- strings

UTF8_STRINGS = ["", "hello", "héllo wörld ✓", "日本語テキスト", "emoji 🚀", "tab\tnew\nline \"q\""]


def _string_infer(client, arr: np.ndarray, binary_in: bool, binary_out: bool):
    inp = httpclient.InferInput("INPUT0", list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr, binary_data=binary_in)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary_out)
    return client.infer("simple_identity", [inp], outputs=[out])


@pytest.mark.parametrize(
    "binary_in,binary_out",
    [(False, False), (True, True), (True, False), (False, True)],
    ids=["json", "binary", "binary-in-json-out", "json-in-binary-out"],
)
def test_string_roundtrip_utf8(http_client, binary_in, binary_out):
    arr = np.array([[s.encode("utf-8") for s in UTF8_STRINGS]], dtype=np.object_)
    result = _string_infer(http_client, arr, binary_in, binary_out)
    got = result.as_numpy("OUTPUT0")
    assert got is not None and got.shape == arr.shape
    if binary_out:
        assert got.tolist() == arr.tolist()  # bytes back
    else:
        assert got.tolist() == [UTF8_STRINGS]  # JSON strings come back as str
    out = result.get_output("OUTPUT0")
    assert out["datatype"] == "BYTES"


def test_string_roundtrip_non_utf8_binary(http_client):
    raw = [b"\xff\xfe\xfd", b"", b"\x00", b"\x80abc\x00def", bytes(range(256)), b"ok"]
    arr = np.array(raw, dtype=np.object_).reshape(2, 3)
    result = _string_infer(http_client, arr, binary_in=True, binary_out=True)
    assert_exact(result.as_numpy("OUTPUT0"), arr)
    # The binary blob must use the 4-byte little-endian length framing.
    out = result.get_output("OUTPUT0")
    assert out["parameters"]["binary_data_size"] == sum(4 + len(b) for b in raw)


def test_string_all_empty(http_client):
    arr = np.array([[b"", b"", b""]], dtype=np.object_)
    for binary in (False, True):
        result = _string_infer(http_client, arr, binary, binary)
        got = result.as_numpy("OUTPUT0")
        assert got is not None and got.shape == (1, 3)
        # Binary outputs decode to bytes, JSON outputs to str.
        assert got.ravel().tolist() == ([b""] * 3 if binary else [""] * 3)


def test_string_raw_binary_framing(server):
    values = [b"a", b"", b"\xc3\x28"]  # the last one is not valid UTF-8
    blob = serialize_byte_tensor(np.array(values, dtype=np.object_)).item()
    assert blob == b"".join(struct.pack("<I", len(v)) + v for v in values)
    head = json.dumps({
        "inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
    }).encode()
    resp = requests.post(
        f"{server.http_base}/v2/models/simple_identity/infer",
        data=head + blob,
        headers={"Inference-Header-Content-Length": str(len(head))},
        timeout=RAW_TIMEOUT,
    )
    assert resp.status_code == 200, resp.text[:500]
    _, blobs = _split_binary_response(resp)
    assert blobs["OUTPUT0"] == blob
    assert deserialize_bytes_tensor(blobs["OUTPUT0"]).tolist() == values


# ------------------------------------------------------------ fp32 identity


def _identity_infer(client, arr: np.ndarray, binary: bool):
    inp = httpclient.InferInput("INPUT0", list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr, binary_data=binary)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
    return client.infer("identity_fp32", [inp], outputs=[out])


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_identity_fp32_dynamic_length(http_client, binary, seed):
    rng = np.random.default_rng(seed)
    length = int(rng.integers(1, 300))
    batch = int(rng.integers(1, MAX_BATCH + 1))
    arr = (rng.standard_normal((batch, length)) * 1e3).astype(np.float32)
    result = _identity_infer(http_client, arr, binary)
    assert_exact(result.as_numpy("OUTPUT0"), arr, f"[{batch},{length}]")
    out = result.get_output("OUTPUT0")
    assert out["datatype"] == "FP32"
    assert out["shape"] == [batch, length]


def test_identity_fp32_json_precision(http_client):
    # Values that only survive JSON if the server keeps full float32 precision.
    arr = np.array([[0.1, 1 / 3, 3.4028235e38, 1.17549435e-38, 1e-45, -2.5e-7, 16777217.0]],
                   dtype=np.float32)
    result = _identity_infer(http_client, arr, binary=False)
    assert_exact(result.as_numpy("OUTPUT0"), arr)


def test_identity_fp32_special_values_binary(http_client):
    arr = np.array([[np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, -3.4028235e38]], dtype=np.float32)
    result = _identity_infer(http_client, arr, binary=True)
    assert_exact(result.as_numpy("OUTPUT0"), arr)


def test_identity_fp32_large_binary(http_client):
    # 12 MiB: above common default body limits (2 MiB axum, 4 MiB gRPC).
    arr = np.random.default_rng(21).standard_normal((1, 3 * 1024 * 1024)).astype(np.float32)
    result = _identity_infer(http_client, arr, binary=True)
    assert_exact(result.as_numpy("OUTPUT0"), arr)


# ------------------------------------------------------------ repository


def _check_index(entries):
    by_name = {e["name"]: e for e in entries}
    for model in MODEL_NAMES:
        assert model in by_name, f"{model} missing from repository index {entries}"
        entry = by_name[model]
        assert entry.get("state") == "READY", entry
        assert entry.get("version") == "1", entry


def test_repository_index(http_client):
    index = http_client.get_model_repository_index()
    assert isinstance(index, list)
    _check_index(index)


@pytest.mark.parametrize("body", [None, {}, {"ready": True}], ids=["empty", "{}", "ready"])
def test_repository_index_raw(server, body):
    kwargs = {"json": body} if body is not None else {"data": b""}
    resp = requests.post(f"{server.http_base}/v2/repository/index", timeout=RAW_TIMEOUT, **kwargs)
    assert resp.status_code == 200, resp.text[:500]
    _check_index(resp.json())


# ------------------------------------------------------------- concurrency


def test_concurrent_async_infer(server):
    """Many requests in flight at once over several connections; each answer
    must belong to its own request (also exercises batching, if any)."""
    with httpclient.InferenceServerClient(
        server.http_url, concurrency=6, network_timeout=RAW_TIMEOUT
    ) as client:
        pending = []
        for i in range(48):
            in0, in1 = simple_data(batch=1 + i % 3, seed=1000 + i)
            binary = i % 2 == 0
            outputs = [httpclient.InferRequestedOutput(o, binary_data=binary)
                       for o in ("OUTPUT0", "OUTPUT1")]
            req = client.async_infer(
                "simple", http_simple_inputs(in0, in1, binary), outputs=outputs,
                request_id=f"r{i}",
            )
            pending.append((req, in0, in1, f"r{i}"))
        for req, in0, in1, rid in pending:
            result = req.get_result(timeout=RAW_TIMEOUT)
            assert result.get_response()["id"] == rid
            assert_simple_result(result, in0, in1)
