//! `cubeboot`: the table of contents. Each verb maps to one stage function.

use anyhow::Result;
use clap::Parser;

use cubeboot::builder::cli::{Cli, Command};

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Profiles(_)
        | Command::Check(_)
        | Command::Lock(_)
        | Command::Build(_)
        | Command::Inspect(_) => anyhow::bail!("not written yet"),
    }
}
