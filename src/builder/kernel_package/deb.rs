//! `.deb` kernel packages: an `ar` archive of `debian-binary`,
//! `control.tar.*` (the package's name and version) and `data.tar.*` (the
//! files), read as one stream.

use std::io::{self, Read};

use anyhow::{bail, Context, Result};

use super::entries::{Entries, Kind};
use super::{decompressor, to_end, Budget, Contents, Limits};

/// The members dpkg reads, in the order it requires them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Start,
    Binary,
    Control,
    Data,
}

/// A malformed archive says so (a flipped byte in a member name is not a
/// missing kernel).
fn malformed(why: String) -> anyhow::Error {
    anyhow::anyhow!(
        "the .deb is malformed: {why} (dpkg reads debian-binary, then control.tar.*, then data.tar.*)"
    )
}

/// `debian-binary` holds the format version; dpkg reads `2.N` and refuses
/// anything else ("invalid format version") on the target.
fn check_debian_binary(member: &mut impl Read) -> Result<()> {
    let bytes = crate::bounded_read::read_limited(member, 64).context("reading debian-binary")?;
    let text = String::from_utf8_lossy(&bytes);
    let first = text.lines().next().unwrap_or("");
    let ok = text.ends_with('\n')
        && first
            .strip_prefix("2.")
            .is_some_and(|minor| !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()));
    if !ok {
        bail!(
            "debian-binary says {text:?}, not a format version dpkg reads (2.N): dpkg would refuse it with \"invalid format version\""
        );
    }
    Ok(())
}

pub(super) fn read_deb<R: Read>(reader: R, limits: &Limits, budget: &Budget) -> Result<Contents> {
    let mut contents = Contents::default();
    let mut archive = ar::Archive::new(Counted {
        inner: reader,
        n: 0,
    });
    let mut stage = Stage::Start;
    let mut entries = Entries::default();
    // The archive's length by its own headers: magic, then each member's
    // header, data and padding to an even offset.
    let mut expected = 8u64;
    while let Some(entry) = archive.next_entry() {
        let entry = entry.context("reading the .deb ar archive")?;
        let id = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        let id = id.trim_end_matches('/').to_string();
        let size = entry.header().size();
        expected += 60 + size + size % 2;
        // Count what the member really holds: a file cut short gives fewer
        // bytes than the ar header promises, and the ar reader does not say.
        let mut member = Counted { inner: entry, n: 0 };
        let next = match id.as_str() {
            "debian-binary" => Some(Stage::Binary),
            _ if id.starts_with("control.tar") => Some(Stage::Control),
            _ if id.starts_with("data.tar") => Some(Stage::Data),
            // dpkg skips members named `_…` after debian-binary.
            _ if id.starts_with('_') && stage > Stage::Start => None,
            _ => return Err(malformed(format!("unexpected ar member {id:?}"))),
        };
        if let Some(next) = next {
            let expected = match stage {
                Stage::Start => Stage::Binary,
                Stage::Binary => Stage::Control,
                Stage::Control | Stage::Data => Stage::Data,
            };
            if next != expected || stage == Stage::Data {
                return Err(malformed(format!("ar member {id:?} out of order")));
            }
            stage = next;
        }
        if id == "debian-binary" {
            check_debian_binary(&mut member)?;
        } else if let Some(comp) = id.strip_prefix("control.tar") {
            let comp = comp.trim_start_matches('.');
            let mut tar = tar::Archive::new(decompressor(comp, &mut member, &id, limits, budget)?);
            for file in tar.entries().context("reading control.tar")? {
                let mut file = file.context("reading control.tar")?;
                let path = file.path()?.to_string_lossy().into_owned();
                if path.trim_start_matches("./") == "control" {
                    // A control file is a few KiB; 1 MiB is far past any.
                    let text = crate::bounded_read::read_text_limited(&mut file, 1 << 20)
                        .context("reading the control file")?;
                    for line in text.lines() {
                        if let Some(v) = line.strip_prefix("Package:") {
                            contents.package = Some(v.trim().to_string());
                        } else if let Some(v) = line.strip_prefix("Version:") {
                            contents.version = Some(v.trim().to_string());
                        }
                    }
                }
            }
            to_end(tar.into_inner(), &id)?;
        } else if let Some(comp) = id.strip_prefix("data.tar") {
            let comp = comp.trim_start_matches('.');
            let mut tar = tar::Archive::new(decompressor(comp, &mut member, &id, limits, budget)?);
            for file in tar.entries().with_context(|| format!("reading {id}"))? {
                let file = file.with_context(|| format!("reading {id}"))?;
                let header = file.header();
                let path = String::from_utf8_lossy(&file.path_bytes()).into_owned();
                let link = header
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned());
                let kind = match header.entry_type() {
                    tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
                    tar::EntryType::Directory => Kind::Dir,
                    tar::EntryType::Symlink => Kind::Symlink,
                    tar::EntryType::Link => Kind::HardLink,
                    tar::EntryType::Char | tar::EntryType::Block => Kind::Device,
                    tar::EntryType::Fifo => Kind::Fifo,
                    // Extended headers are folded into the entry they describe.
                    other => bail!("{id} holds {path:?} of tar type {other:?}, which a kernel package never does"),
                };
                let mode = header
                    .mode()
                    .with_context(|| format!("reading {id}: {path:?}"))?;
                entries.check(&id, &path, kind, mode, link.as_deref())?;
                contents.note_path(&path);
            }
            to_end(tar.into_inner(), &id)?;
        }
        // Whatever follows the compressed stream inside the member.
        io::copy(&mut member, &mut io::sink()).with_context(|| format!("reading {id}"))?;
        if member.n != size {
            bail!(
                "the .deb is truncated: ar member {id} should be {size} bytes, but the file ends after {}",
                member.n
            );
        }
    }
    match stage {
        Stage::Start => bail!("not a .deb: no debian-binary member"),
        Stage::Binary => return Err(malformed("no control.tar member".into())),
        Stage::Control => return Err(malformed("no data.tar member".into())),
        Stage::Data => {}
    }
    let mut rest = archive.into_inner().context("reading the .deb")?;
    io::copy(&mut rest, &mut io::sink()).context("reading the .deb")?;
    if rest.n < expected {
        bail!(
            "the .deb is truncated: its ar headers add up to {expected} bytes, but the file ends after {}",
            rest.n
        );
    }
    Ok(contents)
}

/// A reader that counts the bytes it passed on.
struct Counted<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}
