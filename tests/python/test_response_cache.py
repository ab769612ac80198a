"""The response cache (``--cache-config local,size=<bytes>``, ``response_cache { enable:
true }``; docs/scheduling.md): repeated identical requests are answered from the cache (the
backend runs once; statistics and metrics agree), different inputs miss, the byte budget
evicts the least recently used, and models the cache must not serve (decoupled) say so.
Observed with the ``testing`` fixture backend, which records every request it runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from ferrum_harness import backends_with_testing, start_server

TIMEOUT = 60


def write_model(repo: Path, name: str, counts: Path, extra: str = ""):
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "testing"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        f'parameters {{ key: "count_file" value: {{ string_value: "{counts}" }} }}\n'
        f"response_cache {{ enable: true }}\n{extra}\n"
    )


def runs(counts: Path) -> int:
    return len(counts.read_text().splitlines()) if counts.exists() else 0


def infer(client, module, x, model="cached"):
    inp = module.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("OUTPUT0")


def cache_metrics(srv, model="cached"):
    text = requests.get(f"http://{srv.metrics_url}/metrics", timeout=30).text
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("nv_cache_") and s.labels.get("model") == model:
                found[s.name.removesuffix("_total")] = s.value
    return found


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    return backends_with_testing(tmp_path_factory.mktemp("backends"))


@pytest.fixture
def cached(tmp_path, backends):
    repo, counts = tmp_path / "repo", tmp_path / "counts.txt"
    write_model(repo, "cached", counts)
    srv = start_server(repo, ["--cache-config", "local,size=1048576"], backend_directory=backends)
    yield srv, counts
    srv.stop_and_check()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_repeated_requests_hit_and_the_backend_runs_once(cached, protocol):
    srv, counts = cached
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(srv.http_url if protocol == "http" else srv.grpc_url)
    x = np.arange(6, dtype=np.float32).reshape(1, 6)
    for _ in range(5):
        np.testing.assert_array_equal(infer(client, module, x), x)
    assert runs(counts) == 1
    # Different inputs (values, then shape) miss and run.
    np.testing.assert_array_equal(infer(client, module, x + 1), x + 1)
    np.testing.assert_array_equal(infer(client, module, x[:, :3]), x[:, :3])
    assert runs(counts) == 3
    client.close()
    with httpclient.InferenceServerClient(srv.http_url) as admin:
        stats = admin.get_inference_statistics("cached")["model_stats"][0]
    inference = stats["inference_stats"]
    assert int(inference["cache_hit"]["count"]) == 4
    assert int(inference["cache_miss"]["count"]) == 3
    assert int(inference["success"]["count"]) == 7
    assert int(stats["execution_count"]) == 3
    metrics = cache_metrics(srv)
    assert metrics["nv_cache_num_hits_per_model"] == 4
    assert metrics["nv_cache_num_misses_per_model"] == 3
    assert metrics["nv_cache_hit_duration_per_model"] >= 0
    assert metrics["nv_cache_miss_duration_per_model"] >= 0


def test_the_byte_budget_evicts_the_least_recently_used(tmp_path, backends):
    repo, counts = tmp_path / "repo", tmp_path / "counts.txt"
    write_model(repo, "cached", counts)
    # Room for about three 64 KiB responses.
    srv = start_server(repo, ["--cache-config", "local,size=220000"], backend_directory=backends)
    try:
        with httpclient.InferenceServerClient(srv.http_url) as client:
            big = [np.full((1, 16384), float(k), dtype=np.float32) for k in range(4)]
            for x in big[:3]:
                infer(client, httpclient, x)
            assert runs(counts) == 3
            infer(client, httpclient, big[0])  # a hit, and now the most recently used
            assert runs(counts) == 3
            infer(client, httpclient, big[3])  # no room: the oldest (big[1]) goes
            assert runs(counts) == 4
            infer(client, httpclient, big[0])
            infer(client, httpclient, big[2])
            assert runs(counts) == 4, "big[0] and big[2] should still be cached"
            infer(client, httpclient, big[1])
            assert runs(counts) == 5, "big[1] should have been evicted"
    finally:
        srv.stop_and_check()


def test_without_a_server_cache_or_for_a_decoupled_model_nothing_is_cached(tmp_path, backends):
    repo, counts = tmp_path / "repo", tmp_path / "counts.txt"
    write_model(repo, "cached", counts)
    srv = start_server(repo, backend_directory=backends, log_dir=tmp_path / "logs")
    try:
        with httpclient.InferenceServerClient(srv.http_url) as client:
            x = np.ones((1, 2), dtype=np.float32)
            infer(client, httpclient, x)
            infer(client, httpclient, x)
        assert runs(counts) == 2
        logs = srv.stdout_text() + srv.stderr_text()
        assert "response_cache is enabled but not used: the server has no cache" in logs
        assert cache_metrics(srv) == {}
    finally:
        srv.stop_and_check()


def test_a_bad_cache_config_stops_the_server_with_a_clear_message(tmp_path, backends):
    repo = tmp_path / "repo"
    repo.mkdir()
    srv = start_server(repo, ["--cache-config", "redis,host=localhost"], backend_directory=backends,
                       wait_ready=False)
    code = srv.process.wait(timeout=TIMEOUT)
    assert code != 0
    assert "the cache kind is 'redis'" in srv.stdout_text() + srv.stderr_text()
