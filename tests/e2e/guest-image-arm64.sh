#!/usr/bin/env bash
# Build (or reuse) the Debian 12 arm64 guest disk for the VM tier's aarch64
# scenario and print the directory holding it: disk.img (raw, GPT: an EFI
# system partition with GRUB at the removable-media path, ext4 root) and
# guest.env (kernel release, root filesystem UUID).
#
# Without binfmt_misc the host cannot run arm64 maintainer scripts, so the
# bootstrap is done in two stages, as debootstrap was made for:
#   1. on the host: `debootstrap --foreign --arch=arm64` downloads every
#      package from Debian's mirror and extracts the essential ones;
#   2. in qemu-system-aarch64 (TCG): the Debian kernel from stage 1 boots
#      with the whole stage-1 tree as its initramfs and runs
#      guest-arm64/stage2.sh, which finishes `debootstrap --second-stage`,
#      applies the x86 guest's customization (guest/customize.sh) and the
#      arm64 differences, copies the tree onto the disk and installs GRUB
#      for arm64-efi. Nothing in the guest reaches the network (-nic none).
# The result boots with Debian's UEFI firmware (qemu-efi-aarch64, AAVMF).
#
# Cached under tests/e2e/cache/arm64-guest-<hash of this recipe and its
# inputs>/ (not guest-*: guest-image.sh deletes every other guest-* there). Runs never write to disk.img: each boot uses a qcow2 overlay.
# Needs root, debootstrap, qemu-system-aarch64, sfdisk, mkfs.vfat, cpio.
# E2E_QEMU_LOCK=FILE runs qemu under `flock FILE` (one guest at a time on a
# shared machine) without holding the lock while debootstrap downloads.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${E2E_CACHE:-$here/cache}"
mirror="http://deb.debian.org/debian"

# The x86 guest's package list (guest-image.sh says why each is there) with
# the arm64 kernel and boot loader: the `cloud` flavour is Debian's smallest
# arm64 kernel and has KVM built in (CONFIG_KVM=y); grub-efi-arm64 is what
# Debian's arm64 cloud images boot with.
packages=(
  systemd-sysv udev dbus linux-image-cloud-arm64 grub-efi-arm64 cloud-init ifupdown
  isc-dhcp-client curl ca-certificates e2fsprogs kmod initramfs-tools zstd
  sudo locales
  python3 xfsprogs iproute2 tar gawk sed grep procps util-linux
  docker.io docker-compose systemd-resolved nftables
)

key_inputs() {
  cat "$0" "$here/guest/"* "$here/guest-arm64/"*
  printf '%s\n' "${packages[@]}"
}
key="$(key_inputs | sha256sum | cut -c1-16)"
out="$cache/arm64-guest-$key"
mkdir -p "$cache"
exec 9>"$cache/.guest-arm64.lock"
flock 9
if [[ -s "$out/disk.img" && -s "$out/guest.env" ]]; then
  echo "$out"
  exit 0
fi

[[ $EUID -eq 0 ]] || { echo "guest-image-arm64.sh: needs root (real file ownership)" >&2; exit 1; }
work="$(mktemp -d "$cache/.guest-arm64-build.XXXXXX")"
trap '[[ -n "${E2E_KEEP_WORK:-}" ]] || rm -rf "$work"' EXIT
log() { printf '[guest-image-arm64 %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# 1. Stage 1 on the host: download and extract (no maintainer scripts).
log "debootstrap --foreign --arch=arm64 (${#packages[@]} packages)"
root="$work/root"
(IFS=,; debootstrap --foreign --arch=arm64 --variant=minbase \
  --include="${packages[*]}" bookworm "$root" "$mirror") > "$work/debootstrap.log" 2>&1 \
  || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
# Unpacking is what stage 2 spends its time on, and most of that is
# decompressing data.tar.xz under TCG (natively ~9 of the 10 CPU seconds
# `dpkg-deb -x` takes for this set). Repacked uncompressed here, after
# debootstrap verified them against the mirror's signed index; dpkg in the
# guest installs the same control and data members.
log "repacking $(find "$root/var/cache/apt/archives" -name '*.deb' | wc -l) packages uncompressed"
raw="$work/raw"
for deb in "$root"/var/cache/apt/archives/*.deb; do
  rm -rf "$raw"
  dpkg-deb -R "$deb" "$raw"
  dpkg-deb --nocheck -Znone -b "$raw" "$deb.new" >/dev/null 2>&1 \
    || { echo "guest-image-arm64.sh: repacking ${deb##*/} failed" >&2; exit 1; }
  mv "$deb.new" "$deb"
done
rm -rf "$raw"
kernel_deb="$(find "$root/var/cache/apt/archives" -name 'linux-image-6*-cloud-arm64_*.deb' | head -n 1)"
[[ -n "$kernel_deb" ]] || { echo "guest-image-arm64.sh: no linux-image deb downloaded" >&2; exit 1; }
dpkg-deb -x "$kernel_deb" "$work/kernel"
vmlinuz="$(find "$work/kernel/boot" -name 'vmlinuz-*' | head -n 1)"
kver="${vmlinuz##*/vmlinuz-}"

# The disk's identity follows from the recipe hash, like the x86 guest's.
root_uuid="$(printf '%s' "$key" | sha256sum | sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12}).*/\1-\2-4\3-8\4-\5/')"
esp_id="$(printf '%s' "$key" | sha256sum | cut -c1-8 | tr a-f A-F)"

# What stage 2 needs inside the tree: its script, the shared guest files and
# the arm64 ones, and the facts it cannot work out itself.
mkdir -p "$root/e2e"
cp -a "$here/guest" "$here/guest-arm64" "$root/e2e/"
# debootstrap links proc to the host's /proc when it runs in a container;
# stage 2 mounts its own there.
if [[ -L "$root/proc" ]]; then rm -f "$root/proc"; mkdir "$root/proc"; fi
# PID 1 writes to /dev/console; the kernel opens it from the initramfs.
[[ -c "$root/dev/console" ]] || { mkdir -p "$root/dev"; mknod -m 600 "$root/dev/console" c 5 1; }
cat > "$root/e2e/stage2.env" <<EOF
ROOT_UUID=$root_uuid
ESP_ID=$esp_id
KVER=$kver
EOF

# 2. Disk: GPT, a 64 MiB EFI system partition, the rest ext4 root. Stage 2
#    fills both; the host only lays them out (no loop devices needed).
truncate -s 8G "$work/disk.img"
printf 'label: gpt\nstart=2048, size=131072, type=U\ntype=L\n' | sfdisk -q "$work/disk.img"
root_start="$(sfdisk -J "$work/disk.img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitiontable"]["partitions"][1]["start"])')"
root_sectors="$(sfdisk -J "$work/disk.img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitiontable"]["partitions"][1]["size"])')"
mkfs.vfat --invariant -F 32 -s 1 --offset 2048 -i "$esp_id" -n ESP "$work/disk.img" $((131072 / 2)) >/dev/null 2>&1
mkfs.ext4 -q -F -U "$root_uuid" -L root -E offset=$((root_start * 512)) "$work/disk.img" $((root_sectors / 2))k

# 3. Stage 2 in the guest: the stage-1 tree as an uncompressed initramfs
#    (decompressing under TCG costs more than reading the larger file).
log "initramfs of the stage-1 tree"
(cd "$root" && find . -xdev -print0 | cpio --null -o -H newc --quiet) > "$work/stage2.cpio"
rm -rf "$root"
log "stage 2 in qemu-system-aarch64 (TCG; debootstrap --second-stage, customize, GRUB)"
# -m 8192: the whole tree (the packages uncompressed, then the installed
# system) lives in the initramfs's tmpfs, which may take half the RAM.
qemu=(timeout 45m qemu-system-aarch64 -M virt -accel tcg,thread=multi
  -cpu max,pauth-impdef=on -smp 2 -m 8192
  -display none -monitor none -serial stdio -no-user-config -nodefaults -no-reboot
  -nic none
  -kernel "$vmlinuz" -initrd "$work/stage2.cpio"
  -append "rdinit=/e2e/guest-arm64/stage2.sh console=ttyAMA0 panic=-1"
  -drive "file=$work/disk.img,if=virtio,format=raw,cache=unsafe")
if [[ -n "${E2E_QEMU_LOCK:-}" ]]; then
  qemu=(flock "$E2E_QEMU_LOCK" "${qemu[@]}")
fi
start=$SECONDS
"${qemu[@]}" < /dev/null > "$work/stage2.log" 2>&1 || true
log "stage 2 took $((SECONDS - start)) s"
if ! grep -q '^@@STAGE2 ok' "$work/stage2.log"; then
  echo "guest-image-arm64.sh: stage 2 did not finish; its console:" >&2
  tail -n 60 "$work/stage2.log" >&2
  exit 1
fi
rootfs_mib="$(sed -n 's/^@@STAGE2 ok rootfs_mib=\([0-9]*\).*/\1/p' "$work/stage2.log")"

cat > "$work/guest.env" <<EOF
GUEST_DEFAULT_KVER=$kver
GUEST_ROOT_UUID=$root_uuid
GUEST_ROOTFS_MIB=$rootfs_mib
EOF
# Publish atomically: a half-built directory never looks like a cache hit.
rm -rf "$out.tmp"
mkdir -p "$out.tmp"
mv "$work/disk.img" "$work/guest.env" "$work/stage2.log" "$out.tmp/"
rm -rf "$out"
mv "$out.tmp" "$out"
find "$cache" -maxdepth 1 -name 'arm64-guest-*' ! -name "arm64-guest-$key" -exec rm -rf {} +
log "arm64 guest image ready: $out (kernel $kver, rootfs ${rootfs_mib} MiB)"
echo "$out"
