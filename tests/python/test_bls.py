"""Business logic scripting: backends that call other models of the server through the host
(the ABI's host inference), synchronously and asynchronously.

The models use the ``testing`` fixture backend (tests/fixtures/testing): mode ``forward`` calls
``forward_to`` and waits; mode ``fanout`` starts two calls of ``forward_to`` at once and then
waits on both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from ferrum_harness import backends_with_testing, start_server

TIMEOUT = 60
SLEEP_MS = 300


def write_model(repo: Path, name: str, instances: int = 1, **params):
    parameters = "".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in params.items()
    )
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "testing"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n{parameters}"
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    backends = backends_with_testing(tmp_path_factory.mktemp("backends"))
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "slow", instances=2, sleep_ms=SLEEP_MS)
    write_model(repo, "forward", mode="forward", forward_to="slow")
    write_model(repo, "fanout", mode="fanout", forward_to="slow")
    write_model(repo, "self_caller", mode="forward", forward_to="self_caller")
    srv = start_server(repo, backend_directory=backends)
    yield srv
    srv.stop_and_check()


def call(server, protocol, model, values):
    arr = np.array([values], dtype=np.float32)
    mod = httpclient if protocol == "http" else grpcclient
    client = (httpclient.InferenceServerClient(server.http_url, network_timeout=TIMEOUT)
              if protocol == "http" else grpcclient.InferenceServerClient(server.grpc_url))
    try:
        inp = mod.InferInput("INPUT0", list(arr.shape), "FP32")
        inp.set_data_from_numpy(arr)
        return client.infer(model, [inp]).as_numpy("OUTPUT0"), arr
    finally:
        client.close()


def stats(server, model):
    body = requests.get(f"{server.http_base}/v2/models/{model}/stats", timeout=TIMEOUT).json()
    s = body["model_stats"][0]
    return s["inference_stats"], int(s["execution_count"])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_backend_calls_another_model_and_answers_with_its_output(server, protocol):
    got, sent = call(server, protocol, "forward", [1.5, -2.0, 3.25])
    np.testing.assert_array_equal(got, sent)


def test_two_started_calls_run_at_the_same_time(server):
    before, slow_runs = stats(server, "slow")
    fanout_before, _ = stats(server, "fanout")
    got, sent = call(server, "grpc", "fanout", [4.0, 5.0])
    np.testing.assert_array_equal(got, sent)
    after, slow_runs_after = stats(server, "slow")
    fanout_after, _ = stats(server, "fanout")
    # Both calls reached the target...
    assert slow_runs_after - slow_runs == 2
    assert after["success"]["count"] - before["success"]["count"] == 2
    # ...and the fanout's execute, which waited on both, took about one call, not two: the
    # server's own compute time for it is under 1.5 calls (two in a row would be 2).
    infer_ns = fanout_after["compute_infer"]["ns"] - fanout_before["compute_infer"]["ns"]
    assert SLEEP_MS * 1e6 <= infer_ns < 1.5 * SLEEP_MS * 1e6, infer_ns


def test_a_model_calling_itself_from_execute_gets_a_clear_error(server):
    with pytest.raises(InferenceServerException) as info:
        call(server, "http", "self_caller", [1.0])
    assert "cannot call itself" in info.value.message(), info.value.message()
    # The server is fine and the model still answers (with the same error) at once.
    got, sent = call(server, "http", "forward", [2.0])
    np.testing.assert_array_equal(got, sent)
