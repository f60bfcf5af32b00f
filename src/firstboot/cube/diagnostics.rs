//! On failure, one tarball with what an operator needs (docs/cube-installer.md,
//! "What the host must bring"): the installer log, `journalctl -u 'cube-sandbox-*'`,
//! /data/log/*, and the named checks. Its path goes into the error text and
//! the journal fact `diagnostics`, from where status and webhook show it.

use std::io::Write;

use anyhow::{Context, Result};
use flate2::write::GzEncoder;
use flate2::Compression;

use super::super::host::{unix_secs, CommandSpec, FileKind, Host};
use super::super::{Ctx, LOG_DIR};
use super::INSTALL_LOG;

/// Cube's service logs (docs/cube-installer.md).
pub const DATA_LOG_DIR: &str = "/data/log";
/// Per-file cap: the tail is what matters, and the helper stays small.
const MAX_FILE_BYTES: usize = 8 * 1024 * 1024;

/// Write the tarball, record it as a fact, and return its target path.
pub fn collect(ctx: &mut Ctx, reason: &str) -> Result<String> {
    let host = ctx.host;
    let now = unix_secs(host.now());
    let path = format!("{LOG_DIR}/diagnostics-{now}.tar.gz");
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();

    files.push(("reason.txt".into(), format!("{reason}\n").into_bytes()));
    let checks: String = ctx
        .journal
        .checks
        .iter()
        .map(|(name, c)| {
            let mark = if c.ok { "ok" } else { "FAIL" };
            format!("{name}: {mark}: {}\n", c.detail)
        })
        .collect();
    files.push(("checks.txt".into(), checks.into_bytes()));
    let all_facts = ctx.journal.facts.lines();
    files.push(("facts.txt".into(), all_facts.into_bytes()));
    if let Ok(log) = host.read(INSTALL_LOG) {
        files.push(("install.log".into(), tail_bytes(log)));
    }
    // journalctl may be missing or find nothing; its error is worth keeping too.
    let journal = host.run(
        &CommandSpec::new("journalctl")
            .args(["--no-pager", "-o", "short-iso", "-u", "cube-sandbox-*"])
            .read_only()
            .allow_failure(),
    );
    let journal_text = match journal {
        Ok(out) => format!("{}{}", out.stdout, out.stderr),
        Err(e) => format!("journalctl could not run: {e:#}\n"),
    };
    files.push((
        "journalctl-cube-sandbox.txt".into(),
        tail_bytes(journal_text.into_bytes()),
    ));
    collect_dir(host, DATA_LOG_DIR, "data-log", &mut files, 0)?;

    // The tarball is handed to people: no secret value in any text in it.
    for (_, bytes) in &mut files {
        if let Ok(text) = std::str::from_utf8(bytes) {
            let clean = host.secrets().scrub(text);
            if clean != text {
                *bytes = clean.into_bytes();
            }
        }
    }
    let bytes = pack(&files, now).context("packing diagnostics")?;
    host.write_atomic(&path, &bytes, 0o600)?;
    ctx.journal.facts.diagnostics = Some(path.clone());
    host.say(&format!("diagnostics written to {path}"));
    Ok(path)
}

fn collect_dir(
    host: &dyn Host,
    dir: &str,
    prefix: &str,
    files: &mut Vec<(String, Vec<u8>)>,
    depth: usize,
) -> Result<()> {
    if depth > 4 {
        return Ok(());
    }
    for name in host.list_dir(dir)? {
        let target = format!("{dir}/{name}");
        let inside = format!("{prefix}/{name}");
        let Ok(Some(meta)) = host.metadata(&target) else {
            continue;
        };
        if meta.kind == FileKind::Dir {
            collect_dir(host, &target, &inside, files, depth + 1)?;
        } else if meta.kind == FileKind::File {
            if let Ok(b) = host.read(&target) {
                files.push((inside, tail_bytes(b)));
            }
        }
    }
    Ok(())
}

fn tail_bytes(mut b: Vec<u8>) -> Vec<u8> {
    if b.len() > MAX_FILE_BYTES {
        b.drain(..b.len() - MAX_FILE_BYTES);
    }
    b
}

/// A gzip'd tar of `files` under `diagnostics/`, root-owned, mode 0600.
fn pack(files: &[(String, Vec<u8>)], mtime: u64) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        tar.append_data(&mut h, format!("diagnostics/{name}"), &data[..])?;
    }
    let raw = tar.into_inner()?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&raw)?;
    Ok(gz.finish()?)
}
