"""Ensembles through tritonclient: results equal to calling the steps in turn, steps that run
side by side, ensembles of ensembles, members loaded first, load errors that name the step and
tensor, statistics per step, and member reloads under load without a failed request.

The member is ``simple`` (model_repository/, the add_sub backend: OUTPUT0 = INPUT0 + INPUT1,
OUTPUT1 = INPUT0 - INPUT1, INT32 [16], max_batch_size 8).
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
SIMPLE = REPO_ROOT / "model_repository" / "simple"


def tensor(name, dtype="TYPE_INT32", dims="[ 16 ]"):
    return f'{{ name: "{name}" data_type: {dtype} dims: {dims} }}'


def step(model, inputs: dict, outputs: dict):
    ins = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    outs = " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: -1 {ins} {outs} }}'


def ensemble(repo: Path, name, inputs, outputs, steps, max_batch=8):
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch}\n'
        f"input [ {', '.join(inputs)} ]\noutput [ {', '.join(outputs)} ]\n"
        f"ensemble_scheduling {{ step [ {', '.join(steps)} ] }}\n"
    )


# Two calls of simple in a row: SUM/DIFF of the inputs, then their sum and difference (2A, 2B).
CHAIN_STEPS = [
    step("simple", {"INPUT0": "A", "INPUT1": "B"}, {"OUTPUT0": "SUM", "OUTPUT1": "DIFF"}),
    step("simple", {"INPUT0": "SUM", "INPUT1": "DIFF"}, {"OUTPUT0": "TWICE_A", "OUTPUT1": "TWICE_B"}),
]


def write_ensembles(repo: Path) -> None:
    ensemble(repo, "chain", [tensor("A"), tensor("B")], [tensor("TWICE_A"), tensor("TWICE_B")],
             CHAIN_STEPS)
    # Two steps that need nothing from each other, then one that needs both.
    ensemble(
        repo, "diamond", [tensor("A"), tensor("B")], [tensor("OUT")],
        [
            step("simple", {"INPUT0": "A", "INPUT1": "B"}, {"OUTPUT0": "L"}),
            step("simple", {"INPUT0": "B", "INPUT1": "A"}, {"OUTPUT1": "R"}),
            step("simple", {"INPUT0": "L", "INPUT1": "R"}, {"OUTPUT0": "OUT"}),
        ],
    )
    # An ensemble of an ensemble.
    ensemble(
        repo, "outer", [tensor("X"), tensor("Y")], [tensor("FOUR_X")],
        [
            step("chain", {"A": "X", "B": "Y"}, {"TWICE_A": "TX", "TWICE_B": "TY"}),
            step("chain", {"A": "TX", "B": "TY"}, {"TWICE_A": "FOUR_X"}),
        ],
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(SIMPLE, repo / "simple")
    write_ensembles(repo)
    # Invalid ensembles, each with its own load error.
    bad = {
        "bad_unknown": [step("nosuch", {"INPUT0": "A", "INPUT1": "B"}, {"OUTPUT0": "OUT"})],
        "bad_cycle": [
            step("simple", {"INPUT0": "A", "INPUT1": "LOOP"}, {"OUTPUT0": "OUT", "OUTPUT1": "T"}),
            step("simple", {"INPUT0": "T", "INPUT1": "B"}, {"OUTPUT0": "LOOP"}),
        ],
        "bad_orphan": [step("simple", {"INPUT0": "A", "INPUT1": "NOBODY"}, {"OUTPUT0": "OUT"})],
        "bad_twice": [
            step("simple", {"INPUT0": "A", "INPUT1": "B"}, {"OUTPUT0": "OUT"}),
            step("simple", {"INPUT0": "A", "INPUT1": "B"}, {"OUTPUT1": "OUT"}),
        ],
        "bad_unproduced": [step("simple", {"INPUT0": "A", "INPUT1": "B"}, {"OUTPUT0": "OTHER"})],
        "bad_port": [step("simple", {"INPUT0": "A", "INPUT9": "B"}, {"OUTPUT0": "OUT"})],
    }
    for name, steps in bad.items():
        ensemble(repo, name, [tensor("A"), tensor("B")], [tensor("OUT")], steps)
    ensemble(repo, "bad_dtype", [tensor("A", "TYPE_FP32"), tensor("B")], [tensor("OUT")],
             [step("simple", {"INPUT0": "A", "INPUT1": "B"}, {"OUTPUT0": "OUT"})])
    ensemble(repo, "bad_shape", [tensor("A", dims="[ 8 ]"), tensor("B")], [tensor("OUT")],
             [step("simple", {"INPUT0": "A", "INPUT1": "B"}, {"OUTPUT0": "OUT"})])
    srv = start_server(repo)
    yield srv
    srv.stop_and_check()


def pair(seed):
    rng = np.random.default_rng(seed)
    return (rng.integers(-1000, 1000, size=(1, 16), dtype=np.int32),
            rng.integers(-1000, 1000, size=(1, 16), dtype=np.int32))


def infer(protocol, server, model, named: dict, outputs=None):
    mod = httpclient if protocol == "http" else grpcclient
    url = server.http_url if protocol == "http" else server.grpc_url
    client = (httpclient.InferenceServerClient(url, network_timeout=TIMEOUT)
              if protocol == "http" else grpcclient.InferenceServerClient(url))
    try:
        inputs = []
        for name, arr in named.items():
            inp = mod.InferInput(name, list(arr.shape), "INT32")
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        result = client.infer(model, inputs)
        return {name: result.as_numpy(name) for name in outputs}
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_ensemble_returns_what_calling_its_steps_in_turn_returns(server, protocol):
    a, b = pair(1)
    first = infer(protocol, server, "simple", {"INPUT0": a, "INPUT1": b}, ["OUTPUT0", "OUTPUT1"])
    second = infer(protocol, server, "simple",
                   {"INPUT0": first["OUTPUT0"], "INPUT1": first["OUTPUT1"]}, ["OUTPUT0", "OUTPUT1"])
    got = infer(protocol, server, "chain", {"A": a, "B": b}, ["TWICE_A", "TWICE_B"])
    np.testing.assert_array_equal(got["TWICE_A"], second["OUTPUT0"])
    np.testing.assert_array_equal(got["TWICE_B"], second["OUTPUT1"])
    np.testing.assert_array_equal(got["TWICE_A"], 2 * a)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_independent_steps_and_nested_ensembles(server, protocol):
    a, b = pair(2)
    got = infer(protocol, server, "diamond", {"A": a, "B": b}, ["OUT"])
    np.testing.assert_array_equal(got["OUT"], (a + b) + (b - a))
    got = infer(protocol, server, "outer", {"X": a, "Y": b}, ["FOUR_X"])
    np.testing.assert_array_equal(got["FOUR_X"], 4 * a)


def test_each_invalid_ensemble_has_its_own_load_error(server):
    index = requests.post(f"{server.http_base}/v2/repository/index", json={}, timeout=TIMEOUT).json()
    reasons = {row["name"]: row.get("reason", "") for row in index if row["name"].startswith("bad_")}
    expected = {
        "bad_unknown": ["step 0", "'nosuch'"],
        "bad_cycle": ["cycle"],
        "bad_orphan": ["step 0", "'NOBODY'", "neither an ensemble input nor produced"],
        "bad_twice": ["step 1", "'OUT' is produced twice"],
        "bad_unproduced": ["output 'OUT'", "no step produces it"],
        "bad_port": ["step 0", "'INPUT9'", "not an input of model 'simple'"],
        "bad_dtype": ["step 0", "'A' is FP32", "takes INT32"],
        "bad_shape": ["step 0", "'A' has dims [8]"],
    }
    for name, mentions in expected.items():
        for text in mentions:
            assert text in reasons[name], (name, reasons[name])
    stats = requests.get(f"{server.http_base}/v2/models/chain/ready", timeout=TIMEOUT)
    assert stats.status_code == 200


def test_statistics_count_the_ensemble_and_each_step(server):
    def counts(model):
        body = requests.get(f"{server.http_base}/v2/models/{model}/stats", timeout=TIMEOUT).json()
        return sum(int(s["inference_stats"]["success"]["count"]) for s in body["model_stats"])

    chain, simple = counts("chain"), counts("simple")
    a, b = pair(3)
    for _ in range(3):
        infer("grpc", server, "chain", {"A": a, "B": b}, ["TWICE_A"])
    assert counts("chain") == chain + 3
    assert counts("simple") == simple + 6


def test_members_load_before_their_ensemble_in_explicit_mode(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(SIMPLE, repo / "simple")
    write_ensembles(repo)
    srv = start_server(repo, ["--model-control-mode", "explicit", "--load-model", "outer"])
    try:
        ready = lambda m: requests.get(f"{srv.http_base}/v2/models/{m}/ready", timeout=TIMEOUT).status_code
        assert [ready(m) for m in ("outer", "chain", "simple", "diamond")] == [200, 200, 200, 400]
        a, b = pair(4)
        got = infer("http", srv, "outer", {"X": a, "Y": b}, ["FOUR_X"])
        np.testing.assert_array_equal(got["FOUR_X"], 4 * a)
        control = httpclient.InferenceServerClient(srv.http_url, network_timeout=TIMEOUT)
        # Without unload_dependents only the ensemble goes...
        control.unload_model("outer")
        assert [ready(m) for m in ("outer", "chain", "simple")] == [400, 200, 200]
        # ...with it, its members go too (nested ensembles' members included).
        control.load_model("outer")
        control.load_model("diamond")
        control.unload_model("outer", unload_dependents=True)
        # simple stays: diamond still calls it.
        assert [ready(m) for m in ("outer", "chain", "simple", "diamond")] == [400, 400, 200, 200]
        control.unload_model("diamond", unload_dependents=True)
        assert ready("simple") == 400
        control.close()
    finally:
        srv.stop_and_check()


def test_a_member_reloaded_under_load_fails_no_ensemble_request(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(SIMPLE, repo / "simple")
    write_ensembles(repo)
    srv = start_server(repo, ["--model-control-mode", "explicit", "--load-model", "chain"])
    failures: list = []
    served = [0]
    stop = threading.Event()

    def load():
        a, b = pair(5)
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        inputs = []
        for name, arr in (("A", a), ("B", b)):
            inp = grpcclient.InferInput(name, [1, 16], "INT32")
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        try:
            for _ in range(100_000):
                if stop.is_set():
                    break
                try:
                    result = client.infer("chain", inputs)
                    np.testing.assert_array_equal(result.as_numpy("TWICE_A"), 2 * a)
                    served[0] += 1
                except Exception as exc:  # every failure is reported by the assertion below
                    failures.append(exc)
        finally:
            client.close()

    workers = [threading.Thread(target=load) for _ in range(4)]
    try:
        for w in workers:
            w.start()
        control = httpclient.InferenceServerClient(srv.http_url, network_timeout=TIMEOUT)
        config = repo / "simple" / "config.pbtxt"
        original = config.read_text()
        for i in range(4):
            # A changed config makes a new version of the member each time; the ensemble's
            # requests keep flowing meanwhile (the workers are busy throughout).
            config.write_text(original.replace("max_batch_size: 8", f"max_batch_size: {9 + i}"))
            control.load_model("simple")
            time.sleep(0.1)
        control.close()
    finally:
        stop.set()
        for w in workers:
            w.join(TIMEOUT)
        srv.stop_and_check()
    assert not failures, failures[:3]
    assert served[0] > 0


def test_an_ensemble_over_a_decoupled_model_streams_over_grpc(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(REPO_ROOT / "model_repository" / "repeat_int32", repo / "repeat_int32")
    (repo / "echo_int" / "1").mkdir(parents=True)
    (repo / "echo_int" / "config.pbtxt").write_text(
        'name: "echo_int"\nbackend: "identity"\nmax_batch_size: 0\n'
        f"input [ {tensor('INPUT0', dims='[ 1 ]')} ]\noutput [ {tensor('OUTPUT0', dims='[ 1 ]')} ]\n"
    )
    # Each response of repeat_int32 runs echo_int on its own and answers the client.
    ensemble(
        repo, "streamed",
        [tensor("IN", dims="[ -1 ]"), tensor("DELAY", "TYPE_UINT32", "[ -1 ]"),
         tensor("WAIT", "TYPE_UINT32", "[ 1 ]")],
        [tensor("ECHOED", dims="[ 1 ]"), tensor("INDEX", "TYPE_UINT32", "[ 1 ]")],
        [
            step("repeat_int32", {"IN": "IN", "DELAY": "DELAY", "WAIT": "WAIT"},
                 {"OUT": "VALUE", "IDX": "INDEX"}),
            step("echo_int", {"INPUT0": "VALUE"}, {"OUTPUT0": "ECHOED"}),
        ],
        max_batch=0,
    )
    srv = start_server(repo)
    received: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        values = np.array([7, -3, 12, 5], dtype=np.int32)
        arrays = (
            ("IN", values, "INT32"),
            ("DELAY", np.array([5, 5, 5, 5], dtype=np.uint32), "UINT32"),
            ("WAIT", np.array([0], dtype=np.uint32), "UINT32"),
        )

        def repeat_inputs(mod):
            inputs = []
            for name, arr, dtype in arrays:
                inp = mod.InferInput(name, list(arr.shape), dtype)
                inp.set_data_from_numpy(arr)
                inputs.append(inp)
            return inputs

        inputs = repeat_inputs(grpcclient)
        client.start_stream(callback=lambda result, error: received.put((result, error)))
        client.async_stream_infer("streamed", inputs, enable_empty_final_response=True)
        got = []
        while True:
            result, error = received.get(timeout=TIMEOUT)
            assert error is None, (error.status(), error.message())
            response = result.get_response()
            final = response.parameters["triton_final_response"].bool_param
            if response.outputs:
                got.append((int(result.as_numpy("INDEX")[0]), int(result.as_numpy("ECHOED")[0])))
            if final:
                break
        assert got == [(i, int(v)) for i, v in enumerate(values)]
        client.stop_stream()
        # Over HTTP (one response per request) the decoupled ensemble is refused clearly.
        http = httpclient.InferenceServerClient(srv.http_url, network_timeout=TIMEOUT)
        with pytest.raises(InferenceServerException) as info:
            http.infer("streamed", repeat_inputs(httpclient))
        assert info.value.status() == "400", info.value.message()
        assert "decoupled" in info.value.message()
        http.close()
    finally:
        client.close()
        srv.stop_and_check()
