//! (being written)

use anyhow::{bail, Result};

use super::{Ctx, Outcome};

pub fn run(_ctx: &mut Ctx) -> Result<Outcome> {
    bail!("preflight step is not written yet")
}
