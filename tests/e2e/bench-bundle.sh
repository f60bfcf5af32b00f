#!/usr/bin/env bash
# Build (or reuse) the VM tier's benchmark bundle and print the directory
# holding it: the fixture one-click bundle
# (tests/fixtures/bundle/cube-sandbox-one-click-v0.0.0-fixture-amd64.tar.gz,
# same name) with PAD_MB (first argument, default 300) MB of incompressible
# bytes added at assets/bench-padding.bin, so its download, hashing and
# extraction in the guest cost what a real bundle's do
# (vm_first_boot_throttled_phase_table, tests/vm_e2e.rs). The installer
# never looks at the file.
#
# Deterministic: the bytes are AES-256-CTR's keystream for a fixed key over
# zeros (openssl), packed like tests/fixtures/bundle/make.sh packs, so
# every run and machine gets the same file. Made at test time, never
# committed; cached under tests/e2e/cache/bench-bundle-<hash of this recipe,
# the fixture bundle and PAD_MB>/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${E2E_CACHE:-$here/cache}"
pad_mb="${1:-300}"
[[ "$pad_mb" =~ ^[0-9]+$ ]] || { echo "bench-bundle.sh: PAD_MB must be a whole number of MB" >&2; exit 2; }
fixture="$repo/tests/fixtures/bundle/cube-sandbox-one-click-v0.0.0-fixture-amd64.tar.gz"
name="$(basename "$fixture")"
stem="${name%.tar.gz}"

out="$cache/bench-bundle-$( { cat "$0" "$fixture"; echo "$pad_mb"; } | sha256sum | cut -c1-16)"
[[ ! -s "$out/$name" ]] || { echo "$out"; exit 0; }
# No lock: builders at once make the same bytes, and the first to rename
# its directory into place wins (mv -T fails on a directory already there).
log() { printf '[bench-bundle %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
mkdir -p "$cache"
work="$(mktemp -d "$cache/.bench-bundle.XXXXXX")"
trap 'rm -rf "$work"' EXIT
tar -xzf "$fixture" -C "$work"
[[ -d "$work/$stem/assets" ]] || { echo "bench-bundle.sh: $name has no $stem/assets/" >&2; exit 1; }
log "adding $pad_mb MB of incompressible bytes to $name"
head -c "$((pad_mb * 1000000))" /dev/zero \
  | openssl enc -aes-256-ctr -nosalt \
      -K 63756265626f6f742062656e63682070616464696e6720286973737565203234 \
      -iv 00000000000000000000000000000000 \
  > "$work/$stem/assets/bench-padding.bin"
chmod 0644 "$work/$stem/assets/bench-padding.bin"
mkdir -p "$work/out"
# gzip -1: the padding does not compress at any level; -9 only costs time.
tar --sort=name --mtime=@1 --owner=0 --group=0 --numeric-owner --format=gnu \
  -C "$work" -cf - "$stem" | gzip -n -1 > "$work/out/$name"
mv -T "$work/out" "$out" 2>/dev/null || [[ -s "$out/$name" ]]
find "$cache" -maxdepth 1 -name 'bench-bundle-*' ! -path "$out" -exec rm -rf {} +
log "bench bundle ready: $out/$name ($(stat -c %s "$out/$name") bytes)"
echo "$out"
