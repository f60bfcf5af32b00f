//! The report step: the run is complete, so the unit that starts the helper
//! on every boot is disabled. The final one-line message, the final status
//! and the final webhook POST come from the runner right after this step.

use anyhow::Result;

use super::host::CommandSpec;
use super::{Ctx, Outcome, UNIT_NAME};

pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    let host = ctx.host;
    let mut cmd = CommandSpec::new("systemctl");
    // Acting on an image mounted elsewhere, not on this machine's units.
    let root = host.root().to_string_lossy().into_owned();
    if root != "/" {
        cmd = cmd.arg(format!("--root={root}"));
    }
    let cmd = cmd.args(["disable", UNIT_NAME]).allow_failure();
    let out = host.run(&cmd)?;
    if out.success() {
        return Ok(Outcome::Done(format!("{UNIT_NAME} disabled")));
    }
    // Provisioning succeeded; a unit left enabled only costs a quick no-op
    // start per boot, so this is a warning, not a failure.
    let why = out.stderr.trim().lines().last().unwrap_or("").to_string();
    ctx.journal
        .warn(format!("could not disable {UNIT_NAME}: {why}"));
    Ok(Outcome::Done(format!("{UNIT_NAME} left enabled ({why})")))
}
