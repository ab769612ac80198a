"""Metrics, statistics, logging and traces through the real server: counters move by exactly
what was sent, the statistics extension agrees with /metrics, the log level changes at run
time, and sampled requests leave Triton-shaped traces (file) and OpenTelemetry spans."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from ferrum_checks import assert_simple_result, grpc_simple_infer, http_simple_infer, simple_data


def scrape(server) -> dict:
    """(family name, sorted label items) → value, parsed by prometheus_client's parser."""
    text = requests.get(f"http://{server.metrics_url}/metrics", timeout=30).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def metric(samples: dict, name: str, model: str, **labels) -> float:
    want = dict(model=model, version="1", **labels)
    key = (name, tuple(sorted(want.items())))
    # The parser exposes counters with a _total suffix; accept either spelling.
    for candidate in (key, (name + "_total", key[1])):
        if candidate in samples:
            return samples[candidate]
    raise AssertionError(f"{name}{want} not in /metrics")


def send_bad_shape(client) -> None:
    bad = httpclient.InferInput("INPUT0", [1, 3], "INT32")
    bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.int32))
    other = httpclient.InferInput("INPUT1", [1, 3], "INT32")
    other.set_data_from_numpy(np.zeros((1, 3), dtype=np.int32))
    with pytest.raises(Exception):
        client.infer("simple", [bad, other])


def test_counters_move_by_exactly_what_was_sent(server_factory):
    srv = server_factory()
    n_ok, n_bad = 7, 3
    before = scrape(srv)
    with httpclient.InferenceServerClient(srv.http_url) as client:
        for i in range(n_ok):
            in0, in1 = simple_data(seed=i)
            assert_simple_result(http_simple_infer(client, in0, in1), in0, in1)
        for _ in range(n_bad):
            send_bad_shape(client)
    after = scrape(srv)
    delta = lambda name, **l: metric(after, name, "simple", **l) - metric(before, name, "simple", **l)
    assert delta("nv_inference_request_success") == n_ok
    assert delta("nv_inference_request_failure", reason="OTHER") == n_bad
    assert delta("nv_inference_request_failure", reason="BACKEND") == 0
    assert delta("nv_inference_count") == n_ok
    assert delta("nv_inference_exec_count") == n_ok
    for name in (
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
    ):
        assert delta(name) > 0, name
    assert metric(after, "nv_inference_pending_request_count", "simple") == 0
    # Sequence counts are reported for sequence-batched models only.
    sequence_models = {"simple_sequence", "simple_dyna_sequence", "simple_string_dyna_sequence"}
    reported = {dict(key[1]).get("model") for key in after if key[0].startswith("ferrum_sequences")}
    assert reported <= sequence_models, sorted(reported)
    assert after[("nv_cpu_memory_total_bytes", ())] > 0

    # The statistics extension reads the same counters.
    with httpclient.InferenceServerClient(srv.http_url) as client:
        stats = client.get_inference_statistics("simple")["model_stats"]
    assert len(stats) == 1 and stats[0]["version"] == "1"
    inference = stats[0]["inference_stats"]
    assert inference["success"]["count"] == metric(after, "nv_inference_request_success", "simple")
    assert inference["fail"]["count"] == n_bad
    assert stats[0]["execution_count"] == metric(after, "nv_inference_exec_count", "simple")
    assert inference["queue"]["ns"] // 1000 == metric(after, "nv_inference_queue_duration_us", "simple")
    assert stats[0]["last_inference"] > 0
    with grpcclient.InferenceServerClient(srv.grpc_url) as client:
        grpc_stats = client.get_inference_statistics("simple", as_json=True)["model_stats"][0]
    assert int(grpc_stats["inference_stats"]["success"]["count"]) == n_ok


def test_batch_stats_show_the_batches_the_dynamic_batcher_formed(server_factory, model_repository_copy):
    config = model_repository_copy / "simple" / "config.pbtxt"
    config.write_text(config.read_text() + "\ndynamic_batching { max_queue_delay_microseconds: 200000 }\n")
    srv = server_factory(model_repository_copy)
    in0, in1 = simple_data(batch=1)

    def one():
        with httpclient.InferenceServerClient(srv.http_url) as c:
            assert_simple_result(http_simple_infer(c, in0, in1), in0, in1)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with httpclient.InferenceServerClient(srv.http_url) as client:
        stats = client.get_inference_statistics("simple")["model_stats"][0]
    sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}
    assert sum(size * count for size, count in sizes.items()) == 6, sizes
    assert max(sizes) > 1, f"no batch larger than 1 was formed: {sizes}"
    assert stats["execution_count"] == sum(sizes.values())
    assert stats["inference_count"] == 6
    samples = scrape(srv)
    assert metric(samples, "nv_inference_exec_count", "simple") == sum(sizes.values())


def test_stats_for_unknown_models_are_errors(server):
    with httpclient.InferenceServerClient(server.http_url) as client:
        with pytest.raises(Exception) as info:
            client.get_inference_statistics("no_such_model")
        assert "no_such_model" in str(info.value)
        everything = client.get_inference_statistics()["model_stats"]
        assert {"simple", "identity_fp32", "simple_string"} <= {s["name"] for s in everything}


def test_log_settings_change_at_run_time(server_factory, tmp_path: Path):
    log_file = tmp_path / "ferrum.log"
    srv = server_factory(extra_args=["--log-file", str(log_file)])
    with httpclient.InferenceServerClient(srv.http_url) as client:
        settings = client.get_log_settings()
        assert settings["log_verbose_level"] == 0 and settings["log_info"] is True
        in0, in1 = simple_data()
        http_simple_infer(client, in0, in1)
        assert "inference request" not in log_file.read_text()

        updated = client.update_log_settings({"log_verbose_level": 1})
        assert updated["log_verbose_level"] == 1
        http_simple_infer(client, in0, in1)
        assert "inference request" in log_file.read_text()

        client.update_log_settings({"log_verbose_level": 0, "log_format": "json"})
        http_simple_infer(client, in0, in1)
        client.update_log_settings({"log_verbose_level": 1})
        http_simple_infer(client, in0, in1)
        last = log_file.read_text().strip().splitlines()[-1]
        assert json.loads(last)["fields"]["message"] == "inference request"
        with pytest.raises(Exception):
            client.update_log_settings({"log_verbose_level": "loud"})
    with grpcclient.InferenceServerClient(srv.grpc_url) as client:
        updated = client.update_log_settings({"log_info": False}, as_json=True)
        assert updated["settings"]["log_info"]["bool_param"] is False


def test_trace_file_records_sampled_requests(server_factory, tmp_path: Path):
    trace_file = tmp_path / "trace.json"
    # The trace file is a start-up setting: clients may not choose it (as with Triton).
    srv = server_factory(extra_args=["--trace-file", str(trace_file)])
    with httpclient.InferenceServerClient(srv.http_url) as client:
        assert client.get_trace_settings()["trace_level"] == ["OFF"]
        client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1"})
        in0, in1 = simple_data()
        for _ in range(3):
            http_simple_infer(client, in0, in1)
        client.update_trace_settings(settings={"trace_level": ["OFF"]})
        http_simple_infer(client, in0, in1)
        per_model = client.get_trace_settings(model_name="simple")
        assert per_model["trace_level"] == ["OFF"]
    entries = json.loads(trace_file.read_text())
    names = [e for e in entries if "model_name" in e]
    stamps = [e for e in entries if "timestamps" in e]
    assert len(names) == 3 and all(e["model_name"] == "simple" and e["model_version"] == 1 for e in names)
    for trace in stamps:
        order = [t["name"] for t in trace["timestamps"]]
        assert order[0] == "REQUEST_START" and order[-1] == "REQUEST_END"
        assert {"QUEUE_START", "COMPUTE_START", "COMPUTE_END"} <= set(order)
        ns = [t["ns"] for t in trace["timestamps"]]
        assert ns == sorted(ns), trace
    with grpcclient.InferenceServerClient(srv.grpc_url) as client:
        settings = client.get_trace_settings(as_json=True)["settings"]
        assert settings["trace_level"]["value"] == ["OFF"]


class _Collector(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _Collector.received.append((self.path, json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_opentelemetry_export(server_factory):
    collector = http.server.HTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
    try:
        srv = server_factory(
            extra_args=[
                "--trace-config", "mode=opentelemetry",
                "--trace-config", f"opentelemetry,url={url}",
                "--trace-config", "level=TIMESTAMPS",
                "--trace-config", "rate=1",
            ]
        )
        with grpcclient.InferenceServerClient(srv.grpc_url) as client:
            in0, in1 = simple_data()
            assert_simple_result(grpc_simple_infer(client, in0, in1), in0, in1)
        deadline = time.monotonic() + 30
        while not _Collector.received and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _Collector.received, "no span reached the collector"
        path, body = _Collector.received[0]
        assert path == "/v1/traces"
        span = body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        attributes = {a["key"]: a["value"] for a in span["attributes"]}
        assert attributes["triton.model_name"]["stringValue"] == "simple"
        assert int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"])
        assert [e["name"] for e in span["events"]][0] == "REQUEST_START"
    finally:
        collector.shutdown()


def test_grafana_dashboard_reads_metrics_the_server_exports(server):
    import re

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text())
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\bnv_[a-z_]+", target["expr"]))
    exported = {name for name, _ in scrape(server)}
    exported |= {n[: -len("_total")] for n in exported if n.endswith("_total")}
    gpu_only = {n for n in used if n.startswith(("nv_gpu_", "nv_energy"))}
    missing = used - gpu_only - exported
    assert not missing, f"the dashboard queries metrics the server does not export: {missing}"
    assert len(used - gpu_only) >= 8
