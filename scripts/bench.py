#!/usr/bin/env python3
"""Throughput and latency of Ferrum over HTTP and gRPC with the official tritonclient.

Starts the server binary on free loopback ports, drives each (model, protocol, concurrency)
case for a fixed duration from client threads, and prints a table: requests/s, p50 and p99
latency in milliseconds. Traffic stays on 127.0.0.1 and every loop is bounded in time.
"""

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(binary, repository, backend_dir):
    ports = {name: free_port() for name in ("http", "grpc", "metrics")}
    log = tempfile.NamedTemporaryFile(prefix="ferrum-bench-", suffix=".log", delete=False)
    cmd = [binary, "--model-repository", repository,
           "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1",
           "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]),
           "--metrics-port", str(ports["metrics"])]
    if backend_dir:
        cmd += ["--backend-directory", backend_dir]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited early; log in {log.name}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return proc, ports, log.name
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"server not ready in 120 s; log in {log.name}")


def simple_inputs(module):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def pytorch_mlp_inputs(module):
    x = np.random.default_rng(7).standard_normal((8, 32)).astype(np.float32)
    inputs = [module.InferInput("INPUT__0", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    return inputs


CASES = {"simple": simple_inputs, "pytorch_mlp": pytorch_mlp_inputs}


def run_case(protocol, url, model, concurrency, seconds):
    module = httpclient if protocol == "http" else grpcclient
    latencies = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    errors = []

    def worker():
        client = module.InferenceServerClient(url)
        inputs = CASES[model](module)
        local = []
        try:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                client.infer(model, inputs)
                local.append(time.perf_counter() - t0)
        except Exception as exc:  # reported below, the run is then invalid
            errors.append(exc)
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    if errors:
        raise RuntimeError(f"{protocol} {model} c={concurrency}: {errors[0]}")
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
    return len(latencies) / elapsed, statistics.median(latencies) * 1000, p(0.99)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", default="dist/bin/ferrum")
    parser.add_argument("--repository", default="model_repository")
    parser.add_argument("--backend-directory", default=None)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", default="1,8")
    args = parser.parse_args()

    proc, ports, log = start_server(args.server, args.repository, args.backend_directory)
    try:
        print(f"ferrum bench: {os.cpu_count()} CPUs, {args.seconds:.0f} s per case (server log: {log})")
        print(f"{'model':<16} {'protocol':<8} {'conc':>4} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
        for model in CASES:
            for protocol in ("http", "grpc"):
                url = f"127.0.0.1:{ports[protocol]}"
                for c in (int(x) for x in args.concurrency.split(",")):
                    rps, p50, p99 = run_case(protocol, url, model, c, args.seconds)
                    print(f"{model:<16} {protocol:<8} {c:>4} {rps:>10.0f} {p50:>8.2f} {p99:>8.2f}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
