"""Model warmup (the config's ``model_warmup``, docs/model-management.md): every sample runs
``count`` times on every instance before the version is READY, and before a reload under
load switches traffic to the new version; a bad sample fails the load and says which.
Observed by the ``testing`` fixture backend, which appends each request id it executes to
its ``count_file``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from ferrum_harness import backends_with_testing, start_server

TIMEOUT = 60
EXPLICIT = ["--model-control-mode", "explicit"]


def write_model(repo: Path, name: str, count_file: Path, warmup: str, extra: str = "",
                tag: str = "v1", sleep_ms: int = 0):
    version = repo / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (version / "tag.txt").write_text(tag)
    (version / "tag_check.txt").write_text(tag)
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "testing"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] },\n'
        '         { name: "TAG" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
        'parameters { key: "mode" value: { string_value: "tag" } }\n'
        f'parameters {{ key: "count_file" value: {{ string_value: "{count_file}" }} }}\n'
        f'parameters {{ key: "sleep_ms" value: {{ string_value: "{sleep_ms}" }} }}\n'
        f"{extra}\n{warmup}\n"
    )


def warmup_lines(path: Path) -> list:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line.startswith("warmup-")]


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    return backends_with_testing(tmp_path_factory.mktemp("backends"))


ZERO = ('model_warmup [ { name: "zeros" batch_size: 2 count: 3 inputs { key: "INPUT0" '
        'value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } } ]')


def test_warmup_runs_count_times_on_every_instance_before_ready(tmp_path, backends):
    repo, counts = tmp_path / "repo", tmp_path / "counts.txt"
    write_model(repo, "warm", counts, ZERO, "instance_group [ { count: 2 kind: KIND_CPU } ]")
    srv = start_server(repo, EXPLICIT, backend_directory=backends)
    try:
        with httpclient.InferenceServerClient(srv.http_url) as client:
            assert not client.is_model_ready("warm")
            assert warmup_lines(counts) == []
            client.load_model("warm")
            # The load returned, so the model is READY: all the warmup already ran,
            # 3 times on each of the 2 instances, before any client request.
            assert client.is_model_ready("warm")
            assert warmup_lines(counts) == ["warmup-zeros"] * 6
            x = np.ones((1, 3), dtype=np.float32)
            inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            client.infer("warm", [inp])
            assert len(counts.read_text().splitlines()) == 7
    finally:
        srv.stop_and_check()


def test_warmup_data_files_and_random_data(tmp_path, backends):
    repo, counts = tmp_path / "repo", tmp_path / "counts.txt"
    warmup = ('model_warmup [ { name: "from_file" batch_size: 1 inputs { key: "INPUT0" '
              'value: { data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "input0.bin" } } },'
              ' { name: "random" batch_size: 8 inputs { key: "INPUT0" '
              'value: { data_type: TYPE_FP32 dims: [ 16 ] random_data: true } } } ]')
    write_model(repo, "warm", counts, warmup)
    (repo / "warm" / "warmup").mkdir()
    (repo / "warm" / "warmup" / "input0.bin").write_bytes(np.arange(4, dtype="<f4").tobytes())
    srv = start_server(repo, backend_directory=backends)
    try:
        with httpclient.InferenceServerClient(srv.http_url) as client:
            assert client.is_model_ready("warm")
        assert warmup_lines(counts) == ["warmup-from_file", "warmup-random"]
    finally:
        srv.stop_and_check()


@pytest.mark.parametrize(
    "warmup, says",
    [
        ('model_warmup [ { name: "short_file" batch_size: 1 inputs { key: "INPUT0" value: '
         '{ data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "missing.bin" } } } ]',
         "warmup sample 'short_file' failed: input 'INPUT0': cannot read"),
        ('model_warmup [ { name: "wrong_type" batch_size: 1 inputs { key: "INPUT0" value: '
         '{ data_type: TYPE_INT32 dims: [ 4 ] zero_data: true } } } ]',
         "warmup sample 'wrong_type' failed"),
        ('model_warmup [ { name: "too_big" batch_size: 64 inputs { key: "INPUT0" value: '
         '{ data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } } ]',
         "warmup sample 'too_big' failed: batch_size 64 is over the model's max_batch_size 8"),
        ('model_warmup [ { name: "missing_input" batch_size: 1 } ]',
         "warmup sample 'missing_input' failed"),
    ],
)
def test_a_bad_warmup_sample_fails_the_load_clearly(tmp_path, backends, warmup, says):
    repo, counts = tmp_path / "repo", tmp_path / "counts.txt"
    write_model(repo, "warm", counts, warmup)
    srv = start_server(repo, EXPLICIT, backend_directory=backends)
    try:
        with httpclient.InferenceServerClient(srv.http_url) as client:
            with pytest.raises(InferenceServerException) as info:
                client.load_model("warm")
            assert says in info.value.message(), info.value.message()
            assert not client.is_model_ready("warm")
            index = {m["name"]: m for m in client.get_model_repository_index()}
            assert index["warm"]["state"] == "UNAVAILABLE"
            assert says in index["warm"]["reason"], index["warm"]
            assert client.is_server_live()
    finally:
        srv.stop_and_check()


def test_a_reload_under_load_switches_only_after_warmup(tmp_path, backends):
    """Version 2's warmup is slow (300 ms per execute, 2 rounds): requests keep being
    answered by version 1 the whole time, none fails, and the first answer from version 2
    comes after its last warmup request ran."""
    repo, counts = tmp_path / "repo", tmp_path / "counts.txt"
    warmup = ('model_warmup [ { name: "slow" batch_size: 1 count: 2 inputs { key: "INPUT0" '
              'value: { data_type: TYPE_FP32 dims: [ 2 ] zero_data: true } } } ]')
    write_model(repo, "warm", counts, warmup, tag="v1")
    srv = start_server(repo, EXPLICIT + ["--load-model", "warm"], backend_directory=backends)
    stop = threading.Event()
    answers, failures = [], []

    def client_loop():
        client = httpclient.InferenceServerClient(srv.http_url)
        x = np.ones((1, 2), dtype=np.float32)
        inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                tag = client.infer("warm", [inp]).as_numpy("TAG").reshape(-1)[0].decode()
                answers.append((time.monotonic(), tag))
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and asserted on
                failures.append(str(exc))
        client.close()

    loader = threading.Thread(target=client_loop)
    loader.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while not answers and not failures and time.monotonic() < deadline:
            time.sleep(0.01)
        assert answers, failures[:3]
        # A new version of the model: new files, a slower backend.
        write_model(repo, "warm", counts, warmup, tag="v2", sleep_ms=300)
        before = len(warmup_lines(counts))
        with httpclient.InferenceServerClient(srv.http_url, network_timeout=TIMEOUT) as admin:
            admin.load_model("warm")
        warmed_at = time.monotonic()
        assert len(warmup_lines(counts)) == before + 2
        deadline = time.monotonic() + TIMEOUT
        while not any(tag == "v2" for _, tag in answers) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        loader.join(TIMEOUT)
        srv.stop_and_check()
    assert not failures, failures[:3]
    first_v2 = min(t for t, tag in answers if tag == "v2")
    # Version 1 answered while version 2 warmed up (600 ms at least), and version 2 only
    # after its warmup: the load call returned once warmup was done.
    assert any(tag == "v1" for _, tag in answers)
    assert first_v2 >= warmed_at - 0.35, (first_v2, warmed_at)
