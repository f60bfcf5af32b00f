#!/usr/bin/env bash
# A real first boot measured against its own overlap limit (issue 24): the
# VM tier's throttled scenario (vm_first_boot_throttled_phase_table,
# tests/vm_e2e.rs) at each rate in turn, 10 MB/s then 2 MB/s by default.
# Each run boots the Debian 12 guest under qemu TCG with the payload the
# real `cubeboot lock` and `build` made, serves the fixture kernel package
# (~80 MB) and a 300 MB bundle of incompressible bytes
# (tests/e2e/bench-bundle.sh) through one 127.0.0.1 link capped at the rate
# (all connections together, like a cloud server's bandwidth cap), and
# prints a phase table: each stage's duration from the serial log, the
# bundle's download as the server saw it, the overlap limit
#   preflight + max(bundle path, kernel path) + Cube install + verify
#   kernel path: kernel dl + prerequisites + kernel install + reboot
#                + kernel checks
#   bundle path: kernel dl + bundle dl (+ the reboot's downtime when the
#                bundle cannot end before it: it resumes after the reboot)
# from those same durations (downloads at the link's rate), and
# measured/limit. Tables go to out/bench-firstboot-vm-<rate>.txt;
# docs/first-boot-bench.md carries the latest and says what they mean.
#
# Takes 4-5 minutes at 10 MB/s and 7-8 at 2 MB/s on this 2-core machine
# (TCG; measured 233-271 s and 423-491 s), plus the first run's guest image
# (2-4 min) and the bench bundle (~10 s); both are cached under
# tests/e2e/cache/. Needs root and qemu, like the VM tier
# (tests/e2e/README.md). One guest at a time: do not run it beside another
# guest; with E2E_QEMU_LOCK=<file> each run holds `flock <file>` while its
# guest runs.
#
# Usage: scripts/bench-firstboot-vm.sh [RATE_MBPS ...]   (default: 10 2)
# BUNDLE_MB changes the bundle's padding (default 300).
set -euo pipefail
cd "$(dirname "$0")/.."
rates=("$@")
[ ${#rates[@]} -gt 0 ] || rates=(10 2)

helper=$(scripts/build-helper.sh)
# Built before the guests, outside the lock: cargo and qemu do not share
# two cores well.
cargo test --test vm_e2e --no-run >&2

for rate in "${rates[@]}"; do
  echo "== first boot at $rate MB/s" >&2
  run=(env CUBEBOOT_E2E=1 CUBEBOOT_E2E_HELPER="$helper"
    CUBEBOOT_E2E_BENCH_RATE_MBPS="$rate" CUBEBOOT_E2E_BENCH_BUNDLE_MB="${BUNDLE_MB:-300}"
    cargo test --test vm_e2e -- --include-ignored --nocapture --exact
    vm_first_boot_throttled_phase_table)
  if [ -n "${E2E_QEMU_LOCK:-}" ]; then
    run=(flock "$E2E_QEMU_LOCK" "${run[@]}")
  fi
  start=$(date +%s)
  "${run[@]}" >"out/bench-firstboot-vm-$rate.log" 2>&1 \
    || { echo "the run at $rate MB/s failed: out/bench-firstboot-vm-$rate.log" >&2; exit 1; }
  echo "($(( $(date +%s) - start )) s, log in out/bench-firstboot-vm-$rate.log)" >&2
done
for rate in "${rates[@]}"; do
  cat "out/bench-firstboot-vm-$rate.txt"
  echo
done
