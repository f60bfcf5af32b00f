//! `cubeboot completions SHELL` and `cubeboot man`: generated from the clap
//! definitions in `cli.rs`, so they never drift from the real flags.

use std::io::{self, Write as _};

use anyhow::{Context, Result};
use clap::CommandFactory as _;

use super::cli::{Cli, CompletionsArgs, ManArgs};

/// Print the completion script for a shell, e.g.
/// `cubeboot completions bash > /etc/bash_completion.d/cubeboot`.
pub fn completions(args: CompletionsArgs) -> Result<()> {
    let mut cmd = Cli::command();
    let mut out = io::stdout().lock();
    clap_complete::generate(args.shell, &mut cmd, "cubeboot", &mut out);
    out.flush()?;
    Ok(())
}

/// The man page of `cubeboot` on stdout, or with `--to DIR` one page per
/// verb as well (`cubeboot.1`, `cubeboot-build.1`, …).
pub fn man(args: ManArgs) -> Result<()> {
    let cmd = Cli::command();
    match args.to {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
        }
        None => {
            let mut out = io::stdout().lock();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            out.flush()?;
        }
    }
    Ok(())
}
