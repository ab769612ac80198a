#!/usr/bin/env python3
"""Throughput of the fil backend against XGBoost's own in-process predict, same model, same rows.

Trains an XGBoost binary classifier (100 trees, depth 6, 32 features, fixed seed), then measures
in one run:

* ``xgboost``: ``Booster.inplace_predict`` in this process (batch 1 with nthread=1; batch 1024
  with nthread=1 and with every core);
* ``core``: the plugin's forest predict (margins + sigmoid) in a release test binary
  (``cargo test --release -p ferrum-backend-fil -- --ignored bench``), no server, the same
  batch sizes and thread counts;
* ``served`` (unless ``--no-served``): the release server (``make build``'s dist/bin/ferrum
  with its dist/backends/fil) driven by ferrum-perf, the native load generator, over gRPC at
  batch 1 and batch 1024 with four requests in flight: the whole round trip. The model has
  one instance per core, one thread each (requests arrive concurrently, so instances use the
  cores better than one instance splitting each batch over threads); XGBoost's batch-1024
  reference uses every core.

Every figure is printed with its ratio to XGBoost's in-process rows/s measured in the same run.

Usage: .venv/bin/python scripts/bench_fil.py [--seconds 2] [--no-served] [--no-core]
(`make bench` runs it after scripts/bench.py.)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xgboost as xgb

ROOT = Path(__file__).resolve().parent.parent
FEATURES = 32
TREES = 100
DEPTH = 6


def train(folder: Path):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(20000, FEATURES)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    w = rng.normal(size=FEATURES)
    y = (np.nan_to_num(x) @ w + rng.normal(size=len(x)) > 0).astype(np.float32)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": DEPTH, "eta": 0.1, "seed": 7},
        xgb.DMatrix(x, label=y),
        num_boost_round=TREES,
    )
    path = folder / "xgboost.json"
    booster.save_model(str(path))
    rows = rng.normal(size=(65536, FEATURES)).astype(np.float32)
    rows[rng.random(rows.shape) < 0.05] = np.nan
    return booster, path, rows


def rate(fn, batch: int, seconds: float) -> float:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        done += batch
    return done / (time.perf_counter() - start)


def xgboost_rates(booster, rows, seconds, cores):
    out = {}
    for batch, threads in [(1, 1), (1024, 1), (1024, cores)]:
        booster.set_param({"nthread": threads})
        chunks = [rows[i : i + batch] for i in range(0, 16 * batch, batch)]
        it = iter(range(1 << 62))

        def call():
            booster.inplace_predict(chunks[next(it) % len(chunks)])

        out[(batch, threads)] = rate(call, batch, seconds)
    return out


def core_rates(model: Path, rows, seconds):
    data = Path(tempfile.mkstemp(suffix=".f32")[1])
    rows.astype("<f4").tofile(data)
    env = dict(os.environ, FIL_BENCH_MODEL=str(model), FIL_BENCH_DATA=str(data),
               FIL_BENCH_SECONDS=str(seconds))
    cmd = ["cargo", "test", "--release", "-q", "-p", "ferrum-backend-fil", "--", "--ignored",
           "bench", "--nocapture"]
    text = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    data.unlink()
    out = {}
    for m in re.finditer(r"FIL_BENCH batch=(\d+) threads=(\d+) rows_per_s=([\d.]+)", text):
        out[(int(m[1]), int(m[2]))] = float(m[3])
    return out


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served_rates(model: Path, seconds, server: Path, perf: Path, concurrency: int):
    """Rows/s through the release server (its own backends folder), driven by ferrum-perf
    over gRPC at batch 1 and 1024: the whole round trip, measured by the native load
    generator."""
    import json
    import urllib.request

    work = Path(tempfile.mkdtemp(prefix="fil-bench-"))
    version = work / "models" / "bench" / "1"
    version.mkdir(parents=True)
    shutil.copy(model, version / "xgboost.json")
    (work / "models" / "bench" / "config.pbtxt").write_text(f"""backend: "fil"
max_batch_size: 4096
input [ {{ name: "input__0" data_type: TYPE_FP32 dims: [ {FEATURES} ] }} ]
output [ {{ name: "output__0" data_type: TYPE_FP32 dims: [ 2 ] }} ]
instance_group [ {{ count: {os.cpu_count() or 1} kind: KIND_CPU }} ]
parameters [ {{ key: "threads" value: {{ string_value: "1" }} }},
             {{ key: "model_type" value: {{ string_value: "xgboost_json" }} }},
             {{ key: "output_class" value: {{ string_value: "true" }} }},
             {{ key: "predict_proba" value: {{ string_value: "true" }} }} ]
""")
    ports = {name: free_port() for name in ("http", "grpc", "metrics")}
    cmd = [str(server), "--model-repository", str(work / "models")]
    for name, port in ports.items():
        cmd += [f"--{name}-address", "127.0.0.1", f"--{name}-port", str(port)]
    log = open(work / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    out = {}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                url = f"http://127.0.0.1:{ports['http']}/v2/models/bench/ready"
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"fil bench: the server did not come up; log in {work / 'server.log'}")
            time.sleep(0.05)
        for batch in (1, 1024):
            result = work / f"perf-{batch}.json"
            run = subprocess.run(
                [str(perf), "-i", "grpc", "-u", f"127.0.0.1:{ports['grpc']}", "-m", "bench",
                 "-b", str(batch), "--concurrency-range", str(concurrency),
                 "-p", str(max(200, int(seconds * 1000 / 3))), "-r", "6", "--json", str(result)],
                capture_output=True, text=True, timeout=300)
            if run.returncode != 0:
                sys.exit(f"fil bench: ferrum-perf failed: {run.stderr.strip()[-500:]}")
            point = json.loads(result.read_text())["results"][0]
            if point["errors"]:
                sys.exit(f"fil bench: {point['errors']} failed requests at batch {batch}")
            out[batch] = point
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(work, ignore_errors=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    ap.add_argument("--no-served", action="store_true", help="skip the served measurement")
    ap.add_argument("--no-core", action="store_true", help="skip the release test binary")
    ap.add_argument("--server", default="dist/bin/ferrum", help="release server (make build)")
    ap.add_argument("--perf", default="target/release/ferrum-perf")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight when served")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        booster, model, rows = train(Path(tmp))
        ref = xgboost_rates(booster, rows, args.seconds, cores)
        core = {} if args.no_core else core_rates(model, rows, args.seconds)
        served = {} if args.no_served else served_rates(
            model, args.seconds, ROOT / args.server, ROOT / args.perf, args.concurrency)
    print(f"model: xgboost binary:logistic, {TREES} trees, depth {DEPTH}, {FEATURES} features; "
          f"{cores} cores")
    print(f"{'what':<34}{'rows/s':>14}{'xgboost rows/s':>16}{'ratio':>8}")
    for (batch, threads), r in sorted(ref.items()):
        c = core.get((batch, threads))
        if c is not None:
            print(f"{f'core batch={batch} threads={threads}':<34}{c:>14.0f}{r:>16.0f}{c / r:>8.2f}")
    for batch, point in sorted(served.items()):
        s = point["throughput"]
        r = ref[(batch, 1 if batch == 1 else cores)]
        print(f"{f'served gRPC batch={batch} c={args.concurrency}':<34}{s:>14.0f}{r:>16.0f}"
              f"{s / r:>8.2f}   (p50 {point['p50_us']:.0f} µs)")

if __name__ == "__main__":
    main()
