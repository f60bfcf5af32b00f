#!/usr/bin/env bash
# Build (or reuse) the VM tier's fixture "PVM kernel" packages and print the
# directory holding them:
#   good/<name>.deb    Debian's linux-image-6.1.0-50-amd64, repackaged with a
#                      REAL loadable kvm_pvm module (tests/e2e/kvm-pvm/) at
#                      /lib/modules/KVER/kernel/arch/x86/kvm/kvm-pvm.ko;
#   broken/<name>.deb  the same, plus a postinst step that replaces the
#                      kernel's initrd with one whose /init cannot run, so the
#                      kernel panics at once ("No working init found") and
#                      `panic=N` reboots into GRUB's saved default;
#   kernel.env         KVER and package facts.
#
# A second, older Debian ABI than the guest's default kernel, so GRUB's
# newest-first order never picks it by accident (tests/e2e/README.md,
# "Recipe notes"). Its release lacks `pvm.host`: the lock takes
# --allow-non-pvm-kernel for it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${E2E_CACHE:-$here/cache}"

abi=6.1.0-50
flavour=amd64
kver="$abi-$flavour"
upstream_version=6.1.176-1
fixture_suffix=+e2e1
pkg="linux-image-$kver"

key="$(cat "$0" "$here/kvm-pvm/"* | sha256sum | cut -c1-16)"
out="$cache/kernel-$key"
mkdir -p "$cache"
exec 9>"$cache/.kernel.lock"
flock 9
if [[ -s "$out/kernel.env" ]]; then
  echo "$out"
  exit 0
fi

log() { printf '[fixture-kernel %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
mkdir -p "$cache"
work="$(mktemp -d "$cache/.kernel-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# 1. Debian's packages, by name and exact version, through apt's own client.
log "apt-get download $pkg and its headers ($upstream_version)"
mkdir -p "$work/debs"
(cd "$work/debs" && apt-get download -q \
  "$pkg=$upstream_version" \
  "linux-headers-$kver=$upstream_version" \
  "linux-headers-$abi-common=$upstream_version" \
  "linux-kbuild-6.1=$upstream_version" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2)

# 2. kvm_pvm, out of tree, against that kernel's headers. The headers'
#    Makefile includes the common tree by absolute path; point it at ours.
log "building kvm-pvm.ko against $kver headers"
mkdir -p "$work/hdr" "$work/mod"
for deb in "$work/debs"/linux-headers-* "$work/debs"/linux-kbuild-*; do
  dpkg-deb -x "$deb" "$work/hdr"
done
sed -i "s#^include /usr/src/#include $work/hdr/usr/src/#" "$work/hdr/usr/src/linux-headers-$kver/Makefile"
cp "$here/kvm-pvm/kvm-pvm.c" "$here/kvm-pvm/Kbuild" "$work/mod/"
make -s -C "$work/hdr/usr/src/linux-headers-$kver" M="$work/mod" modules 2>&1 \
  | grep -v 'Skipping BTF generation' >&2 || true
[[ -s "$work/mod/kvm-pvm.ko" ]] || { echo "fixture-kernel.sh: kvm-pvm.ko was not built" >&2; exit 1; }
strip --strip-debug "$work/mod/kvm-pvm.ko"
strings "$work/mod/kvm-pvm.ko" | grep -q "^vermagic=$kver " \
  || { echo "fixture-kernel.sh: kvm-pvm.ko vermagic is not $kver" >&2; exit 1; }

# 3. Repackage: the module goes where the PVM package carries it; the
#    original postinst runs depmod, so `modprobe kvm_pvm` finds it.
log "repackaging $pkg"
tree="$work/tree"
dpkg-deb -R "$work/debs/${pkg}_${upstream_version}_amd64.deb" "$tree"
grep -q "^depmod \$version" "$tree/DEBIAN/postinst" \
  || { echo "fixture-kernel.sh: upstream postinst no longer runs depmod" >&2; exit 1; }
moddir="lib/modules/$kver/kernel/arch/x86/kvm"
install -D -m 0644 "$work/mod/kvm-pvm.ko" "$tree/$moddir/kvm-pvm.ko"
(cd "$tree" && md5sum "$moddir/kvm-pvm.ko") >> "$tree/DEBIAN/md5sums"

build_deb() { # VARIANT VERSION TREE
  local variant="$1" version="$2" dir="$3"
  sed -i "s/^Version: .*/Version: $version/" "$dir/DEBIAN/control"
  sed -i "s/^Installed-Size: .*/Installed-Size: $(du -sk --exclude=DEBIAN "$dir" | cut -f1)/" "$dir/DEBIAN/control"
  mkdir -p "$work/out/$variant"
  # xz like Debian's own packages (every reader handles it); level 1 keeps
  # the one-time build to seconds.
  dpkg-deb --root-owner-group -Zxz -z1 -b "$dir" "$work/out/$variant/${pkg}_${version}_amd64.deb" >/dev/null
}
good_version="$upstream_version$fixture_suffix"
build_deb good "$good_version" "$tree"

# 4. Broken variant: same kernel and module; after the real postinst built
#    the initrd, put a tiny one in its place whose /init names a missing
#    interpreter. The kernel finds no working init and panics immediately.
log "building the broken variant"
initrd_dir="$work/broken-initrd"
mkdir -p "$initrd_dir"
printf '#!/nonexistent/sh\n# cubeboot e2e fixture: this init cannot run; the kernel panics.\n' > "$initrd_dir/init"
chmod 0755 "$initrd_dir/init"
share="usr/share/cubeboot-e2e"
mkdir -p "$tree/$share"
(cd "$initrd_dir" && find . | LC_ALL=C sort | cpio -o -H newc --quiet --reproducible | gzip -n9) > "$tree/$share/broken-initrd.img"
(cd "$tree" && md5sum "$share/broken-initrd.img") >> "$tree/DEBIAN/md5sums"
# Last in the upstream postinst, after its hooks: grub.cfg only names the
# initrd file, so replacing the file afterwards leaves the hooks untouched.
sed -i "s#^exit 0\$#cp /$share/broken-initrd.img /boot/initrd.img-\$version\nexit 0#" "$tree/DEBIAN/postinst"
grep -q "broken-initrd.img /boot/initrd.img-" "$tree/DEBIAN/postinst"
build_deb broken "$good_version.broken" "$tree"

cat > "$work/out/kernel.env" <<EOF
FIXTURE_KVER=$kver
FIXTURE_PACKAGE=$pkg
FIXTURE_GOOD_VERSION=$good_version
FIXTURE_GOOD_DEB=good/${pkg}_${good_version}_amd64.deb
FIXTURE_BROKEN_VERSION=$good_version.broken
FIXTURE_BROKEN_DEB=broken/${pkg}_${good_version}.broken_amd64.deb
EOF
rm -rf "$out"
mv "$work/out" "$out"
find "$cache" -maxdepth 1 -name 'kernel-*' ! -name "kernel-$key" -exec rm -rf {} +
log "fixture kernels ready: $out"
echo "$out"
