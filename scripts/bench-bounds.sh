#!/usr/bin/env bash
# Hostile input to the builder is refused fast and small (issue 11 items 10
# and 11), measured on this machine:
#  1. a profile of 100,000 nested `[`: wall time and peak RSS of
#     `cubeboot profiles` (refused before parsing, at its line);
#  2. a .deb whose data.tar.xz declares a 1.5 GiB xz dictionary (the block
#     header's LZMA2 property; the data itself is MIB MiB of zeros, 256
#     by default): `cubeboot lock` against `xz -dc` of the same member, which
#     fills as much of that dictionary as the data is long.
# The binary is the debug build `cargo test` uses: an upper bound for
# release.
#
#   scripts/bench-bounds.sh [MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-256}
cargo build --quiet --bin cubeboot
bin=$(cargo build --bin cubeboot --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*\/cubeboot\)".*/\1/p' | tail -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== 100,000 nested [ in a profile"
mkdir "$work/profiles"
python3 -c "print('version: 1\nx: ' + '[' * 100000)" >"$work/profiles/deep.yaml"
/usr/bin/time -f 'cubeboot profiles: %e s, peak RSS %M KiB' \
  "$bin" profiles --profiles-dir "$work/profiles" 2>&1 | grep -E '^(error|  -->|cubeboot profiles:)' || true

echo "== .deb with a 1.5 GiB xz dictionary, $mib MiB of data"
kver=6.6.69-pvm.host
deb="$work/linux-image-${kver}_1_amd64.deb"
python3 - "$mib" "$deb" "$kver" <<'EOF'
import io, lzma, struct, sys, tarfile, zlib

mib, out, kver = int(sys.argv[1]), sys.argv[2], sys.argv[3]

def tar_of(files):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return b.getvalue()

def xz(data, dict_prop=None):
    """xz stream; with dict_prop, its block header claims that dictionary
    (the .xz format: block header, LZMA2 filter properties, CRC32)."""
    out = bytearray(lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
        filters=[{"id": lzma.FILTER_LZMA2, "preset": 0, "dict_size": 1 << 20}]))
    if dict_prop is not None:
        size = (out[12] + 1) * 4
        hdr = out[12:12 + size]
        i = 2
        def varint(i):
            v = s = 0
            while True:
                c = hdr[i]
                v |= (c & 0x7F) << s
                s += 7
                i += 1
                if not c & 0x80:
                    return v, i
        for bit in (0x40, 0x80):  # optional compressed / uncompressed sizes
            if hdr[1] & bit:
                _, i = varint(i)
        fid, i = varint(i)
        plen, i = varint(i)
        assert fid == 0x21 and plen == 1, (fid, plen)
        hdr[i] = dict_prop
        hdr[size - 4:] = struct.pack("<I", zlib.crc32(bytes(hdr[:size - 4])))
        out[12:12 + size] = hdr
    return bytes(out)

def ar(members):
    o = bytearray(b"!<arch>\n")
    for name, data in members:
        o += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        o += data + (b"\n" if len(data) % 2 else b"")
    return bytes(o)

control = tar_of([("./control", b"Package: linux-image-bomb\nVersion: 1\nArchitecture: amd64\n")])
data = tar_of([(f"./boot/vmlinuz-{kver}", b"\0" * (mib << 20))])
# LZMA2 dictionary property 37: 3 * 2^29 bytes = 1.5 GiB.
open(out, "wb").write(ar([("debian-binary", b"2.0\n"), ("control.tar.xz", xz(control)),
                          ("data.tar.xz", xz(data, 37))]))
EOF
echo "package: $(stat -c %s "$deb") bytes"
/usr/bin/time -f 'cubeboot lock: %e s, peak RSS %M KiB' \
  "$bin" lock --asset "$deb" --base-url https://bench.invalid/ --output "$work/x.lock" 2>&1 |
  grep -E '^(error|cubeboot lock:)' || true
(cd "$work" && ar p "$deb" data.tar.xz >data.tar.xz)
/usr/bin/time -f 'xz -dc: %e s, peak RSS %M KiB' xz -dc "$work/data.tar.xz" 2>&1 >/dev/null | tail -1
