//! `cubeboot`: the table of contents. Each verb maps to one stage function.

use std::process::ExitCode;

use clap::Parser;

use cubeboot::builder::cli::{Cli, Command};
use cubeboot::builder::{build, bundle_inspect, check, lock, mirror, shell, watch};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Profiles(args) => check::list_profiles(args),
        Command::Check(args) => check::run(args),
        Command::Lock(args) => lock::run(args),
        Command::Build(args) => build::run(args),
        Command::Inspect(args) => bundle_inspect::inspect(args),
        Command::Watch(args) => watch::run(args),
        Command::Mirror(args) => mirror::run(args),
        Command::Completions(args) => shell::completions(args),
        Command::Man(args) => shell::man(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `watch` ends with its own exit codes (watch::exit).
            if let Some(end) = err.downcast_ref::<watch::Finished>() {
                eprintln!("{}", end.message);
                return ExitCode::from(end.code);
            }
            // Diagnostics print rustc-style on their own; other errors show
            // their whole context chain.
            eprintln!("{}", cubeboot::builder::diag::render_error(&err));
            ExitCode::FAILURE
        }
    }
}
