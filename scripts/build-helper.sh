#!/usr/bin/env bash
# Build the static first-boot helper and print its path.
# musl first; where that target is refused, a static glibc build.
# Profile `helper` (Cargo.toml): opt-level "z" with sha2 at 3. The musl build
# links non-PIE (`relocation-model=static`): no run-time relocations, about
# 150 KB smaller; the helper runs once as root at first boot, so ASLR of its
# own code buys little there.
set -euo pipefail
cd "$(dirname "$0")/.."
if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  target=x86_64-unknown-linux-musl
  RUSTFLAGS="-C relocation-model=static -C target-feature=+crt-static" \
    cargo build --profile helper --no-default-features --bin cube-firstboot --target "$target" >&2
else
  target=x86_64-unknown-linux-gnu
  RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --profile helper --no-default-features --bin cube-firstboot --target "$target" >&2
fi
bin="target/$target/helper/cube-firstboot"
file "$bin" | grep -q 'static' || { echo "$bin is not statically linked" >&2; exit 1; }
size=$(stat -c %s "$bin")
# The budget from issue 3; fail loudly rather than ship a bigger helper.
if [ "$size" -gt $((5 * 1024 * 1024 / 2)) ]; then
  echo "$bin is $size bytes, over the 2.5 MiB budget" >&2
  exit 1
fi
echo "$bin"
