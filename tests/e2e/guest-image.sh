#!/usr/bin/env bash
# Build (or reuse) the Debian 12 guest disk for the VM tier and print the
# directory holding it: disk.img (raw, MBR + ext4 root, GRUB for BIOS) and
# guest.env (default kernel release, root filesystem UUID).
#
# Cached under tests/e2e/cache/guest-<hash of this recipe and its inputs>/,
# so an edit to the recipe rebuilds and anything else reuses. Runs never write
# to disk.img: each boot uses a qcow2 overlay on it.
#
# Measured recipe: tests/e2e/README.md ("Recipe notes"), loop-device
# path. Needs root, mmdebstrap, losetup, sfdisk.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${E2E_CACHE:-$here/cache}"

# What the guest carries. The first group is a Debian cloud image's minimum
# (cloud-init, GRUB, a kernel, DHCP); the second is what the debian-12
# profile's Cube prereq step would otherwise download from Debian's mirror,
# which the guest must never reach (the test network only leads to the
# test's own server on 10.0.2.2). profiles/debian-12.yaml lists curl, tar,
# gawk, xfsprogs, iproute2, python3, docker.io, docker-compose; the Cube
# prereq step also wants resolvectl (systemd-resolved) on a control node, or
# it installs dnsmasq; nftables for hardening with allow_from (the cluster
# scenario). kexec-tools: the helper's trial boot by kexec (plan `reboot:
# kexec`, docs/bootloader.md); without it the helper reboots through the
# firmware.
packages=(
  systemd-sysv udev dbus linux-image-amd64 grub-pc cloud-init ifupdown
  isc-dhcp-client curl ca-certificates e2fsprogs kmod initramfs-tools zstd
  sudo locales
  python3 xfsprogs iproute2 tar gawk sed grep procps util-linux
  docker.io docker-compose systemd-resolved nftables kexec-tools
)

key_inputs() {
  cat "$0" "$here/guest/"*
  printf '%s\n' "${packages[@]}"
  # The mirror's content changes over time; the cache is per recipe, not per
  # mirror snapshot, on purpose (a rebuild costs a minute, a stale image none).
}
key="$(key_inputs | sha256sum | cut -c1-16)"
out="$cache/guest-$key"
# Two test threads may ask at once: one builds, the other waits and reuses.
mkdir -p "$cache"
exec 9>"$cache/.guest.lock"
flock 9
if [[ -s "$out/disk.img" && -s "$out/guest.env" ]]; then
  echo "$out"
  exit 0
fi

[[ $EUID -eq 0 ]] || { echo "guest-image.sh: needs root (real file ownership, loop devices)" >&2; exit 1; }
mkdir -p "$cache"
work="$(mktemp -d "$cache/.guest-build.XXXXXX")"
mnt="$work/mnt"
loop=""
cleanup() {
  set +e
  for m in dev/pts dev proc sys; do
    mountpoint -q "$mnt/$m" && umount -l "$mnt/$m"
  done
  # Lazy: a killed mmdebstrap may still hold files open; the mount must not
  # outlive this script either way.
  mountpoint -q "$mnt" && umount -l "$mnt"
  [[ -n "$loop" ]] && losetup -d "$loop"
  rm -rf "$work"
}
trap cleanup EXIT

log() { printf '[guest-image %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# 1. Disk: MBR, one bootable Linux partition from sector 2048, ext4 with a
#    fixed UUID so the recipe hash fully determines the disk layout.
root_uuid="$(printf '%s' "$key" | sha256sum | sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12}).*/\1-\2-4\3-8\4-\5/')"
truncate -s 8G "$work/disk.img"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$work/disk.img"
loop="$(losetup --show -f -P "$work/disk.img")"
part="${loop}p1"
# No udev here: the partition node may appear late or not at all.
for _ in $(seq 50); do
  [[ -b "$part" ]] && break
  partx -a "$loop" 2>/dev/null || true
  sleep 0.1
done
[[ -b "$part" ]] || { echo "guest-image.sh: $part never appeared" >&2; exit 1; }
mkfs.ext4 -q -U "$root_uuid" -L root "$part"
mkdir -p "$mnt"
mount "$part" "$mnt"

# 2. Root filesystem straight into the mounted partition. The configured apt
#    sources are Debian's mirror (bookworm, -updates, -security).
log "mmdebstrap (${#packages[@]} packages)"
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/debian.sources; do
  [[ -s "$f" ]] && sources+=("$f")
done
(IFS=,; mmdebstrap --variant=minbase --mode=root --quiet \
  --include="${packages[*]}" \
  --customize-hook="$here/guest/customize.sh \"\$1\" $root_uuid" \
  bookworm "$mnt" "${sources[@]}")

# 3. GRUB for BIOS boot, configured by the guest's own update-grub so the
#    menu entries carry Debian's ids (gnulinux-<kver>-advanced-<uuid>), as on
#    a real Debian cloud image.
log "grub-install and update-grub"
mount --bind /dev "$mnt/dev"
mount --bind /dev/pts "$mnt/dev/pts"
mount -t proc proc "$mnt/proc"
mount -t sysfs sys "$mnt/sys"
# grub-mkconfig writes root=UUID only when /dev/disk/by-uuid has the link,
# which udev would make; there is no udev here.
chroot "$mnt" grub-install --target=i386-pc --modules="part_msdos ext2" "$loop" 2>&1 | grep -v '^Installation finished' >&2 || true
chroot "$mnt" update-grub 2>/dev/null
sed -i "s#root=$part #root=UUID=$root_uuid #g" "$mnt/boot/grub/grub.cfg"
grep -q "root=UUID=$root_uuid" "$mnt/boot/grub/grub.cfg" || { echo "guest-image.sh: grub.cfg has no root=UUID" >&2; exit 1; }
if grep -q "$loop" "$mnt/boot/grub/grub.cfg"; then
  echo "guest-image.sh: grub.cfg still names $loop" >&2
  exit 1
fi
for m in dev/pts dev proc sys; do umount "$mnt/$m"; done

default_kver="$(basename "$(readlink -f "$mnt/vmlinuz")" | sed 's/^vmlinuz-//')"
rootfs_mib="$(du -sm "$mnt" | cut -f1)"
umount "$mnt"
losetup -d "$loop"
loop=""

cat > "$work/guest.env" <<EOF
GUEST_DEFAULT_KVER=$default_kver
GUEST_ROOT_UUID=$root_uuid
GUEST_ROOTFS_MIB=$rootfs_mib
EOF
# Publish atomically: a half-built directory never looks like a cache hit.
rm -rf "$out.tmp"
mkdir -p "$out.tmp"
mv "$work/disk.img" "$work/guest.env" "$out.tmp/"
rm -rf "$out"
mv "$out.tmp" "$out"
# Older recipes' disks are dead weight (8 GiB sparse each).
find "$cache" -maxdepth 1 -name 'guest-*' ! -name "guest-$key" -exec rm -rf {} +
log "guest image ready: $out (default kernel $default_kver, rootfs ${rootfs_mib} MiB)"
echo "$out"
