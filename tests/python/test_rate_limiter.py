"""The rate limiter (``--rate-limit execution_count``, ``--rate-limit-resource``,
``instance_group { rate_limiter { resources [...] priority } }``; docs/scheduling.md).

Observed with the ``testing`` fixture backend's ``exec_log``: every execute appends
``<model> begin`` and ``<model> end`` to one file shared by the models, so the file's order is
the order executions really started and ended in.
"""

from __future__ import annotations

import queue
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from ferrum_harness import backends_with_testing, start_server

TIMEOUT = 60


def write_model(repo: Path, name: str, log: Path, *, count: int, priority: int = 0,
                resources: str = '{ name: "R" count: 1 }', sleep_ms: int = 10):
    (repo / name / "1").mkdir(parents=True)
    limiter = (f"rate_limiter {{ resources [ {resources} ] priority: {priority} }}"
               if resources else "")
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "testing"\nmax_batch_size: 0\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        f"instance_group [ {{ count: {count} kind: KIND_CPU {limiter} }} ]\n"
        f'parameters {{ key: "exec_log" value: {{ string_value: "{log}" }} }}\n'
        f'parameters {{ key: "sleep_ms" value: {{ string_value: "{sleep_ms}" }} }}\n'
    )


def flood(srv, requests: list[str]):
    """Sends every request at once over gRPC and waits for all the answers."""
    answers: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(srv.grpc_url) as client:
        for i, model in enumerate(requests):
            inp = grpcclient.InferInput("INPUT0", [1], "FP32")
            inp.set_data_from_numpy(np.array([i], dtype=np.float32))
            client.async_infer(model, [inp], lambda result, error: answers.put(error))
        for _ in requests:
            assert answers.get(timeout=TIMEOUT) is None


def executions(log: Path, srv):
    """(model, event) pairs in the order they happened, once the server has stopped (an
    execute writes its ``end`` after it answered)."""
    srv.stop_and_check()
    return [tuple(line.split()) for line in log.read_text().splitlines()]


def most_at_once(events) -> int:
    running = most = 0
    for _, event in events:
        running += 1 if event == "begin" else -1
        most = max(most, running)
    return most


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    return backends_with_testing(tmp_path_factory.mktemp("backends"))


@pytest.mark.parametrize("limited", [True, False])
def test_models_sharing_a_resource_of_one_never_execute_at_once(tmp_path, backends, limited):
    repo, log = tmp_path / "repo", tmp_path / "exec.log"
    write_model(repo, "a", log, count=2)
    write_model(repo, "b", log, count=2)
    args = ["--rate-limit", "execution_count", "--rate-limit-resource", "R:1"] if limited else []
    srv = start_server(repo, args, backend_directory=backends)
    try:
        flood(srv, ["a", "b"] * 12)
        events = executions(log, srv)
        assert len(events) == 48
        assert {m for m, _ in events} == {"a", "b"}
        if limited:
            assert most_at_once(events) == 1, events
        else:
            # Without the limiter the four instances do overlap: the check above can fail.
            assert most_at_once(events) > 1
    finally:
        srv.stop_and_check()


def test_a_resource_counts_as_many_copies_as_its_largest_claim_by_default(tmp_path, backends):
    repo, log = tmp_path / "repo", tmp_path / "exec.log"
    # Each instance needs 2 of R; with no --rate-limit-resource there are 2: one at a time.
    write_model(repo, "a", log, count=3, resources='{ name: "R" count: 2 }')
    srv = start_server(repo, ["--rate-limit", "execution_count"], backend_directory=backends)
    try:
        flood(srv, ["a"] * 12)
        assert most_at_once(executions(log, srv)) == 1
    finally:
        srv.stop_and_check()
    # --rate-limit-resource R:4 gives room for two of them at once (and never three).
    log.unlink()
    srv = start_server(repo, ["--rate-limit", "execution_count", "--rate-limit-resource", "R:4"],
                       backend_directory=backends)
    try:
        flood(srv, ["a"] * 24)
        assert most_at_once(executions(log, srv)) == 2
    finally:
        srv.stop_and_check()


@pytest.mark.parametrize("priorities", [(1, 2), (1, 1)])
def test_priority_weights_the_executions(tmp_path, backends, priorities):
    repo, log = tmp_path / "repo", tmp_path / "exec.log"
    write_model(repo, "high", log, count=1, priority=priorities[0])
    write_model(repo, "low", log, count=1, priority=priorities[1])
    srv = start_server(repo, ["--rate-limit", "execution_count"], backend_directory=backends)
    try:
        flood(srv, ["high", "low"] * 40)
        begins = [m for m, e in executions(log, srv) if e == "begin"]
        assert len(begins) == 80
        # While both models have requests waiting (the first 45 executions: "high" has 40),
        # priority 1 against 2 gives "high" two executions for each of "low"'s.
        share = begins[:45].count("high") / 45
        if priorities == (1, 2):
            assert 0.58 <= share <= 0.75, begins
        else:
            assert 0.4 <= share <= 0.6, begins
    finally:
        srv.stop_and_check()


def test_bad_rate_limiter_settings_are_refused_clearly(tmp_path, backends):
    repo, log = tmp_path / "repo", tmp_path / "exec.log"
    write_model(repo, "a", log, count=1, resources='{ name: "R" count: 2 }')
    srv = start_server(repo, ["--rate-limit", "execution_count", "--rate-limit-resource", "R:x"],
                       backend_directory=backends, wait_ready=False)
    assert srv.process.wait(timeout=TIMEOUT) != 0
    assert "--rate-limit-resource 'R:x': 'x' is not a count" in srv.stderr_text() + \
        srv.stdout_text()
    # A model that needs more than the server has fails to load, saying so; others serve.
    write_model(repo, "b", log, count=1, resources="")
    srv = start_server(repo, ["--rate-limit", "execution_count", "--rate-limit-resource", "R:1"],
                       backend_directory=backends, wait_ready=False)
    try:
        with grpcclient.InferenceServerClient(srv.grpc_url) as client:
            deadline = time.monotonic() + TIMEOUT
            while True:
                try:
                    if client.is_model_ready("b"):
                        break
                except Exception:  # not listening yet
                    pass
                assert time.monotonic() < deadline, "model 'b' never became ready"
                time.sleep(0.05)
            index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
            assert index["a"].get("state") == "UNAVAILABLE"
            assert "needs 2 of rate limiter resource 'R' on device 0 but --rate-limit-resource " \
                "gives 1" in index["a"].get("reason", "")
            flood(srv, ["b"] * 3)
    finally:
        srv.stop()
