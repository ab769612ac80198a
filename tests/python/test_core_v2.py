"""The core's shape as clients see it: decoupled models streamed over gRPC, cancellation,
requests that reach the backend whole, outputs written straight into a client's shared memory
region, and the extensions the server announces.

The decoupled model is ``repeat_int32`` from model_repository/ (the ``repeat`` backend); the
other cases use the ``testing`` fixture backend (tests/fixtures/testing), installed beside the
real backends in a backend folder made for the test.
"""

from __future__ import annotations

import queue
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm

from ferrum_checks import assert_still_serving, expect_grpc_error, expect_http_error
from ferrum_harness import backends_with_testing, start_server

TIMEOUT = 60
# How long to wait for something the server does asynchronously (a log line).
SETTLE_S = 20.0

# The protocol extensions the server implements, by Triton's names.
EXTENSIONS = {
    "classification",
    "model_repository",
    "model_repository(unload_dependents)",
    "model_configuration",
    "system_shared_memory",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "trace",
    "logging",
    "schedule_policy",
    "sequence",
    "generate",
}


def repeat_inputs(values, delays_ms, wait_ms=0):
    """Inputs of repeat_int32: IN, DELAY (ms per element), WAIT (ms before the final flag)."""
    arrays = [
        ("IN", np.array(values, dtype=np.int32), "INT32"),
        ("DELAY", np.array(delays_ms, dtype=np.uint32), "UINT32"),
        ("WAIT", np.array([wait_ms], dtype=np.uint32), "UINT32"),
    ]
    inputs = []
    for name, arr, dtype in arrays:
        inp = grpcclient.InferInput(name, list(arr.shape), dtype)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs


def collect(q: queue.Queue, count: int):
    """Takes ``count`` (result, error) pairs from a stream callback queue."""
    return [q.get(timeout=TIMEOUT) for _ in range(count)]


def is_final(result) -> bool:
    return result.get_response().parameters["triton_final_response"].bool_param


# ------------------------------------------------------------------ decoupled streaming


def test_two_requests_on_one_stream_run_concurrently_and_stay_in_order(server):
    received: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    try:
        # "slow" answers every 150 ms; "fast" every 20 ms, sent after it: if the stream ran
        # requests one at a time, every "fast" response would come after all of "slow".
        client.async_stream_infer(
            "repeat_int32", repeat_inputs([10, 11, 12], [150, 150, 150]), request_id="slow",
            enable_empty_final_response=True,
        )
        client.async_stream_infer(
            "repeat_int32", repeat_inputs([20, 21, 22, 23], [20, 20, 20, 20]), request_id="fast",
            enable_empty_final_response=True,
        )
        # 3 + 4 data responses, and one empty final response per request.
        items = collect(received, 9)
    finally:
        client.stop_stream()
        client.close()
    errors = [e for _, e in items if e is not None]
    assert not errors, errors
    order = [r.get_response().id for r, _ in items]
    by_id = {"slow": [], "fast": []}
    for result, _ in items:
        by_id[result.get_response().id].append(result)
    for rid, values in (("slow", [10, 11, 12]), ("fast", [20, 21, 22, 23])):
        responses = by_id[rid]
        data = [r for r in responses if r.as_numpy("OUT") is not None]
        assert [int(r.as_numpy("OUT")[0]) for r in data] == values, rid
        assert [int(r.as_numpy("IDX")[0]) for r in data] == list(range(len(values))), rid
        assert [is_final(r) for r in responses] == [False] * len(values) + [True], rid
        assert responses[-1].as_numpy("OUT") is None, "the final flag came alone"
    # Interleaved: "fast", sent second, finished before "slow" did.
    last = {rid: max(i for i, r in enumerate(order) if r == rid) for rid in by_id}
    assert last["fast"] < last["slow"], order


def test_final_flag_alone_is_not_sent_unless_asked_for(server):
    received: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    try:
        client.async_stream_infer("repeat_int32", repeat_inputs([5, 6], [0, 0]), request_id="r")
        items = collect(received, 2)
        # A non-decoupled model on the same stream answers once, marked final.
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        inputs = []
        for name in ("INPUT0", "INPUT1"):
            inp = grpcclient.InferInput(name, [1, 16], "INT32")
            inp.set_data_from_numpy(a)
            inputs.append(inp)
        client.async_stream_infer("simple", inputs, request_id="s")
        simple_result, simple_error = received.get(timeout=TIMEOUT)
    finally:
        client.stop_stream()
        client.close()
    assert [e for _, e in items] == [None, None]
    assert [int(r.as_numpy("OUT")[0]) for r, _ in items] == [5, 6]
    assert [is_final(r) for r, _ in items] == [False, False]
    assert received.empty(), "no empty final response without triton_enable_empty_final_response"
    assert simple_error is None
    assert is_final(simple_result)
    np.testing.assert_array_equal(simple_result.as_numpy("OUTPUT0"), a + a)


def test_client_cancel_mid_stream_reaches_the_backend(server):
    received: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    values = list(range(50))
    client.async_stream_infer(
        "repeat_int32", repeat_inputs(values, [100] * len(values)), request_id="to-cancel"
    )
    first = collect(received, 2)
    assert [e for _, e in first] == [None, None]
    client.stop_stream(cancel_requests=True)
    client.close()
    # The backend notices the cancellation before its next response and logs how far it got.
    deadline = time.monotonic() + SETTLE_S
    needle = "request 'to-cancel' cancelled after"
    while needle not in server.stderr_text() + server.stdout_text():
        assert time.monotonic() < deadline, "the backend never saw the cancellation"
        time.sleep(0.05)
    log = server.stderr_text() + server.stdout_text()
    line = next(l for l in log.splitlines() if needle in l)
    assert f"of {len(values)} responses" in line, line
    # The server keeps serving, streams included.
    again: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as fresh:
        fresh.start_stream(callback=lambda result, error: again.put((result, error)))
        fresh.async_stream_infer("repeat_int32", repeat_inputs([7], [0]), request_id="after")
        result, error = again.get(timeout=TIMEOUT)
        fresh.stop_stream()
    assert error is None and int(result.as_numpy("OUT")[0]) == 7
    assert_still_serving(server)


def test_decoupled_model_is_refused_over_http_and_unary_grpc(server, http_client, grpc_client):
    arr = np.array([1, 2], dtype=np.int32)
    inp = httpclient.InferInput("IN", [2], "INT32")
    inp.set_data_from_numpy(arr)
    delay = httpclient.InferInput("DELAY", [2], "UINT32")
    delay.set_data_from_numpy(np.zeros(2, dtype=np.uint32))
    wait = httpclient.InferInput("WAIT", [1], "UINT32")
    wait.set_data_from_numpy(np.zeros(1, dtype=np.uint32))
    expect_http_error(
        lambda: http_client.infer("repeat_int32", [inp, delay, wait]), 400, "decoupled",
        "repeat_int32",
    )
    expect_grpc_error(
        lambda: grpc_client.infer("repeat_int32", repeat_inputs([1, 2], [0, 0])),
        "UNIMPLEMENTED", "decoupled", "ModelStreamInfer",
    )
    assert_still_serving(server)


# ------------------------------------------------------------------ testing-backend cases


@pytest.fixture(scope="module")
def testing_backends(tmp_path_factory) -> Path:
    """The real backends plus the testing fixture backend."""
    return backends_with_testing(tmp_path_factory.mktemp("backends"))


def write_testing_model(repo: Path, name: str, mode: str = "identity", extra: str = "", **params):
    params = {"mode": mode, **params}
    parameters = "".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in params.items()
    )
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "testing"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] },\n'
        '         { name: "BATCH" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        f"{extra}\n{parameters}"
    )


@pytest.fixture(scope="module")
def testing_server(tmp_path_factory, testing_backends):
    repo = tmp_path_factory.mktemp("repo")
    write_testing_model(repo, "dropper", "drop_request")
    write_testing_model(repo, "later", "answer_later")
    write_testing_model(
        repo, "batched",
        extra="dynamic_batching { max_queue_delay_microseconds: 500000 preferred_batch_size: [ 4 ] }",
    )
    write_testing_model(repo, "mapped", report_mapping="true")
    srv = start_server(repo, backend_directory=testing_backends)
    yield srv
    srv.stop_and_check()


def fp32_input(mod, values, binary=True):
    arr = np.array([values], dtype=np.float32)
    inp = mod.InferInput("INPUT0", list(arr.shape), "FP32")
    if mod is httpclient:
        inp.set_data_from_numpy(arr, binary_data=binary)
    else:
        inp.set_data_from_numpy(arr)
    return inp, arr


def test_a_request_released_without_an_answer_fails_clearly(testing_server):
    with httpclient.InferenceServerClient(testing_server.http_url) as client:
        inp, _ = fp32_input(httpclient, [1.0, 2.0])
        expect_http_error(
            lambda: client.infer("dropper", [inp]), 500,
            "dropper", "released a request without sending its final response",
        )
        # Answered later, from another thread, after execute returned: fine.
        inp, arr = fp32_input(httpclient, [3.0, 4.0])
        result = client.infer("later", [inp])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), arr)
        assert client.is_server_live()


def test_a_dynamic_batch_reaches_the_backend_as_whole_requests(testing_server):
    with grpcclient.InferenceServerClient(testing_server.grpc_url) as client:
        pending = []
        for i in range(4):
            inp, arr = fp32_input(grpcclient, [float(i), float(i) + 0.5])
            done: queue.Queue = queue.Queue()
            client.async_infer(
                "batched", [inp], callback=partial(lambda q, result, error: q.put((result, error)), done),
                request_id=f"req-{i}", parameters={"tag": f"t{i}", "n": i},
            )
            pending.append((i, arr, done))
        for i, arr, done in pending:
            result, error = done.get(timeout=TIMEOUT)
            assert error is None, error
            response = result.get_response()
            assert response.id == f"req-{i}"
            params = response.parameters
            # The backend saw this request's own id and parameters...
            assert params["seen_id"].string_param == f"req-{i}"
            assert params["seen_tag"].string_param == f"t{i}"
            assert params["seen_n"].int64_param == i
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), arr)
            # ... in one execute call with the others (preferred batch size 4).
            assert result.as_numpy("BATCH").tolist() == [[4]]


def test_outputs_land_in_the_clients_shared_memory_region(testing_server):
    key = f"/ferrum-alloc-{time.monotonic_ns()}"
    values = np.arange(8, dtype=np.float32)
    handle = shm.create_shared_memory_region("out_region", key, values.nbytes)
    try:
        with httpclient.InferenceServerClient(testing_server.http_url) as client:
            client.register_system_shared_memory("out_region", key, values.nbytes)
            inp, arr = fp32_input(httpclient, values.tolist())
            out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)
            out.set_shared_memory("out_region", values.nbytes)
            result = client.infer("mapped", [inp], outputs=[out])
            response = result.get_response()
            # The buffer the backend wrote into was the client's region, mapped from /dev/shm.
            assert response["parameters"]["OUTPUT0_mapping"] == f"/dev/shm{key}", response
            got = shm.get_contents_as_numpy(handle, np.float32, [1, 8])
            np.testing.assert_array_equal(got, arr)
            # Without shared memory the buffer is the server's own memory.
            inp, _ = fp32_input(httpclient, [1.0])
            plain = client.infer("mapped", [inp]).get_response()
            assert not plain["parameters"]["OUTPUT0_mapping"].startswith("/dev/shm")
            client.unregister_system_shared_memory("out_region")
    finally:
        shm.destroy_shared_memory_region(handle)


# ------------------------------------------------------------------ extensions


def test_server_metadata_lists_exactly_the_implemented_extensions(server, http_client, grpc_client):
    assert set(http_client.get_server_metadata()["extensions"]) == EXTENSIONS
    assert set(grpc_client.get_server_metadata().extensions) == EXTENSIONS
    body = requests.get(f"{server.http_base}/v2", timeout=TIMEOUT).json()
    assert set(body["extensions"]) == EXTENSIONS
    assert len(body["extensions"]) == len(EXTENSIONS), "no duplicates"
