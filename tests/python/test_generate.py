"""The generate extension (docs/protocol.md): ``POST /v2/models/<m>/generate`` and
``/generate_stream``, JSON in, JSON or server-sent events out, through a real SSE client
(httpx + httpx-sse) against the shared server on model_repository/.

``token_stream`` (the ``tokens`` backend) streams one word per response, 50 ms apart, up to
the ``max_tokens`` parameter; a one-response model (``simple``) answers /generate the same as
/infer.
"""

from __future__ import annotations

import json
import re
import time

import httpx
import numpy as np
import pytest
from httpx_sse import connect_sse

TIMEOUT = 60


def url(server, path):
    return f"{server.http_url if server.http_url.startswith('http') else 'http://' + server.http_url}{path}"


def events(server, model, body, timeout=TIMEOUT):
    """Every SSE event of a generate_stream call: (arrival time, event name, data)."""
    got = []
    with httpx.Client(timeout=timeout) as client:
        with connect_sse(client, "POST", url(server, f"/v2/models/{model}/generate_stream"), json=body) as source:
            assert source.response.status_code == 200
            assert source.response.headers["content-type"].startswith("text/event-stream")
            for event in source.iter_sse():
                got.append((time.monotonic(), event.event, json.loads(event.data)))
    return got


def test_generate_stream_sends_one_event_per_token_as_it_is_made(server):
    got = events(server, "token_stream", {"PROMPT": "the quick brown fox", "max_tokens": 6})
    assert [e for _, e, _ in got] == ["message"] * 6
    words = [data["TEXT"] for _, _, data in got]
    assert words == ["the", "quick", "brown", "fox", "and", "so"]
    assert all(data["model_name"] == "token_stream" for _, _, data in got)
    # The backend waits 50 ms before each word: the events arrive spread over time, not at
    # once at the end (the gaps are measured between events, so a slow machine only widens
    # them).
    times = [t for t, _, _ in got]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(g > 0.02 for g in gaps), gaps


def test_generate_stream_takes_parameters_from_fields_and_the_parameters_object(server):
    got = events(server, "token_stream", {"PROMPT": "a b", "parameters": {"max_tokens": 3, "delay_ms": 1}})
    assert [data["TEXT"] for _, _, data in got] == ["a", "b", "and"]


def test_generate_on_a_one_response_model_equals_infer(server):
    a = list(range(16))
    b = [3] * 16
    with httpx.Client(timeout=TIMEOUT) as client:
        generated = client.post(url(server, "/v2/models/simple/generate"), json={"INPUT0": a, "INPUT1": b})
        inferred = client.post(
            url(server, "/v2/models/simple/infer"),
            json={"inputs": [
                {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": a},
                {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": b},
            ]},
        )
    assert generated.status_code == 200, generated.text
    body = generated.json()
    outputs = {o["name"]: o["data"] for o in inferred.json()["outputs"]}
    assert body["model_name"] == "simple" and body["model_version"] == "1"
    assert body["OUTPUT0"] == outputs["OUTPUT0"] == list(np.add(a, b))
    assert body["OUTPUT1"] == outputs["OUTPUT1"] == list(np.subtract(a, b))


def test_generate_stream_on_a_one_response_model_sends_one_event(server):
    got = events(server, "simple", {"INPUT0": [1] * 16, "INPUT1": [2] * 16})
    assert len(got) == 1 and got[0][2]["OUTPUT0"] == [3] * 16


@pytest.mark.parametrize(
    "model, body, status, says",
    [
        ("simple", b"{not json", 400, "not valid JSON"),
        ("simple", b"[1, 2]", 400, "must be a JSON object"),
        ("simple", {"INPUT0": [1] * 16, "INPUT1": [2] * 16, "extra": [1, 2]}, 400, "field 'extra' is not an input"),
        ("simple", {"INPUT0": [1] * 16, "INPUT1": ["x"] * 16}, 400, "is not a INT32 value"),
        ("simple", {"INPUT0": [[1, 2], [3]], "INPUT1": [2] * 16}, 400, "ragged"),
        ("simple", {"INPUT0": [1] * 16}, 400, "INPUT1"),
        ("no_such_model", {"x": 1}, 404, "no_such_model"),
        ("token_stream", {"PROMPT": "hello"}, 400, "generate_stream"),
    ],
)
def test_bad_generate_requests_get_clear_errors(server, model, body, status, says):
    with httpx.Client(timeout=TIMEOUT) as client:
        kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
        response = client.post(url(server, f"/v2/models/{model}/generate"), **kwargs)
    assert response.status_code == status, response.text
    assert says in response.json()["error"], response.json()


def test_an_error_while_streaming_is_an_error_event(server):
    got = events(server, "token_stream", {"PROMPT": "x", "max_tokens": -1})
    assert [e for _, e, _ in got] == ["error"]
    assert "max_tokens" in got[0][2]["error"]


def test_a_client_that_disconnects_stops_the_backend(server):
    request_id = f"gone-{time.monotonic_ns()}"
    with httpx.Client(timeout=TIMEOUT) as client:
        with connect_sse(
            client, "POST", url(server, "/v2/models/token_stream/generate_stream"),
            json={"PROMPT": "w", "max_tokens": 200, "delay_ms": 20, "id": request_id},
        ) as source:
            received = 0
            for _ in source.iter_sse():
                received += 1
                if received == 2:
                    break
    # The backend notices at its next word and logs how far it got, long before 200.
    deadline = time.monotonic() + TIMEOUT
    pattern = re.compile(rf"request '{request_id}' cancelled after (\d+) of 200 tokens")
    while time.monotonic() < deadline:
        found = pattern.search(server.stdout_text() + server.stderr_text())
        if found:
            break
        time.sleep(0.02)
    assert found, "the backend never saw the cancellation"
    assert 2 <= int(found.group(1)) < 100
