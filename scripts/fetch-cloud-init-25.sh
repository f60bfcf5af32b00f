#!/usr/bin/env bash
# Fetch Debian 13's cloud-init (25.x) and unpack it under DIR (default
# target/cloud-init-trixie), without touching the system's apt state
# (docs/payloads.md, "cloud-init"). It is pure Python and runs
# on Debian 12's python3 with the modules Debian 12's cloud-init pulled in:
#   PYTHONPATH=DIR/usr/lib/python3/dist-packages python3 DIR/usr/bin/cloud-init schema --config-file F
# Prints DIR. Network: the Debian mirror only, through apt.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=$(realpath -m "${1:-target/cloud-init-trixie}")
if [ -x "$dest/usr/bin/cloud-init" ]; then echo "$dest"; exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/sources" "$work/lists/partial" "$work/archives/partial"
cat > "$work/sources/trixie.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
apt_opts=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$work/sources"
  -o Dir::State::Lists="$work/lists" -o Dir::Cache::Archives="$work/archives"
  -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update -qq >&2
(cd "$work" && apt-get "${apt_opts[@]}" download cloud-init >&2)
rm -rf "$dest.tmp"
dpkg-deb -x "$work"/cloud-init_*.deb "$dest.tmp"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "$dest"
