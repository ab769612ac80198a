"""Bounded queues and adaptive batching, as clients see them.

Every model version's queue is bounded (``--max-queue-size`` where the config sets no
``max_queue_size``): a request that finds it full is refused at once with "queue full"
(HTTP 503, gRPC UNAVAILABLE), and the requests already queued still run. A model that opts
into adaptive batching (parameter ``ferrum.adaptive_batching``) does not make a lone request
wait out ``max_queue_delay_microseconds``, yet still batches when requests come together.

The models use the ``testing`` fixture backend (tests/fixtures/testing): ``sleep_from_input``
makes an execute sleep as many milliseconds as the first INPUT0 element says, and ``BATCH``
reports the rows one execute call saw.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from ferrum_harness import backends_with_testing, start_server

TIMEOUT = 60
QUEUE_LIMIT = 2
# How long the blocking request keeps the only instance busy, in ms: long enough for every
# queued request to arrive (they are sent at once), short enough for a quick test.
BLOCK_MS = 1500
# The batching delay of the adaptive/non-adaptive twins, in µs.
DELAY_US = 1_000_000


def write_model(repo: Path, name: str, extra: str = "", **params):
    params = {"sleep_from_input": "true", **params}
    parameters = "".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in params.items()
    )
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "testing"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] },\n'
        '         { name: "BATCH" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        'instance_group [ { count: 1 kind: KIND_CPU } ]\n'
        f"{extra}\n{parameters}"
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    backends = backends_with_testing(tmp_path_factory.mktemp("backends"))

    repo = tmp_path_factory.mktemp("repo")
    markers = tmp_path_factory.mktemp("markers")
    # One instance, no batcher: the instance takes requests straight from the queue.
    write_model(repo, "direct", marker_file=markers / "direct")
    # The dynamic batcher with Triton's default queue policy (no max_queue_size of its own).
    write_model(repo, "batched", "dynamic_batching { }", marker_file=markers / "batched")
    for name, adaptive in (("patient", "false"), ("adaptive", "true")):
        write_model(
            repo, name,
            f"dynamic_batching {{ max_queue_delay_microseconds: {DELAY_US} "
            "default_queue_policy { max_queue_size: 64 } }",
            marker_file=markers / name, **{"ferrum.adaptive_batching": adaptive},
        )
    srv = start_server(repo, ["--max-queue-size", str(QUEUE_LIMIT)], backend_directory=backends)
    srv.markers = markers
    yield srv
    srv.stop_and_check()


def infer(server, protocol: str, model: str, sleep_ms: float, rows: int = 1):
    """One inference; returns (BATCH seen, None) or (None, the client's exception)."""
    arr = np.full((rows, 2), sleep_ms, dtype=np.float32)
    mod = httpclient if protocol == "http" else grpcclient
    url = server.http_url if protocol == "http" else server.grpc_url
    inp = mod.InferInput("INPUT0", list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr)
    client = (
        httpclient.InferenceServerClient(url, network_timeout=TIMEOUT)
        if protocol == "http"
        else grpcclient.InferenceServerClient(url)
    )
    try:
        result = client.infer(model, [inp])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), arr)
        return int(result.as_numpy("BATCH")[0][0]), None
    except InferenceServerException as exc:
        return None, exc
    finally:
        client.close()


def in_threads(calls):
    """Runs every call on its own thread at once; returns their results in order."""
    results = [None] * len(calls)

    def run(i, call):
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    return results


def start_blocker(server, model: str) -> threading.Thread:
    """Starts a request that keeps the model's only instance busy for BLOCK_MS, and returns
    once it runs (the testing backend writes its marker file when an execute starts)."""
    marker = server.markers / model
    marker.unlink(missing_ok=True)
    blocker = threading.Thread(target=lambda: infer(server, "http", model, BLOCK_MS))
    blocker.start()
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():
        assert time.monotonic() < deadline, f"{model}: the blocking request never ran"
        time.sleep(0.005)
    return blocker


def inference_stats(server, model: str) -> dict:
    url = f"{server.http_base}/v2/models/{model}/stats"
    body = requests.get(url, timeout=TIMEOUT).json()
    return body["model_stats"][0]["inference_stats"]


@pytest.mark.parametrize("model", ["direct", "batched"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_full_queue_refuses_at_once_and_the_queued_requests_still_run(server, protocol, model):
    before_block = inference_stats(server, model)["success"]["count"]
    blocker = start_blocker(server, model)
    before = inference_stats(server, model)["success"]["count"]
    extra = 4
    started = time.monotonic()
    results = in_threads([lambda: infer(server, protocol, model, 0)] * (QUEUE_LIMIT + extra))
    blocker.join(TIMEOUT)

    served = [batch for batch, error in results if error is None]
    refused = [error for batch, error in results if error is not None]
    assert len(served) == QUEUE_LIMIT, [str(e) for e in refused]
    assert len(refused) == extra
    for error in refused:
        status = "503" if protocol == "http" else "StatusCode.UNAVAILABLE"
        assert error.status() == status, (error.status(), error.message())
        assert "queue full" in error.message(), error.message()
        assert f"{QUEUE_LIMIT} waiting requests" in error.message(), error.message()
    assert time.monotonic() - started < BLOCK_MS / 1000 + TIMEOUT / 2
    # The queued requests and the blocker were served; the queue is free again.
    assert before == before_block
    assert inference_stats(server, model)["success"]["count"] == before + QUEUE_LIMIT + 1
    assert infer(server, protocol, model, 0)[1] is None


def test_adaptive_batching_lets_a_lone_request_go_at_once(server):
    for model in ("patient", "adaptive"):
        for _ in range(3):
            batch, error = infer(server, "grpc", model, 0)
            assert error is None, error
            assert batch == 1
    patient = inference_stats(server, "patient")["queue"]
    adaptive = inference_stats(server, "adaptive")["queue"]
    # Triton's semantics: a lone request waits out the whole delay.
    assert patient["ns"] / patient["count"] >= DELAY_US * 1000
    # Adaptive: nobody else is coming, so it runs at once.
    assert adaptive["ns"] / adaptive["count"] < DELAY_US * 1000 / 4, adaptive


def test_adaptive_batching_still_batches_requests_that_come_together(server):
    blocker = start_blocker(server, "adaptive")
    # Eight requests arrive while the instance is busy: the batcher runs them as one batch.
    results = in_threads([lambda: infer(server, "grpc", "adaptive", 0)] * 8)
    blocker.join(TIMEOUT)
    assert [error for _, error in results] == [None] * 8
    assert [batch for batch, _ in results] == [8] * 8
