"""ferrum-analyze (tools/analyze/ferrum-analyze, docs/analyzer.md): a short sweep of the
example ONNX model on a server the tool starts, measured with ferrum-perf. The chosen
configuration meets the latency budget it was given, the report draws one curve per
configuration measured, the written config.pbtxt loads and serves, and an interrupted sweep
still reports what it measured.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from ferrum_harness import REPO_ROOT, backend_dir, ferrum_bin, start_server

TOOL = REPO_ROOT / "tools" / "analyze" / "ferrum-analyze"
PERF = REPO_ROOT / "target" / "debug" / "ferrum-perf"
BUDGET_MS = 250.0


def analyze(out: Path, *extra: str) -> list:
    return [
        sys.executable, str(TOOL), "-m", "onnx_mlp",
        "--repository", str(REPO_ROOT / "model_repository"),
        "--server", str(ferrum_bin()), "--backend-directory", str(backend_dir()),
        "--perf", str(PERF), "--output-dir", str(out),
        "--instances", "1,2", "--max-batch-sizes", "8", "--queue-delays-us", "200",
        "--concurrency", "1,2", "--window-ms", "200", "--max-trials", "2", *extra,
    ]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    if not PERF.exists():
        pytest.skip(f"no ferrum-perf at {PERF} (make test-build builds it)")
    out = tmp_path_factory.mktemp("analysis")
    run = subprocess.run(analyze(out, "--p99-budget-ms", str(BUDGET_MS)),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    return out, run


def rows(out: Path) -> list:
    with open(out / "points.csv") as f:
        return list(csv.DictReader(f))


def test_the_chosen_configuration_meets_the_budget(sweep):
    out, run = sweep
    points = rows(out)
    chosen = [p for p in points if p["chosen"] == "1"]
    assert len(chosen) == 1, points
    assert float(chosen[0]["p99_ms"]) <= BUDGET_MS
    assert chosen[0]["meets_constraints"] == "1"
    # Nothing that meets the budget does clearly better than the choice.
    good = [float(p["throughput"]) for p in points if p["meets_constraints"] == "1"]
    assert float(chosen[0]["throughput"]) >= max(good) * 0.98
    assert "best:" in run.stdout and "Pareto front:" in run.stdout
    assert any(p["pareto"] == "1" for p in points)


def test_the_report_draws_one_curve_per_configuration(sweep):
    out, _ = sweep
    configurations = {(p["instances"], p["max_batch_size"], p["dynamic_batching"], p["queue_delay_us"])
                      for p in rows(out)}
    assert len(configurations) == 4  # 1 or 2 instances, dynamic batching off or on
    page = (out / "report.html").read_text()
    curves = re.findall(r'<polyline class="curve" data-candidate="([^"]+)"', page)
    assert len(curves) == len(configurations) == len(set(curves)), curves
    # Self-contained: nothing is fetched from elsewhere.
    assert not re.search(r'(src|href)="https?://', page)
    assert page.count("<svg") == 3 and (out / "latency.svg").exists()


def test_the_written_config_loads_and_serves(sweep, tmp_path):
    out, _ = sweep
    chosen = [p for p in rows(out) if p["chosen"] == "1"][0]
    repo = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "model_repository" / "onnx_mlp", repo / "onnx_mlp")
    shutil.copy(out / "config.pbtxt", repo / "onnx_mlp" / "config.pbtxt")
    srv = start_server(repo)
    try:
        with httpclient.InferenceServerClient(srv.http_url) as client:
            assert client.is_model_ready("onnx_mlp")
            config = client.get_model_config("onnx_mlp")
            assert config["instance_group"][0]["count"] == int(chosen["instances"])
            assert config["max_batch_size"] == int(chosen["max_batch_size"])
            assert ("dynamic_batching" in config) == (chosen["dynamic_batching"] == "1")
            x = np.ones((2, 16), dtype=np.float32)
            inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            assert client.infer("onnx_mlp", [inp]).as_numpy("OUTPUT0").shape == (2, 4)
    finally:
        srv.stop_and_check()


def test_an_impossible_constraint_is_reported_not_chosen(tmp_path):
    if not PERF.exists():
        pytest.skip(f"no ferrum-perf at {PERF}")
    cmd = analyze(tmp_path, "--min-throughput", "1e12")
    cmd[cmd.index("--instances") + 1] = "1"
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "no measured configuration meets the constraints" in run.stdout
    assert "No measured configuration meets the constraints" in (tmp_path / "report.html").read_text()
    assert not (tmp_path / "config.pbtxt").exists()


def test_an_interrupted_sweep_reports_what_it_measured(tmp_path):
    if not PERF.exists():
        pytest.skip(f"no ferrum-perf at {PERF}")
    cmd = analyze(tmp_path, "--concurrency", "1,2,4,8", "--mode", "exhaustive")
    progress = tmp_path / "progress.txt"
    with open(progress, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        # Wait for the first measured point on the progress line, then press Ctrl-C.
        deadline = time.monotonic() + 300
        while "c=1:" not in progress.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    seen, stderr = progress.read_text(), ""
    assert "interrupted" in seen + stderr, seen + stderr
    points = rows(tmp_path)
    assert 1 <= len(points) < 16, points
    assert (tmp_path / "report.html").exists()
