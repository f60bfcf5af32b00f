//! The kernel stage (being written).

use anyhow::{bail, Result};

use super::{Ctx, Outcome};

/// Install the verified PVM kernel package and hold it.
pub fn install(_ctx: &mut Ctx) -> Result<Outcome> {
    bail!("kernel install is not written yet")
}

/// Boot parameters, entry by identity, one-shot trial boot armed.
pub fn boot(_ctx: &mut Ctx) -> Result<Outcome> {
    bail!("kernel boot is not written yet")
}

/// After the reboot: commit or roll back.
pub fn verify(_ctx: &mut Ctx) -> Result<Outcome> {
    bail!("kernel verify is not written yet")
}

/// modprobe kvm_pvm, verified by state.
pub fn load_kvm(_ctx: &mut Ctx) -> Result<Outcome> {
    bail!("kvm load is not written yet")
}
