"""The sequence batcher through tritonclient: correlation ids, START/END, control inputs and
implicit state, both strategies, idle release, backlog, errors, reloads, metrics.

The model is ``accumulator`` (tests/models/onnx, made by scripts/make-onnx-models.py): an ONNX
running sum whose state (STATE_IN → STATE_OUT) the server keeps per sequence, with START,
END, READY and CORRID control inputs the server fills; it answers OUTPUT (the sum so far)
and CORRID_OUT (the correlation id it was given). Variants of its config are written into a
temporary repository per test module: both strategies under ONNX Runtime, the same file under
the OpenVINO backend, and a TorchScript twin (tests/models/pytorch/torch_accumulator, made by
scripts/make-torch-models.py) under the PyTorch backend; none of the backends knows about
sequences.
"""

from __future__ import annotations

import queue
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from ferrum_harness import REPO_ROOT, start_server

TIMEOUT = 60
SOURCE = REPO_ROOT / "tests" / "models" / "onnx" / "accumulator"
TORCH_SOURCE = REPO_ROOT / "tests" / "models" / "pytorch" / "torch_accumulator"
IDLE_US = 400_000


def variant(repo: Path, name: str, edit) -> None:
    """Copies the accumulator as `name`, its config changed by `edit(text) -> text`."""
    shutil.copytree(SOURCE, repo / name)
    config = (repo / name / "config.pbtxt").read_text().replace('"accumulator"', f'"{name}"')
    (repo / name / "config.pbtxt").write_text(edit(config))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    variant(repo, "direct", lambda c: c)
    variant(
        repo, "oldest",
        lambda c: c.replace(
            "direct { }",
            "oldest { max_candidate_sequences: 16 preferred_batch_size: [ 4 ] "
            "max_queue_delay_microseconds: 20000 }",
        ).replace("count: 2", "count: 1"),
    )
    # One instance, one slot, a short idle time: for backlog and idle release.
    variant(
        repo, "one_slot",
        lambda c: c.replace("max_batch_size: 4", "max_batch_size: 1")
        .replace("count: 2", "count: 1")
        .replace("max_sequence_idle_microseconds: 5000000", f"max_sequence_idle_microseconds: {IDLE_US}"),
    )
    # The same ONNX file run by the OpenVINO backend, which knows nothing of sequences.
    variant(
        repo, "openvino",
        lambda c: c.replace('platform: "onnxruntime_onnx"', 'backend: "openvino"\ndefault_model_filename: "model.onnx"'),
    )
    # A TorchScript accumulator (scripts/make-torch-models.py) run by the PyTorch backend.
    shutil.copytree(TORCH_SOURCE, repo / "pytorch")
    srv = start_server(repo)
    yield srv
    srv.stop_and_check()


# (input, sum output, correlation id output) of each model; the ONNX file's names by default.
TENSORS = {"pytorch": ("INPUT__0", "OUTPUT__0", "CORRID_OUT__2")}
ONNX_TENSORS = ("INPUT", "OUTPUT", "CORRID_OUT")


def value_input(mod, model: str, value: int):
    inp = mod.InferInput(TENSORS.get(model, ONNX_TENSORS)[0], [1, 1], "INT32")
    inp.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    return inp


class Caller:
    """Sends one sequence request over one protocol; returns (OUTPUT, CORRID_OUT)."""

    def __init__(self, server, protocol: str):
        self.protocol = protocol
        if protocol == "http":
            self.client = httpclient.InferenceServerClient(server.http_url, network_timeout=TIMEOUT)
        else:
            self.client = grpcclient.InferenceServerClient(server.grpc_url)
        if protocol == "grpc_stream":
            self.results: queue.Queue = queue.Queue()
            self.client.start_stream(callback=lambda result, error: self.results.put((result, error)))

    def __call__(self, model, sequence_id, value, start=False, end=False):
        mod = httpclient if self.protocol == "http" else grpcclient
        kwargs = dict(sequence_id=sequence_id, sequence_start=start, sequence_end=end)
        inputs = [value_input(mod, model, value)]
        if self.protocol == "grpc_stream":
            self.client.async_stream_infer(model, inputs, **kwargs)
            result, error = self.results.get(timeout=TIMEOUT)
            if error is not None:
                raise error
        else:
            result = self.client.infer(model, inputs, **kwargs)
        _, total, corrid = TENSORS.get(model, ONNX_TENSORS)
        return int(result.as_numpy(total)[0][0]), int(result.as_numpy(corrid)[0][0])

    def close(self):
        if self.protocol == "grpc_stream":
            self.client.stop_stream()
        self.client.close()


def run_sequences(server, protocol, model, ids, steps=5):
    """Runs one thread per sequence, all at once; returns {id: [(OUTPUT, CORRID_OUT)]}."""
    results: dict = {}
    errors: list = []

    def one(sequence_id, index):
        caller = Caller(server, protocol)
        try:
            answers = []
            for step in range(steps):
                value = index * 100 + step + 1
                answers.append(
                    caller(model, sequence_id, value, start=step == 0, end=step == steps - 1)
                )
            results[sequence_id] = answers
        except Exception as exc:  # reported below with the sequence it belongs to
            errors.append((sequence_id, exc))
        finally:
            caller.close()

    threads = [threading.Thread(target=one, args=(sid, i)) for i, sid in enumerate(ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not errors, errors
    return results


@pytest.mark.parametrize("model", ["direct", "oldest", "openvino", "pytorch"])
@pytest.mark.parametrize("protocol", ["http", "grpc", "grpc_stream"])
def test_interleaved_sequences_each_get_their_own_running_sum(server, model, protocol):
    ids = [1000 + i for i in range(8)]
    results = run_sequences(server, protocol, model, ids)
    for index, sequence_id in enumerate(ids):
        values = [index * 100 + step + 1 for step in range(5)]
        sums = list(np.cumsum(values))
        assert [out for out, _ in results[sequence_id]] == sums, (sequence_id, results[sequence_id])
        assert {corrid for _, corrid in results[sequence_id]} == {sequence_id}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_string_correlation_ids_keep_sequences_apart(server, protocol):
    ids = [f"stream-{protocol}-{i}" for i in range(4)]
    results = run_sequences(server, protocol, "direct", ids, steps=3)
    for index, sequence_id in enumerate(ids):
        sums = list(np.cumsum([index * 100 + step + 1 for step in range(3)]))
        assert [out for out, _ in results[sequence_id]] == sums


def expect_error(call, protocol, *mentions):
    with pytest.raises(InferenceServerException) as info:
        call()
    status = "400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"
    assert info.value.status() == status, (info.value.status(), info.value.message())
    for text in mentions:
        assert text in info.value.message(), info.value.message()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_requests_outside_a_sequence_are_refused_clearly(server, protocol):
    caller = Caller(server, protocol)
    try:
        expect_error(lambda: caller("direct", 0, 1), protocol, "correlation ID")
        expect_error(lambda: caller("direct", 777001, 1), protocol, "START flag", "777001")
        assert caller("direct", 777002, 5, start=True) == (5, 777002)
        assert caller("direct", 777002, 6, end=True) == (11, 777002)
        # The sequence ended: it is unknown again.
        expect_error(lambda: caller("direct", 777002, 1), protocol, "START flag")
        # A new sequence with the same id starts from the initial state.
        assert caller("direct", 777002, 3, start=True, end=True) == (3, 777002)
    finally:
        caller.close()


def test_a_sequence_waits_for_a_slot_and_an_idle_one_is_released(server):
    first, second = Caller(server, "grpc"), Caller(server, "grpc")
    try:
        assert first("one_slot", 501, 1, start=True) == (1, 501)
        # The only slot is taken: the second sequence waits in the backlog.
        done: queue.Queue = queue.Queue()
        waiting = threading.Thread(target=lambda: done.put(second("one_slot", 502, 10, start=True)))
        waiting.start()
        with pytest.raises(queue.Empty):
            done.get(timeout=0.2)
        assert first("one_slot", 501, 2, end=True) == (3, 501)
        assert done.get(timeout=TIMEOUT) == (10, 502)
        waiting.join(TIMEOUT)
        # 502 stays open without requests: after the idle time it is released, and its
        # next request needs START again; a new sequence gets the slot.
        time.sleep(IDLE_US / 1e6 * 2.5)
        expect_error(lambda: second("one_slot", 502, 1), "grpc", "START flag")
        assert first("one_slot", 503, 7, start=True, end=True) == (7, 503)
    finally:
        first.close()
        second.close()
    deadline = time.monotonic() + TIMEOUT
    while "released after" not in server.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "sequence 502 released after" in server.stderr_text()
    assert sequence_metrics(server, "one_slot")["ferrum_sequences_timed_out_total"] >= 1


def test_the_oldest_strategy_merges_sequences_into_batches(server):
    before = requests.get(f"{server.http_base}/v2/models/oldest/stats", timeout=TIMEOUT).json()
    run_sequences(server, "grpc", "oldest", [2000 + i for i in range(8)], steps=4)
    stats = requests.get(f"{server.http_base}/v2/models/oldest/stats", timeout=TIMEOUT).json()
    batches = {
        int(b["batch_size"]): int(b["compute_infer"]["count"])
        for b in stats["model_stats"][0]["batch_stats"]
    }
    old = {
        int(b["batch_size"]): int(b["compute_infer"]["count"])
        for b in before["model_stats"][0]["batch_stats"]
    }
    merged = sum(n - old.get(size, 0) for size, n in batches.items() if size > 1)
    assert merged > 0, batches


def test_a_reload_keeps_open_sequences_on_the_version_they_started_on(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    variant(repo, "acc", lambda c: c)
    srv = start_server(repo, ["--model-control-mode", "explicit", "--load-model", "acc"])
    try:
        caller = Caller(srv, "grpc")
        try:
            assert caller("acc", 31, 1, start=True) == (1, 31)
            # The new version starts every sequence at 1000 (an initial state from a file).
            config = repo / "acc" / "config.pbtxt"
            config.write_text(
                config.read_text().replace(
                    "zero_data: true", 'data_file: "thousand"'
                )
            )
            (repo / "acc" / "1" / "initial_state").mkdir()
            (repo / "acc" / "1" / "initial_state" / "thousand").write_bytes(
                np.array([1000], dtype=np.int32).tobytes()
            )
            caller.client.load_model("acc")
            # A new sequence runs on the new version...
            assert caller("acc", 32, 5, start=True) == (1005, 32)
            # ...while the open one goes on where it was, on the old version, to its end.
            assert caller("acc", 31, 2) == (3, 31)
            assert caller("acc", 31, 3, end=True) == (6, 31)
            assert caller("acc", 32, 1, end=True) == (1006, 32)
            # Unloading ends the model's open sequences with it.
            assert caller("acc", 33, 1, start=True) == (1001, 33)
            caller.client.unload_model("acc")
            with pytest.raises(InferenceServerException):
                caller("acc", 33, 1)
        finally:
            caller.close()
    finally:
        srv.stop_and_check()


def sequence_metrics(server, model: str) -> dict:
    text = requests.get(f"http://{server.metrics_url}/metrics", timeout=TIMEOUT).text
    found = {}
    for line in text.splitlines():
        if line.startswith("ferrum_sequences_") and f'model="{model}"' in line:
            found[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
    return found


def test_sequences_are_counted_in_the_metrics(server):
    before = sequence_metrics(server, "direct")
    assert set(before) == {
        "ferrum_sequences_active",
        "ferrum_sequences_started_total",
        "ferrum_sequences_ended_total",
        "ferrum_sequences_timed_out_total",
    }, before
    caller = Caller(server, "http")
    try:
        caller("direct", 4242, 1, start=True)
        during = sequence_metrics(server, "direct")
        assert during["ferrum_sequences_active"] == before["ferrum_sequences_active"] + 1
        caller("direct", 4242, 1, end=True)
    finally:
        caller.close()
    run_sequences(server, "grpc", "direct", [4300 + i for i in range(3)], steps=2)
    after = sequence_metrics(server, "direct")
    assert after["ferrum_sequences_started_total"] == before["ferrum_sequences_started_total"] + 4
    assert after["ferrum_sequences_ended_total"] == before["ferrum_sequences_ended_total"] + 4
    assert after["ferrum_sequences_active"] == before["ferrum_sequences_active"]


def pending(server, model: str) -> float:
    text = requests.get(f"http://{server.metrics_url}/metrics", timeout=TIMEOUT).text
    for line in text.splitlines():
        if line.startswith("nv_inference_pending_request_count") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_sequences_waiting_for_a_slot_are_bounded_by_the_queue_limit(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    variant(
        repo, "one_slot",
        lambda c: c.replace("max_batch_size: 4", "max_batch_size: 1").replace("count: 2", "count: 1"),
    )
    srv = start_server(repo, ["--max-queue-size", "2"])
    callers = [Caller(srv, "grpc") for _ in range(4)]
    try:
        assert callers[0]("one_slot", 1, 1, start=True) == (1, 1)
        # Two more sequences wait for the only slot: the queue holds their two requests...
        done: queue.Queue = queue.Queue()
        waiting = [
            threading.Thread(target=lambda i=i: done.put(callers[i]("one_slot", 1 + i, 10 * i, start=True, end=True)))
            for i in (1, 2)
        ]
        for t in waiting:
            t.start()
        deadline = time.monotonic() + TIMEOUT
        while pending(srv, "one_slot") < 2:
            assert time.monotonic() < deadline, "the two sequences never queued"
            time.sleep(0.01)
        # ...and a fourth finds it full, at once.
        with pytest.raises(InferenceServerException) as info:
            callers[3]("one_slot", 4, 1, start=True)
        assert info.value.status() == "StatusCode.UNAVAILABLE", info.value.message()
        assert "queue full" in info.value.message()
        assert callers[0]("one_slot", 1, 1, end=True) == (2, 1)
        assert sorted(done.get(timeout=TIMEOUT) for _ in waiting) == [(10, 2), (20, 3)]
    finally:
        for c in callers:
            c.close()
        srv.stop_and_check()
