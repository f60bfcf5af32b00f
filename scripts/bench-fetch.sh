#!/usr/bin/env bash
# Benchmark the helper's downloader against the standard tools, in one run,
# from a local HTTP server on 127.0.0.1 (python3, sendfile):
#   1. peak RSS of `cube-firstboot dev fetch` on a 1 GiB file (target <= 16 MiB)
#   2. its wall time vs `curl -o file && sha256sum file` on the same file
#      (target: helper throughput >= 0.9x, i.e. time <= 1.11x curl's)
#   3. `cube-firstboot run --stop-after fetch` with two assets (1 GiB + a
#      second one) vs the same with the second asset tiny (target <= 1.1x)
# Each measurement is the median of ROUNDS runs, interleaved so both tools
# see the same page-cache and machine load. Usage: scripts/bench-fetch.sh
# [SIZE_MIB] [SECOND_MIB] [ROUNDS]. Results also go to out/bench-fetch.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
second_mib=${2:-256}
rounds=${3:-3}
# Per-connection bandwidth for the two-asset measurement (MiB/s). Loopback
# without a limit makes every download CPU-bound on 2 shared cores, which
# says nothing about overlapping network waits, the point of fetching the
# kernel and the bundle in parallel.
rate_mib=${RATE_MIB:-100}

helper=$(scripts/build-helper.sh)
helper=$(realpath "$helper")
# tmpfs by default: both tools write the same bytes to the same place, and
# the disk's writeback of gigabytes of dirty pages (other jobs' too) stays
# out of the comparison. BENCH_DIR=/var/tmp measures on disk instead.
work=$(mktemp -d "${BENCH_DIR:-/dev/shm}/cubeboot-bench.XXXXXX")
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== inputs ($size_mib MiB and $second_mib MiB of random bytes)" >&2
mkdir -p "$work/srv"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom > "$work/srv/big.bin"
head -c "$((second_mib * 1024 * 1024))" /dev/urandom > "$work/srv/second.bin"
head -c 4096 /dev/urandom > "$work/srv/tiny.bin"
big_sha=$(sha256sum "$work/srv/big.bin" | cut -d' ' -f1)
big_size=$(stat -c %s "$work/srv/big.bin")

cat > "$work/server.py" <<'EOF'
import http.server, os, sys, time
root, portfile = sys.argv[1], sys.argv[2]
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        path = self.path.lstrip("/")
        throttled = path.startswith("throttled/")
        path = path.removeprefix("throttled/")
        try:
            f = open(os.path.join(root, path), "rb")
        except OSError:
            self.send_error(404)
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.flush()
            # /throttled/NAME: at most RATE MiB/s per connection, like a
            # real mirror; otherwise as fast as loopback goes.
            rate = float(os.environ.get("RATE_MIB", "0")) if throttled else 0
            off, start, step = 0, time.monotonic(), 1 << 20
            while off < size:
                n = os.sendfile(self.connection.fileno(), f.fileno(), off, min(step, size - off) if rate else size - off)
                if n == 0:
                    break
                off += n
                if rate:
                    ahead = off / (rate * 1048576) - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
open(portfile, "w").write(str(srv.server_address[1]))
srv.serve_forever()
EOF
RATE_MIB=$rate_mib python3 "$work/server.py" "$work/srv" "$work/port" &
server_pid=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.05; done
base="http://127.0.0.1:$(cat "$work/port")"
cat "$work/srv/"*.bin > /dev/null   # warm the page cache for everyone

# A target root on which `run` passes preflight and stops after fetch.
make_root() { # dir second_name second_size second_sha url_prefix
  local r=$1 prefix=$5
  mkdir -p "$r/proc" "$r/etc/cubeboot" "$r/run/cloud-init" "$r/etc/cloud"
  echo "MemTotal:       16303916 kB" > "$r/proc/meminfo"
  printf 'ID=debian\nVERSION_ID="12"\n' > "$r/etc/os-release"
  echo '{"v1": {"errors": []}}' > "$r/run/cloud-init/result.json"
  cat > "$r/etc/cubeboot/plan.json" <<EOF
{"version": 1, "generator": "bench",
 "target": {"profile": "debian-12", "os_ids": ["debian"], "version_id": "12", "family": "deb",
  "bootloader": {"kind": "grub-mkconfig", "mkconfig": ["update-grub"], "reboot_once": "grub-reboot",
   "set_default": "grub-set-default", "editenv": "grub-editenv", "grub_cfg": "/boot/grub/grub.cfg",
   "grubenv": "/boot/grub/grubenv"},
  "packages": {"manager": "apt", "install": [], "hold": "apt-mark-hold"}},
 "assets": {
  "kernel": {"name": "$2", "urls": ["$prefix/$2"], "sha256": "$4", "size": $3},
  "bundle": {"name": "big.bin", "urls": ["$prefix/big.bin"], "sha256": "$big_sha", "size": $big_size}},
 "kernel": {"kver": "x", "package": "x", "package_version": "1", "kvm": "pvm", "boot_params": []},
 "cube": {"role": "control", "node_ip": "auto", "data_disk": {"mode": "auto"}}}
EOF
}
second_sha=$(sha256sum "$work/srv/second.bin" | cut -d' ' -f1)
tiny_sha=$(sha256sum "$work/srv/tiny.bin" | cut -d' ' -f1)

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
timed() { # prints "seconds maxrss_kib cpu_seconds" of the command
  /usr/bin/time -f '%e %M %U %S' -o "$work/time" "$@" > /dev/null 2>"$work/stderr" \
    || { cat "$work/stderr" >&2; exit 1; }
  awk '{printf "%s %s %.2f\n", $1, $2, $3 + $4}' "$work/time"
}

: > "$work/curl" ; : > "$work/helper" ; : > "$work/rss" ; : > "$work/two" ; : > "$work/one"
: > "$work/curl-cpu" ; : > "$work/helper-cpu" ; : > "$work/two-fast" ; : > "$work/one-fast"
for i in $(seq "$rounds"); do
  echo "== round $i of $rounds" >&2
  rm -f "$work/curl.bin"
  read -r secs _ cpu < <(timed sh -c "curl -sS -o '$work/curl.bin' '$base/big.bin' && sha256sum '$work/curl.bin'")
  echo "$secs" >> "$work/curl"; echo "$cpu" >> "$work/curl-cpu"; rm -f "$work/curl.bin"
  # The root the helper writes beneath must exist (host/beneath.rs opens it).
  rm -rf "$work/dest"; mkdir "$work/dest"
  read -r secs rss cpu < <(timed "$helper" dev fetch "$base/big.bin" "$big_sha" --size "$big_size" --dest "$work/dest")
  echo "$secs" >> "$work/helper"; echo "$rss" >> "$work/rss"; echo "$cpu" >> "$work/helper-cpu"
  rm -rf "$work/dest"
  for speed in throttled fast; do
    prefix="$base/throttled"; out=""
    [ "$speed" = fast ] && { prefix="$base"; out="-fast"; }
    rm -rf "$work/two-root"; make_root "$work/two-root" second.bin "$((second_mib * 1024 * 1024))" "$second_sha" "$prefix"
    read -r secs rss _ < <(timed "$helper" run --root "$work/two-root" --stop-after fetch)
    echo "$secs" >> "$work/two$out"; echo "$rss" >> "$work/rss"
    rm -rf "$work/one-root"; make_root "$work/one-root" tiny.bin 4096 "$tiny_sha" "$prefix"
    read -r secs _ _ < <(timed "$helper" run --root "$work/one-root" --stop-after fetch)
    echo "$secs" >> "$work/one$out"
  done
  rm -rf "$work/two-root" "$work/one-root"
done

curl_s=$(median < "$work/curl")
helper_s=$(median < "$work/helper")
rss_kib=$(sort -n "$work/rss" | tail -1)
two_s=$(median < "$work/two")
one_s=$(median < "$work/one")
two_fast=$(median < "$work/two-fast")
one_fast=$(median < "$work/one-fast")
curl_cpu=$(median < "$work/curl-cpu")
helper_cpu=$(median < "$work/helper-cpu")
{
  echo "cube-firstboot fetch benchmark ($(date -u +%FT%TZ), $(nproc) cores, median of $rounds, files in $(dirname "$work"))"
  echo "helper: $helper ($(stat -c %s "$helper") bytes)"
  echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  printf 'peak RSS of any helper run:               %6.1f MiB  (target <= 16)\n' "$(awk "BEGIN {print $rss_kib / 1024}")"
  printf 'curl -o && sha256sum, %d MiB, wall:     %6.2f s  (CPU %.2f s)\n' "$size_mib" "$curl_s" "$curl_cpu"
  printf 'cube-firstboot dev fetch, %d MiB, wall: %6.2f s  (CPU %.2f s)\n' "$size_mib" "$helper_s" "$helper_cpu"
  printf 'throughput helper / curl+sha256sum:       %6.2f x  (target >= 0.9)\n' "$(awk "BEGIN {print $curl_s / $helper_s}")"
  echo "two assets, server limited to $rate_mib MiB/s per connection:"
  printf '  run --stop-after fetch, %d + %d MiB:  %6.2f s\n' "$size_mib" "$second_mib" "$two_s"
  printf '  run --stop-after fetch, %d MiB + 4 KiB: %6.2f s\n' "$size_mib" "$one_s"
  printf '  two assets / larger alone:              %6.2f x  (target <= 1.1)\n' "$(awk "BEGIN {print $two_s / $one_s}")"
  echo "two assets, loopback without a limit (CPU-bound):"
  printf '  run --stop-after fetch, %d + %d MiB:  %6.2f s\n' "$size_mib" "$second_mib" "$two_fast"
  printf '  run --stop-after fetch, %d MiB + 4 KiB: %6.2f s\n' "$size_mib" "$one_fast"
  printf '  two assets / larger alone:              %6.2f x\n' "$(awk "BEGIN {print $two_fast / $one_fast}")"
} | tee out/bench-fetch.txt
