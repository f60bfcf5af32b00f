#!/usr/bin/env bash
# Overlay benchmark (issue 7), measured in one run on this machine: wall time
# and peak memory of `cubeboot build --format overlay --offline` for one
# profile whose bundle is a large incompressible file (real one-click bundles
# are gzip, so xz cannot shrink them), against the standard tools doing the
# same job on the same tree: GNU tar (sorted, fixed owner and mtime) piped
# into `xz -6 -T1` (same preset, one thread). Best of N runs each.
#
#   scripts/bench-overlay.sh [RUNS] [BUNDLE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
mib=${2:-256}
cargo build --quiet --release --bin cubeboot
bin=$PWD/target/release/cubeboot
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

now() { date +%s%N; }
best() { sort -n | head -1; }
peak_kb() { /usr/bin/time -f '%M' "$@" 2>&1 >/dev/null | tail -1; }

echo "== release: fixture kernels and helper, a ${mib} MiB incompressible bundle"
rel="$work/release"
mkdir -p "$rel"
cp examples/release/*.rpm examples/release/*.deb examples/release/cube-firstboot "$rel/"
head -c $((mib * 1024 * 1024)) /dev/urandom > "$rel/cube-sandbox-one-click-v0.0.0-bench-amd64.tar.gz"
"$bin" lock --base-url https://bench.invalid/ --output "$rel/cubeboot.lock" \
  --asset "$rel"/kernel-*.rpm --asset "$rel"/linux-image-*.deb \
  --asset "$rel/cube-sandbox-one-click-v0.0.0-bench-amd64.tar.gz" \
  --asset "$rel/cube-firstboot" 2>/dev/null

echo "== cubeboot build --format overlay --offline ($runs runs)"
for _ in $(seq "$runs"); do
  t0=$(now)
  "$bin" build --lock "$rel/cubeboot.lock" --profile debian-12 --format overlay --offline \
    --output "$work/out" 2>/dev/null
  t1=$(now)
  echo $(( (t1 - t0) / 1000000 ))
done > "$work/ours.ms"
ours_ms=$(best < "$work/ours.ms")
ours_kb=$(peak_kb "$bin" build --lock "$rel/cubeboot.lock" --profile debian-12 --format overlay \
  --offline --output "$work/out2")
overlay="$work/out/debian-12/overlay.tar.xz"

echo "== GNU tar | xz -6 -T1 on the same tree ($runs runs)"
tree="$work/tree"
mkdir -p "$tree"
tar -xJf "$overlay" -C "$tree"
for _ in $(seq "$runs"); do
  t0=$(now)
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1153704088 \
    -cf - -C "$tree" etc usr var | xz -6 -T1 -C crc64 > "$work/ref.tar.xz"
  t1=$(now)
  echo $(( (t1 - t0) / 1000000 ))
done > "$work/ref.ms"
ref_ms=$(best < "$work/ref.ms")
ref_kb=$(peak_kb xz -6 -T1 -k -c "$tree/var/lib/cubeboot/cache/"*)

size=$(stat -c %s "$overlay")
ref_size=$(stat -c %s "$work/ref.tar.xz")
printf 'cubeboot overlay: best %d ms, peak RSS %d MiB, %d bytes\n' "$ours_ms" $((ours_kb / 1024)) "$size"
printf 'tar | xz -6 -T1:  best %d ms, xz peak RSS %d MiB, %d bytes\n' "$ref_ms" $((ref_kb / 1024)) "$ref_size"
printf 'time ratio (cubeboot / tar|xz): %s\n' "$(echo "scale=2; $ours_ms / $ref_ms" | bc)"
