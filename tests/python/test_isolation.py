"""Process isolation (model parameter ``ferrum.isolation: process``), as clients see it.

An isolated model's instances run in child processes of the server that load the same
backend library through the same ABI; tensors cross through shared memory. The ``testing``
fixture backend (tests/fixtures/testing) dies on request: a request parameter ``crash`` of
``segv``, ``abort`` or ``exit`` ends the process running ``execute``, as a native runtime's
bug would. Isolated, that fails only the request, the instance restarts, and every other
model keeps serving; after ``ferrum.isolation.max_crashes`` crashes in a row the version is
UNAVAILABLE and says why, until it is loaded again. Not isolated, the same request takes the
whole server down (the last test shows the difference).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from ferrum_harness import REPO_ROOT, backends_with_testing, start_server

TIMEOUT = 60
CHILD_ARGUMENT = "--ferrum-isolated-instance"


def write_model(repo: Path, name: str, extra: str = "", **params):
    parameters = "".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
        for k, v in params.items()
    )
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "testing"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] },\n'
        '         { name: "BATCH" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        f"{extra}\n{parameters}"
    )


def isolated(**params):
    return {"ferrum.isolation": "process", **params}


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    return backends_with_testing(tmp_path_factory.mktemp("backends"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, backends):
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "isolated", "instance_group [ { count: 2 kind: KIND_CPU } ]",
                **isolated(**{"ferrum.isolation.max_crashes": "100"}))
    write_model(repo, "isolated_batched",
                "dynamic_batching { max_queue_delay_microseconds: 200000 }\n"
                "instance_group [ { count: 1 kind: KIND_CPU } ]",
                **isolated(sleep_ms="50"))
    write_model(repo, "isolated_later", "",
                **isolated(mode="answer_later"))
    write_model(repo, "isolated_sleepy", **isolated(
        sleep_from_input="true", marker_file=tmp_path_factory.mktemp("markers") / "sleepy"))
    write_model(repo, "neighbour")
    # Business logic from inside a child: calls run by the server on other models.
    write_model(repo, "isolated_forward", **isolated(mode="forward", forward_to="neighbour"))
    write_model(repo, "isolated_fanout", **isolated(mode="fanout", forward_to="neighbour"))
    write_model(repo, "isolated_self", **isolated(mode="forward", forward_to="isolated_self"))
    srv_markers = tmp_path_factory.mktemp("cancel")
    write_model(repo, "isolated_cancel", **isolated(
        sleep_from_input="true", cancel_marker=srv_markers / "cancelled"))
    # The real ONNX Runtime backend, isolated, beside the same model in the server.
    for name, params in (("onnx_isolated", isolated()), ("onnx_inproc", {})):
        shutil.copytree(REPO_ROOT / "model_repository" / "onnx_mlp", repo / name)
        config = (repo / name / "config.pbtxt").read_text().replace('"onnx_mlp"', f'"{name}"')
        config += "".join(
            f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
            for k, v in params.items()
        )
        (repo / name / "config.pbtxt").write_text(config)
    srv = start_server(repo, backend_directory=backends)
    srv.cancel_marker = srv_markers / "cancelled"
    yield srv
    srv.stop_and_check()


def children(pid: int) -> list[int]:
    """The isolated instance processes of a server."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and CHILD_ARGUMENT.encode() in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def infer(url: str, model: str, arr: np.ndarray, protocol: str = "http", **params):
    mod = httpclient if protocol == "http" else grpcclient
    inp = mod.InferInput("INPUT0", list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr)
    client = (
        httpclient.InferenceServerClient(url, network_timeout=TIMEOUT)
        if protocol == "http"
        else grpcclient.InferenceServerClient(url)
    )
    try:
        return client.infer(model, [inp], request_id="r1", parameters=params or None)
    finally:
        client.close()


def url_of(server, protocol):
    return server.http_url if protocol == "http" else server.grpc_url


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_isolated_model_serves_like_one_in_the_server(server, protocol):
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = infer(url_of(server, protocol), "isolated", arr, protocol, note="hi")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), arr)
    # The request reached the backend whole: id and parameters, through the child.
    response = result.get_response()
    params = response["parameters"] if protocol == "http" else {
        k: v.string_param for k, v in response.parameters.items()}
    assert params["seen_id"] == "r1"
    assert params["seen_note"] == "hi"
    # Two instances, two processes, children of the server.
    assert len(children(server.process.pid)) >= 2


def test_isolated_dynamic_batching_reaches_the_child_as_one_batch(server):
    import concurrent.futures as cf
    arrs = [np.full((1, 4), i, dtype=np.float32) for i in range(4)]
    with cf.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda a: infer(server.http_url, "isolated_batched", a), arrs))
    for arr, result in zip(arrs, results):
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), arr)
    assert max(int(r.as_numpy("BATCH")[0][0]) for r in results) > 1


def test_isolated_backend_may_answer_after_execute_returned(server):
    arr = np.ones((1, 5), dtype=np.float32)
    result = infer(server.http_url, "isolated_later", arr)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), arr)


def test_real_runtime_isolated_gives_the_same_outputs(server):
    arr = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    for protocol in ("http", "grpc"):
        ours = infer(url_of(server, protocol), "onnx_isolated", arr, protocol).as_numpy("OUTPUT0")
        theirs = infer(url_of(server, protocol), "onnx_inproc", arr, protocol).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(ours, theirs)
    # A large batch crosses shared memory whole.
    big = np.random.default_rng(4).standard_normal((32, 16)).astype(np.float32)
    np.testing.assert_array_equal(
        infer(server.http_url, "onnx_isolated", big).as_numpy("OUTPUT0"),
        infer(server.http_url, "onnx_inproc", big).as_numpy("OUTPUT0"),
    )


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ["isolated_forward", "isolated_fanout"])
def test_an_isolated_backend_calls_other_models_through_the_server(server, protocol, model):
    arr = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = infer(url_of(server, protocol), model, arr, protocol)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), arr)
    # A large tensor crosses both ways through the call files.
    big = np.random.default_rng(5).standard_normal((8, 100_000)).astype(np.float32)
    np.testing.assert_array_equal(
        infer(url_of(server, protocol), model, big, protocol).as_numpy("OUTPUT0"), big)
    # The files are gone once read (this server's: other tests' servers run beside it).
    ours = tuple(f"ferrum-iso-{pid}-" for pid in children(server.process.pid))
    assert not [p for p in os.listdir("/dev/shm") if p.startswith(ours)]


def test_an_isolated_model_cannot_call_itself(server):
    with pytest.raises(InferenceServerException) as info:
        infer(server.http_url, "isolated_self", np.ones((1, 2), dtype=np.float32))
    assert "cannot call itself" in str(info.value), str(info.value)


def test_a_cancelled_request_is_seen_as_cancelled_in_the_child(server):
    server.cancel_marker.unlink(missing_ok=True)
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [10000]}]}
    with pytest.raises(requests.exceptions.Timeout):
        requests.post(f"{server.http_base}/v2/models/isolated_cancel/infer", json=body,
                      timeout=0.5)
    # The client went away: the server cancels the request, and the backend in the child sees
    # it long before its 10 s sleep ends.
    deadline = time.monotonic() + 8
    while not server.cancel_marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.cancel_marker.exists()


@pytest.mark.parametrize(
    "how, says",
    [("segv", "SIGSEGV"), ("abort", "SIGABRT"), ("exit", "exited with status 3")],
)
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_crash_fails_its_request_and_the_instance_restarts(server, how, says, protocol):
    arr = np.ones((1, 3), dtype=np.float32)
    before = children(server.process.pid)
    with pytest.raises(InferenceServerException) as info:
        infer(url_of(server, protocol), "isolated", arr, protocol, crash=how)
    message = str(info.value)
    assert says in message, message
    assert "restarting" in message, message
    if protocol == "http":
        assert info.value.status() == "500"
    else:
        assert info.value.status() == "StatusCode.INTERNAL"
    # The other models never noticed; the server is up.
    np.testing.assert_array_equal(infer(server.http_url, "neighbour", arr).as_numpy("OUTPUT0"), arr)
    # The instance is back: both instances answer again (a bounded number of tries covers
    # both whichever one the queue hands each request to).
    for _ in range(4):
        np.testing.assert_array_equal(
            infer(url_of(server, protocol), "isolated", arr, protocol).as_numpy("OUTPUT0"), arr)
    # The replacement process comes up beside the old ones (after its backoff).
    deadline = time.monotonic() + TIMEOUT
    after = children(server.process.pid)
    while len(after) < len(before) and time.monotonic() < deadline:
        time.sleep(0.02)
        after = children(server.process.pid)
    assert len(after) == len(before)
    assert after != before, "the crashed process should have been replaced"


def test_a_process_killed_from_outside_fails_its_request_and_restarts(server):
    """What the out-of-memory killer does: SIGKILL to the process, in the middle of a request."""
    import threading
    config = Path(server.model_repository) / "isolated_sleepy" / "config.pbtxt"
    marker = Path(config.read_text().split('marker_file" value: { string_value: "')[1].split('"')[0])
    marker.unlink(missing_ok=True)
    sleepy = set(children(server.process.pid))
    outcome = {}

    def slow():
        try:
            infer(server.http_url, "isolated_sleepy", np.full((1, 2), 10_000, dtype=np.float32))
        except InferenceServerException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=slow)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    # The one process whose backend is executing now is the sleepy model's.
    busy = [pid for pid in sleepy if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[2]
            == b"isolated_sleepy_0"]
    assert len(busy) == 1, busy
    os.kill(busy[0], signal.SIGKILL)
    thread.join(TIMEOUT)
    message = str(outcome.get("error"))
    assert "SIGKILL" in message and "isolated_sleepy" in message, message
    arr = np.zeros((1, 2), dtype=np.float32)
    np.testing.assert_array_equal(
        infer(server.http_url, "isolated_sleepy", arr).as_numpy("OUTPUT0"), arr)


def test_repeated_crashes_make_the_model_unavailable_until_loaded_again(tmp_path, backends):
    repo = tmp_path / "repo"
    write_model(repo, "fragile", **isolated(**{"ferrum.isolation.max_crashes": "2"}))
    write_model(repo, "neighbour")
    srv = start_server(
        repo, ["--model-control-mode", "explicit", "--load-model", "*"],
        backend_directory=backends)
    try:
        arr = np.ones((1, 2), dtype=np.float32)
        client = httpclient.InferenceServerClient(srv.http_url, network_timeout=TIMEOUT)
        for _ in range(2):
            with pytest.raises(InferenceServerException):
                infer(srv.http_url, "fragile", arr, crash="segv")
        assert not client.is_model_ready("fragile")
        with pytest.raises(InferenceServerException) as info:
            infer(srv.http_url, "fragile", arr)
        assert info.value.status() == "503"
        assert "crashed 2 times in a row" in str(info.value), str(info.value)
        with pytest.raises(InferenceServerException) as info:
            infer(srv.grpc_url, "fragile", arr, "grpc")
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        index = {(m["name"], m.get("version")): m for m in client.get_model_repository_index()}
        row = index[("fragile", "1")]
        assert row["state"] == "UNAVAILABLE"
        assert "SIGSEGV" in row["reason"]
        # The rest of the server is fine; loading the model again brings it back.
        np.testing.assert_array_equal(infer(srv.http_url, "neighbour", arr).as_numpy("OUTPUT0"), arr)
        client.load_model("fragile")
        assert client.is_model_ready("fragile")
        np.testing.assert_array_equal(infer(srv.http_url, "fragile", arr).as_numpy("OUTPUT0"), arr)
        client.close()
    finally:
        srv.stop_and_check()


def test_isolated_processes_go_when_the_model_is_unloaded(tmp_path, backends):
    repo = tmp_path / "repo"
    write_model(repo, "isolated", **isolated())
    srv = start_server(
        repo, ["--model-control-mode", "explicit", "--load-model", "*"],
        backend_directory=backends)
    try:
        assert len(children(srv.process.pid)) == 1
        client = httpclient.InferenceServerClient(srv.http_url, network_timeout=TIMEOUT)
        client.unload_model("isolated")
        deadline = time.monotonic() + TIMEOUT
        while children(srv.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert children(srv.process.pid) == []
        client.close()
    finally:
        srv.stop_and_check()


def test_isolated_processes_die_with_the_server(tmp_path, backends):
    repo = tmp_path / "repo"
    write_model(repo, "isolated", "instance_group [ { count: 2 kind: KIND_CPU } ]", **isolated())
    srv = start_server(repo, backend_directory=backends)
    kids = children(srv.process.pid)
    assert len(kids) == 2
    srv.process.kill()
    srv.process.wait(TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    alive = kids
    while alive and time.monotonic() < deadline:
        alive = [k for k in kids if Path(f"/proc/{k}").exists()
                 and "Z" not in Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1][:3]]
        time.sleep(0.05)
    assert alive == [], f"isolated processes outlived the server: {alive}"


def test_without_isolation_the_same_crash_takes_the_server_down(tmp_path, backends):
    """The difference isolation makes: the same model in the server's own process."""
    repo = tmp_path / "repo"
    write_model(repo, "inproc")
    srv = start_server(repo, backend_directory=backends)
    arr = np.ones((1, 2), dtype=np.float32)
    with pytest.raises(Exception):
        infer(srv.http_url, "inproc", arr, crash="segv")
    assert srv.process.wait(TIMEOUT) == -signal.SIGSEGV
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{srv.http_base}/v2/health/live", timeout=5)


def test_metrics_show_the_memory_of_isolated_models(server):
    text = requests.get(f"http://{server.metrics_url}/metrics", timeout=TIMEOUT).text
    memory = {}
    for line in text.splitlines():
        if line.startswith("ferrum_model_memory_bytes{"):
            labels, value = line.rsplit(" ", 1)
            model = labels.split('model="', 1)[1].split('"', 1)[0]
            memory[model] = float(value)
    # Every isolated version is listed with its processes' resident memory; the others are
    # not (their memory is the server's own).
    assert set(memory) == {
        "isolated", "isolated_batched", "isolated_later", "isolated_sleepy", "onnx_isolated",
        "isolated_forward", "isolated_fanout", "isolated_self", "isolated_cancel"}
    assert all(v > 1_000_000 for v in memory.values()), memory
    # ONNX Runtime's process holds the runtime: more than the testing backend's.
    assert memory["onnx_isolated"] > memory["isolated_later"]


def test_a_load_that_fails_in_the_child_reports_the_backends_error(tmp_path, backends):
    repo = tmp_path / "repo"
    # Mode `tag` needs tag.txt in the version folder: without it the backend refuses to load,
    # inside the child process.
    write_model(repo, "untagged", **isolated(mode="tag"))
    write_model(repo, "neighbour")
    srv = start_server(repo, backend_directory=backends)
    try:
        client = httpclient.InferenceServerClient(srv.http_url, network_timeout=TIMEOUT)
        assert not client.is_model_ready("untagged")
        rows = [m for m in client.get_model_repository_index() if m["name"] == "untagged"]
        assert any("incomplete version folder" in m.get("reason", "") for m in rows), rows
        assert children(srv.process.pid) == []
        arr = np.ones((1, 2), dtype=np.float32)
        np.testing.assert_array_equal(infer(srv.http_url, "neighbour", arr).as_numpy("OUTPUT0"), arr)
        client.close()
    finally:
        srv.stop_and_check()
