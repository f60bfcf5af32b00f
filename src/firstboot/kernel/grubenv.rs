//! The GRUB environment block (grubenv), which both back ends use: GRUB's
//! `saved_entry` is the default and `next_entry` the one-shot trial boot,
//! whether the entry comes from grub.cfg (Debian) or a BLS snippet (RPM
//! family). Reading, the tools that edit it, and whether GRUB can write it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use super::grubcfg;
use crate::firstboot::host::{is_live_root, on_target, CommandSpec, Host};
use crate::plan::Bootloader;

/// Read grubenv (absent → empty).
pub(crate) fn read(host: &dyn Host, grubenv: &str) -> Result<BTreeMap<String, String>> {
    Ok(grubcfg::parse_grubenv(
        &host.read_optional(grubenv)?.unwrap_or_default(),
    ))
}

/// The boot directory grubenv lives under: `/boot/grub/grubenv` → `/boot`.
pub(crate) fn boot_dir(grubenv: &str) -> String {
    Path::new(grubenv)
        .parent()
        .and_then(Path::parent)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/boot".into())
}

/// `grub-reboot`/`grub-set-default` edit grubenv only; on an image they are
/// pointed at its /boot instead of being chrooted.
pub(crate) fn tool(host: &dyn Host, program: &str, grubenv: &str) -> CommandSpec {
    let mut cmd = CommandSpec::new(program);
    if !is_live_root(host) {
        cmd = cmd
            .arg(format!(
                "--boot-directory={}",
                host.path(&boot_dir(grubenv)).to_string_lossy()
            ))
            .within_root();
    }
    cmd
}

/// `grub-editenv FILE unset KEY`: the editenv tool takes the file itself, so
/// it needs no chroot.
pub(crate) fn unset(host: &dyn Host, bl: &Bootloader, key: &str) -> Result<()> {
    let env_path = host.path(&bl.grubenv).to_string_lossy().into_owned();
    host.run(
        &CommandSpec::new(&bl.editenv)
            .args([env_path.as_str(), "unset", key])
            .within_root(),
    )?;
    Ok(())
}

/// Why GRUB could not write its environment at boot, if it could not
/// (grub-reboot(8): on LVM/MD "the chosen boot menu entry will remain the
/// default even after reboot"; GRUB also refuses to write on btrfs/zfs).
pub(crate) fn unwritable(host: &dyn Host, bl: &Bootloader) -> Result<Option<String>> {
    let env_path = host.path(&bl.grubenv).to_string_lossy().into_owned();
    let editenv = |args: &[&str]| {
        host.run(
            &CommandSpec::new(&bl.editenv)
                .arg(env_path.as_str())
                .args(args.iter().copied())
                .within_root()
                .allow_failure(),
        )
    };
    if !host.exists(&bl.grubenv) {
        let out = editenv(&["create"])?;
        if !out.success() {
            return Ok(Some(format!(
                "{} could not create {}: {}",
                bl.editenv,
                bl.grubenv,
                out.stderr.trim()
            )));
        }
    }
    let out = editenv(&["set", "cubeboot_probe=1"])?;
    if !out.success() {
        return Ok(Some(format!(
            "{} cannot write {}: {}",
            bl.editenv,
            bl.grubenv,
            out.stderr.trim()
        )));
    }
    editenv(&["unset", "cubeboot_probe"])?;
    // grub-editenv writes the file from Linux; what matters is whether GRUB
    // can at boot, which depends on what holds the directory.
    let probe = bl.editenv.replace("editenv", "probe");
    let dir = Path::new(&bl.grubenv)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/boot".into());
    for (target, bad) in [
        (
            "abstraction",
            &["lvm", "diskfilter", "raid", "mdraid1x", "mdraid09"][..],
        ),
        ("fs", &["btrfs", "zfs"][..]),
    ] {
        let out = host.run(
            &on_target(host, &probe)
                .arg(format!("--target={target}"))
                .arg(&dir)
                .allow_failure(),
        )?;
        if !out.success() {
            host.say(&format!(
                "{probe} --target={target} {dir} failed ({}); assuming GRUB can write {}",
                out.stderr.trim(),
                bl.grubenv
            ));
            continue;
        }
        if let Some(found) = out
            .stdout
            .split_whitespace()
            .find(|w| bad.iter().any(|b| w.starts_with(b)))
        {
            return Ok(Some(format!(
                "{dir} is on {found}, where GRUB cannot write {} at boot",
                bl.grubenv
            )));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_dir_is_two_levels_up() {
        assert_eq!(boot_dir("/boot/grub/grubenv"), "/boot");
        assert_eq!(boot_dir("/boot/grub2/grubenv"), "/boot");
        assert_eq!(boot_dir("/boot/efi/EFI/rocky/grubenv"), "/boot/efi/EFI");
    }
}
