#!/usr/bin/env bash
# Where the server's CPU time goes under load: starts the server over a copy of one example
# model, drives it with ferrum-perf, samples the server with `perf record` (cpu-clock, so it
# works without hardware counters) and prints a flat summary: self time by symbol and by
# area (kernel, allocator, JSON, async runtime, locks and wake-ups, backend).
#
#   scripts/profile.sh [--server dist/bin/ferrum] [--backends dist/backends] [--perf BIN]
#                      [--model simple] [--protocol http] [--concurrency 32] [--seconds 8]
#
# Needs linux-perf (Debian package) and a release build (make build). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
server=dist/bin/ferrum backends=dist/backends perfbin=target/release/ferrum-perf
model=simple protocol=http concurrency=32 seconds=8
while [ $# -gt 0 ]; do
  case "$1" in
    --server) server=$2 ;; --backends) backends=$2 ;; --perf) perfbin=$2 ;;
    --model) model=$2 ;; --protocol) protocol=$2 ;; --concurrency) concurrency=$2 ;;
    --seconds) seconds=$2 ;; *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; [ -n "${KEEP_PERF_DATA:-}" ] && cp "$work/perf.data" "$KEEP_PERF_DATA"; rm -rf "$work"' EXIT
base=${model%_batched}
cp -r "model_repository/$base" "$work/$model"
if [ "$model" != "$base" ]; then
  sed -i "s/\"$base\"/\"$model\"/" "$work/$model/config.pbtxt"
  printf '\ndynamic_batching { max_queue_delay_microseconds: 200 }\n' >> "$work/$model/config.pbtxt"
fi
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http=$(port) grpc=$(port) metrics=$(port)
"$server" --model-repository "$work" --backend-directory "$backends" \
  --http-address 127.0.0.1 --grpc-address 127.0.0.1 --metrics-address 127.0.0.1 \
  --http-port "$http" --grpc-port "$grpc" --metrics-port "$metrics" 2>"$work/log" &
pid=$!
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$http/v2/health/ready" >/dev/null && break
  sleep 0.1
done
url=127.0.0.1:$http; [ "$protocol" = grpc ] && url=127.0.0.1:$grpc
"$perfbin" -i "$protocol" -u "$url" -m "$model" --concurrency-range "$concurrency" \
  -p $((seconds * 1000 + 2000)) -r 1 -s 1000 >"$work/load" 2>&1 &
load=$!
sleep 1
perf record -q -e cpu-clock -F 1999 ${PERF_CALLGRAPH:--g} -p "$pid" -o "$work/perf.data" -- sleep "$seconds" 2>/dev/null
wait $load || true
grep -A1 "Concurrency" "$work/load" | head -2 || true
echo "--- top symbols (self time)"
perf report -i "$work/perf.data" --no-children --sort symbol --stdio -g none --percent-limit 0.7 2>/dev/null \
  | grep -E '^ +[0-9]' | sed -E 's/ {2,}-.*$//; s/ +$//' | cut -c1-150 | head -25
echo "--- by area (self time)"
perf report -i "$work/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
  | grep -E '^ +[0-9]' | python3 -c '
import re, sys
areas = [
  ("kernel (sockets, scheduler, syscalls)", r"\[kernel|\[k\]"),
  ("allocator (malloc/free/realloc)", r"malloc|free|realloc|_int_|cfree|memalign|tcache"),
  ("memcpy/memmove", r"memcpy|memmove|memset"),
  ("JSON (serde_json)", r"serde_json|serde::"),
  ("HTTP/2 + gRPC (h2, tonic, prost)", r"\bh2::|tonic|prost"),
  ("HTTP/1 (hyper, axum)", r"hyper|axum|http::"),
  ("async runtime (tokio)", r"tokio"),
  ("locks, wake-ups, channels", r"parking_lot|futex|crossbeam|Condvar|Mutex|pthread_cond|pthread_mutex|__lll"),
  ("backend and runtime", r"libferrum_|onnxruntime|openvino|torch"),
  ("ferrum core and frontends", r"ferrum"),
]
totals = {name: 0.0 for name, _ in areas}
other = 0.0
for line in sys.stdin:
    m = re.match(r"\s*([0-9.]+)%\s+(.*)", line)
    if not m:
        continue
    pct, rest = float(m.group(1)), m.group(2)
    for name, pattern in areas:
        if re.search(pattern, rest):
            totals[name] += pct
            break
    else:
        other += pct
for name, _ in areas:
    print(f"{totals[name]:6.1f}%  {name}")
print(f"{other:6.1f}%  other (std, libc, tracing, ...)")
'
