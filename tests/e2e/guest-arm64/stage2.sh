#!/bin/sh
# Stage 2 of the arm64 guest image (tests/e2e/guest-image-arm64.sh), run as
# PID 1 of qemu-system-aarch64 with the stage-1 tree as its initramfs:
# finish debootstrap, customize, copy the tree onto the disk's root
# partition and install GRUB for UEFI. Prints `@@STAGE2 ok` at the end and
# powers off; any failure ends the guest without that line.
set -eu
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
. /e2e/stage2.env
mark() { echo "@@STAGE2 $* (uptime $(cut -d' ' -f1 /proc/uptime))"; }
end() {
  sync
  echo o > /proc/sysrq-trigger
  sleep 30
}
trap 'mark failed; end' EXIT

# debootstrap unmounts /proc, /sys and /dev/pts when it ends: mounted again
# after it, whatever it left.
mount_api() {
  [ -e /proc/uptime ] || mount -t proc proc /proc
  [ -e /sys/kernel ] || mount -t sysfs sys /sys
  [ -e /dev/null ] || mount -t devtmpfs dev /dev
  mkdir -p /dev/pts
  [ -e /dev/pts/ptmx ] || mount -t devpts devpts /dev/pts
}
mount_api
mount -t tmpfs tmpfs /run

# The image's own initrd: only what this machine needs to find its root
# (virtio-pci, virtio-blk; ext4 is built in). MODULES=list keeps
# mkinitramfs from probing the root device, which is a tmpfs here, and from
# copying Debian's `most` set (minutes under TCG). Set before the kernel's
# postinst builds the initrd; conf.d outranks initramfs.conf, where
# guest/customize.sh writes MODULES=dep for the x86 guest.
mkdir -p /etc/initramfs-tools/conf.d /etc/initramfs-tools/hooks
echo MODULES=list > /etc/initramfs-tools/conf.d/e2e-arm64-modules.conf
install -m 0755 /e2e/guest-arm64/initramfs-virtio-hook /etc/initramfs-tools/hooks/e2e-virtio

mark "second-stage start"
# Its log is in this tmpfs, gone when the guest stops: shown on failure.
/debootstrap/debootstrap --second-stage || {
  tail -n 80 /debootstrap/debootstrap.log
  exit 1
}
mount_api
mark "second-stage done"

# The x86 guest's customization, then what differs on arm64.
mkdir -p /etc/systemd/system/multi-user.target.wants
bash /e2e/guest/customize.sh / "$ROOT_UUID"
bash /e2e/guest-arm64/customize-arm64.sh / "$ESP_ID"
[ -e "/boot/initrd.img-$KVER" ] || update-initramfs -c -k "$KVER"
mark "customized"

# Copy onto the disk's root partition and install GRUB there.
modprobe virtio_pci
modprobe virtio_blk
for _ in $(seq 50); do [ -b /dev/vda2 ] && break; sleep 0.2; done
mount /dev/vda2 /mnt
cp -ax /. /mnt/
rm -rf /mnt/e2e /mnt/debootstrap
mkdir -p /mnt/proc /mnt/sys /mnt/dev /mnt/run /mnt/boot/efi
mount /dev/vda1 /mnt/boot/efi
for m in dev dev/pts proc sys run; do mount --bind "/$m" "/mnt/$m"; done
# grub-mkconfig writes root=UUID only when udev's by-uuid link exists.
mkdir -p /dev/disk/by-uuid
ln -sf ../../vda2 "/dev/disk/by-uuid/$ROOT_UUID"
# --removable: \EFI\BOOT\BOOTAA64.EFI, which the firmware boots without a
# boot entry in NVRAM (the VM's variable store starts empty each run).
chroot /mnt grub-install --target=arm64-efi --efi-directory=/boot/efi \
  --removable --no-nvram 2>&1 | grep -v '^Installation finished' || true
[ -s /mnt/boot/efi/EFI/BOOT/BOOTAA64.EFI ]
chroot /mnt update-grub
grep -q "root=UUID=$ROOT_UUID" /mnt/boot/grub/grub.cfg
rootfs_mib="$(du -smx /mnt | cut -f1)"
for m in run sys proc dev/pts dev boot/efi; do umount "/mnt/$m"; done
umount /mnt
trap - EXIT
mark "ok rootfs_mib=$rootfs_mib"
end
