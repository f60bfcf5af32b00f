//! The systemd units that start the helper. `cube-firstboot.service` runs
//! it after cloud-init on the first boot; right before its reboot the
//! helper hands over to `cube-firstboot-resume.service`, which starts it as
//! soon as the network is up (nothing of cloud-init's second boot is needed).
//! Exactly one of the two is enabled at a time; the `report` step disables
//! both once the run is complete. Why each unit line: see the templates.

use anyhow::Result;

use super::host::{CommandSpec, Host};
use super::{Ctx, Outcome};
use crate::layout::{
    MAIN_LINK, RESUME_LINK, RESUME_UNIT_FILE, RESUME_UNIT_NAME, RESUME_UNIT_PATH, UNIT_NAME,
};

/// Before the helper's reboot: enable the resume unit and disable the
/// first-boot one, with plain file operations (what `systemctl enable` and
/// `disable` do to /etc), so they work the same under `--root`. Idempotent.
pub fn hand_over_to_resume(host: &dyn Host) -> Result<()> {
    if host.read_optional(RESUME_UNIT_PATH)?.as_deref() != Some(RESUME_UNIT_FILE) {
        host.write_atomic(RESUME_UNIT_PATH, RESUME_UNIT_FILE.as_bytes(), 0o644)?;
    }
    if host.read_link(RESUME_LINK)?.as_deref() != Some(RESUME_UNIT_PATH) {
        if let Some((wants_dir, _)) = RESUME_LINK.rsplit_once('/') {
            host.create_dir_all(wants_dir)?;
        }
        host.symlink(RESUME_UNIT_PATH, RESUME_LINK)?;
    }
    host.remove_file(MAIN_LINK)
}

/// The `report` step's own effect: the run is complete, so neither unit
/// starts the helper again. The final message, status and webhook POST
/// follow from the runner right after it.
pub fn disable_all(ctx: &mut Ctx) -> Result<Outcome> {
    let host = ctx.host;
    let mut cmd = CommandSpec::new("systemctl");
    // Acting on an image mounted elsewhere, not on this machine's units.
    let root = host.root().to_string_lossy().into_owned();
    if root != "/" {
        cmd = cmd.arg(format!("--root={root}"));
    }
    let mut names = vec![UNIT_NAME];
    // systemctl refuses a unit file that does not exist (no reboot, no
    // resume unit).
    if host.exists(RESUME_UNIT_PATH) {
        names.push(RESUME_UNIT_NAME);
    }
    let cmd = cmd
        .arg("disable")
        .args(names.iter().copied())
        .allow_failure();
    let out = host.run(&cmd)?;
    let names = names.join(" and ");
    if out.success() {
        return Ok(Outcome::Done(format!("{names} disabled")));
    }
    // Provisioning succeeded; a unit left enabled only costs a quick no-op
    // start per boot, so this is a warning, not a failure.
    let why = out.stderr.trim().lines().last().unwrap_or("").to_string();
    ctx.journal
        .warn(format!("could not disable {names}: {why}"));
    Ok(Outcome::Done(format!("{names} left enabled ({why})")))
}
