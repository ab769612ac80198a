#!/usr/bin/env python3
"""Throughput and latency of Ferrum with the official tritonclient, beside the raw runtime.

Starts the server binary on free loopback ports over a temporary copy of the example models
(each MLP twice: as shipped, and with dynamic batching on), drives every (model, batching,
protocol, concurrency) case for a fixed time from client threads, measures the same network
run in-process by the runtime's own Python API, and prints a Markdown table with requests/s,
p50/p99 latency and the ratio served/raw. Traffic stays on 127.0.0.1; every loop is bounded.
"""

import argparse
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

ROOT = Path(__file__).resolve().parent.parent
# Model name → (runtime for the raw measurement, model file inside the version folder).
MLPS = {
    "onnx_mlp": ("onnxruntime", "model.onnx"),
    "openvino_mlp": ("openvino", "model.xml"),
    "pytorch_mlp": ("torch", "model.pt"),
}
BATCHING = "\ndynamic_batching { max_queue_delay_microseconds: 200 }\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_repository(source: Path, target: Path) -> list:
    """Copies simple and the MLPs, adding a `<mlp>_batched` twin with dynamic batching."""
    models = []
    for name in ["simple", *MLPS]:
        if not (source / name).is_dir():
            continue
        shutil.copytree(source / name, target / name)
        models.append(name)
        if name in MLPS:
            twin = target / f"{name}_batched"
            shutil.copytree(source / name, twin)
            config = (twin / "config.pbtxt").read_text().replace(f'"{name}"', f'"{name}_batched"')
            (twin / "config.pbtxt").write_text(config + BATCHING)
    return models


def start_server(binary, repository, backend_dir):
    ports = {name: free_port() for name in ("http", "grpc", "metrics")}
    log = tempfile.NamedTemporaryFile(prefix="ferrum-bench-", suffix=".log", delete=False)
    cmd = [binary, "--model-repository", str(repository),
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


def inputs_for(model, module):
    if model == "simple":
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(a)
        return inputs
    if model.startswith("pytorch_mlp"):
        x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(1, 32)
        inputs = [module.InferInput("INPUT__0", [1, 32], "FP32")]
    else:
        x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)
        inputs = [module.InferInput("INPUT0", [1, 16], "FP32")]
    inputs[0].set_data_from_numpy(x)
    return inputs


def run_case(protocol, url, model, concurrency, seconds):
    module = httpclient if protocol == "http" else grpcclient
    latencies, errors = [], []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker():
        client = module.InferenceServerClient(url)
        inputs = inputs_for(model, module)
        local = []
        try:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                client.infer(model, inputs)
                local.append(time.perf_counter() - t0)
        except Exception as exc:  # the run is invalid; reported below
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
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
    return len(latencies) / elapsed, pick(0.5), pick(0.99)


def raw_throughput(runtime, path: Path, seconds: float):
    """Batch-1 inferences per second of the runtime's own Python API, in this process."""
    features = 32 if runtime == "torch" else 16  # pytorch_mlp takes 32 features
    x = np.linspace(-1, 1, features, dtype=np.float32).reshape(1, features)
    try:
        if runtime == "onnxruntime":
            import onnxruntime as ort
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            run = lambda: session.run(None, {name: x})
        elif runtime == "openvino":
            import openvino as ov
            compiled = ov.Core().compile_model(str(path), "CPU")
            request = compiled.create_infer_request()
            run = lambda: request.infer({0: x})
        else:
            import torch
            module = torch.jit.load(str(path))
            tx = torch.from_numpy(x)
            run = lambda: module(tx)
    except Exception as exc:  # runtime not installed in this environment
        return None, f"{runtime} unavailable: {exc}"
    n, stop_at = 0, time.monotonic() + seconds
    start = time.monotonic()
    while time.monotonic() < stop_at:
        run()
        n += 1
    return n / (time.monotonic() - start), None


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", default="dist/bin/ferrum")
    parser.add_argument("--repository", default="model_repository")
    parser.add_argument("--backend-directory", default=None)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--protocols", default="http,grpc")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ferrum-bench-repo-"))
    models = prepare_repository(Path(args.repository), work)
    proc, ports, log = start_server(args.server, work, args.backend_directory)
    levels = [int(c) for c in args.concurrency.split(",")]
    try:
        cpu = platform.processor() or platform.machine()
        print(f"# ferrum bench: {os.cpu_count()} CPUs ({cpu}), {args.seconds:.0f} s per case, "
              f"client and server on the same machine (server log: {log})\n")
        raw = {}
        for name in models:
            if name in MLPS:
                runtime, file = MLPS[name]
                raw[name] = raw_throughput(runtime, work / name / "1" / file, args.seconds)
        print("| model | batching | protocol | concurrency | req/s | p50 ms | p99 ms | served/raw |")
        print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for name in models:
            variants = [(name, "off")] + ([(f"{name}_batched", "on")] if name in MLPS else [])
            for served, batching in variants:
                for protocol in args.protocols.split(","):
                    url = f"127.0.0.1:{ports[protocol]}"
                    for c in levels:
                        rps, p50, p99 = run_case(protocol, url, served, c, args.seconds)
                        base = raw.get(name, (None, None))[0]
                        ratio = f"{rps / base:.2f}" if base else "n/a"
                        print(f"| {name} | {batching} | {protocol} | {c} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {ratio} |",
                              flush=True)
        print()
        for name, (rps, problem) in raw.items():
            runtime = MLPS[name][0]
            print(f"raw in-process {runtime} ({name}, batch 1, one thread): "
                  + (f"{rps:.0f} inferences/s" if rps else problem))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
