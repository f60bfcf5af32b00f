#!/usr/bin/env bash
# Build (or reuse) the Debian 12 guest disk for the VM tier and print the
# directory holding it: disk.img (raw) and guest.env (default kernel
# release, root filesystem UUID).
#   guest-image.sh                  x86_64: MBR + ext4 root, GRUB for BIOS
#   guest-image.sh --arch aarch64   arm64: GPT with an EFI system partition
#                                   (GRUB at the removable-media path) + ext4
#                                   root; boots with Debian's UEFI firmware
#                                   (qemu-efi-aarch64), like Debian's arm64
#                                   cloud images (tests/e2e/README.md, "The
#                                   aarch64 guest")
#
# Cached under tests/e2e/cache/guest-<hash of this recipe and its inputs>/
# (arm64-guest-<hash>/ for arm64), so an edit to the recipe rebuilds and
# anything else reuses. Runs never write to disk.img: each boot uses a qcow2
# overlay on it.
#
# Measured recipe: tests/e2e/README.md ("Recipe notes"), loop-device
# path. Needs root, mmdebstrap, losetup, sfdisk; for arm64 also
# qemu-user-static registered in binfmt_misc (.ci/run does that), so
# mmdebstrap runs the arm64 maintainer scripts through qemu-user.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${E2E_CACHE:-$here/cache}"
arch=amd64
case "${1:-}:${2:-}" in
  :) ;;
  --arch:x86_64|--arch:amd64) ;;
  --arch:aarch64|--arch:arm64) arch=arm64 ;;
  *) echo "usage: guest-image.sh [--arch x86_64|aarch64]" >&2; exit 2 ;;
esac

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
  systemd-sysv udev dbus cloud-init ifupdown
  isc-dhcp-client curl ca-certificates e2fsprogs kmod initramfs-tools zstd
  sudo locales
  python3 xfsprogs iproute2 tar gawk sed grep procps util-linux
  docker.io docker-compose systemd-resolved nftables
)
# The kernel and boot loader per architecture. arm64: the `cloud` flavour
# is Debian's smallest arm64 kernel and has KVM built in (CONFIG_KVM=y);
# grub-efi-arm64 is what Debian's arm64 cloud images boot with. An aarch64
# node never switches kernels (docs/arm64.md), so no kexec-tools there.
if [[ "$arch" == amd64 ]]; then
  packages+=(linux-image-amd64 grub-pc kexec-tools)
  prefix=guest
else
  packages+=(linux-image-cloud-arm64 grub-efi-arm64)
  prefix=arm64-guest
fi

key_inputs() {
  cat "$0" "$here/guest/"*
  [[ "$arch" == amd64 ]] || cat "$here/guest-arm64/"*
  printf '%s\n' "${packages[@]}"
  # The mirror's content changes over time; the cache is per recipe, not per
  # mirror snapshot, on purpose (a rebuild costs a minute, a stale image none).
}
key="$(key_inputs | sha256sum | cut -c1-16)"
out="$cache/$prefix-$key"
# Two test threads may ask at once: one builds, the other waits and reuses.
mkdir -p "$cache"
exec 9>"$cache/.$prefix.lock"
flock 9
if [[ -s "$out/disk.img" && -s "$out/guest.env" ]]; then
  echo "$out"
  exit 0
fi

[[ $EUID -eq 0 ]] || { echo "guest-image.sh: needs root (real file ownership, loop devices)" >&2; exit 1; }
if [[ "$arch" == arm64 ]] && ! grep -qs '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
  # F (fix binary): the interpreter is opened at registration, so it also
  # runs inside the chroot, which has no qemu of its own.
  echo "guest-image.sh: arm64 needs qemu-aarch64 in binfmt_misc with the F flag: apt-get install qemu-user-static; mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register (.ci/run does this)" >&2
  exit 1
fi
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

# 1. Disk, ext4 root with a fixed UUID so the recipe hash fully determines
#    the disk layout. x86_64: MBR, one bootable Linux partition from sector
#    2048. arm64: GPT, a 64 MiB EFI system partition (its vfat serial fixed
#    too), then the root.
root_uuid="$(printf '%s' "$key" | sha256sum | sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12}).*/\1-\2-4\3-8\4-\5/')"
esp_id="$(printf '%s' "$key" | sha256sum | cut -c1-8 | tr a-f A-F)"
truncate -s 8G "$work/disk.img"
if [[ "$arch" == amd64 ]]; then
  printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$work/disk.img"
else
  printf 'label: gpt\nstart=2048, size=131072, type=U\ntype=L\n' | sfdisk -q "$work/disk.img"
fi
loop="$(losetup --show -f -P "$work/disk.img")"
if [[ "$arch" == amd64 ]]; then part="${loop}p1"; esp=""; else esp="${loop}p1"; part="${loop}p2"; fi
# No udev here: the partition nodes may appear late or not at all.
for _ in $(seq 50); do
  [[ -b "$part" ]] && break
  partx -a "$loop" 2>/dev/null || true
  sleep 0.1
done
[[ -b "$part" ]] || { echo "guest-image.sh: $part never appeared" >&2; exit 1; }
mkfs.ext4 -q -U "$root_uuid" -L root "$part"
[[ -z "$esp" ]] || mkfs.vfat --invariant -F 32 -s 1 -i "$esp_id" -n ESP "$esp" >/dev/null
mkdir -p "$mnt"
mount "$part" "$mnt"

# 2. Root filesystem straight into the mounted partition. The configured apt
#    sources are Debian's mirror (bookworm, -updates, -security).
log "mmdebstrap (${#packages[@]} packages)"
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/debian.sources; do
  [[ -s "$f" ]] && sources+=("$f")
done
hooks=(--customize-hook="$here/guest/customize.sh \"\$1\" $root_uuid")
if [[ "$arch" == arm64 ]]; then
  # Before the kernel's postinst builds the image's initrd: only what this
  # machine needs to find its root (virtio-pci, virtio-blk; ext4 is built
  # in). MODULES=list keeps mkinitramfs from probing the root device (a
  # loop device here) and from packing Debian's `most` set, all compressed
  # by an emulated CPU. conf.d outranks initramfs.conf, where
  # guest/customize.sh writes MODULES=dep for the x86 guest's kernel switch.
  hooks=(--essential-hook="mkdir -p \"\$1/etc/initramfs-tools/conf.d\" \"\$1/etc/initramfs-tools/hooks\" && echo MODULES=list > \"\$1/etc/initramfs-tools/conf.d/e2e-arm64-modules.conf\" && install -m 0755 $here/guest-arm64/initramfs-virtio-hook \"\$1/etc/initramfs-tools/hooks/e2e-virtio\""
    "${hooks[@]}"
    --customize-hook="$here/guest-arm64/customize-arm64.sh \"\$1\" $esp_id")
fi
(IFS=,; mmdebstrap --variant=minbase --mode=root --quiet --arch="$arch" \
  --include="${packages[*]}" "${hooks[@]}" \
  bookworm "$mnt" "${sources[@]}")

# 3. GRUB (BIOS on x86_64, UEFI on arm64), configured by the guest's own
#    update-grub so the menu entries carry Debian's ids
#    (gnulinux-<kver>-advanced-<uuid>), as on a real Debian cloud image.
log "grub-install and update-grub"
mount --bind /dev "$mnt/dev"
mount --bind /dev/pts "$mnt/dev/pts"
mount -t proc proc "$mnt/proc"
mount -t sysfs sys "$mnt/sys"
# grub-mkconfig writes root=UUID only when /dev/disk/by-uuid has the link,
# which udev would make; there is no udev here.
if [[ "$arch" == amd64 ]]; then
  chroot "$mnt" grub-install --target=i386-pc --modules="part_msdos ext2" "$loop" 2>&1 | grep -v '^Installation finished' >&2 || true
else
  # This machine's kernel may not mount vfat, and grub-install wants the
  # EFI directory on a mounted FAT filesystem. So GRUB's EFI image is made
  # the way grub-install makes it (grub-mkimage: the modules to find and
  # read the root, an early config that finds it by UUID), written to the
  # system partition with mtools at the removable-media path
  # \EFI\BOOT\BOOTAA64.EFI, which the firmware boots without a boot entry
  # in NVRAM (each run's variable store starts empty); the other modules go
  # where that prefix points, as grub-install puts them.
  cat > "$mnt/tmp/grub-early.cfg" <<CFG
search --no-floppy --fs-uuid --set=root $root_uuid
set prefix=(\$root)/boot/grub
configfile \$prefix/grub.cfg
CFG
  chroot "$mnt" grub-mkimage -O arm64-efi -o /tmp/BOOTAA64.EFI -p /boot/grub \
    -c /tmp/grub-early.cfg part_gpt fat ext2 search search_fs_uuid configfile normal \
    linux echo test gzio efi_gop
  mkdir -p "$mnt/boot/grub"
  cp -a "$mnt/usr/lib/grub/arm64-efi" "$mnt/boot/grub/"
  mmd -i "$esp" ::/EFI ::/EFI/BOOT
  mcopy -i "$esp" "$mnt/tmp/BOOTAA64.EFI" ::/EFI/BOOT/BOOTAA64.EFI
  rm -f "$mnt/tmp/BOOTAA64.EFI" "$mnt/tmp/grub-early.cfg"
  mdir -i "$esp" ::/EFI/BOOT | grep -q BOOTAA64 || { echo "guest-image.sh: no BOOTAA64.EFI on the system partition" >&2; exit 1; }
fi
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
find "$cache" -maxdepth 1 -name "$prefix-*" ! -name "$prefix-$key" -exec rm -rf {} +
log "guest image ready: $out (default kernel $default_kver, rootfs ${rootfs_mib} MiB)"
echo "$out"
