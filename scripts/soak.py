#!/usr/bin/env python3
"""The reliability soak (`make soak`): minutes of traffic at concurrency 64 over HTTP and gRPC
across the example models, with a reload every 30 s and an isolated model that crashes and
restarts, while the server's memory is sampled.

Load: ferrum-perf (tools/perf, the native load generator), one run per (model, protocol) at
64 / (models × protocols) requests in flight each, all at once for the whole soak. Reloads:
every --reload-seconds the version folders of `simple` and `onnx_mlp` are rewritten (new
files, same contents), which the server picks up through polling and swaps under the load.
Crashes: the model `crashy` (the `testing` fixture backend, `ferrum.isolation: process`) gets
a request that segfaults its instance process every --crash-seconds, and ordinary requests in
between, sent by this script. Reported: failed requests per model (0 is the bar everywhere but
the crashing requests themselves), the server's resident memory over time (it must stay
flat), and each run's throughput and latency.
"""

import argparse
import json
import os
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

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["simple", "onnx_mlp", "openvino_mlp", "pytorch_mlp"]
RELOADED = ["simple", "onnx_mlp"]
CRASHY = """name: "crashy"
backend: "testing"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
parameters { key: "ferrum.isolation" value: { string_value: "process" } }
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def prepare(work: Path, source: Path, backends: Path, testing_lib: Path):
    repo, backend_dir = work / "repo", work / "backends"
    repo.mkdir()
    backend_dir.mkdir()
    for name in MODELS:
        shutil.copytree(source / name, repo / name)
    (repo / "crashy" / "1").mkdir(parents=True)
    (repo / "crashy" / "config.pbtxt").write_text(CRASHY)
    for entry in backends.iterdir():
        (backend_dir / entry.name).symlink_to(entry.resolve())
    (backend_dir / "testing").mkdir()
    shutil.copy(testing_lib, backend_dir / "testing" / "libferrum_testing.so")
    return repo, backend_dir


def start_server(binary, repo, backend_dir, log):
    ports = {name: free_port() for name in ("http", "grpc", "metrics")}
    cmd = [binary, "--model-repository", str(repo), "--backend-directory", str(backend_dir),
           "--model-control-mode", "poll", "--repository-poll-secs", "1",
           "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1",
           "--metrics-address", "127.0.0.1", "--http-port", str(ports["http"]),
           "--grpc-port", str(ports["grpc"]), "--metrics-port", str(ports["metrics"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited early; log in {log.name}")
        try:
            url = f"http://127.0.0.1:{ports['http']}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, ports
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"server not ready in 120 s; log in {log.name}")


def rewrite_versions(repo: Path, name: str):
    """New files with the same contents in the model's version folders: a reload."""
    for version in (repo / name).iterdir():
        if not version.name.isdigit():
            continue
        for f in version.iterdir():
            if f.is_file():
                fresh = f.with_name(f.name + ".new")
                shutil.copy(f, fresh)
                os.replace(fresh, f)


def post_json(url, body, timeout=30):
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except OSError as e:
        return 0, {"error": str(e)}


def crash_loop(http, stop, every, tally):
    """Sends `crashy` a crashing request every `every` seconds and ordinary ones between."""
    url = f"http://127.0.0.1:{http}/v2/models/crashy/infer"
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    next_crash = time.monotonic() + every
    while not stop.is_set():
        if time.monotonic() >= next_crash:
            next_crash += every
            status, _ = post_json(url, {**body, "parameters": {"crash": "segv"}})
            tally["crashes sent"] += 1
            tally["crashes answered with an error"] += status == 500
            continue
        status, answer = post_json(url, body)
        tally["ordinary requests"] += 1
        if status != 200 or answer.get("outputs", [{}])[0].get("data") != [1.0, 2.0]:
            tally["ordinary requests failed"] += 1
        stop.wait(0.05)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", default="dist/bin/ferrum")
    parser.add_argument("--perf", default="target/release/ferrum-perf")
    parser.add_argument("--testing-backend", default="target/release/libferrum_testing.so")
    parser.add_argument("--backends", default="dist/backends")
    parser.add_argument("--repository", default="model_repository")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--reload-seconds", type=float, default=30.0)
    parser.add_argument("--crash-seconds", type=float, default=10.0)
    args = parser.parse_args()
    seconds = args.minutes * 60

    work = Path(tempfile.mkdtemp(prefix="ferrum-soak-"))
    log = open(work / "server.log", "w")
    repo, backend_dir = prepare(work, Path(args.repository), Path(args.backends),
                                Path(args.testing_backend))
    proc, ports = start_server(args.server, repo, backend_dir, log)
    runs = [(m, p) for m in MODELS for p in ("http", "grpc")]
    each = max(1, args.concurrency // len(runs))
    loads = []
    stop = threading.Event()
    tally = {k: 0 for k in ("crashes sent", "crashes answered with an error",
                            "ordinary requests", "ordinary requests failed")}
    try:
        for model, protocol in runs:
            out = work / f"{model}-{protocol}.json"
            cmd = [args.perf, "-i", protocol, "-u", f"127.0.0.1:{ports[protocol]}", "-m", model,
                   "--concurrency-range", str(each), "-p", str(int(seconds * 1000)), "-r", "1",
                   "--json", str(out)]
            loads.append((model, protocol, out, subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
        crasher = threading.Thread(target=crash_loop,
                                   args=(ports["http"], stop, args.crash_seconds, tally))
        crasher.start()
        samples, reloads, start = [], 0, time.monotonic()
        next_reload = start + args.reload_seconds
        while any(p.poll() is None for *_, p in loads) and time.monotonic() - start < seconds + 120:
            now = time.monotonic()
            if now >= next_reload and now - start < seconds - 5:
                for name in RELOADED:
                    rewrite_versions(repo, name)
                reloads += 1
                next_reload += args.reload_seconds
            samples.append((now - start, rss_kib(proc.pid)))
            time.sleep(min(5.0, seconds / 60))
        stop.set()
        crasher.join(60)
        results = []
        for model, protocol, out, load in loads:
            _, err = load.communicate(timeout=120)
            if load.returncode != 0:
                sys.exit(f"ferrum-perf {model} {protocol} failed: {err.strip()[-500:]}")
            results.append((model, protocol, json.loads(out.read_text())["results"][0]))
    finally:
        stop.set()
        for *_, load in loads:
            if load.poll() is None:
                load.kill()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    reloaded = sum("loaded, ready" in line for line in (work / "server.log").read_text().splitlines())
    print(f"# ferrum soak: {args.minutes:g} min, concurrency {each} × {len(runs)} runs = "
          f"{each * len(runs)}, {reloads} reload rounds of {', '.join(RELOADED)} "
          f"({reloaded} version loads in the log), server exit status {code}\n")
    print("| model | protocol | requests | failed | infer/s | p50 µs | p99 µs |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    failed = 0
    for model, protocol, r in results:
        failed += r["errors"]
        print(f"| {model} | {protocol} | {r['requests']} | {r['errors']} | {r['throughput']:.0f} "
              f"| {r['p50_us']:.0f} | {r['p99_us']:.0f} |")
    print(f"\ncrashy (isolated, segfaults on request): {tally}")
    settled = [kib for t, kib in samples if t >= seconds / 10] or [samples[-1][1]]
    first, last, peak = settled[0], settled[-1], max(settled)
    print(f"\nserver RSS after the first tenth {first / 1024:.1f} MiB, at the end "
          f"{last / 1024:.1f} MiB ({(last - first) / first * 100:+.1f}%), peak {peak / 1024:.1f} MiB")
    step = max(1, len(samples) // 20)
    print("RSS samples (s: MiB): "
          + ", ".join(f"{t:.0f}: {kib / 1024:.1f}" for t, kib in samples[::step]))
    ok = (failed == 0 and tally["ordinary requests failed"] == 0
          and tally["crashes answered with an error"] == tally["crashes sent"] and code == 0)
    print(f"\nresult: {'PASS' if ok else 'FAIL'} ({failed} failed requests outside the crashing "
          f"ones; log in {work / 'server.log'})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
