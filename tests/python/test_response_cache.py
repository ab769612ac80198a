"""The response cache (``--cache-config local,size=<bytes>`` or ``--cache-config
redis,host=..,port=..``, ``response_cache { enable: true }``; docs/scheduling.md): repeated
identical requests are answered from the cache (the backend runs once; statistics and metrics
agree), different inputs miss, the byte budget evicts the least recently used, and models the
cache must not serve (decoupled) say so. The Redis cache runs against a real ``redis-server``
(Debian's, installed by scripts/setup-test-tools.sh) started here: entries are shared between
servers, expire as configured, and a Redis that stops never fails a request.
Observed with the ``testing`` fixture backend, which records every request it runs.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from ferrum_harness import backends_with_testing, free_port, start_server

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
    for config, message in [
        (["redis,host=localhost"], "give the port"),
        (["memcached,size=1"], "the cache kind is 'memcached'"),
        (["local,size=1", "redis,host=h,port=1"], "one cache at a time"),
    ]:
        args = [a for c in config for a in ("--cache-config", c)]
        srv = start_server(repo, args, backend_directory=backends, wait_ready=False)
        code = srv.process.wait(timeout=TIMEOUT)
        assert code != 0
        assert message in srv.stdout_text() + srv.stderr_text()


# ---------------------------------------------------------------------------------------------
# Redis


class Redis:
    """A real redis-server on a free loopback port, with no persistence."""

    def __init__(self, workdir: Path, password: str | None = None, port: int | None = None):
        self.port = port or free_port()
        self.password = password
        self.workdir = workdir
        self.process = None
        self.start()

    def start(self):
        exe = shutil.which("redis-server")
        assert exe, "redis-server is missing: run scripts/setup-test-tools.sh"
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                if self.command("PING") in ("PONG", "NOAUTH Authentication required."):
                    return
            except OSError:
                pass
            assert self.process.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=TIMEOUT)

    def command(self, *args, db: int = 0):
        """Runs one command (after AUTH/SELECT); returns the decoded reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            f = s.makefile("rwb")
            prefix = []
            if self.password:
                prefix.append(("AUTH", self.password))
            if db:
                prefix.append(("SELECT", str(db)))
            for cmd in prefix + [args]:
                f.write(f"*{len(cmd)}\r\n".encode())
                for a in cmd:
                    a = str(a).encode()
                    f.write(b"$%d\r\n%s\r\n" % (len(a), a))
            f.flush()
            reply = None
            for _ in range(len(prefix) + 1):
                reply = _read_reply(f)
            return reply


def _read_reply(f):
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:].decode()
    if kind in (b"+", b"-"):
        return rest
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if kind == b"*":
        return [_read_reply(f) for _ in range(int(rest))]
    raise AssertionError(f"unexpected reply {line!r}")


def entry_keys(redis: Redis, db: int = 0):
    return sorted(k.decode() for k in redis.command("KEYS", "ferrum:response:*", db=db))


def wait_for(predicate, what):
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def redis(tmp_path):
    server = Redis(tmp_path)
    yield server
    if server.process.poll() is None:
        server.stop()


def redis_args(redis: Redis, *extra: str):
    args = ["--cache-config", "redis,host=127.0.0.1", "--cache-config", f"redis,port={redis.port}"]
    for e in extra:
        args += ["--cache-config", f"redis,{e}"]
    return args


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_redis_cache_hits_are_shared_between_servers(tmp_path, backends, redis, protocol):
    repo, counts = tmp_path / "repo", tmp_path / "counts.txt"
    write_model(repo, "cached", counts)
    module = httpclient if protocol == "http" else grpcclient
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    first = start_server(repo, redis_args(redis), backend_directory=backends)
    try:
        client = module.InferenceServerClient(
            first.http_url if protocol == "http" else first.grpc_url)
        for _ in range(4):
            np.testing.assert_array_equal(infer(client, module, x), x)
        assert runs(counts) == 1
        np.testing.assert_array_equal(infer(client, module, x * 2), x * 2)
        assert runs(counts) == 2
        client.close()
        assert len(entry_keys(redis)) == 2
        metrics = cache_metrics(first)
        assert metrics["nv_cache_num_hits_per_model"] == 3
        assert metrics["nv_cache_num_misses_per_model"] == 2
        with httpclient.InferenceServerClient(first.http_url) as admin:
            inference = admin.get_inference_statistics("cached")["model_stats"][0][
                "inference_stats"]
        assert int(inference["cache_hit"]["count"]) == 3
        assert int(inference["cache_miss"]["count"]) == 2
    finally:
        first.stop_and_check()
    # A second server on the same Redis answers from the entries the first one stored.
    second = start_server(repo, redis_args(redis), backend_directory=backends)
    try:
        with httpclient.InferenceServerClient(second.http_url) as client:
            np.testing.assert_array_equal(infer(client, httpclient, x), x)
            np.testing.assert_array_equal(infer(client, httpclient, x * 2), x * 2)
        assert runs(counts) == 2, "the second server should have hit the shared entries"
        assert cache_metrics(second)["nv_cache_num_hits_per_model"] == 2
    finally:
        second.stop_and_check()


def test_redis_entries_expire_and_use_the_password_and_database(tmp_path, backends):
    redis = Redis(tmp_path, password="s3cret")
    repo, counts = tmp_path / "repo", tmp_path / "counts.txt"
    write_model(repo, "cached", counts)
    srv = start_server(repo, redis_args(redis, "password=s3cret", "db=3", "ttl=1"),
                       backend_directory=backends)
    try:
        with httpclient.InferenceServerClient(srv.http_url) as client:
            x = np.ones((1, 3), dtype=np.float32)
            infer(client, httpclient, x)
            keys = entry_keys(redis, db=3)
            assert len(keys) == 1 and entry_keys(redis, db=0) == []
            assert 0 < redis.command("TTL", keys[0], db=3) <= 1
            # Redis drops the entry when its second is up; the next request runs again.
            wait_for(lambda: entry_keys(redis, db=3) == [], "the entry to expire")
            infer(client, httpclient, x)
            assert runs(counts) == 2
    finally:
        srv.stop_and_check()
        redis.stop()


def test_a_redis_that_stops_or_refuses_never_fails_a_request(tmp_path, backends, redis):
    repo, counts = tmp_path / "repo", tmp_path / "counts.txt"
    write_model(repo, "cached", counts)
    srv = start_server(repo, redis_args(redis, "socket_timeout=200"), backend_directory=backends,
                       log_dir=tmp_path / "logs")
    try:
        with httpclient.InferenceServerClient(srv.http_url) as client:
            x = np.full((1, 5), 7.0, dtype=np.float32)
            infer(client, httpclient, x)
            infer(client, httpclient, x)
            assert runs(counts) == 1
            redis.stop()
            # Every request still succeeds; without the cache the backend runs each time.
            for k in range(5):
                np.testing.assert_array_equal(infer(client, httpclient, x), x)
            assert runs(counts) == 6
            logs = srv.stdout_text() + srv.stderr_text()
            assert "requests run without the cache until it answers again" in logs
            # Redis comes back (empty): the cache fills and answers again.
            redis.start()
            hits_before = cache_metrics(srv)["nv_cache_num_hits_per_model"]

            def hits_again():
                infer(client, httpclient, x)
                return cache_metrics(srv)["nv_cache_num_hits_per_model"] > hits_before

            wait_for(hits_again, "the cache to answer again")
    finally:
        srv.stop_and_check()

    # A wrong password: the server starts, warns, and serves without the cache.
    (tmp_path / "locked").mkdir()
    locked = Redis(tmp_path / "locked", password="right")
    srv = start_server(repo, redis_args(locked, "password=wrong"), backend_directory=backends,
                       log_dir=tmp_path / "logs2")
    try:
        with httpclient.InferenceServerClient(srv.http_url) as client:
            before = runs(counts)
            for _ in range(3):
                infer(client, httpclient, x)
            assert runs(counts) == before + 3
        logs = srv.stdout_text() + srv.stderr_text()
        assert "Redis does not answer yet" in logs and "WRONGPASS" in logs
    finally:
        srv.stop_and_check()
        locked.stop()
