//! `.deb` kernel packages: an `ar` archive of `debian-binary`,
//! `control.tar.*` (the package's name and version) and `data.tar.*` (the
//! files), read as one stream.

use std::io::{self, Read};

use anyhow::{bail, Context, Result};

use super::{decompressor, to_end, Budget, Contents, Limits};

pub(super) fn read_deb<R: Read>(reader: R, limits: &Limits, budget: &Budget) -> Result<Contents> {
    let mut contents = Contents::default();
    let mut archive = ar::Archive::new(Counted {
        inner: reader,
        n: 0,
    });
    let mut saw_magic = false;
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
        if id == "debian-binary" {
            saw_magic = true;
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
                contents.note_path(&file.path()?.to_string_lossy());
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
    if !saw_magic {
        bail!("not a .deb: no debian-binary member");
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
