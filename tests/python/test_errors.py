"""Error handling over HTTP and gRPC.

Every case checks the status the client sees (HTTP status code as
tritonclient reports it, e.g. ``"400"``; gRPC ``"StatusCode.X"``), that the
message names the offending tensor where there is one, and then that the
server still answers a normal ``simple`` inference.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Callable, Optional

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import np_to_triton_dtype

from ferrum_checks import (
    assert_still_serving,
    expect_grpc_error,
    expect_http_error,
    simple_data,
)

TIMEOUT = 60


# ============================================================================
# Cases that tritonclient can express, run over HTTP (JSON and binary) and gRPC
# ============================================================================


def _input(mod, binary: bool, name: str, arr: np.ndarray, datatype: Optional[str] = None):
    inp = mod.InferInput(name, list(arr.shape), datatype or np_to_triton_dtype(arr.dtype))
    if mod is httpclient:
        inp.set_data_from_numpy(arr, binary_data=binary)
    else:
        inp.set_data_from_numpy(arr)
    return inp


def _i32(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-50, 50, size=shape, dtype=np.int32)


@dataclass
class Case:
    """One bad request: which tensors, and what the server must answer."""

    id: str
    tensors: Callable[[], list]          # -> [(name, array, datatype-or-None)]
    http_status: int
    grpc_code: str
    mentions: tuple = ()
    model: str = "simple"
    version: str = ""
    outputs: Optional[list] = None        # requested output names


def _ok(batch=1):
    a, b = simple_data(batch=batch, seed=77)
    return a, b


CASES = [
    Case("unknown-model",
         lambda: [("INPUT0", _ok()[0], None), ("INPUT1", _ok()[1], None)],
         404, "NOT_FOUND", ("no_such_model",), model="no_such_model"),
    Case("unknown-version",
         lambda: [("INPUT0", _ok()[0], None), ("INPUT1", _ok()[1], None)],
         404, "NOT_FOUND", ("simple",), version="99"),
    Case("wrong-dtype-fp32",
         lambda: [("INPUT0", _ok()[0].astype(np.float32), None), ("INPUT1", _ok()[1], None)],
         400, "INVALID_ARGUMENT", ("INPUT0",)),
    Case("wrong-dtype-int64",
         lambda: [("INPUT0", _ok()[0], None), ("INPUT1", _ok()[1].astype(np.int64), None)],
         400, "INVALID_ARGUMENT", ("INPUT1",)),
    Case("wrong-dtype-bytes",
         lambda: [("INPUT0", np.array([[b"x"] * 16], dtype=np.object_), "BYTES"),
                  ("INPUT1", _ok()[1], None)],
         400, "INVALID_ARGUMENT", ("INPUT0",)),
    Case("wrong-shape-short",
         lambda: [("INPUT0", _i32(1, 8), None), ("INPUT1", _ok()[1], None)],
         400, "INVALID_ARGUMENT", ("INPUT0",)),
    Case("wrong-shape-long",
         lambda: [("INPUT0", _ok()[0], None), ("INPUT1", _i32(1, 17), None)],
         400, "INVALID_ARGUMENT", ("INPUT1",)),
    Case("wrong-rank",
         lambda: [("INPUT0", _i32(1, 16, 1), None), ("INPUT1", _ok()[1], None)],
         400, "INVALID_ARGUMENT", ("INPUT0",)),
    # [16] on a batching model reads as batch 16 of scalars: wrong either way.
    Case("no-batch-dim",
         lambda: [("INPUT0", _i32(16), None), ("INPUT1", _i32(16, seed=1), None)],
         400, "INVALID_ARGUMENT"),
    Case("batch-too-large",
         lambda: [("INPUT0", _i32(9, 16), None), ("INPUT1", _i32(9, 16, seed=1), None)],
         400, "INVALID_ARGUMENT"),
    Case("batch-mismatch",
         lambda: [("INPUT0", _i32(1, 16), None), ("INPUT1", _i32(2, 16, seed=1), None)],
         400, "INVALID_ARGUMENT"),
    Case("missing-input",
         lambda: [("INPUT0", _ok()[0], None)],
         400, "INVALID_ARGUMENT", ("INPUT1",)),
    Case("unknown-input",
         lambda: [("INPUT0", _ok()[0], None), ("INPUT1", _ok()[1], None),
                  ("INPUT2", _ok()[1], None)],
         400, "INVALID_ARGUMENT", ("INPUT2",)),
    Case("duplicate-input",
         lambda: [("INPUT0", _ok()[0], None), ("INPUT0", _ok()[1], None),
                  ("INPUT1", _ok()[1], None)],
         400, "INVALID_ARGUMENT", ("INPUT0",)),
    Case("unknown-output",
         lambda: [("INPUT0", _ok()[0], None), ("INPUT1", _ok()[1], None)],
         400, "INVALID_ARGUMENT", ("OUTPUT9",), outputs=["OUTPUT0", "OUTPUT9"]),
    Case("identity-wrong-dtype",
         lambda: [("INPUT0", _i32(1, 4), None)],
         400, "INVALID_ARGUMENT", ("INPUT0",), model="identity_fp32"),
    Case("string-wrong-dtype",
         lambda: [("INPUT0", np.zeros((1, 4), np.float32), None)],
         400, "INVALID_ARGUMENT", ("INPUT0",), model="simple_identity"),
]


def _http_call(client, case: Case, binary: bool):
    inputs = [_input(httpclient, binary, n, a, d) for n, a, d in case.tensors()]
    outputs = None
    if case.outputs is not None:
        outputs = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in case.outputs]
    return lambda: client.infer(case.model, inputs, model_version=case.version, outputs=outputs)


def _grpc_call(client, case: Case):
    inputs = [_input(grpcclient, True, n, a, d) for n, a, d in case.tensors()]
    outputs = None
    if case.outputs is not None:
        outputs = [grpcclient.InferRequestedOutput(o) for o in case.outputs]
    return lambda: client.infer(
        case.model, inputs, model_version=case.version, outputs=outputs, client_timeout=TIMEOUT
    )


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_http_infer_error(server, http_client, case, binary):
    expect_http_error(_http_call(http_client, case, binary), case.http_status, *case.mentions)
    assert_still_serving(server, http_client)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_grpc_infer_error(server, grpc_client, case):
    expect_grpc_error(_grpc_call(grpc_client, case), case.grpc_code, *case.mentions)
    assert_still_serving(server)


# ------------------------------------------------- unknown model elsewhere


@pytest.mark.parametrize("what", ["metadata", "config"])
@pytest.mark.parametrize("model,version", [("no_such_model", ""), ("simple", "99")],
                         ids=["unknown-model", "unknown-version"])
def test_http_unknown_model_metadata_config(server, http_client, what, model, version):
    call = {"metadata": http_client.get_model_metadata, "config": http_client.get_model_config}[what]
    expect_http_error(lambda: call(model, model_version=version), 404, model)
    assert_still_serving(server, http_client)


@pytest.mark.parametrize("what", ["metadata", "config"])
@pytest.mark.parametrize("model,version", [("no_such_model", ""), ("simple", "99")],
                         ids=["unknown-model", "unknown-version"])
def test_grpc_unknown_model_metadata_config(server, grpc_client, what, model, version):
    call = {"metadata": grpc_client.get_model_metadata, "config": grpc_client.get_model_config}[what]
    expect_grpc_error(
        lambda: call(model, model_version=version, client_timeout=TIMEOUT), "NOT_FOUND", model
    )
    assert_still_serving(server)


@pytest.mark.parametrize("path", [
    "/v2/models/no_such_model",
    "/v2/models/no_such_model/config",
    "/v2/models/no_such_model/versions/1",
    "/v2/models/simple/versions/99",
])
def test_http_unknown_model_raw(server, http_client, path):
    resp = requests.get(server.http_base + path, timeout=TIMEOUT)
    assert resp.status_code == 404, resp.text[:300]
    assert isinstance(resp.json()["error"], str)
    assert_still_serving(server, http_client)


# ==================================================================
# Raw HTTP: bodies tritonclient never produces (framing, byte sizes, JSON)
# ==================================================================


def _infer_url(server, model="simple"):
    return f"{server.http_base}/v2/models/{model}/infer"


def _json_input(name, shape, data, datatype="INT32"):
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def _bin_input(name, shape, size, datatype="INT32"):
    return {"name": name, "shape": shape, "datatype": datatype,
            "parameters": {"binary_data_size": size}}


def _post_raw(server, body: bytes, header_len=None, model="simple", headers=None):
    hdrs = dict(headers or {})
    if header_len is not None:
        hdrs["Inference-Header-Content-Length"] = str(header_len)
    return requests.post(_infer_url(server, model), data=body, headers=hdrs, timeout=TIMEOUT)


def _assert_400(resp: requests.Response, *mentions: str) -> None:
    assert resp.status_code == 400, f"{resp.status_code}: {resp.text[:500]}"
    doc = resp.json()  # tritonclient needs {"error": "..."} to report the message
    assert isinstance(doc.get("error"), str) and doc["error"], doc
    for text in mentions:
        assert text in doc["error"], f"{text!r} not in {doc['error']!r}"


SIXTEEN = list(range(16))


@pytest.mark.parametrize("body,mentions", [
    pytest.param(b'{"inputs": [', (), id="truncated-json"),
    pytest.param(b"this is not json", (), id="not-json"),
    pytest.param(b"", (), id="empty-body"),
    pytest.param(b"[]", (), id="array-not-object"),
    pytest.param(b"{}", (), id="no-inputs"),
    pytest.param(b'{"inputs": {}}', (), id="inputs-not-array"),
    pytest.param(b'{"inputs": [{"name": "INPUT0"}]}', (), id="input-without-fields"),
    pytest.param(json.dumps({"inputs": [
        _json_input("INPUT0", [1, 16], ["a"] * 16),
        _json_input("INPUT1", [1, 16], SIXTEEN)]}).encode(), ("INPUT0",), id="strings-for-int32"),
    pytest.param(json.dumps({"inputs": [
        _json_input("INPUT0", [1, 16], SIXTEEN, datatype="INT31"),
        _json_input("INPUT1", [1, 16], SIXTEEN)]}).encode(), (), id="unknown-datatype"),
    pytest.param(json.dumps({"inputs": [
        _json_input("INPUT0", [1, "16"], SIXTEEN),
        _json_input("INPUT1", [1, 16], SIXTEEN)]}).encode(), (), id="shape-not-ints"),
    pytest.param(json.dumps({"inputs": [
        _json_input("INPUT0", [1, 16], SIXTEEN[:15]),
        _json_input("INPUT1", [1, 16], SIXTEEN)]}).encode(), ("INPUT0",), id="json-data-too-short"),
    pytest.param(json.dumps({"inputs": [
        _json_input("INPUT0", [1, 16], SIXTEEN),
        _json_input("INPUT1", [1, 16], SIXTEEN + [16])]}).encode(), ("INPUT1",), id="json-data-too-long"),
    pytest.param(json.dumps({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32"},
        _json_input("INPUT1", [1, 16], SIXTEEN)]}).encode(), ("INPUT0",), id="json-no-data"),
])
def test_http_malformed_json(server, http_client, body, mentions):
    _assert_400(_post_raw(server, body), *mentions)
    assert_still_serving(server, http_client)


def _binary_body(inputs_meta, blobs, outputs=None):
    header = {"inputs": inputs_meta}
    if outputs is not None:
        header["outputs"] = outputs
    head = json.dumps(header).encode()
    return head, head + b"".join(blobs)


def test_http_binary_size_too_small(server, http_client):
    a, b = simple_data(seed=5)
    head, body = _binary_body(
        [_bin_input("INPUT0", [1, 16], 60), _bin_input("INPUT1", [1, 16], 64)],
        [a.tobytes()[:60], b.tobytes()],
    )
    _assert_400(_post_raw(server, body, len(head)), "INPUT0")
    assert_still_serving(server, http_client)


def test_http_binary_size_too_large(server, http_client):
    a, b = simple_data(seed=5)
    head, body = _binary_body(
        [_bin_input("INPUT0", [1, 16], 64), _bin_input("INPUT1", [1, 16], 68)],
        [a.tobytes(), b.tobytes() + b"\0\0\0\0"],
    )
    _assert_400(_post_raw(server, body, len(head)), "INPUT1")
    assert_still_serving(server, http_client)


def test_http_binary_size_past_end_of_body(server, http_client):
    a, b = simple_data(seed=5)
    head, body = _binary_body(
        [_bin_input("INPUT0", [1, 16], 64), _bin_input("INPUT1", [1, 16], 64)],
        [a.tobytes(), b.tobytes()[:32]],  # INPUT1's 64 bytes are not all there
    )
    _assert_400(_post_raw(server, body, len(head)))
    assert_still_serving(server, http_client)


def test_http_binary_trailing_bytes(server, http_client):
    a, b = simple_data(seed=5)
    head, body = _binary_body(
        [_bin_input("INPUT0", [1, 16], 64), _bin_input("INPUT1", [1, 16], 64)],
        [a.tobytes(), b.tobytes(), b"junk"],
    )
    _assert_400(_post_raw(server, body, len(head)))
    assert_still_serving(server, http_client)


@pytest.mark.parametrize("delta", [1, 1000], ids=["one-past", "far-past"])
def test_http_header_length_past_end(server, http_client, delta):
    a, b = simple_data(seed=6)
    head, body = _binary_body(
        [_bin_input("INPUT0", [1, 16], 64), _bin_input("INPUT1", [1, 16], 64)],
        [a.tobytes(), b.tobytes()],
    )
    _assert_400(_post_raw(server, body, len(body) + delta))
    assert_still_serving(server, http_client)


@pytest.mark.parametrize("value", ["abc", "-5", "", "1.5"])
def test_http_header_length_not_a_length(server, http_client, value):
    a, b = simple_data(seed=7)
    head, body = _binary_body(
        [_bin_input("INPUT0", [1, 16], 64), _bin_input("INPUT1", [1, 16], 64)],
        [a.tobytes(), b.tobytes()],
    )
    resp = requests.post(
        _infer_url(server), data=body,
        headers={"Inference-Header-Content-Length": value}, timeout=TIMEOUT,
    )
    _assert_400(resp)
    assert_still_serving(server, http_client)


def test_http_header_length_cuts_json(server, http_client):
    a, b = simple_data(seed=8)
    head, body = _binary_body(
        [_bin_input("INPUT0", [1, 16], 64), _bin_input("INPUT1", [1, 16], 64)],
        [a.tobytes(), b.tobytes()],
    )
    _assert_400(_post_raw(server, body, len(head) - 5))
    assert_still_serving(server, http_client)


def test_http_binary_without_header_length(server, http_client):
    # binary_data_size given but no Inference-Header-Content-Length: the
    # whole body is then parsed as JSON and must be rejected.
    a, b = simple_data(seed=9)
    head, body = _binary_body(
        [_bin_input("INPUT0", [1, 16], 64), _bin_input("INPUT1", [1, 16], 64)],
        [a.tobytes(), b.tobytes()],
    )
    _assert_400(_post_raw(server, body, None))
    assert_still_serving(server, http_client)


def _bytes_blob(*elems: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elems)


@pytest.mark.parametrize("shape,blob", [
    pytest.param([1, 1], struct.pack("<I", 16) + b"ab", id="length-past-end"),
    pytest.param([1, 3], _bytes_blob(b"a", b"b"), id="too-few-elements"),
    pytest.param([1, 1], _bytes_blob(b"a", b"b"), id="too-many-elements"),
    pytest.param([1, 2], _bytes_blob(b"a") + b"\x01\x00", id="truncated-length-prefix"),
])
def test_http_bytes_framing_errors(server, http_client, shape, blob):
    head, body = _binary_body(
        [_bin_input("INPUT0", shape, len(blob), datatype="BYTES")], [blob]
    )
    _assert_400(_post_raw(server, body, len(head), model="simple_identity"), "INPUT0")
    assert_still_serving(server, http_client)


def test_http_bytes_json_not_strings(server, http_client):
    body = json.dumps({"inputs": [_json_input("INPUT0", [1, 2], [1, 2], datatype="BYTES")]}).encode()
    _assert_400(_post_raw(server, body, model="simple_identity"), "INPUT0")
    assert_still_serving(server, http_client)


def test_http_error_with_large_body_keeps_connection(server, http_client):
    """An early 4xx on a big request must not poison the keep-alive connection.

    The shared tritonclient connection is reused right after the error.
    """
    big = np.zeros((1, 2 * 1024 * 1024), np.float32)  # 8 MiB
    inp = httpclient.InferInput("INPUT0", list(big.shape), "FP32")
    inp.set_data_from_numpy(big, binary_data=True)
    expect_http_error(lambda: http_client.infer("no_such_model", [inp]), 404, "no_such_model")
    assert_still_serving(server, http_client)
    # Wrong datatype, wrong shape and a missing INPUT1 at once: any 400 will do.
    expect_http_error(lambda: http_client.infer("simple", [inp]), 400)
    assert_still_serving(server, http_client)


# ==================================================================
# Raw gRPC: requests tritonclient never produces
# ==================================================================


@pytest.fixture(scope="module")
def raw_stub(server):
    channel = grpc.insecure_channel(server.grpc_url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _grpc_request(model="simple", tensors=(), raws=()):
    req = service_pb2.ModelInferRequest(model_name=model)
    for name, datatype, shape in tensors:
        t = req.inputs.add()
        t.name = name
        t.datatype = datatype
        t.shape.extend(shape)
    req.raw_input_contents.extend(raws)
    return req


def _expect_rpc_error(stub, req, code: grpc.StatusCode, *mentions: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(req, timeout=TIMEOUT)
    err = info.value
    assert err.code() == code, f"{err.code()}: {err.details()}"
    for text in mentions:
        assert text in (err.details() or ""), f"{text!r} not in {err.details()!r}"


def _simple_tensors(shape0=(1, 16), shape1=(1, 16), dt0="INT32", dt1="INT32"):
    return [("INPUT0", dt0, list(shape0)), ("INPUT1", dt1, list(shape1))]


def test_grpc_raw_size_too_small(server, raw_stub):
    a, b = simple_data(seed=10)
    req = _grpc_request(tensors=_simple_tensors(), raws=[a.tobytes()[:60], b.tobytes()])
    _expect_rpc_error(raw_stub, req, grpc.StatusCode.INVALID_ARGUMENT, "INPUT0")
    assert_still_serving(server)


def test_grpc_raw_size_too_large(server, raw_stub):
    a, b = simple_data(seed=10)
    req = _grpc_request(tensors=_simple_tensors(), raws=[a.tobytes(), b.tobytes() + b"\0" * 4])
    _expect_rpc_error(raw_stub, req, grpc.StatusCode.INVALID_ARGUMENT, "INPUT1")
    assert_still_serving(server)


def test_grpc_raw_contents_count_mismatch(server, raw_stub):
    a, _ = simple_data(seed=11)
    req = _grpc_request(tensors=_simple_tensors(), raws=[a.tobytes()])
    _expect_rpc_error(raw_stub, req, grpc.StatusCode.INVALID_ARGUMENT)
    assert_still_serving(server)


def test_grpc_no_data_at_all(server, raw_stub):
    req = _grpc_request(tensors=_simple_tensors(), raws=[])
    _expect_rpc_error(raw_stub, req, grpc.StatusCode.INVALID_ARGUMENT)
    assert_still_serving(server)


def test_grpc_unknown_datatype(server, raw_stub):
    a, b = simple_data(seed=12)
    req = _grpc_request(tensors=_simple_tensors(dt0="INT31"), raws=[a.tobytes(), b.tobytes()])
    _expect_rpc_error(raw_stub, req, grpc.StatusCode.INVALID_ARGUMENT)
    assert_still_serving(server)


def test_grpc_empty_model_name(server, raw_stub):
    a, b = simple_data(seed=13)
    req = _grpc_request(model="", tensors=_simple_tensors(), raws=[a.tobytes(), b.tobytes()])
    with pytest.raises(grpc.RpcError) as info:
        raw_stub.ModelInfer(req, timeout=TIMEOUT)
    assert info.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    assert_still_serving(server)


@pytest.mark.parametrize("shape,blob", [
    pytest.param([1, 1], struct.pack("<I", 16) + b"ab", id="length-past-end"),
    pytest.param([1, 3], _bytes_blob(b"a", b"b"), id="too-few-elements"),
    pytest.param([1, 1], _bytes_blob(b"a", b"b"), id="too-many-elements"),
    pytest.param([1, 2], _bytes_blob(b"a") + b"\x01\x00", id="truncated-length-prefix"),
])
def test_grpc_bytes_framing_errors(server, raw_stub, shape, blob):
    req = _grpc_request(model="simple_identity", tensors=[("INPUT0", "BYTES", shape)], raws=[blob])
    _expect_rpc_error(raw_stub, req, grpc.StatusCode.INVALID_ARGUMENT, "INPUT0")
    assert_still_serving(server)
