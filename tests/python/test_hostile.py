"""Hostile input: absurd shapes, tiny bodies claiming huge tensors, deep JSON, wrong content,
oversize bodies and clients that vanish mid-request. Every one gets a clear error (or is
dropped cleanly), the server's memory stays flat, and a normal request works afterwards."""

from __future__ import annotations

import json
import socket
import struct

import grpc
import numpy as np
import pytest
import requests
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ferrum_checks import assert_still_serving


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def post(server, body: bytes, headers=None, path="/v2/models/simple/infer"):
    return requests.post(server.http_base + path, data=body, headers=headers or {}, timeout=60)


def simple_json(shape, data=None) -> bytes:
    data = data if data is not None else [0]
    inputs = [{"name": n, "datatype": "INT32", "shape": shape, "data": data} for n in ("INPUT0", "INPUT1")]
    return json.dumps({"inputs": inputs}).encode()


@pytest.fixture
def small_server(server_factory):
    return server_factory(extra_args=["--max-request-size", str(1 << 20)])


@pytest.mark.parametrize(
    "shape, mention",
    [
        ([1, -16], "INPUT0"),
        ([-1, 16], "batch size"),
        ([1, 1_000_000_000], "INPUT0"),
        ([2**40, 2**40], "batch size"),
        ([9_223_372_036_854_775_807, 2], "batch size"),
        ([1, 16, 1], "INPUT0"),
        ([], "INPUT0"),
    ],
)
def test_absurd_shapes_with_tiny_bodies(server, shape, mention):
    response = post(server, simple_json(shape))
    assert response.status_code == 400, response.text
    assert mention in response.json()["error"]
    binary_header = json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": shape, "parameters": {"binary_data_size": 4}},
                    {"name": "INPUT1", "datatype": "INT32", "shape": shape, "parameters": {"binary_data_size": 4}}]}
    ).encode()
    response = post(server, binary_header + b"\0" * 8, {"Inference-Header-Content-Length": str(len(binary_header))})
    assert response.status_code == 400, response.text


def test_billion_element_claims_over_grpc(server):
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="simple")
        for name in ("INPUT0", "INPUT1"):
            tensor = request.inputs.add()
            tensor.name, tensor.datatype = name, "INT32"
            tensor.shape.extend([1, 1_000_000_000])
            request.raw_input_contents.append(b"\0" * 64)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_still_serving(server)


@pytest.mark.parametrize("depth", [200, 100_000])
def test_deeply_nested_json(server, depth):
    nested = "[" * depth + "1" + "]" * depth
    body = ('{"inputs":[{"name":"INPUT0","datatype":"INT32","shape":[1,16],"data":' + nested + "}]}").encode()
    response = post(server, body)
    assert response.status_code == 400, response.text[:200]
    assert "error" in response.json()
    assert_still_serving(server)


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"<xml>not json</xml>", "application/xml"),
        (b"inputs=1&outputs=2", "application/x-www-form-urlencoded"),
        (b"\xff\xfe\x00garbage", "application/octet-stream"),
        (b"", "application/json"),
        (b"null", "application/json"),
        (b'{"inputs": "not a list"}', "text/plain"),
    ],
)
def test_wrong_content(server, body, content_type):
    response = post(server, body, {"Content-Type": content_type})
    assert response.status_code == 400, response.text
    assert response.json()["error"]
    assert_still_serving(server)


def test_bytes_length_prefix_past_the_end(server):
    blob = struct.pack("<I", 1_000_000) + b"abc"
    header = json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 1], "parameters": {"binary_data_size": len(blob)}}]}
    ).encode()
    response = post(server, header + blob, {"Inference-Header-Content-Length": str(len(header))},
                    path="/v2/models/simple_identity/infer")
    assert response.status_code == 400
    assert "BYTES element claims" in response.json()["error"]


def test_oversize_bodies_are_refused(small_server):
    big = b"x" * (2 << 20)
    response = post(small_server, big, {"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "limit" in response.json()["error"]
    with grpc.insecure_channel(small_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="simple")
        request.raw_input_contents.append(big)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=60)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_still_serving(small_server)


def test_clients_that_vanish(server):
    host, port = server.http_url.split(":")
    body = simple_json([1, 16], list(range(16)))
    for cut in (10, len(body) // 2):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            request = (
                f"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body[:cut]
            s.sendall(request)
        # Also: a complete request whose client hangs up before reading the answer.
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(
                f"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
            )
    assert_still_serving(server)


def test_memory_stays_flat_under_a_barrage(server_factory):
    srv = server_factory(extra_args=["--max-request-size", str(4 << 20)])
    assert_still_serving(srv)
    before = rss_bytes(srv.pid)
    junk = b"\x00" * (3 << 20)
    for i in range(40):
        post(srv, simple_json([1, 2**40]))
        header = b'{"inputs":[{"name":"INPUT0","datatype":"INT32","shape":[1,16],"parameters":{"binary_data_size":99999999}}]}'
        post(srv, header + junk, {"Inference-Header-Content-Length": str(len(header))})
        post(srv, b"[" * 50_000)
        post(srv, junk + junk)
    after = rss_bytes(srv.pid)
    print(f"server RSS before {before / 2**20:.1f} MiB, after {after / 2**20:.1f} MiB")
    assert after - before < 64 << 20, f"RSS grew by {(after - before) / 2**20:.1f} MiB"
    assert_still_serving(srv)
