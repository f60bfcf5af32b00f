//! What `watch`'s command line shows and parses besides its flags: the
//! exit codes (`--help`, the man page) and `--timeout`'s durations. A leaf,
//! so `cli.rs` reads it without importing the verb that takes its flags.

use std::time::Duration;

use anyhow::{bail, Context, Result};

/// `watch`'s exit codes, one meaning each (docs/watch.md, the man page's
/// EXIT STATUS).
pub mod exit {
    /// Every expected node is done.
    pub const DONE: u8 = 0;
    /// A node failed: at once, or with `--keep-going` when the rest finished
    /// or the time ran out (a failure outranks the timeout).
    pub const NODE_FAILED: u8 = 1;
    /// The command line is wrong (clap's code for every verb).
    pub const USAGE: u8 = 2;
    /// `--timeout` passed and no node had failed.
    pub const TIMEOUT: u8 = 3;
    /// Reading the secret or TLS files, listening (a port in use), writing
    /// the view.
    pub const IO: u8 = 4;

    /// Each code and its meaning, for `--help` and the man page.
    pub const ALL: [(u8, &str); 5] = [
        (DONE, "every expected node (--expect N, or the names given) is done"),
        (NODE_FAILED, "a node failed: at once, or with --keep-going when the rest finished or the time ran out; the message names the failed nodes"),
        (USAGE, "the command line is wrong (unknown flag, bad --timeout, --expect 0, --expect with names)"),
        (TIMEOUT, "--timeout passed with no node failed; the message names the nodes not done"),
        (IO, "the secret or TLS files could not be read, the address could not be listened on (e.g. a port in use), or the output could not be written"),
    ];
}

/// `watch --help`'s closing text: the exit codes (the man page renders it
/// as EXIT STATUS, src/builder/shell.rs).
pub fn exit_status_help() -> String {
    let mut text = String::from("Exit status:\n");
    for (code, meaning) in exit::ALL {
        text.push_str(&format!("  {code}  {meaning}\n"));
    }
    text
}

/// `90`, `90s`, `15m`, `2h`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("{s:?} is not a duration (e.g. 90s, 15m, 2h)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => bail!("{s:?} is not a duration (e.g. 90s, 15m, 2h)"),
    };
    Ok(Duration::from_secs(secs))
}
