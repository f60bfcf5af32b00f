//! The overlay reader: lists an `overlay.tar.xz` entry by entry, checking
//! every path and type as it goes and hashing file contents as they stream
//! past (nothing is held in memory). `cubeboot inspect` and the tests read
//! with it; the writer is the parent module.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::digest::{HashingReader, Sha256Digest};

/// One entry as read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Absolute target path, e.g. `/etc/cubeboot/plan.json`.
    pub path: String,
    pub kind: Kind,
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    pub size: u64,
    /// Of the content, for regular files.
    pub sha256: Option<Sha256Digest>,
    /// For symlinks.
    pub link_target: Option<String>,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

/// List an overlay from its bytes.
pub fn read_overlay(bytes: &[u8]) -> Result<Vec<Listed>> {
    read_overlay_from(bytes)
}

/// List an overlay from a stream, hashing file contents as they pass.
pub fn read_overlay_from<R: Read>(input: R) -> Result<Vec<Listed>> {
    let mut listed = Vec::new();
    visit(input, |item| {
        listed.push(item);
        Ok(())
    })?;
    Ok(listed)
}

/// `cubeboot inspect FILE`: one line per entry, from the same reader.
pub fn inspect(file: &Path) -> Result<()> {
    let listed = fs::File::open(file)
        .map_err(anyhow::Error::from)
        .and_then(|f| read_overlay_from(io::BufReader::new(f)))
        .with_context(|| format!("reading overlay {}", file.display()))?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    for item in &listed {
        writeln!(out, "{item}")?;
    }
    Ok(())
}

impl fmt::Display for Listed {
    /// `-rw------- root:root       812 <sha256> /etc/cubeboot/plan.json`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digest = self
            .sha256
            .map(|d| d.to_hex())
            .unwrap_or_else(|| "-".repeat(64));
        write!(
            f,
            "{}{} {}:{} {:>10} {digest} {}",
            self.kind.letter(),
            perms(self.mode),
            self.uid,
            self.gid,
            self.size,
            self.path
        )?;
        if let Some(t) = &self.link_target {
            write!(f, " -> {t}")?;
        }
        Ok(())
    }
}

impl Kind {
    pub(super) fn letter(self) -> char {
        match self {
            Self::Dir => 'd',
            Self::File => '-',
            Self::Symlink => 'l',
        }
    }
}

pub(super) fn perms(mode: u32) -> String {
    let mut s = String::with_capacity(9);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// Walk an archive, checking every entry's path and type; `f` gets each
/// entry as listed (a file's content is hashed as it streams past).
fn visit<R: Read>(input: R, mut f: impl FnMut(Listed) -> Result<()>) -> Result<()> {
    let xz = xz2::read::XzDecoder::new(input);
    let mut archive = tar::Archive::new(xz);
    let mut seen = std::collections::BTreeSet::new();
    for entry in archive.entries().context("reading tar stream")? {
        let mut entry = entry.context("reading tar entry")?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = entry_path(&raw)?;
        ensure!(seen.insert(path.clone()), "entry {path} appears twice");
        let h = entry.header();
        let mode = h
            .mode()
            .with_context(|| format!("reading mode of {path}"))?
            & 0o7777;
        let uid = h.uid().with_context(|| format!("reading uid of {path}"))?;
        let gid = h.gid().with_context(|| format!("reading gid of {path}"))?;
        let mtime = h
            .mtime()
            .with_context(|| format!("reading mtime of {path}"))?;
        let kind = match h.entry_type() {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
            tar::EntryType::Symlink => Kind::Symlink,
            other => bail!("entry {path} has unsupported type {other:?}"),
        };
        let link_target = match kind {
            Kind::Symlink => Some(
                entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .with_context(|| format!("symlink {path} has no target"))?,
            ),
            _ => None,
        };
        let size = entry.size();
        let sha256 = if kind == Kind::File {
            let mut hashing = HashingReader::new(&mut entry);
            io::copy(&mut hashing, &mut io::sink()).with_context(|| format!("reading {path}"))?;
            Some(hashing.finish().0)
        } else {
            None
        };
        f(Listed {
            path,
            kind,
            mode,
            size,
            sha256,
            link_target,
            uid,
            gid,
            mtime,
        })?;
    }
    Ok(())
}

/// An archive member name as a target path; refuses absolute names and `..`
/// (after `coreos/coreos-installer: src/live/mod.rs`).
fn entry_path(raw: &str) -> Result<String> {
    let parts = crate::archive_path::normal_parts(Path::new(raw))
        .map_err(|e| anyhow!("entry {raw:?} {e}"))?;
    ensure!(!parts.is_empty(), "entry {raw:?} names no path");
    Ok(format!("/{}", parts.join("/")))
}
