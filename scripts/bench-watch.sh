#!/usr/bin/env bash
# Benchmark `cubeboot watch`: NODES simulated helpers (scripts/bench-watch.py)
# post signed statuses at RATE posts/s in total for SECONDS over keep-alive
# connections. Target: 1,000 posts/s from 500 nodes with p99 handling under
# 10 ms. Reports the client's round trips and watch's own handling times
# (`--stats`: from receiving a request to having answered it).
# Usage: scripts/bench-watch.sh [NODES] [RATE] [SECONDS] [CLIENT_PROCS].
# BENCH_SLOW=N holds N slow connections open beside the posts (a slowloris,
# scripts/bench-watch.py) and samples watch's peak RSS and threads; e.g.
# BENCH_SLOW=2000 scripts/bench-watch.sh 50 100 30.
# BENCH_TLS=1 serves HTTPS (`--tls-cert/--tls-key`, a self-signed
# certificate made here with openssl) and posts over it.
# Results also go to out/bench-watch.txt (out/bench-watch-tls.txt with TLS).
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${1:-500}
rate=${2:-1000}
seconds=${3:-20}
procs=${4:-4}
# CUBEBOOT_BIN=path measures that binary instead of a fresh release build.
bin=${CUBEBOOT_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --bin cubeboot >&2
  bin="${CARGO_TARGET_DIR:-target}/release/cubeboot"
fi
work=$(mktemp -d)
watch_pid=
cleanup() {
  [ -z "$watch_pid" ] || kill "$watch_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/secret"
tls_args=()
ca=
result=out/bench-watch.txt
if [ "${BENCH_TLS:-0}" = 1 ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -days 1 -subj "/CN=bench-watch" -addext "subjectAltName=IP:127.0.0.1" \
    -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
  tls_args=(--tls-cert "$work/tls.crt" --tls-key "$work/tls.key")
  ca="$work/tls.crt"
  result=out/bench-watch-tls.txt
fi
"$bin" watch --listen 127.0.0.1:0 --secret-file "$work/secret" --json --stats \
  "${tls_args[@]}" --timeout $((seconds + 5 + ${BENCH_SLOW:-0} / 200)) > "$work/events" 2> "$work/stderr" &
watch_pid=$!
for _ in $(seq 100); do
  grep -q "listening on" "$work/stderr" 2>/dev/null && break
  sleep 0.1
done
addr=$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$work/stderr" | head -1)
# Peak resident memory and threads of watch, sampled every 0.2 s.
(
  peak_rss=0 peak_threads=0
  while [ -r "/proc/$watch_pid/status" ]; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$watch_pid/status" 2>/dev/null || echo 0)
    th=$(awk '/^Threads:/ {print $2}' "/proc/$watch_pid/status" 2>/dev/null || echo 0)
    [ "${rss:-0}" -gt "$peak_rss" ] && peak_rss=$rss
    [ "${th:-0}" -gt "$peak_threads" ] && peak_threads=$th
    echo "$peak_rss $peak_threads" > "$work/peak"
    sleep 0.2
  done
) &
sampler_pid=$!
ulimit -n 8192 2>/dev/null || true
mkdir -p out
report="$work/report"
echo "== bench-watch: $nodes nodes, $rate posts/s, ${seconds}s, ${BENCH_SLOW:+${BENCH_SLOW} slow connections, }$(nproc) cores, ${ca:+TLS, }$(date -u +%FT%TZ)" > "$report"
echo "binary: $bin" >> "$report"
BENCH_SLOW=${BENCH_SLOW:-0} python3 scripts/bench-watch.py "$addr" "$work/secret" "$nodes" "$rate" "$seconds" "$procs" $ca >> "$report"
# watch ends on its timeout (exit 3: no --expect) and prints its stats.
wait "$watch_pid" || true
watch_pid=
wait "$sampler_pid" 2>/dev/null || true
read -r peak_rss peak_threads < "$work/peak"
echo "watch peak: RSS $((peak_rss / 1024)) MiB, $peak_threads threads" >> "$report"
grep "handled" "$work/stderr" >> "$report" || { cat "$work/stderr"; exit 1; }
echo "node events written: $(grep -c '"event":"node"' "$work/events")" >> "$report"
rejected=$(grep -c '"event":"rejected"' "$work/events" || true)
echo "posts rejected: $rejected" >> "$report"
grep '"event":"rejected"' "$work/events" | head -3 >> "$report" || true
tee "$result" < "$report"
