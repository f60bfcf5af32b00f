#!/usr/bin/env bash
# mmdebstrap customize hook: make the rootfs behave like a Debian cloud image
# under test. Args: ROOTFS ROOT_UUID. Every setting cites why.
set -euo pipefail
root="$1"
uuid="$2"
here="$(cd "$(dirname "$0")" && pwd)"

echo "UUID=$uuid / ext4 errors=remount-ro 0 1" > "$root/etc/fstab"
echo cubeboot-e2e > "$root/etc/hostname"
printf '127.0.0.1 localhost\n' > "$root/etc/hosts"

# Debian's own MODULES=most stays, as on a Debian cloud image: the helper
# builds the PVM kernel's initramfs host-only (MODULES=dep) by itself
# (docs/pvm-kernel.md, "The initramfs"), and the VM tier checks that it
# does. Installing a kernel in the TCG guest takes ~80 s host-only and
# ~6.5 min with `most` (tests/e2e/README.md, "Recipe notes").
grep -qx 'MODULES=most' "$root/etc/initramfs-tools/initramfs.conf"

# Nothing may reach Debian's mirror from the guest, and background jobs only
# steal the 2 emulated CPUs from the run.
for unit in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer \
            fstrim.timer dpkg-db-backup.timer logrotate.timer; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done

# kexec-tools' own reboot handling off (LOAD_KEXEC=false, what its debconf
# question sets when answered no): a plain `systemctl reboot` stays a
# firmware reboot, and only the helper stages a kernel, for its trial boot.
if [[ -f "$root/etc/default/kexec" ]]; then
  sed -i 's/^LOAD_KEXEC=.*/LOAD_KEXEC=false/' "$root/etc/default/kexec"
  grep -qx 'LOAD_KEXEC=false' "$root/etc/default/kexec"
fi

# Only the NoCloud seed drive (and None as a fallback) is a datasource here.
cat > "$root/etc/cloud/cloud.cfg.d/99-e2e-datasource.cfg" <<'CFG'
datasource_list: [ NoCloud, None ]
CFG

# GRUB and the kernel on the serial console: the test reads that console.
# The builder edits GRUB_CMDLINE_LINUX (docs/pvm-kernel.md), so the console settings
# stay in it and the test sees whether they survive the merge.
cat > "$root/etc/default/grub" <<'CFG'
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL="serial console"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
CFG
# One line per GRUB start, so the test counts boots from the serial log even
# when a kernel dies before userspace.
install -m 0755 "$here/01_e2e_marker" "$root/etc/grub.d/01_e2e_marker"

# Keep boot 1's journal for the checks made after the reboot.
mkdir -p "$root/var/log/journal"

# The reporter: test instrumentation, not part of the product.
install -m 0755 "$here/e2e-report" "$root/usr/local/sbin/e2e-report"
install -m 0644 "$here/e2e-report.service" "$root/etc/systemd/system/e2e-report.service"
ln -sf /etc/systemd/system/e2e-report.service "$root/etc/systemd/system/multi-user.target.wants/e2e-report.service"

# A clean first boot: no machine-id (systemd makes one), no cloud-init state.
: > "$root/etc/machine-id"
rm -rf "$root/var/lib/cloud/"*
rm -f "$root/var/cache/apt/archives/"*.deb

# The reporter owns the serial console; a login prompt would only interleave
# with its lines.
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"

# cloud-init's locale module sets en_US.UTF-8 and fails the boot's status
# when the locale is not generated (measured: `cloud-init status` said
# "error" on a minbase rootfs). Debian's cloud images ship it generated.
sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' "$root/etc/locale.gen"
chroot "$root" locale-gen >/dev/null
echo 'LANG=en_US.UTF-8' > "$root/etc/default/locale"

# Fixture-bundle knobs for the helper's units (test instrumentation). Both
# units: after its reboot the helper runs as cube-firstboot-resume.service
# (templates/cube-firstboot-resume.service), and the Cube stage runs there.
for unit in cube-firstboot.service cube-firstboot-resume.service; do
  install -D -m 0644 "$here/e2e-fixture-env.conf" \
    "$root/etc/systemd/system/$unit.d/e2e-fixture-env.conf"
done
