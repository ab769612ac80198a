#!/usr/bin/env python3
"""Throughput and latency of Ferrum, each figure beside a floor measured in the same run.

Starts the server binary on free loopback ports over a temporary copy of the example models
(each MLP three times: as shipped, with dynamic batching on, and with Ferrum's adaptive
batching on top) and drives every (model, batching, protocol, concurrency) case with
ferrum-perf, the native load generator (tools/perf), until its measurement windows are stable.
Then a soak: `simple` over HTTP at concurrency 64 for --soak-seconds, with the server's
resident memory sampled throughout, to show that memory stays flat. Floors, measured in the same run: the server's own no-op
request (`GET /v2/health/ready`, gRPC ServerReady) at the same protocol and concurrency, and
the network run in-process by the runtime's own Python API at batch 1 and batch 32, and the
Rust identity backend for the Python identity model. The
Markdown table gives every rate as a ratio to its floor, so it reads the same on any machine.
Traffic stays on 127.0.0.1; every loop is bounded.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# Model name → (runtime for the raw measurement, model file inside the version folder).
MLPS = {
    "onnx_mlp": ("onnxruntime", "model.onnx"),
    "openvino_mlp": ("openvino", "model.xml"),
    "pytorch_mlp": ("torch", "model.pt"),
}
BATCHING = "\ndynamic_batching { max_queue_delay_microseconds: 200 }\n"
ADAPTIVE = 'parameters { key: "ferrum.adaptive_batching" value: { string_value: "true" } }\n'
ISOLATED = 'parameters { key: "ferrum.isolation" value: { string_value: "process" } }\n'
# Models measured again with their instances in a child process (docs/reliability.md).
ISOLATED_MODELS = ["simple", "onnx_mlp"]
# Batching variant → (model name suffix, config text added).
VARIANTS = {"off": ("", ""), "on": ("_batched", BATCHING), "adaptive": ("_adaptive", BATCHING + ADAPTIVE)}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_repository(source: Path, target: Path) -> list:
    """Copies simple and the MLPs, adding `<mlp>_batched` (dynamic batching) and
    `<mlp>_adaptive` (adaptive batching) twins."""
    models = []
    for name in ["simple", *MLPS]:
        if not (source / name).is_dir():
            continue
        shutil.copytree(source / name, target / name)
        models.append(name)
        if name in ISOLATED_MODELS:
            twin = target / f"{name}_isolated"
            shutil.copytree(source / name, twin)
            config = (twin / "config.pbtxt").read_text().replace(f'"{name}"', f'"{name}_isolated"')
            (twin / "config.pbtxt").write_text(config + ISOLATED)
        if name in MLPS:
            for suffix, extra in VARIANTS.values():
                if not suffix:
                    continue
                twin = target / f"{name}{suffix}"
                shutil.copytree(source / name, twin)
                config = (twin / "config.pbtxt").read_text().replace(f'"{name}"', f'"{name}{suffix}"')
                (twin / "config.pbtxt").write_text(config + extra)
    return models


# The python backend (docs/backends/python.md): an identity model in Python beside the Rust
# identity backend, in an isolated child process (the default) and in the server's own
# interpreter.
PYTHON_IDENTITY = '''import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())]
            )
            for r in requests
        ]
'''
PYTHON_MODELS = {"python_identity": "process", "python_identity_inproc": "none"}
# The identity models' request: FP32 [1, 16].
IDENTITY_SHAPE = ("--shape", "INPUT0:16")


def prepare_python_models(source: Path, target: Path) -> list:
    """Adds identity_fp32 (Rust) and its Python twins; returns the names added."""
    if not (source / "identity_fp32").is_dir():
        return []
    shutil.copytree(source / "identity_fp32", target / "identity_fp32")
    config = (source / "identity_fp32" / "config.pbtxt").read_text()
    for name, isolation in PYTHON_MODELS.items():
        (target / name / "1").mkdir(parents=True)
        (target / name / "1" / "model.py").write_text(PYTHON_IDENTITY)
        text = config.replace('"identity_fp32"', f'"{name}"').replace('"identity"', '"python"')
        text += f'parameters {{ key: "ferrum.isolation" value: {{ string_value: "{isolation}" }} }}\n'
        (target / name / "config.pbtxt").write_text(text)
    return ["identity_fp32", *PYTHON_MODELS]


# The response cache (docs/scheduling.md): `simple_cached` is `simple` with
# response_cache { enable: true } on a server with --cache-config; hits are identical requests
# (zero data), misses cycle through more distinct requests than the cache holds.
CACHE_CONFIG = ["--cache-config", "local,size=1048576"]
MISS_REQUESTS = 10000


def prepare_cache_model(source: Path, target: Path) -> bool:
    if not (source / "simple").is_dir():
        return False
    shutil.copytree(source / "simple", target / "simple_cached")
    config = (target / "simple_cached" / "config.pbtxt").read_text().replace('"simple"', '"simple_cached"')
    (target / "simple_cached" / "config.pbtxt").write_text(config + "\nresponse_cache { enable: true }\n")
    rows = [{"INPUT0": [i] * 16, "INPUT1": [i % 7] * 16} for i in range(MISS_REQUESTS)]
    (target / "cache-misses.json").write_text(json.dumps({"data": rows}))
    return True


def start_server(binary, repository, backend_dir):
    ports = {name: free_port() for name in ("http", "grpc", "metrics")}
    log = tempfile.NamedTemporaryFile(prefix="ferrum-bench-", suffix=".log", delete=False)
    cmd = [binary, "--model-repository", str(repository),
           "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1",
           "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]),
           "--metrics-port", str(ports["metrics"])] + CACHE_CONFIG
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


def run_perf(cmd, seconds):
    """Runs ferrum-perf with windows of a third of `seconds` until stable; returns its point."""
    out = tempfile.NamedTemporaryFile(prefix="ferrum-perf-", suffix=".json", delete=False)
    out.close()
    cmd = cmd + ["-p", str(max(200, int(seconds * 1000 / 3))), "-r", "6", "--json", out.name]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if run.returncode != 0:
            raise RuntimeError(f"ferrum-perf {' '.join(cmd[1:])} failed: {run.stderr.strip()[-500:]}")
        return json.loads(Path(out.name).read_text())["results"][0]
    finally:
        os.unlink(out.name)


def perf_point(perf, protocol, url, model, concurrency, seconds, extra=()):
    """One ferrum-perf measurement: (inferences/s, p50 µs, p99 µs). `model` None: the no-op."""
    cmd = [perf, "-i", protocol, "-u", url, "--concurrency-range", str(concurrency)]
    cmd += ["--health"] if model is None else ["-m", model]
    cmd += list(extra)
    point = run_perf(cmd, seconds)
    if point["errors"]:
        raise RuntimeError(f"{protocol} {model} c={concurrency}: {point['errors']} errors")
    return point["throughput"], point["p50_us"], point["p99_us"]


# The example pipeline (docs/pipelines.md): its steps in order, the ensemble and the BLS backend.
PIPELINE_STEPS = ["preprocess", "onnx_mlp", "postprocess"]
PIPELINES = ["classify_pipeline", "classify_bls"]


def in_process_rate(perf, repository, backend_dir, model, seconds):
    """Inferences/s of one model through ferrum-perf's in-process core (no sockets), c=1."""
    cmd = [perf, "-i", "in-process", "--model-repository", str(repository), "-m", model,
           "--concurrency-range", "1"]
    if backend_dir:
        cmd += ["--backend-directory", backend_dir]
    return run_perf(cmd, seconds)["throughput"]


def pipeline_overhead(perf, source: Path, backend_dir, seconds):
    """Rows (name, rate, ratio): each pipeline in-process against its steps called in turn
    in-process (the rate of one request through all three: 1 / sum of 1/rate)."""
    needed = PIPELINE_STEPS + PIPELINES
    if not all((source / m).is_dir() for m in needed):
        return []
    repo = Path(tempfile.mkdtemp(prefix="ferrum-bench-pipeline-"))
    try:
        for m in needed:
            shutil.copytree(source / m, repo / m)
        steps = {m: in_process_rate(perf, repo, backend_dir, m, seconds) for m in PIPELINE_STEPS}
        chained = 1.0 / sum(1.0 / r for r in steps.values())
        rows = [(f"{m} (step)", r, None) for m, r in steps.items()]
        rows.append(("steps in turn (1 / Σ 1/rate)", chained, 1.0))
        for m in PIPELINES:
            rate = in_process_rate(perf, repo, backend_dir, m, seconds)
            rows.append((m, rate, rate / chained))
        return rows
    finally:
        shutil.rmtree(repo, ignore_errors=True)


def rss_kib(pid: int) -> int:
    """The process's resident memory in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def soak(perf, url, pid, concurrency, seconds):
    """Drives `simple` for `seconds` while sampling the server's memory; returns
    (inferences/s, errors, [(t, RSS KiB)])."""
    out = tempfile.NamedTemporaryFile(prefix="ferrum-soak-", suffix=".json", delete=False)
    out.close()
    cmd = [perf, "-i", "http", "-u", url, "-m", "simple", "--concurrency-range", str(concurrency),
           "-p", str(int(seconds * 1000)), "-r", "1", "-s", "1000", "--json", out.name]
    load = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples, start = [], time.monotonic()
    try:
        while load.poll() is None and time.monotonic() - start < seconds + 120:
            samples.append((time.monotonic() - start, rss_kib(pid)))
            time.sleep(min(5.0, seconds / 24))
        _, err = load.communicate(timeout=120)
        if load.returncode != 0:
            raise RuntimeError(f"soak run failed: {err.strip()[-500:]}")
        point = json.loads(Path(out.name).read_text())["results"][0]
    finally:
        if load.poll() is None:
            load.kill()
        os.unlink(out.name)
    return point["throughput"], point["errors"], samples


def raw_throughput(runtime, path: Path, seconds: float, batch: int = 1):
    """Inferences per second of the runtime's own Python API, in this process, one thread."""
    features = 32 if runtime == "torch" else 16  # pytorch_mlp takes 32 features
    x = np.tile(np.linspace(-1, 1, features, dtype=np.float32), (batch, 1))
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
        n += batch
    return n / (time.monotonic() - start), None


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", default="dist/bin/ferrum")
    parser.add_argument("--perf", default="target/release/ferrum-perf")
    parser.add_argument("--repository", default="model_repository")
    parser.add_argument("--backend-directory", default=None)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--protocols", default="http,grpc")
    parser.add_argument("--soak-seconds", type=float, default=120.0,
                        help="length of the memory soak at concurrency 64 (0: skip it)")
    parser.add_argument("--python-only", action="store_true",
                        help="measure only the python backend's identity models")
    parser.add_argument("--cache-only", action="store_true",
                        help="measure only the response cache (hits against misses)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ferrum-bench-repo-"))
    only = args.python_only or args.cache_only
    models = [] if only else prepare_repository(Path(args.repository), work)
    python_models = [] if args.cache_only else prepare_python_models(Path(args.repository), work)
    cache_model = not args.python_only and prepare_cache_model(Path(args.repository), work)
    proc, ports, log = start_server(args.server, work, args.backend_directory)
    levels = [int(c) for c in args.concurrency.split(",")]
    protocols = args.protocols.split(",")
    try:
        cpu = platform.processor() or platform.machine()
        print(f"# ferrum bench: {os.cpu_count()} CPUs ({cpu}), ferrum-perf windows of "
              f"{args.seconds / 3:.1f} s until stable, load generator and server on the same "
              f"machine (server log: {log})\n")
        raw = {}
        for name in models:
            if name in MLPS:
                runtime, file = MLPS[name]
                path = work / name / "1" / file
                raw[name] = (raw_throughput(runtime, path, args.seconds, 1),
                             raw_throughput(runtime, path, args.seconds, 32))
        floor = {}
        for protocol in [] if only else protocols:
            url = f"127.0.0.1:{ports[protocol]}"
            for c in levels:
                floor[(protocol, c)] = perf_point(args.perf, protocol, url, None, c, args.seconds)
        if models:
            print("| model | batching | protocol | conc. | infer/s | p50 µs | p99 µs | / no-op rate "
                  "| p50 − no-op p50 µs | p99 / p50 | / raw b1 | / raw b32 |")
            print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for protocol in [] if only else protocols:
            for c in levels:
                rps, p50, p99 = floor[(protocol, c)]
                print(f"| (no-op) | | {protocol} | {c} | {rps:.0f} | {p50:.0f} | {p99:.0f} "
                      f"| 1.00 | 0 | {p99 / p50:.1f} | | |", flush=True)
        for name in models:
            variants = [(name, "off")] + (
                [(f"{name}{suffix}", mode) for mode, (suffix, _) in VARIANTS.items() if suffix]
                if name in MLPS else [])
            for served, batching in variants:
                for protocol in protocols:
                    url = f"127.0.0.1:{ports[protocol]}"
                    for c in levels:
                        rps, p50, p99 = perf_point(args.perf, protocol, url, served, c, args.seconds)
                        f_rps, f_p50, _ = floor[(protocol, c)]
                        b1, b32 = (r[0] for r in raw.get(name, ((None, None), (None, None))))
                        ratio = lambda base: f"{rps / base:.2f}" if base else "n/a"
                        print(f"| {name} | {batching} | {protocol} | {c} | {rps:.0f} | {p50:.0f} "
                              f"| {p99:.0f} | {rps / f_rps:.2f} | {p50 - f_p50:.0f} "
                              f"| {p99 / p50:.1f} | {ratio(b1)} | {ratio(b32)} |", flush=True)
        if "simple" in models:
            # The Rust API (docs/embedding.md): simple through the core in ferrum-perf's own
            # process, no socket, beside the same model over HTTP and gRPC at concurrency 1.
            backends_dir = args.backend_directory or str(
                Path(args.server).resolve().parent.parent / "backends")
            inproc = in_process_rate(args.perf, work, backends_dir, "simple", args.seconds)
            print("\nIn-process (the Rust API, ferrum-perf -i in-process) against the network, "
                  "simple at concurrency 1:\n")
            print("| path | infer/s | / in-process |")
            print("| --- | ---: | ---: |")
            print(f"| in-process (Rust API) | {inproc:.0f} | 1.00 |")
            for protocol in protocols:
                url = f"127.0.0.1:{ports[protocol]}"
                rps = perf_point(args.perf, protocol, url, "simple", 1, args.seconds)[0]
                print(f"| {protocol} | {rps:.0f} | {rps / inproc:.2f} |", flush=True)
        isolated = [n for n in models if n in ISOLATED_MODELS]
        if isolated:
            print("\nProcess isolation (docs/reliability.md): the same model with its instance in a "
                  "child process, against it inside the server:\n")
            print("| model | protocol | conc. | in server infer/s | isolated infer/s | ratio "
                  "| p50 in server µs | p50 isolated µs | added p50 µs |")
            print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for name in isolated:
                for protocol in protocols:
                    url = f"127.0.0.1:{ports[protocol]}"
                    for c in levels:
                        base = perf_point(args.perf, protocol, url, name, c, args.seconds)
                        iso = perf_point(args.perf, protocol, url, f"{name}_isolated", c, args.seconds)
                        print(f"| {name} | {protocol} | {c} | {base[0]:.0f} | {iso[0]:.0f} "
                              f"| {iso[0] / base[0]:.2f} | {base[1]:.0f} | {iso[1]:.0f} "
                              f"| {iso[1] - base[1]:.0f} |", flush=True)
        if python_models:
            print("\nThe python backend (docs/backends/python.md): an identity model in Python "
                  "against the Rust identity backend, latency at concurrency 1 and throughput at 8:\n")
            print("| model | protocol | conc. | infer/s | / Rust rate | p50 µs | added p50 µs |")
            print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
            for protocol in protocols:
                url = f"127.0.0.1:{ports[protocol]}"
                for c in (1, 8):
                    base = perf_point(args.perf, protocol, url, "identity_fp32", c, args.seconds,
                                      IDENTITY_SHAPE)
                    print(f"| identity_fp32 (Rust) | {protocol} | {c} | {base[0]:.0f} | 1.00 "
                          f"| {base[1]:.0f} | 0 |", flush=True)
                    for name, isolation in PYTHON_MODELS.items():
                        py = perf_point(args.perf, protocol, url, name, c, args.seconds,
                                        IDENTITY_SHAPE)
                        print(f"| {name} (isolation {isolation}) | {protocol} | {c} | {py[0]:.0f} "
                              f"| {py[0] / base[0]:.2f} | {py[1]:.0f} | {py[1] - base[1]:.0f} |",
                              flush=True)
        if cache_model:
            print("\nThe response cache (docs/scheduling.md): simple_cached answered from the cache "
                  f"(identical requests) against misses ({MISS_REQUESTS} distinct requests in turn, "
                  "more than the cache holds):\n")
            print("| protocol | conc. | hit infer/s | miss infer/s | hit / miss | hit p50 µs | miss p50 µs |")
            print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
            for protocol in protocols:
                url = f"127.0.0.1:{ports[protocol]}"
                for c in (1, 8):
                    hit = perf_point(args.perf, protocol, url, "simple_cached", c, args.seconds,
                                     ("--input-data", "zero"))
                    miss = perf_point(args.perf, protocol, url, "simple_cached", c, args.seconds,
                                      ("--input-data", str(work / "cache-misses.json")))
                    print(f"| {protocol} | {c} | {hit[0]:.0f} | {miss[0]:.0f} | {hit[0] / miss[0]:.2f} "
                          f"| {hit[1]:.0f} | {miss[1]:.0f} |", flush=True)
        print()
        for name, ((b1, problem), (b32, _)) in raw.items():
            runtime = MLPS[name][0]
            print(f"raw in-process {runtime} ({name}, one thread): "
                  + (f"batch 1 {b1:.0f}, batch 32 {b32:.0f} inferences/s" if b1 else problem))
        # The server finds its backends beside its binary (dist/backends); the in-process
        # core inside ferrum-perf is told where they are.
        backends = args.backend_directory or str(Path(args.server).resolve().parent.parent / "backends")
        pipeline = None if only else pipeline_overhead(
            args.perf, Path(args.repository), backends, args.seconds)
        if pipeline:
            print("\nThe example pipeline in-process (ferrum-perf -i in-process, concurrency 1):\n")
            print("| model | infer/s | / steps in turn |")
            print("| --- | ---: | ---: |")
            for name, rate, ratio in pipeline:
                shown = "" if ratio is None else f"{ratio:.2f}"
                print(f"| {name} | {rate:.0f} | {shown} |", flush=True)
        if args.soak_seconds > 0 and "simple" in models and "http" in protocols:
            rps, errors, samples = soak(args.perf, f"127.0.0.1:{ports['http']}", proc.pid, 64,
                                        args.soak_seconds)
            # The first sample is taken as the load starts; memory is judged after the first
            # tenth of the run, once connections and buffers exist.
            settled = [kib for t, kib in samples if t >= args.soak_seconds / 10] or [samples[-1][1]]
            first, last, peak = settled[0], settled[-1], max(settled)
            print(f"\nmemory soak: simple over HTTP, concurrency 64, {args.soak_seconds:.0f} s, "
                  f"{rps:.0f} infer/s, {errors} errors; server RSS after warm-up {first / 1024:.1f} MiB, "
                  f"at the end {last / 1024:.1f} MiB ({(last - first) / first * 100:+.1f}%), "
                  f"peak {peak / 1024:.1f} MiB; samples (s: MiB): "
                  + ", ".join(f"{t:.0f}: {kib / 1024:.1f}" for t, kib in samples[::max(1, len(samples) // 12)]))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
