#!/usr/bin/env bash
# What the arm64 guest does differently from the x86 one after
# guest/customize.sh ran (tests/e2e/guest-image.sh --arch aarch64). Args: ROOTFS ESP_ID.
set -euo pipefail
root="$1"
esp_id="$2"

# qemu's virt machine has a PL011 UART: the console is ttyAMA0, not ttyS0.
# GRUB for arm64-efi writes to the firmware's console, which is that UART.
cat > "$root/etc/default/grub" <<'CFG'
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyAMA0,115200n8"
GRUB_TERMINAL=console
CFG
sed -i 's#^TTYPath=/dev/ttyS0$#TTYPath=/dev/ttyAMA0#' "$root/etc/systemd/system/e2e-report.service"
grep -qx 'TTYPath=/dev/ttyAMA0' "$root/etc/systemd/system/e2e-report.service"
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyAMA0.service"

# The EFI system partition, mounted where grub-install put GRUB, as on
# Debian's arm64 cloud images.
echo "UUID=${esp_id:0:4}-${esp_id:4:4} /boot/efi vfat umask=0077 0 0" >> "$root/etc/fstab"
