#!/usr/bin/env bash
# Build the static first-boot helper and print its path.
# musl first; where that target is refused, a static glibc build.
set -euo pipefail
cd "$(dirname "$0")/.."
if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  target=x86_64-unknown-linux-musl
  cargo build --release --no-default-features --bin cube-firstboot --target "$target" >&2
else
  target=x86_64-unknown-linux-gnu
  RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --no-default-features --bin cube-firstboot --target "$target" >&2
fi
bin="target/$target/release/cube-firstboot"
file "$bin" | grep -q 'static' || { echo "$bin is not statically linked" >&2; exit 1; }
echo "$bin"
