#!/usr/bin/env bash
# Rebuilds the example release shipped in the repo and pins it in
# examples/release/cubeboot.lock with the real `cubeboot lock`:
#   - the fixture PVM host kernel .rpm and .deb (tests/fixtures/kernel/make.sh)
#   - the fixture one-click bundle (tests/fixtures/bundle/make.sh)
#   - the static first-boot helper (scripts/build-helper.sh), copied here
# The kernel and bundle recipes are deterministic; the helper is as
# reproducible as the Rust toolchain makes it. Commit the results together:
# the lock pins these exact bytes and `cubeboot check --lock` re-hashes them.
#
#   examples/release/make.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
cd "${repo}"

tests/fixtures/kernel/make.sh
tests/fixtures/bundle/make.sh
helper="$(scripts/build-helper.sh)"
install -m 0755 "${helper}" "${here}/cube-firstboot"

# The tag gives each asset its GitHub URL and CN mirror, the shape a real
# release has; targets that cannot reach them use `build --mirror URL`.
cargo run --quiet --release -- lock \
  --tag v0.0.0-fixture \
  --asset "${here}"/kernel-*.x86_64.rpm \
  --asset "${here}"/linux-image-*_amd64.deb \
  --asset "${here}"/cube-sandbox-one-click-*-amd64.tar.gz \
  --asset "${here}/cube-firstboot" \
  --output "${here}/cubeboot.lock"
cargo run --quiet --release -- check --strict --lock "${here}/cubeboot.lock"
