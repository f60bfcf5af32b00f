//! The one-click bundle: re-verified against the plan's SHA-256 right before
//! use, extracted into a fresh directory with every entry checked (no
//! absolute paths, no `..`, no links leaving the directory, no devices).
//! STYLE §10, §13; facts §13 ("no published checksums").

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Component, Path};

use anyhow::{bail, Context, Result};
use flate2::read::GzDecoder;

use super::super::host::Host;
use super::super::StepFailure;
use crate::digest::{hash_reader, HashingReader, Sha256Digest};

/// Hash a file under the host's root and compare with the pinned digest.
pub fn verify(host: &dyn Host, target: &str, expected: &Sha256Digest) -> Result<()> {
    let f = File::open(host.path(target)).with_context(|| format!("opening {target}"))?;
    let (computed, _) = hash_reader(f).with_context(|| format!("hashing {target}"))?;
    if computed != *expected {
        return Err(StepFailure::new(format!(
            "bundle {target} does not match the plan: computed sha256 {computed} but expected {expected}"
        ))
        .hint("the cached bundle changed after it was fetched; delete it and run again")
        .into());
    }
    Ok(())
}

/// Extract the archive at `archive_target` into `dest_target` (which must not
/// exist), hashing the bytes as they are read; the directory gets its final
/// name only after the whole stream matched `expected`. Returns the name of
/// the single top-level directory.
pub fn extract_verified(
    host: &dyn Host,
    archive_target: &str,
    expected: &Sha256Digest,
    dest_target: &str,
) -> Result<String> {
    let partial = format!("{dest_target}.partial");
    host.remove_dir_all(&partial)?;
    host.create_dir_all(&partial)?;
    let f = File::open(host.path(archive_target))
        .with_context(|| format!("opening {archive_target}"))?;
    let mut hashing = HashingReader::new(BufReader::new(f));
    let top = extract_into(&mut hashing, &host.path(&partial))
        .with_context(|| format!("extracting {archive_target}"));
    // Hash whatever the tar reader left unread (gzip trailer, padding).
    io::copy(&mut hashing, &mut io::sink()).with_context(|| format!("reading {archive_target}"))?;
    let (computed, _) = hashing.finish();
    if computed != *expected {
        host.remove_dir_all(&partial)?;
        bail!(
            "bundle {archive_target} changed while extracting: computed sha256 {computed} but expected {expected}"
        );
    }
    let top = match top {
        Ok(t) => t,
        Err(e) => {
            host.remove_dir_all(&partial)?;
            return Err(e);
        }
    };
    host.rename(&partial, dest_target)?;
    Ok(top)
}

/// Unpack a gzip'd tar from `reader` into `dest` (an existing directory).
pub fn extract_into<R: Read>(reader: R, dest: &Path) -> Result<String> {
    let mut archive = tar::Archive::new(GzDecoder::new(reader));
    archive.set_preserve_permissions(true);
    archive.set_overwrite(false);
    let mut top: Option<String> = None;
    for entry in archive.entries().context("reading archive")? {
        let mut entry = entry.context("reading archive entry")?;
        let path = entry.path().context("reading entry path")?.into_owned();
        let shown = path.display().to_string();
        let parts = normal_parts(&path).map_err(|why| anyhow::anyhow!("entry {shown:?} {why}"))?;
        let Some(first) = parts.first() else { continue };
        match &top {
            None => top = Some(first.clone()),
            Some(t) if t != first => {
                bail!("bundle has more than one top-level directory ({t:?} and {first:?})")
            }
            Some(_) => {}
        }
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let link = entry
                .link_name()
                .context("reading link target")?
                .map(|l| l.into_owned())
                .unwrap_or_default();
            let escapes = if kind.is_hard_link() {
                // Hard link names are relative to the archive root.
                normal_parts(&link).is_err()
            } else {
                symlink_escapes(&parts, &link)
            };
            if escapes {
                bail!(
                    "link {shown:?} -> {:?} points outside the bundle",
                    link.display()
                );
            }
        } else if !(kind.is_file() || kind.is_dir() || kind == tar::EntryType::Continuous) {
            bail!("entry {shown:?} is a {kind:?}, not a file, directory or link");
        }
        if !entry
            .unpack_in(dest)
            .with_context(|| format!("unpacking {shown}"))?
        {
            bail!("entry {shown:?} was refused by the unpacker");
        }
    }
    top.context("bundle is empty")
}

/// The normal components of an archive path; absolute paths and `..` refused.
fn normal_parts(path: &Path) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => return Err("contains `..`"),
            Component::RootDir | Component::Prefix(_) => return Err("has an absolute path"),
        }
    }
    Ok(out)
}

/// Whether a symlink at `entry` (archive components) with target `link`
/// would resolve outside the archive root.
fn symlink_escapes(entry: &[String], link: &Path) -> bool {
    if link.is_absolute() {
        return true;
    }
    // Start from the link's directory.
    let mut depth = entry.len().saturating_sub(1) as i64;
    for c in link.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    false
}

/// `cube-sandbox-one-click-v0.7.2-amd64` from `….tar.gz` / `….tgz`.
pub fn stem(asset_name: &str) -> &str {
    asset_name
        .strip_suffix(".tar.gz")
        .or_else(|| asset_name.strip_suffix(".tgz"))
        .unwrap_or(asset_name)
}

/// Where a bundle with this digest is extracted.
pub fn extract_dir(sha: &Sha256Digest) -> String {
    format!("{}/bundle-{}", super::super::STATE_DIR, sha.to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A gzip'd tar with raw header names (the tar builder refuses `..`).
    fn raw_tar(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, link) in entries {
            let mut h = tar::Header::new_gnu();
            let n = name.as_bytes();
            h.as_old_mut().name[..n.len()].copy_from_slice(n);
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(0);
            if !link.is_empty() {
                let l = link.as_bytes();
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
            }
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn hostile_entries_are_refused_with_exact_messages() {
        use tar::EntryType::{Block, Regular, Symlink};
        type Entries<'a> = &'a [(&'a str, tar::EntryType, &'a str)];
        let cases: &[(Entries, &str)] = &[
            (
                &[("/etc/passwd", Regular, "")],
                "entry \"/etc/passwd\" has an absolute path",
            ),
            (
                &[("b/../../x", Regular, "")],
                "entry \"b/../../x\" contains `..`",
            ),
            (
                &[("b/etc", Symlink, "/etc")],
                "link \"b/etc\" -> \"/etc\" points outside the bundle",
            ),
            (
                &[("b/up", Symlink, "../../x")],
                "link \"b/up\" -> \"../../x\" points outside the bundle",
            ),
            (
                &[("b/x", Regular, ""), ("c/y", Regular, "")],
                "bundle has more than one top-level directory (\"b\" and \"c\")",
            ),
            (
                &[("b/dev", Block, "")],
                "entry \"b/dev\" is a Block, not a file, directory or link",
            ),
        ];
        for (entries, msg) in cases {
            let dir = tempfile::tempdir().unwrap();
            let err = extract_into(&raw_tar(entries)[..], dir.path()).unwrap_err();
            assert_eq!(err.to_string(), *msg);
        }
    }

    #[test]
    fn links_inside_the_bundle_are_fine() {
        use tar::EntryType::{Directory, Regular, Symlink};
        let dir = tempfile::tempdir().unwrap();
        let top = extract_into(
            &raw_tar(&[
                ("b/", Directory, ""),
                ("b/k/", Directory, ""),
                ("b/k/vmlinux-pvm", Regular, ""),
                ("b/k/vmlinux", Symlink, "vmlinux-pvm"),
                ("b/k/up", Symlink, "../k/vmlinux-pvm"),
            ])[..],
            dir.path(),
        )
        .unwrap();
        assert_eq!(top, "b");
        assert_eq!(
            std::fs::read_link(dir.path().join("b/k/vmlinux")).unwrap(),
            PathBuf::from("vmlinux-pvm")
        );
    }

    #[test]
    fn stems_follow_the_release_names() {
        assert_eq!(
            stem("cube-sandbox-one-click-v0.7.2-amd64.tar.gz"),
            "cube-sandbox-one-click-v0.7.2-amd64"
        );
        assert_eq!(stem("x.tgz"), "x");
    }
}
