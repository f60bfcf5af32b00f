//! The Cube stage (being written).

use anyhow::{bail, Result};

use super::{Ctx, Outcome};

pub fn prereqs(_ctx: &mut Ctx) -> Result<Outcome> {
    bail!("cube prereqs is not written yet")
}

pub fn data_disk(_ctx: &mut Ctx) -> Result<Outcome> {
    bail!("data disk is not written yet")
}

pub fn install(_ctx: &mut Ctx) -> Result<Outcome> {
    bail!("cube install is not written yet")
}

pub fn verify(_ctx: &mut Ctx) -> Result<Outcome> {
    bail!("cube verify is not written yet")
}

pub fn harden(_ctx: &mut Ctx) -> Result<Outcome> {
    bail!("harden is not written yet")
}
