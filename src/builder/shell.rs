//! `cubeboot completions SHELL` and `cubeboot man`: generated from the clap
//! definitions in `cli.rs`, so they never drift from the real flags; the man
//! pages add EXAMPLES, EXIT STATUS and FILES from [`page_extras`].

use std::io::{self, Write as _};
use std::path::Path;

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
/// verb as well (`cubeboot.1`, `cubeboot-build.1`, …): README, "Installing
/// cubeboot", installs them with `cubeboot man --to /usr/local/share/man/man1`.
pub fn man(args: ManArgs) -> Result<()> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    match args.to {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write_pages(&cmd, "", &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
        }
        None => {
            let mut out = io::stdout().lock();
            out.write_all(&page(&cmd, "")?)?;
            out.flush()?;
        }
    }
    Ok(())
}

/// `cmd`'s page and, below it, one per visible verb (as clap_mangen names
/// them: `cubeboot-build.1`).
fn write_pages(cmd: &clap::Command, verb: &str, dir: &Path) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, sub.get_name(), dir)?;
    }
    let name = clap_mangen::Man::new(cmd.clone()).get_filename();
    crate::atomic_write::write_atomic(&dir.join(&name), &page(cmd, verb)?, 0o644)
        .with_context(|| format!("writing {name}"))
}

/// clap_mangen's page with the extra sections placed before VERSION.
fn page(cmd: &clap::Command, verb: &str) -> Result<Vec<u8>> {
    let mut roff = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut roff)?;
    let roff = String::from_utf8(roff).context("clap_mangen wrote non-UTF-8")?;
    // watch's exit codes come from `watch --help`'s closing text, which
    // clap_mangen renders as EXTRA: EXIT STATUS below says them instead.
    let roff = match (verb, roff.find(".SH EXTRA\n")) {
        ("watch", Some(start)) => {
            let end = roff[start + 1..]
                .find("\n.SH ")
                .map_or(roff.len(), |i| start + 1 + i + 1);
            format!("{}{}", &roff[..start], &roff[end..])
        }
        _ => roff,
    };
    let extras = extra_sections(verb);
    let at = roff.find(".SH VERSION").unwrap_or(roff.len());
    Ok(format!("{}{extras}{}", &roff[..at], &roff[at..]).into_bytes())
}

/// What a verb's page adds: examples (command, what it does), exit codes and
/// files. `None` for a section leaves it out.
struct PageExtras {
    examples: Rows,
    exit_status: Option<Rows>,
    files: Rows,
}

/// A man page list: (term, what it means).
type Rows = &'static [(&'static str, &'static str)];

/// 0/1/2 as main.rs returns them for every verb but `watch`.
const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "Success."),
    (
        "1",
        "An error: bad input (named with its file, key and line), an I/O failure, a budget overrun; nothing half-written is left.",
    ),
    ("2", "A usage error: an unknown flag or a bad flag value."),
];

const LOCK_FILE: (&str, &str) = (
    "cubeboot.lock",
    "The lock: every asset's URL, size and SHA-256 (default of --lock).",
);

const PROFILES_DIR: (&str, &str) = (
    "DIR/*.yaml",
    "Distro profiles read with --profiles-dir instead of the built-in ones (cubeboot profiles --export DIR writes them).",
);

fn page_extras(verb: &str) -> PageExtras {
    let (examples, files): (Rows, Rows) = match verb {
        "" | "build" => (
            &[
                (
                    "cubeboot build --lock cubeboot.lock --profile ubuntu-24.04 --cloud aws",
                    "User-data for one distro, checked against the AWS budget.",
                ),
                (
                    "cubeboot build --lock cubeboot.lock --profile all --format overlay --offline",
                    "Image overlays carrying the helper, the plan and the pinned assets.",
                ),
                (
                    "cubeboot build --lock NEW.lock --profile debian-12 --upgrade; ssh root@NODE sh -s < out/debian-12/upgrade.sh",
                    "A new lock over a running node, one node at a time with cubeboot watch (docs/upgrades.md).",
                ),
            ],
            &[
                LOCK_FILE,
                (
                    "out/PROFILE/",
                    "user-data, user-data.gz.b64, plan.json, manifest.json, SHA256SUMS (or overlay.tar.xz); upgrade.sh with --upgrade.",
                ),
                (
                    "out/webhook-secret",
                    "The fleet's webhook signing secret, created 0600 with --webhook.",
                ),
            ],
        ),
        "check" => (
            &[
                (
                    "cubeboot check --strict --lock cubeboot.lock",
                    "Every profile and the lock; warnings fail.",
                ),
                (
                    "cubeboot check --strict --lock cubeboot.lock --profile debian-12",
                    "A one-distro fleet: the lock is checked against that profile only.",
                ),
            ],
            &[LOCK_FILE, PROFILES_DIR],
        ),
        "profiles" => (
            &[
                ("cubeboot profiles", "One line per profile."),
                ("cubeboot profiles --export my-profiles", "Write the built-in profiles to edit."),
            ],
            &[PROFILES_DIR],
        ),
        "lock" => (
            &[(
                "cubeboot lock --tag v0.1.0 --asset linux-image-*.deb --asset cube-sandbox-one-click-*.tar.gz --asset cube-firstboot",
                "Pin local files under the release's GitHub URLs.",
            )],
            &[LOCK_FILE],
        ),
        "mirror" => (
            &[(
                "cubeboot mirror --lock cubeboot.lock --to /srv/cube",
                "Copy every pinned asset under its URL path, SHA-256 verified.",
            )],
            &[LOCK_FILE],
        ),
        "inspect" => (
            &[(
                "cubeboot inspect out/debian-12/overlay.tar.xz",
                "List what an image overlay carries.",
            )],
            &[],
        ),
        "watch" => (
            &[(
                "cubeboot watch --listen 0.0.0.0:8740 --expect 3",
                "Wait for three nodes to report done.",
            )],
            &[(
                "out/webhook-secret",
                "The fleet's webhook signing secret (default of --secret-file).",
            )],
        ),
        "completions" => (
            &[(
                "cubeboot completions bash > /etc/bash_completion.d/cubeboot",
                "Install bash completion.",
            )],
            &[],
        ),
        "man" => (
            &[(
                "cubeboot man --to /usr/local/share/man/man1",
                "Install this page and one per verb.",
            )],
            &[],
        ),
        _ => (&[], &[]),
    };
    PageExtras {
        examples,
        // watch's codes are its own (src/builder/watch.rs, `exit::ALL`).
        exit_status: (verb != "watch").then_some(EXIT_STATUS),
        files,
    }
}

fn extra_sections(verb: &str) -> String {
    let extras = page_extras(verb);
    let mut out = String::new();
    let mut section = |title: &str, rows: &[(&str, &str)]| {
        if rows.is_empty() {
            return;
        }
        out.push_str(&format!(".SH {title}\n"));
        for (term, text) in rows {
            out.push_str(&format!(".TP\n{}\n{}\n", roff_text(term), roff_text(text)));
        }
    };
    section("EXAMPLES", extras.examples);
    match extras.exit_status {
        Some(rows) => section("\"EXIT STATUS\"", rows),
        None => {
            let rows: Vec<(String, &str)> = super::watch::exit::ALL
                .iter()
                .map(|(code, meaning)| (code.to_string(), *meaning))
                .collect();
            let rows: Vec<(&str, &str)> = rows.iter().map(|(c, m)| (c.as_str(), *m)).collect();
            section("\"EXIT STATUS\"", &rows);
        }
    }
    let files: &[(&str, &str)] = if extras.files.is_empty() {
        &[("(none)", "This verb reads and writes no file of its own.")]
    } else {
        extras.files
    };
    section("FILES", files);
    out
}

/// Text safe as one roff line: backslashes and hyphens escaped, no line
/// starting with a control character.
fn roff_text(s: &str) -> String {
    let escaped = s.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roff_text_escapes_controls() {
        assert_eq!(roff_text(".x -y \\z"), "\\&.x \\-y \\ez");
        assert_eq!(roff_text("'q"), "\\&'q");
    }
}
