"""Hard edges: slow clients, connection limits, request deadlines, SIGTERM under load, and
reloads that cannot read their files.

* A client that trickles its headers is disconnected after ``--http-header-timeout-secs``; one
  that sends its headers and then stalls (or trickles) its body is answered 408 after
  ``--http-body-timeout-secs`` and disconnected. Other clients are served meanwhile.
* Over ``--http-max-connections`` / ``--grpc-max-connections`` a new connection waits to be
  accepted until one closes.
* A request's ``timeout`` parameter (microseconds) is a deadline for starting it: one still
  queued when it passes is answered "timed out in the queue" (HTTP 503, gRPC UNAVAILABLE) and
  never reaches the backend. gRPC's own deadline cancels a queued request the same way.
* SIGTERM while requests are in the server: every one of them completes, the process exits 0.
* A reload (explicit load API, or poll mode) that cannot read a new version's file, a changed
  file of the serving version, or the config leaves the serving version serving and says why.

The models use the ``testing`` fixture backend (tests/fixtures/testing): ``sleep_from_input``
makes an execute sleep as many milliseconds as the first INPUT0 element says, ``sleep_ms``
sleeps in every execute, ``marker_file`` is written when an execute starts, and mode ``tag``
answers the text of its version folder's tag.txt (which must equal tag_check.txt).
"""

from __future__ import annotations

import base64
import json
import re
import socket
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
# The short timeouts the slow-client server runs with, in seconds.
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
# How long a blocking request keeps a model's only instance busy, in ms.
BLOCK_MS = 1500
# A request's own timeout in the deadline tests, in µs: well inside BLOCK_MS.
DEADLINE_US = 200_000


def write_model(repo: Path, name: str, extra: str = "", count: int = 1, **params) -> None:
    """A `testing` model with INPUT0 -> OUTPUT0 (FP32) and the given config parameters."""
    parameters = "".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in params.items()
    )
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "testing"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        f"instance_group [ {{ count: {count} kind: KIND_CPU }} ]\n"
        f"{extra}\n{parameters}"
    )


def infer_body(values) -> dict:
    return {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, len(values)], "data": values}]}


def served_meanwhile(server) -> None:
    """Another client's inference, answered while a slow client holds its connection."""
    response = requests.post(
        f"{server.http_base}/v2/models/direct/infer", json=infer_body([0.0, 1.0]), timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [0.0, 1.0]


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server closed the connection (reads what it sent meanwhile)."""
    try:
        return sock.recv(65536) == b""
    except socket.timeout:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True


# ------------------------------------------------------------------ slow clients


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    return backends_with_testing(tmp_path_factory.mktemp("backends"))


@pytest.fixture(scope="module")
def slow_client_server(tmp_path_factory, backends):
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "direct", sleep_from_input="true")
    srv = start_server(
        repo,
        [
            "--http-header-timeout-secs", str(HEADER_TIMEOUT_S),
            "--http-body-timeout-secs", str(BODY_TIMEOUT_S),
        ],
        backend_directory=backends,
    )
    yield srv
    srv.stop_and_check()


def test_a_client_that_trickles_its_headers_is_disconnected(slow_client_server):
    server = slow_client_server
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=TIMEOUT) as sock:
        sock.settimeout(0.1)
        sock.sendall(b"POST /v2/models/direct/infer HTTP/1.1\r\nHost: ferrum\r\nX-Slow: ")
        started = time.monotonic()
        closed = False
        while not closed and time.monotonic() - started < HEADER_TIMEOUT_S + 10:
            try:
                sock.sendall(b"a")  # one more byte of a header line that never ends
            except (ConnectionResetError, BrokenPipeError):
                closed = True
                break
            closed = closed_by_peer(sock)
            served_meanwhile(server)
        elapsed = time.monotonic() - started
    assert closed, "the server kept a connection whose headers never ended"
    assert HEADER_TIMEOUT_S * 0.8 <= elapsed <= HEADER_TIMEOUT_S + 5, elapsed
    served_meanwhile(server)


def read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes the connection (or `limit_s` passes)."""
    received = b""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return received, True
        if not chunk:
            return received, True
        received += chunk
    return received, False


def test_a_body_that_stalls_is_answered_408_and_its_connection_closed(slow_client_server):
    server = slow_client_server
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=TIMEOUT) as sock:
        sock.settimeout(0.1)
        sock.sendall(
            b"POST /v2/models/direct/infer HTTP/1.1\r\nHost: ferrum\r\n"
            b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n"
            b'{"inputs": ['
        )
        started = time.monotonic()
        served_meanwhile(server)
        answer, closed = read_until_closed(sock, BODY_TIMEOUT_S + 10)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower(), head
    assert "--http-body-timeout-secs" in json.loads(body)["error"], body
    assert closed, "the connection stayed open after the 408"
    assert BODY_TIMEOUT_S * 0.8 <= elapsed <= BODY_TIMEOUT_S + 5, elapsed
    served_meanwhile(server)


def test_a_body_that_trickles_is_cut_off_at_the_body_timeout(slow_client_server):
    server = slow_client_server
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=TIMEOUT) as sock:
        sock.settimeout(0.1)
        sock.sendall(
            b"POST /v2/models/direct/infer HTTP/1.1\r\nHost: ferrum\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        )
        started = time.monotonic()
        answer, closed = b"", False
        # A byte every 100 ms keeps the connection busy, but the whole body has a deadline.
        while not closed and time.monotonic() - started < BODY_TIMEOUT_S + 10:
            try:
                sock.sendall(b" ")
                chunk = sock.recv(65536)
                answer += chunk
                closed = chunk == b""
            except socket.timeout:
                pass
            except (ConnectionResetError, BrokenPipeError):
                closed = True
            served_meanwhile(server)
        elapsed = time.monotonic() - started
    assert closed, "a trickling body kept its connection past the body timeout"
    # The 408 arrives first, unless the kernel reset the connection over the bytes still in
    # flight (the client kept sending); then the reset is what the client sees.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
    assert BODY_TIMEOUT_S * 0.8 <= elapsed <= BODY_TIMEOUT_S + 5, elapsed


def held_http_connection(server) -> socket.socket:
    """A keep-alive connection the server has accepted (it answered a request on it)."""
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=TIMEOUT)
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: ferrum\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        assert chunk, "the server closed a connection it should keep"
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return sock


def test_connections_over_the_limit_wait_until_one_closes(server_factory, tmp_path, backends):
    repo = tmp_path / "repo"
    write_model(repo, "direct")
    server = server_factory(
        repo,
        ["--http-max-connections", "2", "--grpc-max-connections", "1"],
        backend_directory=backends,
    )
    live = f"{server.http_base}/v2/health/live"
    held = [held_http_connection(server), held_http_connection(server)]
    try:
        # A third connection is not refused: it waits to be accepted, so no answer comes.
        with pytest.raises(requests.exceptions.Timeout):
            requests.get(live, timeout=1.0)
        held.pop().close()
        assert requests.get(live, timeout=TIMEOUT).status_code == 200
    finally:
        for sock in held:
            sock.close()

    # Each client on a TCP connection of its own (gRPC shares them between channels).
    def own_connection():
        return grpcclient.InferenceServerClient(
            server.grpc_url, channel_args=[("grpc.use_local_subchannel_pool", 1)]
        )

    first = own_connection()
    try:
        assert first.is_server_live(client_timeout=TIMEOUT)
        waiting = own_connection()
        try:
            with pytest.raises(InferenceServerException) as error:
                waiting.is_server_live(client_timeout=1.0)
            assert error.value.status() == "StatusCode.DEADLINE_EXCEEDED", error.value
        finally:
            waiting.close()
    finally:
        first.close()
    with own_connection() as client:
        assert client.is_server_live(client_timeout=TIMEOUT)


# ------------------------------------------------------------------ deadlines


@pytest.fixture(scope="module")
def deadline_server(tmp_path_factory, backends):
    repo = tmp_path_factory.mktemp("repo")
    markers = tmp_path_factory.mktemp("markers")
    # No batcher: the instance takes requests straight from the queue.
    write_model(repo, "direct", sleep_from_input="true", marker_file=markers / "direct")
    # The sequence batcher (direct strategy, one instance).
    write_model(
        repo, "sequence", "sequence_batching { max_sequence_idle_microseconds: 60000000 }",
        sleep_from_input="true", marker_file=markers / "sequence",
    )
    # The dynamic batcher, whose queue policy lets a request set its own timeout (Triton).
    write_model(
        repo, "batched",
        "dynamic_batching { default_queue_policy { timeout_action: REJECT "
        "allow_timeout_override: true } }",
        sleep_from_input="true", marker_file=markers / "batched",
    )
    srv = start_server(repo, backend_directory=backends)
    srv.markers = markers
    yield srv
    srv.stop_and_check()


_SEQUENCE_IDS = iter(range(1000, 1_000_000))


def fp32(mod, values, rows: int = 1):
    arr = np.array([values] * rows, dtype=np.float32)
    inp = mod.InferInput("INPUT0", list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr)
    return inp, arr


def infer(server, protocol: str, model: str, sleep_ms: float, rows: int = 1, **kwargs):
    """One inference through tritonclient; returns its result, or raises its exception.
    A request to the sequence model gets a sequence of its own unless kwargs name one."""
    mod = httpclient if protocol == "http" else grpcclient
    inp, arr = fp32(mod, [sleep_ms, 1.0], rows)
    if model == "sequence" and "sequence_id" not in kwargs:
        kwargs.update(sequence_id=next(_SEQUENCE_IDS), sequence_start=True, sequence_end=True)
    if protocol == "http":
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=TIMEOUT)
    else:
        client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        result = client.infer(model, [inp], **kwargs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), arr)
        return result
    finally:
        client.close()


def model_stats(server, model: str) -> dict:
    body = requests.get(f"{server.http_base}/v2/models/{model}/stats", timeout=TIMEOUT).json()
    return body["model_stats"][0]


def counts(server, model: str) -> tuple[int, int]:
    """(rows inferred, backend executions) of a model so far."""
    stats = model_stats(server, model)
    return stats["inference_count"], stats["execution_count"]


# Rows of the request that follows a timed-out one.
FOLLOW_UP_ROWS = 3


def assert_only_the_blocker_ran(server, model: str, before: tuple[int, int], follow_up) -> None:
    """Checks, once `follow_up()` (a request of FOLLOW_UP_ROWS rows, queued behind the
    timed-out one on the model's only instance) has been answered, that the backend ran the
    blocker and the follow-up and nothing else. An execution is counted just after its
    responses leave, so the counts are read once the follow-up's rows show: the follow-up
    runs last, so by then they are final (a timed-out request that ran would add a row)."""
    follow_up()
    rows, executions = before
    deadline = time.monotonic() + TIMEOUT
    while counts(server, model)[0] < rows + 1 + FOLLOW_UP_ROWS:
        assert time.monotonic() < deadline, model_stats(server, model)
        time.sleep(0.01)
    assert counts(server, model) == (rows + 1 + FOLLOW_UP_ROWS, executions + 2), model_stats(
        server, model
    )


def start_blocker(server, model: str) -> threading.Thread:
    """Starts a request that keeps the model's only instance busy for BLOCK_MS; returns once
    it runs (the testing backend writes its marker file when an execute starts)."""
    marker = server.markers / model
    marker.unlink(missing_ok=True)
    blocker = threading.Thread(target=lambda: infer(server, "http", model, BLOCK_MS))
    blocker.start()
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():
        assert time.monotonic() < deadline, f"{model}: the blocking request never ran"
        time.sleep(0.005)
    return blocker


def assert_queue_timeout(error: InferenceServerException, protocol: str, model: str) -> None:
    status = "503" if protocol == "http" else "StatusCode.UNAVAILABLE"
    assert error.status() == status, (error.status(), error.message())
    assert f"request for model '{model}' timed out in the queue" in error.message(), error.message()


@pytest.mark.parametrize("model", ["direct", "sequence", "batched"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_request_whose_timeout_passes_in_the_queue_never_runs(deadline_server, protocol, model):
    server = deadline_server
    before = counts(server, model)
    blocker = start_blocker(server, model)
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as error:
        infer(server, protocol, model, 0, timeout=DEADLINE_US)
    answered = time.monotonic() - started
    blocker.join(TIMEOUT)
    assert_queue_timeout(error.value, protocol, model)
    if model != "batched":
        # Answered at its deadline, while the blocker still ran. (The dynamic batcher answers
        # when an instance next looks at its queue, here once the blocker is done.)
        assert answered < BLOCK_MS / 1000 - 0.2, answered
    # Only the blocker reached the backend; a request whose timeout leaves it enough time
    # runs as usual.
    assert_only_the_blocker_ran(
        server, model, before,
        lambda: infer(server, protocol, model, 0, rows=FOLLOW_UP_ROWS, timeout=30_000_000),
    )


def test_a_sequence_goes_on_after_one_of_its_requests_timed_out(deadline_server):
    server = deadline_server
    sequence = next(_SEQUENCE_IDS)
    blocker = start_blocker(server, "sequence")
    with pytest.raises(InferenceServerException) as error:
        infer(server, "grpc", "sequence", 0, sequence_id=sequence, sequence_start=True,
              timeout=DEADLINE_US)
    assert_queue_timeout(error.value, "grpc", "sequence")
    blocker.join(TIMEOUT)
    infer(server, "grpc", "sequence", 0, sequence_id=sequence, sequence_end=True)


def test_a_raw_http_request_with_a_timeout_parameter(deadline_server):
    server = deadline_server
    url = f"{server.http_base}/v2/models/direct/infer"
    before = counts(server, "direct")
    blocker = start_blocker(server, "direct")
    body = {**infer_body([0.0, 1.0]), "parameters": {"timeout": DEADLINE_US}}
    started = time.monotonic()
    response = requests.post(url, json=body, timeout=TIMEOUT)
    answered = time.monotonic() - started
    blocker.join(TIMEOUT)
    assert response.status_code == 503, response.text
    assert "timed out in the queue" in response.json()["error"], response.text
    assert answered < BLOCK_MS / 1000 - 0.2, answered

    def follow_up():
        # Without a queue to wait in, the same timeout is no obstacle.
        rows = {**body, "inputs": [{**body["inputs"][0], "shape": [FOLLOW_UP_ROWS, 2],
                                    "data": [0.0, 1.0] * FOLLOW_UP_ROWS}]}
        response = requests.post(url, json=rows, timeout=TIMEOUT)
        assert response.status_code == 200, response.text

    assert_only_the_blocker_ran(server, "direct", before, follow_up)


@pytest.mark.parametrize("timeout", [-5, "soon", 1.5])
def test_a_timeout_that_is_not_a_non_negative_integer_is_refused(deadline_server, timeout):
    body = {**infer_body([0.0]), "parameters": {"timeout": timeout}}
    response = requests.post(
        f"{deadline_server.http_base}/v2/models/direct/infer", json=body, timeout=TIMEOUT
    )
    assert response.status_code == 400, response.text
    assert "timeout" in response.json()["error"], response.text


def test_a_grpc_deadline_cancels_a_queued_request(deadline_server):
    server = deadline_server
    before = counts(server, "direct")
    blocker = start_blocker(server, "direct")
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as error:
        infer(server, "grpc", "direct", 0, client_timeout=DEADLINE_US / 1e6)
    answered = time.monotonic() - started
    # The client's own timer says DEADLINE_EXCEEDED; the server ends the call at the same
    # moment with CANCELLED "Timeout expired" (tonic), and either may arrive first.
    assert error.value.status() in ("StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"), (
        error.value
    )
    assert answered < BLOCK_MS / 1000 - 0.2, answered
    blocker.join(TIMEOUT)
    # The server dropped the call at its deadline: the queued request never ran.
    assert_only_the_blocker_ran(
        server, "direct", before,
        lambda: infer(server, "grpc", "direct", 0, rows=FOLLOW_UP_ROWS),
    )


# ------------------------------------------------------------------ SIGTERM under load

# Requests in the server when SIGTERM comes, and how long each execute takes.
IN_FLIGHT = 8
EXECUTE_MS = 800


def pending_requests(server, model: str) -> int:
    text = requests.get(f"http://{server.metrics_url}/metrics", timeout=TIMEOUT).text
    match = re.search(
        rf'^nv_inference_pending_request_count{{[^}}]*model="{model}"[^}}]*}} (\S+)$', text, re.M
    )
    return int(float(match.group(1))) if match else 0


def test_sigterm_under_load_finishes_every_accepted_request(server_factory, tmp_path, backends):
    repo = tmp_path / "repo"
    write_model(repo, "slow", count=2, sleep_ms=EXECUTE_MS)
    server = server_factory(repo, backend_directory=backends)
    url = f"{server.http_base}/v2/models/slow/infer"

    results: list = [None] * IN_FLIGHT

    def one(i: int) -> None:
        protocol = "http" if i % 2 else "grpc"
        try:
            mod = httpclient if protocol == "http" else grpcclient
            inp, arr = fp32(mod, [float(i), -float(i)])
            client = (
                httpclient.InferenceServerClient(server.http_url, network_timeout=TIMEOUT)
                if protocol == "http"
                else grpcclient.InferenceServerClient(server.grpc_url)
            )
            with client:
                result = client.infer("slow", [inp])
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), arr)
            results[i] = "ok"
        except Exception as exc:  # recorded and reported below
            results[i] = f"{protocol} request {i} failed: {exc!r}"

    # More clients keep coming while the server stops: each is answered in full or cannot
    # get through at all (connection refused or closed); none gets an error answer.
    stop_load = threading.Event()
    late: list[str] = []

    def keep_coming() -> None:
        n = 0
        while not stop_load.is_set() and n < 10_000:
            n += 1
            try:
                response = requests.post(
                    url, json=infer_body([float(n)]), headers={"Connection": "close"},
                    timeout=TIMEOUT,
                )
            except requests.exceptions.ConnectionError:
                late.append("no connection")
                time.sleep(0.01)
                continue
            if response.status_code != 200 or response.json()["outputs"][0]["data"] != [float(n)]:
                late.append(f"error answer {response.status_code}: {response.text}")
            else:
                late.append("ok")

    clients = [threading.Thread(target=one, args=(i,)) for i in range(IN_FLIGHT)]
    for t in clients:
        t.start()
    # Wait until every request is in the server (queued or running; a few may be done).
    deadline = time.monotonic() + TIMEOUT
    while True:
        pending = pending_requests(server, "slow")
        if pending + sum(r is not None for r in results) >= IN_FLIGHT:
            break
        assert time.monotonic() < deadline, "the requests never all reached the server"
        time.sleep(0.01)
    assert pending > 0, "every request finished before SIGTERM: nothing was in flight"
    load = [threading.Thread(target=keep_coming) for _ in range(2)]
    for t in load:
        t.start()

    server.process.send_signal(15)  # SIGTERM
    code = server.wait_exit(TIMEOUT)
    stop_load.set()
    for t in clients + load:
        t.join(TIMEOUT)

    assert code == 0, server.describe()
    assert results == ["ok"] * IN_FLIGHT, results
    errors = [outcome for outcome in late if outcome not in ("ok", "no connection")]
    assert not errors, errors


# ------------------------------------------------------------------ unreadable reloads


TAGGED_CONFIG = """name: "tagged"
backend: "testing"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "TAG" data_type: TYPE_STRING dims: [ 1 ] }
]
parameters { key: "mode" value: { string_value: "tag" } }
"""


def write_version(model: Path, version: int, tag: str) -> None:
    folder = model / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tag.txt").write_text(tag)
    (folder / "tag_check.txt").write_text(tag)


def tagged_repository(tmp_path: Path) -> tuple[Path, Path]:
    repo = tmp_path / "repo"
    model = repo / "tagged"
    model.mkdir(parents=True)
    (model / "config.pbtxt").write_text(TAGGED_CONFIG)
    write_version(model, 1, "one")
    return repo, model


def serving_tag(server) -> str:
    response = requests.post(
        f"{server.http_base}/v2/models/tagged/infer", json=infer_body([2.0]), timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs["OUTPUT0"] == [2.0]
    return outputs["TAG"][0]


def index_rows(server) -> list[dict]:
    response = requests.post(f"{server.http_base}/v2/repository/index", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return [row for row in response.json() if row["name"] == "tagged"]


def load(server, body: dict | None = None) -> requests.Response:
    return requests.post(
        f"{server.http_base}/v2/repository/models/tagged/load",
        data=json.dumps(body) if body is not None else None,
        timeout=TIMEOUT,
    )


def dangling_new_version(model: Path) -> None:
    """Version 2 appears, its model file a symbolic link to nothing."""
    (model / "2").mkdir()
    (model / "2" / "tag.txt").symlink_to(model / "2" / "missing.txt")
    (model / "2" / "tag_check.txt").write_text("two")


def serving_file_becomes_a_directory(model: Path) -> None:
    """The serving version's model file is replaced by something that cannot be read."""
    (model / "1" / "tag.txt").unlink()
    (model / "1" / "tag.txt").mkdir()


def config_becomes_dangling(model: Path) -> None:
    (model / "config.pbtxt").unlink()
    (model / "config.pbtxt").symlink_to(model / "gone.pbtxt")


def config_truncated(model: Path) -> None:
    (model / "config.pbtxt").write_text(TAGGED_CONFIG[: len(TAGGED_CONFIG) // 2])


BREAKAGES = {
    "new version file dangling": (dangling_new_version, "tag.txt"),
    "serving file unreadable": (serving_file_becomes_a_directory, "tag.txt"),
    "config dangling": (config_becomes_dangling, "symbolic link"),
    "config truncated": (config_truncated, "config.pbtxt"),
}


def restore(model: Path) -> None:
    """Puts the model folder right again, with a good version 2."""
    config = model / "config.pbtxt"
    if config.is_symlink():
        config.unlink()
    config.write_text(TAGGED_CONFIG)
    for version, tag in ((1, "one"), (2, "two")):
        path = model / str(version) / "tag.txt"
        if path.is_symlink():
            path.unlink()
        elif path.is_dir():
            path.rmdir()
        write_version(model, version, tag)


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_an_unreadable_reload_leaves_the_serving_version(server_factory, tmp_path, backends, breakage):
    repo, model = tagged_repository(tmp_path)
    server = server_factory(
        repo,
        ["--model-control-mode", "explicit", "--load-model", "tagged"],
        backend_directory=backends,
    )
    assert serving_tag(server) == "one"
    break_model, reason = BREAKAGES[breakage]
    break_model(model)

    response = load(server)
    assert response.status_code != 200, response.text
    assert reason in response.json()["error"], response.text
    # The old version still serves, and the index says why the new one does not.
    assert serving_tag(server) == "one"
    rows = index_rows(server)
    assert any(r.get("version") == "1" and r["state"] == "READY" for r in rows), rows
    assert any(reason in r.get("reason", "") for r in rows), rows

    restore(model)
    response = load(server)
    assert response.status_code == 200, response.text
    assert serving_tag(server) == "two"


def test_an_upload_that_cannot_be_written_leaves_the_serving_version(server_factory, tmp_path, backends):
    """A write error while the load API stores uploaded files (as a full disk gives) fails the
    load and changes nothing: here `file:1` is written as a file first, so the folder
    `file:1/tag.txt` needs cannot be made."""
    repo, _ = tagged_repository(tmp_path)
    server = server_factory(
        repo,
        ["--model-control-mode", "explicit", "--load-model", "tagged"],
        backend_directory=backends,
    )
    config = json.dumps({
        "name": "tagged", "backend": "testing", "max_batch_size": 8,
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]},
                   {"name": "TAG", "data_type": "TYPE_STRING", "dims": [1]}],
        "parameters": {"mode": {"string_value": "tag"}},
    })
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    response = load(server, {"parameters": {
        "config": config,
        "file:1": b64("in the way"),
        "file:1/tag.txt": b64("uploaded"),
        "file:1/tag_check.txt": b64("uploaded"),
    }})
    assert response.status_code != 200, response.text
    assert "cannot write uploaded file" in response.json()["error"], response.text
    assert serving_tag(server) == "one"
    assert any(r.get("version") == "1" and r["state"] == "READY" for r in index_rows(server))


def test_poll_mode_keeps_serving_when_a_changed_file_cannot_be_read(server_factory, tmp_path, backends):
    repo, model = tagged_repository(tmp_path)
    server = server_factory(
        repo,
        ["--model-control-mode", "poll", "--repository-poll-secs", "1"],
        backend_directory=backends,
    )
    assert serving_tag(server) == "one"
    serving_file_becomes_a_directory(model)
    deadline = time.monotonic() + TIMEOUT
    while not any("reload failed" in r.get("reason", "") for r in index_rows(server)):
        assert time.monotonic() < deadline, index_rows(server)
        assert serving_tag(server) == "one"
        time.sleep(0.1)
    assert serving_tag(server) == "one"
    assert any(r.get("version") == "1" and r["state"] == "READY" for r in index_rows(server))
