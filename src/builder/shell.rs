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
            let watch_page = dir.join("cubeboot-watch.1");
            let page = std::fs::read_to_string(&watch_page)
                .with_context(|| format!("reading {}", watch_page.display()))?;
            crate::atomic_write::write_atomic(
                &watch_page,
                with_exit_status(&page).as_bytes(),
                0o644,
            )
            .with_context(|| format!("writing {}", watch_page.display()))?;
        }
        None => {
            let mut out = io::stdout().lock();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            out.flush()?;
        }
    }
    Ok(())
}

/// The watch page with its EXIT STATUS section built from
/// `watch::exit::ALL`, in place of the "EXTRA" section clap_mangen makes
/// from the same codes in `watch --help`.
fn with_exit_status(page: &str) -> String {
    let mut section = String::from(".SH \"EXIT STATUS\"\n");
    for (code, meaning) in super::watch::exit::ALL {
        section.push_str(&format!(".IP {code}\n{}\n", meaning.replace('-', "\\-")));
    }
    let Some(start) = page.find(".SH EXTRA\n") else {
        return format!("{page}{section}");
    };
    let end = page[start + 1..]
        .find("\n.SH ")
        .map_or(page.len(), |i| start + 1 + i + 1);
    format!("{}{section}{}", &page[..start], &page[end..])
}
