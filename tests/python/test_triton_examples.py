"""The contracts of Triton's own example models, so Triton's published example clients
(triton-inference-server/client, src/python/examples) run unchanged against model_repository/.

Each test is our own and checks one model's contract the way those clients use it, over
HTTP and gRPC: ``simple_string`` (integers as BYTES text, sum and difference as text),
``simple_int8``, ``simple_identity`` (BYTES unchanged), ``custom_identity_int32``, the
sequence models
``simple_sequence``, ``simple_dyna_sequence`` and ``simple_string_dyna_sequence`` (sync and
over a gRPC stream with several sequences interleaved, integer and string sequence ids), and
``repeat_int32`` (decoupled: one response per element, then the final flag). The list of
example clients and which run is in docs/quickstart.md.
"""

from __future__ import annotations

import queue
import shutil
import uuid

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from ferrum_harness import REPO_ROOT, start_server

TIMEOUT = 60
PROTOCOLS = ["http", "grpc"]


def client_for(server, protocol):
    if protocol == "http":
        return httpclient.InferenceServerClient(server.http_url, network_timeout=TIMEOUT)
    return grpcclient.InferenceServerClient(server.grpc_url)


def module_for(protocol):
    return httpclient if protocol == "http" else grpcclient


def tensor(protocol, name, array, datatype):
    inp = module_for(protocol).InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return inp


def as_text(values):
    return np.array([str(v).encode() for v in values.reshape(-1)], dtype=np.object_).reshape(
        values.shape
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_simple_string_adds_and_subtracts_integers_written_as_text(server, protocol):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    with client_for(server, protocol) as client:
        result = client.infer(
            "simple_string",
            [tensor(protocol, "INPUT0", as_text(a), "BYTES"), tensor(protocol, "INPUT1", as_text(b), "BYTES")],
        )
    assert result.as_numpy("OUTPUT0").tolist() == as_text(a + b).tolist()
    assert result.as_numpy("OUTPUT1").tolist() == as_text(a - b).tolist()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_simple_string_refuses_text_that_is_not_an_integer(server, protocol):
    a = as_text(np.arange(16).reshape(1, 16))
    b = a.copy()
    b[0, 3] = b"three"
    with client_for(server, protocol) as client:
        with pytest.raises(InferenceServerException) as info:
            client.infer(
                "simple_string",
                [tensor(protocol, "INPUT0", a, "BYTES"), tensor(protocol, "INPUT1", b, "BYTES")],
            )
    assert "'three', not the text of an integer" in info.value.message()
    assert info.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_simple_int8_adds_and_subtracts_with_wraparound(server, protocol):
    a = np.array([[0, 1, -1, 127, -128, 100, -100, 5] * 2], dtype=np.int8)
    b = np.array([[1, 1, 1, 1, 1, 100, -100, -5] * 2], dtype=np.int8)
    with client_for(server, protocol) as client:
        result = client.infer(
            "simple_int8",
            [tensor(protocol, "INPUT0", a, "INT8"), tensor(protocol, "INPUT1", b, "INT8")],
        )
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0").dtype == np.int8


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_simple_identity_returns_strings_unchanged(server, protocol):
    data = np.array([[b"hello", b"", b"\x00bytes\x00", "ünïcode".encode()]], dtype=np.object_)
    with client_for(server, protocol) as client:
        result = client.infer("simple_identity", [tensor(protocol, "INPUT0", data, "BYTES")])
    assert result.as_numpy("OUTPUT0").tolist() == data.tolist()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_custom_identity_int32_returns_its_input(server, protocol):
    data = np.arange(16, dtype=np.int32).reshape(1, 16)
    with client_for(server, protocol) as client:
        result = client.infer("custom_identity_int32", [tensor(protocol, "INPUT0", data, "INT32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    assert result.as_numpy("OUTPUT0").dtype == np.int32


# ------------------------------------------------------------------ sequences

VALUES = [11, 7, 5, 3, 2, 0, 1]


def run_sync(server, protocol, model, sequence_id, values):
    outputs = []
    with client_for(server, protocol) as client:
        for i, value in enumerate(values):
            result = client.infer(
                model,
                [tensor(protocol, "INPUT", np.full((1, 1), value, dtype=np.int32), "INT32")],
                sequence_id=sequence_id,
                sequence_start=(i == 0),
                sequence_end=(i == len(values) - 1),
            )
            outputs.append(int(result.as_numpy("OUTPUT")[0][0]))
    return outputs


def expected(model, sequence_id, values):
    """What Triton's sequence example clients expect from each model."""
    out, total = [], 0
    for i, value in enumerate(values):
        start, end = i == 0, i == len(values) - 1
        corrid = int(sequence_id) if end and model != "simple_sequence" else 0
        if model == "simple_string_dyna_sequence":
            total = value if start else total + value
            out.append(total + corrid)
        else:
            out.append(value + int(start) + corrid)
    return out


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    "model, first, ids",
    [
        ("simple_sequence", 0, [1000, 1001, "uuid"]),
        ("simple_dyna_sequence", 0, [1002, 1003]),
        ("simple_string_dyna_sequence", 20, ["1004"]),
    ],
)
def test_sequence_models_answer_each_request_of_a_sequence(server, protocol, model, first, ids):
    for n, sequence_id in enumerate(ids):
        if sequence_id == "uuid":
            sequence_id = str(uuid.uuid4())
        # The examples send a first value, then the list (negated for the second sequence).
        sign = -1 if n % 2 else 1
        values = [first + 100 * n] + [sign * v for v in VALUES]
        if model == "simple_sequence" and isinstance(sequence_id, str):
            outputs = run_sync(server, protocol, model, sequence_id, values)
            assert outputs == [values[0] + 1] + values[1:]
            continue
        assert run_sync(server, protocol, model, sequence_id, values) == expected(
            model, sequence_id, values
        )


def test_sequence_requests_need_a_start_and_a_sequence_id(server):
    with client_for(server, "http") as client:
        one = [tensor("http", "INPUT", np.ones((1, 1), dtype=np.int32), "INT32")]
        with pytest.raises(InferenceServerException) as info:
            client.infer("simple_sequence", one, sequence_id=4242, sequence_start=False)
        assert "START" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            client.infer("simple_sequence", one)
        assert "correlation ID" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            client.infer(
                "simple_dyna_sequence", one, sequence_id="not-a-number",
                sequence_start=True, sequence_end=True,
            )
        assert "not an integer" in info.value.message()


@pytest.mark.parametrize("dyna", [False, True])
def test_interleaved_sequences_over_one_grpc_stream_answer_in_order(server, dyna):
    """Three sequences sent at once over one stream, as the stream examples do: every
    response comes back, and each sequence's responses arrive in its requests' order."""
    int_model = "simple_dyna_sequence" if dyna else "simple_sequence"
    string_model = "simple_string_dyna_sequence" if dyna else "simple_sequence"
    string_id = "1012" if dyna else str(uuid.uuid4())
    sequences = [
        (int_model, 1010, [0] + VALUES),
        (int_model, 1011, [100] + [-v for v in VALUES]),
        (string_model, string_id, [20] + [-v for v in VALUES]),
    ]
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for model, sequence_id, values in sequences:
            for i, value in enumerate(values):
                client.async_stream_infer(
                    model,
                    [tensor("grpc", "INPUT", np.full((1, 1), value, dtype=np.int32), "INT32")],
                    request_id=f"{sequence_id}_{i}",
                    sequence_id=sequence_id,
                    sequence_start=(i == 0),
                    sequence_end=(i == len(values) - 1),
                )
        got = {str(sequence_id): [] for _, sequence_id, _ in sequences}
        for _ in range(sum(len(v) for _, _, v in sequences)):
            result, error = results.get(timeout=TIMEOUT)
            assert error is None, error
            sequence_id, index = result.get_response().id.rsplit("_", 1)
            got[sequence_id].append((int(index), int(result.as_numpy("OUTPUT")[0][0])))
    finally:
        client.stop_stream()
        client.close()
    for model, sequence_id, values in sequences:
        answers = got[str(sequence_id)]
        assert [i for i, _ in answers] == list(range(len(values))), answers
        outputs = [v for _, v in answers]
        if model == "simple_sequence":
            assert outputs == [values[0] + 1] + values[1:]
        else:
            assert outputs == expected(model, sequence_id, values)


# ------------------------------------------------------------------ repeat_int32


def test_repeat_int32_streams_one_response_per_element(server):
    count, offset = 5, 100
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer(
            "repeat_int32",
            [
                tensor("grpc", "IN", np.arange(offset, offset + count, dtype=np.int32), "INT32"),
                tensor("grpc", "DELAY", np.full(count, 5, dtype=np.uint32), "UINT32"),
                tensor("grpc", "WAIT", np.array([0], dtype=np.uint32), "UINT32"),
            ],
            enable_empty_final_response=True,
        )
        outputs, final = [], False
        while not final:
            result, error = results.get(timeout=TIMEOUT)
            assert error is None, error
            response = result.get_response()
            final = response.parameters["triton_final_response"].bool_param
            if result.as_numpy("OUT") is not None:
                outputs.append((int(result.as_numpy("OUT")[0]), int(result.as_numpy("IDX")[0])))
    finally:
        client.stop_stream()
        client.close()
    assert outputs == [(offset + i, i) for i in range(count)]


# ------------------------------------------------------------------ model control

EXAMPLE_MODELS = [
    "simple", "simple_identity", "simple_int8", "simple_string", "simple_sequence",
    "simple_dyna_sequence", "simple_string_dyna_sequence",
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_model_control_as_the_examples_do_it(tmp_path, protocol):
    """The model-control examples' flow, on a repository of Triton's example models in
    explicit mode: a malformed override config and an unknown model fail with "failed to
    load"; an override config without a backend keeps the model's own backend; an oversized
    file name is refused and the server stays up."""
    repo = tmp_path / "repo"
    for name in EXAMPLE_MODELS:
        shutil.copytree(REPO_ROOT / "model_repository" / name, repo / name)
    srv = start_server(repo, ["--model-control-mode", "explicit"], log_dir=tmp_path / "logs")
    try:
        with client_for(srv, protocol) as client:
            index = client.get_model_repository_index()
            count = len(index) if protocol == "http" else len(index.models)
            assert count == len(EXAMPLE_MODELS)
            client.load_model("simple")
            assert client.is_model_ready("simple")
            with pytest.raises(InferenceServerException) as info:
                client.load_model("simple", config='"parameters": {"config": {{"max_batch_size": "16"}}}')
            assert "failed to load 'simple'" in info.value.message(), info.value.message()
            client.load_model("simple", config='{"max_batch_size":"16"}')
            config = client.get_model_config("simple")
            batch = config["max_batch_size"] if protocol == "http" else config.config.max_batch_size
            assert batch == 16
            client.unload_model("simple")
            assert not client.is_model_ready("simple")
            with pytest.raises(InferenceServerException) as info:
                client.load_model("simple", config="{}", files={"file:" + "A" * 256: b"a"})
            assert "failed to poll from model repository" in info.value.message()
            assert info.value.status() in ("500", "StatusCode.INTERNAL")
            assert client.is_server_live()
            with pytest.raises(InferenceServerException) as info:
                client.load_model("wrong_model_name")
            assert "failed to load 'wrong_model_name'" in info.value.message()
    finally:
        srv.stop_and_check()
