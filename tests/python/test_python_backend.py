"""The python backend (backends/python): Triton Python models (``model.py`` with
``TritonPythonModel``, ``import triton_python_backend_utils as pb_utils``) served unchanged.

The models are in tests/models/python: ``add_sub`` as Triton's documentation writes it,
``strings`` (BYTES both ways, the request's context), ``autocomplete`` (its config comes from
``auto_complete_config``), ``repeat`` (decoupled, one response per element, stops when
cancelled), ``faulty`` (errors raised or returned, Logger lines). The server names the
project's virtual environment as the backend's default execution environment, as a user
names theirs. The examples of model_repository/ (``python_preprocess``, ``python_repeat``)
are checked on the suite's shared server, which names no environment: the backend's own
bundled numpy serves them.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from ferrum_harness import REPO_ROOT, start_server

TIMEOUT = 60
MODELS = REPO_ROOT / "tests" / "models" / "python"
VENV = REPO_ROOT / ".venv"
ENV_CONFIG = ["--backend-config", f"python,execution-env-path={VENV}"]


@pytest.fixture(scope="module")
def pyserver(tmp_path_factory):
    srv = start_server(MODELS, ENV_CONFIG, log_dir=tmp_path_factory.mktemp("python-logs"))
    yield srv
    srv.stop_and_check()


def http(srv):
    return httpclient.InferenceServerClient(srv.http_url, network_timeout=TIMEOUT)


def grpc(srv):
    return grpcclient.InferenceServerClient(srv.grpc_url)


def client_for(srv, protocol):
    return (http if protocol == "http" else grpc)(srv)


def module_for(protocol):
    return httpclient if protocol == "http" else grpcclient


def tensor(protocol, name, array, datatype):
    inp = module_for(protocol).InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return inp


def wait_for_log(srv, text, timeout=10.0):
    """Polls the server's logs until ``text`` shows up; returns them."""
    deadline = time.monotonic() + timeout
    while True:
        logs = srv.stdout_text() + srv.stderr_text()
        if text in logs or time.monotonic() > deadline:
            return logs
        time.sleep(0.02)


def write_model(repo: Path, name: str, config: str, model_py: str):
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "python"\n{config}')
    (repo / name / "1" / "model.py").write_text(model_py)


def index_of(srv):
    with http(srv) as client:
        return {row["name"]: row for row in client.get_model_repository_index()}


# ------------------------------------------------------------------ add_sub, BYTES, context


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_add_sub_as_triton_documents_it(pyserver, protocol):
    a = np.array([1.5, 2.0, -3.0, 4.25], dtype=np.float32)
    b = np.array([0.5, 1.0, 1.0, -0.25], dtype=np.float32)
    client = client_for(pyserver, protocol)
    result = client.infer(
        "add_sub", [tensor(protocol, "INPUT0", a, "FP32"), tensor(protocol, "INPUT1", b, "FP32")]
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bytes_in_and_out_and_the_request_context(pyserver, protocol):
    text = np.array([b"hello", "h\u00e9llo".encode(), b"", b"\x00bin\xff"], dtype=np.object_)
    client = client_for(pyserver, protocol)
    result = client.infer(
        "strings",
        [tensor(protocol, "TEXT", text, "BYTES")],
        request_id="req-7",
        parameters={"answer": 42, "flag": True, "word": "x"},
    )
    upper = result.as_numpy("UPPER")
    assert upper.tolist() == [t.upper() for t in text.tolist()]
    info = json.loads(result.as_numpy("INFO")[0])
    assert info["element_types"] == ["bytes"]
    assert info["request_id"] == "req-7"
    assert info["correlation_id"] == 0
    assert info["parameters"] == {"answer": 42, "flag": True, "word": "x"}
    args = info["args"]
    assert args["model_name"] == "strings"
    assert args["model_version"] == "1"
    assert args["model_instance_kind"] == "CPU"
    assert args["model_instance_name"] == "strings_0"
    assert args["model_instance_device_id"] == "0"
    assert Path(args["model_repository"]).resolve() == (MODELS / "strings").resolve()
    assert json.loads(args["model_config"])["name"] == "strings"
    client.close()


def test_requested_output_names_reach_the_model(pyserver):
    client = http(pyserver)
    text = np.array([b"a"], dtype=np.object_)
    result = client.infer(
        "strings",
        [tensor("http", "TEXT", text, "BYTES")],
        outputs=[httpclient.InferRequestedOutput("INFO")],
    )
    assert json.loads(result.as_numpy("INFO")[0])["requested_output_names"] == ["INFO"]
    assert result.as_numpy("UPPER") is None
    client.close()


# ------------------------------------------------------------------ auto_complete_config


def test_auto_complete_config_fills_in_the_config(pyserver):
    client = http(pyserver)
    config = client.get_model_config("autocomplete")
    assert [i["name"] for i in config["input"]] == ["INPUT0", "INPUT1"]
    assert [o["name"] for o in config["output"]] == ["OUTPUT"]
    assert all(i["data_type"] == "TYPE_FP32" and i["dims"] == [4] for i in config["input"])
    assert config["max_batch_size"] == 4
    assert "dynamic_batching" in config
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 3, dtype=np.float32)
    result = client.infer(
        "autocomplete", [tensor("http", "INPUT0", a, "FP32"), tensor("http", "INPUT1", b, "FP32")]
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT"), a * b)
    client.close()


# ------------------------------------------------------------------ decoupled


def stream(srv, model, values, delay_ms, on_response=None, request_id="s1"):
    """Streams one request to a decoupled model; returns the responses (or errors) in order
    until the final flag."""
    results: "queue.Queue" = queue.Queue()
    client = grpc(srv)

    def callback(result, error):
        results.put((result, error))

    client.start_stream(callback=callback)
    inputs = [
        tensor("grpc", "IN", np.array(values, dtype=np.int32), "INT32"),
        tensor("grpc", "DELAY_MS", np.array([delay_ms], dtype=np.uint32), "UINT32"),
    ]
    client.async_stream_infer(
        model, inputs, request_id=request_id, enable_empty_final_response=True
    )
    return client, results


def collect(results, timeout=TIMEOUT):
    got = []
    while True:
        result, error = results.get(timeout=timeout)
        if error is not None:
            got.append(error)
            return got
        final = result.get_response().parameters.get("triton_final_response")
        if result.as_numpy("OUT") is not None:
            got.append((int(result.as_numpy("OUT")[0]), int(result.as_numpy("IDX")[0])))
        if final is not None and final.bool_param:
            return got


@pytest.mark.parametrize("model", ["repeat"])
def test_decoupled_model_streams_its_responses_over_grpc(pyserver, model):
    values = [7, -1, 3, 42, 0]
    client, results = stream(pyserver, model, values, 0)
    try:
        assert collect(results) == [(v, i) for i, v in enumerate(values)]
    finally:
        client.stop_stream()
        client.close()


def test_decoupled_model_sees_the_cancellation(pyserver):
    client, results = stream(pyserver, "repeat", list(range(1000)), 20, request_id="cancel-me")
    try:
        for _ in range(2):
            result, error = results.get(timeout=TIMEOUT)
            assert error is None, error
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()
    logs = wait_for_log(pyserver, "request 'cancel-me' cancelled after")
    assert "request 'cancel-me' cancelled after" in logs


def test_http_refuses_a_decoupled_python_model(pyserver):
    client = http(pyserver)
    with pytest.raises(InferenceServerException):
        client.infer(
            "repeat",
            [
                tensor("http", "IN", np.array([1], dtype=np.int32), "INT32"),
                tensor("http", "DELAY_MS", np.array([0], dtype=np.uint32), "UINT32"),
            ],
        )
    client.close()


# ------------------------------------------------------------------ errors and logging


def faulty(srv, protocol, mode):
    client = client_for(srv, protocol)
    try:
        return client.infer(
            "faulty", [tensor(protocol, "MODE", np.array([mode], dtype=np.int32), "INT32")]
        )
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_exception_in_execute_reaches_the_client(pyserver, protocol):
    with pytest.raises(InferenceServerException) as info:
        faulty(pyserver, protocol, 1)
    message = info.value.message()
    assert "ValueError: faulty model raised on purpose" in message, message
    assert "faulty_0" in message, message
    # The model keeps serving.
    assert faulty(pyserver, protocol, 0).as_numpy("OUT").tolist() == [0]


@pytest.mark.parametrize("protocol, status", [("http", "400"), ("grpc", "StatusCode.INVALID_ARGUMENT")])
def test_a_triton_error_reaches_the_client_with_its_code(pyserver, protocol, status):
    with pytest.raises(InferenceServerException) as info:
        faulty(pyserver, protocol, 2)
    assert info.value.message() == "MODE 2 is refused"
    assert str(info.value.status()) == status


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_inputs_reach_numpy_without_a_copy_and_go_through_dlpack(pyserver, protocol):
    assert faulty(pyserver, protocol, 4).as_numpy("OUT").tolist() == [1]
    assert faulty(pyserver, protocol, 5).as_numpy("OUT").tolist() == [5]


def test_logger_lines_reach_the_server_log(pyserver):
    assert faulty(pyserver, "http", 3).as_numpy("OUT").tolist() == [3]
    logs = wait_for_log(pyserver, "faulty: error line")
    for line in ("faulty: info line", "faulty: warning line", "faulty: error line"):
        assert line in logs, logs[-3000:]
    assert "model.py:" in logs


def test_a_failing_initialize_fails_the_load_with_its_last_traceback_line(tmp_path):
    repo = tmp_path / "repo"
    write_model(
        repo,
        "broken",
        "input [ { name: \"X\" data_type: TYPE_INT32 dims: [ 1 ] } ]\n"
        "output [ { name: \"Y\" data_type: TYPE_INT32 dims: [ 1 ] } ]\n",
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        raise RuntimeError('no weights in ' + args['model_name'])\n"
        "    def execute(self, requests):\n"
        "        return []\n",
    )
    shutil.copytree(MODELS / "add_sub", repo / "add_sub")
    srv = start_server(repo, ENV_CONFIG, log_dir=tmp_path / "logs")
    try:
        row = index_of(srv)["broken"]
        assert row["state"] == "UNAVAILABLE", row
        assert "RuntimeError: no weights in broken" in row.get("reason", ""), row
        assert index_of(srv)["add_sub"]["state"] == "READY"
    finally:
        srv.stop_and_check()


# ------------------------------------------------------------------ environments, in-process

ENV_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils
import ferrum_env_marker


class TritonPythonModel:
    def execute(self, requests):
        value = np.array([ferrum_env_marker.VALUE], dtype=np.int32)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", value)]) for _ in requests]
"""

IO = (
    "input [ { name: \"X\" data_type: TYPE_INT32 dims: [ 1 ] } ]\n"
    "output [ { name: \"Y\" data_type: TYPE_INT32 dims: [ 1 ] } ]\n"
)


def make_env(folder: Path, value: int) -> Path:
    """A minimal virtual environment folder whose site-packages has one module."""
    site = folder / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (site / "ferrum_env_marker.py").write_text(f"VALUE = {value}\n")
    return folder


def ask_y(srv, model):
    with http(srv) as client:
        result = client.infer(model, [tensor("http", "X", np.array([0], dtype=np.int32), "INT32")])
        return result.as_numpy("Y").tolist()


def test_execution_env_path_names_a_models_environment(tmp_path):
    env = make_env(tmp_path / "env", 17)
    repo = tmp_path / "repo"
    write_model(
        repo,
        "with_env",
        IO + f'parameters {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{env}" }} }}\n',
        ENV_MODEL,
    )
    # $$TRITON_MODEL_DIRECTORY stands for the model's folder, as in Triton.
    shutil.copytree(env, repo / "relative" / "env")
    write_model(
        repo,
        "relative",
        IO + 'parameters { key: "EXECUTION_ENV_PATH" '
        'value: { string_value: "$$TRITON_MODEL_DIRECTORY/env" } }\n',
        ENV_MODEL,
    )
    write_model(repo, "without_env", IO, ENV_MODEL)
    srv = start_server(repo, log_dir=tmp_path / "logs")
    try:
        assert ask_y(srv, "with_env") == [17]
        assert ask_y(srv, "relative") == [17]
        # Isolated, each model has its own interpreter: the others' environments are not its.
        row = index_of(srv)["without_env"]
        assert row["state"] == "UNAVAILABLE", row
        assert "ferrum_env_marker" in row.get("reason", ""), row
    finally:
        srv.stop_and_check()


def test_backend_config_names_the_default_environment(tmp_path):
    env = make_env(tmp_path / "env", 23)
    repo = tmp_path / "repo"
    write_model(repo, "uses_default", IO, ENV_MODEL)
    srv = start_server(
        repo, ["--backend-config", f"python,execution-env-path={env}"], log_dir=tmp_path / "logs"
    )
    try:
        assert ask_y(srv, "uses_default") == [23]
    finally:
        srv.stop_and_check()


def test_a_model_runs_in_the_servers_own_interpreter_without_isolation(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(MODELS / "add_sub", repo / "add_sub")
    config = repo / "add_sub" / "config.pbtxt"
    config.write_text(
        config.read_text()
        + 'parameters { key: "ferrum.isolation" value: { string_value: "none" } }\n'
    )
    shutil.copytree(MODELS / "strings", repo / "strings")
    srv = start_server(repo, ENV_CONFIG, log_dir=tmp_path / "logs")
    try:
        a = np.array([1, 2, 3, 4], dtype=np.float32)
        with http(srv) as client:
            result = client.infer(
                "add_sub", [tensor("http", "INPUT0", a, "FP32"), tensor("http", "INPUT1", a, "FP32")]
            )
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 2)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a * 0)
            text = np.array([b"in", b"process"], dtype=np.object_)
            result = client.infer("strings", [tensor("http", "TEXT", text, "BYTES")])
            assert result.as_numpy("UPPER").tolist() == [b"IN", b"PROCESS"]
    finally:
        srv.stop_and_check()


# ------------------------------------------------------------------ model_repository examples


def test_python_preprocess_matches_the_rust_one_and_feeds_onnx_mlp(http_client):
    raw = np.random.default_rng(5).integers(0, 256, size=(3, 16), dtype=np.uint8)
    ours = http_client.infer("python_preprocess", [tensor("http", "RAW", raw, "UINT8")])
    rust = http_client.infer("preprocess", [tensor("http", "RAW", raw, "UINT8")])
    features = ours.as_numpy("FEATURES")
    assert features.dtype == np.float32 and features.shape == (3, 16)
    np.testing.assert_allclose(features, rust.as_numpy("FEATURES"), rtol=1e-6, atol=1e-6)
    scores = http_client.infer("onnx_mlp", [tensor("http", "INPUT0", features, "FP32")])
    assert scores.as_numpy("OUTPUT0").shape == (3, 4)


def test_python_repeat_example_streams(server):
    values = [5, 6, 7]
    client, results = stream(server, "python_repeat", values, 0)
    try:
        assert collect(results) == [(v, i) for i, v in enumerate(values)]
    finally:
        client.stop_stream()
        client.close()


# ------------------------------------------------------------------ BLS


@pytest.fixture(scope="module")
def blsserver(tmp_path_factory):
    """``bls`` beside the models it calls: onnx_mlp (ONNX Runtime) and ``repeat`` (a decoupled
    Python model)."""
    repo = tmp_path_factory.mktemp("bls-repo")
    for name in ("bls", "repeat"):
        shutil.copytree(MODELS / name, repo / name)
    shutil.copytree(REPO_ROOT / "model_repository" / "onnx_mlp", repo / "onnx_mlp")
    srv = start_server(repo, ENV_CONFIG, log_dir=tmp_path_factory.mktemp("bls-logs"))
    yield srv
    srv.stop_and_check()


FEATURES = np.random.default_rng(11).standard_normal((3, 16)).astype(np.float32)


def bls(srv, protocol, mode):
    client = client_for(srv, protocol)
    try:
        return client.infer(
            "bls",
            [
                tensor(protocol, "INPUT0", FEATURES, "FP32"),
                tensor(protocol, "MODE", np.array([mode.encode()], dtype=np.object_), "BYTES"),
            ],
        )
    finally:
        client.close()


def mlp(srv, features):
    with http(srv) as client:
        return client.infer("onnx_mlp", [tensor("http", "INPUT0", features, "FP32")]).as_numpy(
            "OUTPUT0"
        )


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bls_exec_calls_an_onnx_model(blsserver, protocol):
    result = bls(blsserver, protocol, "sync")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), mlp(blsserver, FEATURES))


def test_bls_async_exec_runs_calls_together(blsserver):
    result = bls(blsserver, "grpc", "async")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), mlp(blsserver, FEATURES))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), mlp(blsserver, -FEATURES))


def test_bls_decoupled_exec_yields_every_response(blsserver):
    assert bls(blsserver, "http", "decoupled").as_numpy("REPEATED").tolist() == [5, 6, 7]


def test_bls_stopping_a_decoupled_call_cancels_it(blsserver):
    assert bls(blsserver, "http", "stop").as_numpy("REPEATED").tolist() == [0]
    logs = wait_for_log(blsserver, "repeat: request '' cancelled after")
    # It stopped long before its 50 values (20 ms apart) ran out.
    sent = re.search(r"repeat: request '' cancelled after (\d+) responses", logs)
    assert sent and 1 <= int(sent.group(1)) < 25, logs[-2000:]


@pytest.mark.parametrize(
    "mode, says", [("missing", "no_such_model"), ("raise", "WRONG")]
)
def test_bls_errors_come_back_as_error_responses(blsserver, mode, says):
    message = bls(blsserver, "http", mode).as_numpy("ERROR")[0].decode()
    assert says in message, message
    # The server and the calling model keep serving.
    assert bls(blsserver, "http", "sync").as_numpy("OUTPUT0").shape == (3, 4)


def test_python_bls_example_classifies_through_onnx_mlp(http_client):
    raw = np.random.default_rng(9).integers(0, 256, size=(2, 16), dtype=np.uint8)
    result = http_client.infer("python_bls", [tensor("http", "RAW", raw, "UINT8")])
    features = ((raw.astype(np.float32) / 255.0 - 0.5) / 0.25).astype(np.float32)
    scores = http_client.infer(
        "onnx_mlp", [tensor("http", "INPUT0", features, "FP32")]
    ).as_numpy("OUTPUT0")
    best = scores.argmax(axis=1)
    assert result.as_numpy("CLASS").reshape(-1).tolist() == best.tolist()
    np.testing.assert_allclose(
        result.as_numpy("SCORE").reshape(-1), scores[np.arange(2), best], rtol=1e-6
    )


# ------------------------------------------------------------------ crashes, parallelism, reloads

CRASHER = """
import ctypes
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = int(pb_utils.get_input_tensor_by_name(request, "X").as_numpy()[0])
            if x == 1:
                os.abort()
            if x == 2:
                sys.exit(3)
            if x == 3:
                ctypes.string_at(0)
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.array([x], dtype=np.int32))])
            )
        return responses
"""

SCALAR_IO = """max_batch_size: 0
input [ { name: "X" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "Y" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""


def ask(srv, model, x, protocol="http"):
    client = client_for(srv, protocol)
    try:
        result = client.infer(model, [tensor(protocol, "X", np.array([x], dtype=np.int32), "INT32")])
        return int(result.as_numpy("Y")[0])
    finally:
        client.close()


def test_a_crashing_interpreter_fails_its_requests_then_the_model_is_unavailable(tmp_path):
    repo = tmp_path / "repo"
    write_model(
        repo,
        "crasher",
        SCALAR_IO
        + 'parameters { key: "ferrum.isolation.max_crashes" value: { string_value: "2" } }\n',
        CRASHER,
    )
    shutil.copytree(MODELS / "add_sub", repo / "add_sub")
    srv = start_server(repo, ENV_CONFIG, log_dir=tmp_path / "logs")
    try:
        # sys.exit inside execute is an exception like any other: the request fails with it
        # and the interpreter carries on.
        with pytest.raises(InferenceServerException) as info:
            ask(srv, "crasher", 2)
        assert "SystemExit: 3" in info.value.message(), info.value.message()
        assert ask(srv, "crasher", 0) == 0
        # os.abort kills the instance's interpreter: its request fails and it restarts.
        with pytest.raises(InferenceServerException) as info:
            ask(srv, "crasher", 1, "grpc")
        assert "SIGABRT" in info.value.message() and "restarting" in info.value.message()
        assert ask(srv, "crasher", 0) == 0
        # A second crash in a row (a segfault this time) makes the model UNAVAILABLE.
        for x in (1, 3):
            with pytest.raises(InferenceServerException):
                ask(srv, "crasher", x)
        with pytest.raises(InferenceServerException) as info:
            ask(srv, "crasher", 0)
        assert info.value.status() == "503", info.value
        assert "crashed 2 times in a row" in info.value.message(), info.value.message()
        row = index_of(srv)["crasher"]
        assert row["state"] == "UNAVAILABLE" and "SIGSEGV" in row["reason"], row
        # Every other model, and the server, kept serving.
        a = np.array([1, 2, 3, 4], dtype=np.float32)
        with http(srv) as client:
            result = client.infer(
                "add_sub", [tensor("http", "INPUT0", a, "FP32"), tensor("http", "INPUT1", a, "FP32")]
            )
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 2)
            assert client.is_server_live()
    finally:
        srv.stop_and_check()


PAIR = """
import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.instance = args["model_instance_name"]
        self.arrivals = Path(args["model_repository"]) / "arrivals"
        self.arrivals.mkdir(exist_ok=True)

    def execute(self, requests):
        # A barrier for two: each execution says it arrived, then waits (bounded) for the
        # other. Both see each other only if two instances execute at the same time.
        (self.arrivals / self.instance).touch()
        deadline = time.monotonic() + 20
        while len(list(self.arrivals.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        together = len(list(self.arrivals.iterdir())) >= 2
        return [
            pb_utils.InferenceResponse(
                [
                    pb_utils.Tensor("Y", np.array([int(together)], dtype=np.int32)),
                    pb_utils.Tensor("WHO", np.array([self.instance.encode()], dtype=np.object_)),
                ]
            )
            for _ in requests
        ]
"""


def test_two_instances_execute_at_the_same_time(tmp_path):
    repo = tmp_path / "repo"
    write_model(
        repo,
        "pair",
        'max_batch_size: 0\n'
        'input [ { name: "X" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        'output [ { name: "Y" data_type: TYPE_INT32 dims: [ 1 ] },\n'
        '         { name: "WHO" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
        "instance_group [ { count: 2 kind: KIND_CPU } ]\n",
        PAIR,
    )
    srv = start_server(repo, ENV_CONFIG, log_dir=tmp_path / "logs")
    try:
        from concurrent.futures import ThreadPoolExecutor

        def one(_):
            with http(srv) as client:
                result = client.infer(
                    "pair", [tensor("http", "X", np.array([0], dtype=np.int32), "INT32")]
                )
                return int(result.as_numpy("Y")[0]), result.as_numpy("WHO")[0]

        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(one, range(2)))
        assert [together for together, _ in answers] == [1, 1], answers
        assert answers[0][1] != answers[1][1], answers
        with http(srv) as client:
            stats = client.get_inference_statistics("pair")["model_stats"][0]
        # Two executions of one request each, each waiting for the other inside execute.
        assert int(stats["execution_count"]) == 2, stats
        assert int(stats["inference_count"]) == 2, stats
        assert int(stats["inference_stats"]["compute_infer"]["count"]) == 2, stats
    finally:
        srv.stop_and_check()


GENERATION = """
import numpy as np
import triton_python_backend_utils as pb_utils

GENERATION = {generation}


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("Y", np.array([GENERATION], dtype=np.int32))]
            )
            for _ in requests
        ]
"""


def test_reloading_model_py_under_load_fails_no_request(tmp_path):
    import threading

    repo = tmp_path / "repo"
    write_model(repo, "gen", SCALAR_IO, GENERATION.format(generation=0))
    srv = start_server(
        repo, ENV_CONFIG + ["--model-control-mode", "explicit", "--load-model", "gen"],
        log_dir=tmp_path / "logs",
    )
    stop = threading.Event()
    seen, failures = [], []

    def load():
        client = http(srv)
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                result = client.infer("gen", [tensor("http", "X", np.array([0], dtype=np.int32), "INT32")])
                seen.append(int(result.as_numpy("Y")[0]))
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and asserted on
                failures.append(str(exc))
        client.close()

    clients = [threading.Thread(target=load) for _ in range(4)]
    for c in clients:
        c.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        with http(srv) as admin:
            for generation in (1, 2, 3):
                (repo / "gen" / "1" / "model.py").write_text(GENERATION.format(generation=generation))
                admin.load_model("gen")
                # The load returns once the new version serves.
                deadline = time.monotonic() + TIMEOUT
                while (not seen or seen[-1] != generation) and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert seen and seen[-1] == generation, (generation, seen[-5:])
    finally:
        stop.set()
        for c in clients:
            c.join(TIMEOUT)
        srv.stop_and_check()
    assert not failures, failures[:3]
    assert set(seen) == {0, 1, 2, 3}, sorted(set(seen))
