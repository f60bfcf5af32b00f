//! The one-click bundle: re-verified against the plan's SHA-256 right before
//! use, extracted through the host into a fresh directory with every entry
//! checked (no absolute paths, no `..`, no links leaving the directory or
//! written through, no devices, no setuid/setgid bits, no world-writable
//! directories). Upstream publishes no checksums for it (docs/pvm-kernel.md).

use std::io::{self, BufReader, Read};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use flate2::read::GzDecoder;

use super::super::host::Host;
use super::super::StepFailure;
use crate::archive_path::{normal_parts, Links};
use crate::digest::{hash_reader, HashingReader, Sha256Digest};
use crate::layout::CUBELET_HTTP;

/// Hash a file under the host's root and compare with the pinned digest.
pub fn verify(host: &dyn Host, target: &str, expected: &Sha256Digest) -> Result<()> {
    let f = host
        .open(target)
        .with_context(|| format!("opening {target}"))?;
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
    let f = host
        .open(archive_target)
        .with_context(|| format!("opening {archive_target}"))?;
    let mut hashing = HashingReader::new(BufReader::new(f));
    let top = extract_into(host, &mut hashing, &partial)
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

/// Where `extract_ahead` notes that it unpacked the bundle with digest
/// `sha`, beside the directory: the top directory's name.
fn ahead_marker(sha: &Sha256Digest) -> String {
    format!("{}.ahead", extract_dir(sha))
}

/// Unpack the verified, cached bundle while the kernel stage still runs,
/// so cube-install after the reboot starts the installer at once (issue 24
/// item 4: re-verifying and unpacking a 300 MB bundle took 15-43 s between
/// the resume unit and the installer in the VM tier, docs/first-boot-bench.md).
/// The unpack hashes what it reads and keeps nothing unless it matches, as
/// cube-install's own does; the marker is written last. Nothing is done on
/// a dry run.
pub fn extract_ahead(host: &dyn Host, archive_target: &str, sha: &Sha256Digest) -> Result<()> {
    if host.is_dry_run() {
        return Ok(());
    }
    let dir = extract_dir(sha);
    let marker = ahead_marker(sha);
    host.remove_file(&marker)?;
    host.remove_dir_all(&dir)?;
    let top = extract_verified(host, archive_target, sha, &dir)?;
    host.write_atomic(&marker, top.as_bytes(), 0o600)
}

/// The top directory of the bundle `extract_ahead` unpacked for digest
/// `sha`, taken once: the marker goes, so a second cube-install (a retry
/// after a failed installer) unpacks fresh again.
pub fn take_extracted_ahead(host: &dyn Host, sha: &Sha256Digest) -> Result<Option<String>> {
    let marker = ahead_marker(sha);
    let Some(top) = host.read_optional(&marker)? else {
        return Ok(None);
    };
    host.remove_file(&marker)?;
    let dir = extract_dir(sha);
    Ok((!top.is_empty() && host.exists(&format!("{dir}/{top}"))).then_some(top))
}

/// Unpack a gzip'd tar from `reader` into `dest` (an existing target
/// directory) through the host. Links are checked against the links
/// already made (`archive_path::Links`) and never written through;
/// directory modes are set last, so a read-only directory still receives
/// its files.
pub fn extract_into<R: Read>(host: &dyn Host, reader: R, dest: &str) -> Result<String> {
    let mut archive = tar::Archive::new(GzDecoder::new(reader));
    let mut top: Option<String> = None;
    let mut links = Links::default();
    let mut dir_modes: Vec<(String, u32)> = Vec::new();
    for entry in archive.entries().context("reading archive")? {
        let mut entry = entry.context("reading archive entry")?;
        let path = entry.path().context("reading entry path")?.into_owned();
        let shown = path.display().to_string();
        let parts = normal_parts(&path).map_err(|e| anyhow!("entry {shown:?} {e}"))?;
        let Some(first) = parts.first() else { continue };
        match &top {
            None => top = Some(first.clone()),
            Some(t) if t != first => {
                bail!("bundle has more than one top-level directory ({t:?} and {first:?})")
            }
            Some(_) => {}
        }
        if let Some(link) = links.link_on_the_way(&parts) {
            bail!("entry {shown:?} lies beneath the link {:?}", link.join("/"));
        }
        if links.is_link(&parts) {
            bail!("entry {shown:?} would replace a link the bundle made");
        }
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().context("reading entry mode")? & 0o7777;
        let target = format!("{dest}/{}", parts.join("/"));
        let parent = match target.rsplit_once('/') {
            Some((p, _)) => p.to_string(),
            None => dest.to_string(),
        };
        if kind.is_dir() {
            if mode & 0o002 != 0 {
                bail!("directory {shown:?} is world-writable (mode {mode:04o})");
            }
            refuse_special_bits(&shown, mode)?;
            host.create_dir_all(&target)?;
            dir_modes.push((target, mode & 0o777));
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            refuse_special_bits(&shown, mode)?;
            host.create_dir_all(&parent)?;
            let mut out = host.create(&target, mode & 0o777)?;
            io::copy(&mut entry, &mut out).with_context(|| format!("unpacking {shown}"))?;
        } else if kind.is_symlink() {
            let link = link_name(&entry)?;
            if let Err((at, to)) = links.add(&parts, &link) {
                bail!(
                    "link {:?} -> {to:?} points outside the bundle",
                    at.join("/")
                );
            }
            host.create_dir_all(&parent)?;
            host.symlink(&link, &target)?;
        } else if kind.is_hard_link() {
            // Hard link names are relative to the archive root.
            let link = link_name(&entry)?;
            let to = normal_parts(Path::new(&link))
                .ok()
                .filter(|p| !p.is_empty() && links.link_on_the_way(p).is_none());
            let Some(to) = to else {
                bail!("link {shown:?} -> {link:?} points outside the bundle");
            };
            host.create_dir_all(&parent)?;
            host.hard_link(&format!("{dest}/{}", to.join("/")), &target)?;
        } else {
            bail!("entry {shown:?} is a {kind:?}, not a file, directory or link");
        }
    }
    // Deepest first, so a read-only parent is set after its children.
    for (dir, mode) in dir_modes.iter().rev() {
        host.set_mode(dir, *mode)?;
    }
    top.context("bundle is empty")
}

/// Nothing from a download runs with another user's rights.
fn refuse_special_bits(shown: &str, mode: u32) -> Result<()> {
    if mode & 0o6000 != 0 {
        bail!("entry {shown:?} has the setuid or setgid bit (mode {mode:04o})");
    }
    Ok(())
}

fn link_name<R: Read>(entry: &tar::Entry<R>) -> Result<String> {
    Ok(entry
        .link_name()
        .context("reading link target")?
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_default())
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

/// Whether the extracted bundle's installer knows `CUBE_PROXY_DNSMASQ_MODE`
/// (upstream added the standalone mode later, CubeSandbox PR #740).
pub fn bundle_supports_standalone_dns(host: &dyn Host, bundle_dir: &str) -> Result<bool> {
    for rel in [
        "install.sh",
        "lib/common.sh",
        "scripts/one-click/common.sh",
        "scripts/one-click/up-dns.sh",
    ] {
        if let Some(text) = host.read_optional(&format!("{bundle_dir}/{rel}"))? {
            if text.contains("CUBE_PROXY_DNSMASQ_MODE") && text.contains("standalone") {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Whether the extracted bundle's cube-egress unit fetches its policies
/// from Cubelet's HTTP on loopback (CubeSandbox:
/// deploy/one-click/scripts/systemd/cube-egress-start.sh, in bundles whose
/// network agent lives in Cubelet; older ones use the agent's
/// 127.0.0.1:19090).
pub fn bundle_egress_bootstraps_from_cubelet(host: &dyn Host, bundle_dir: &str) -> Result<bool> {
    let script = format!("{bundle_dir}/scripts/systemd/cube-egress-start.sh");
    let loopback = format!("127.0.0.1:{}/", CUBELET_HTTP.port);
    Ok(host
        .read_optional(&script)?
        .is_some_and(|text| text.contains("CUBE_EGRESS_BOOTSTRAP_URL") && text.contains(&loopback)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firstboot::host::{FileKind, RealHost};

    /// A gzip'd tar with raw header names (the tar builder refuses `..`).
    fn raw_tar(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let with_modes: Vec<_> = entries
            .iter()
            .map(|&(n, k, l)| (n, k, l, if k.is_dir() { 0o755 } else { 0o644 }))
            .collect();
        raw_tar_modes(&with_modes)
    }

    #[test]
    fn hostile_entries_are_refused_with_exact_messages() {
        use tar::EntryType::{Block, Regular, Symlink};
        type Entries<'a> = &'a [(&'a str, tar::EntryType, &'a str)];
        let cases: &[(Entries, &str)] = &[
            (
                &[("/etc/passwd", Regular, "")],
                "entry \"/etc/passwd\" has an absolute path; refusing it",
            ),
            (
                &[("b/../../x", Regular, "")],
                "entry \"b/../../x\" contains path traversal (..); refusing it",
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
            let host = RealHost::new(dir.path());
            let err = extract_into(&host, &raw_tar(entries)[..], "/").unwrap_err();
            assert_eq!(err.to_string(), *msg);
        }
    }

    /// Like `raw_tar`, with a mode per entry.
    fn raw_tar_modes(entries: &[(&str, tar::EntryType, &str, u32)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, link, mode) in entries {
            let mut h = tar::Header::new_gnu();
            let n = name.as_bytes();
            h.as_old_mut().name[..n.len()].copy_from_slice(n);
            h.set_entry_type(*kind);
            h.set_mode(*mode);
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
    fn link_chains_modes_and_order_tricks_cannot_escape() {
        use tar::EntryType::{Directory, Regular, Symlink};
        type Entries<'a> = &'a [(&'a str, tar::EntryType, &'a str, u32)];
        let cases: &[(Entries, &str)] = &[
            // Each link alone stays inside; followed through the first, the
            // second climbs two levels above the extraction directory.
            (
                &[
                    ("b/", Directory, "", 0o755),
                    ("b/c", Symlink, "..", 0o777),
                    ("b/e", Symlink, "c/../..", 0o777),
                ],
                "link \"b/e\" -> \"c/../..\" points outside the bundle",
            ),
            // The same, with the link on the way created after the one using it.
            (
                &[
                    ("b/", Directory, "", 0o755),
                    ("b/e", Symlink, "c/../..", 0o777),
                    ("b/c", Symlink, "..", 0o777),
                ],
                "link \"b/e\" -> \"c/../..\" points outside the bundle",
            ),
            // Writing through a link the bundle made.
            (
                &[
                    ("b/", Directory, "", 0o755),
                    ("b/l", Symlink, ".", 0o777),
                    ("b/l/x", Regular, "", 0o644),
                ],
                "entry \"b/l/x\" lies beneath the link \"b/l\"",
            ),
            (
                &[("b/", Directory, "", 0o755), ("b/su", Regular, "", 0o4755)],
                "entry \"b/su\" has the setuid or setgid bit (mode 4755)",
            ),
            (
                &[("b/", Directory, "", 0o755), ("b/sg", Regular, "", 0o2755)],
                "entry \"b/sg\" has the setuid or setgid bit (mode 2755)",
            ),
            (
                &[
                    ("b/", Directory, "", 0o755),
                    ("b/tmp/", Directory, "", 0o1777),
                ],
                "directory \"b/tmp/\" is world-writable (mode 1777)",
            ),
        ];
        for (entries, msg) in cases {
            let dir = tempfile::tempdir().unwrap();
            let host = RealHost::new(dir.path());
            host.create_dir_all("/x").unwrap();
            let err = extract_into(&host, &raw_tar_modes(entries)[..], "/x").unwrap_err();
            assert_eq!(err.to_string(), *msg);
        }
    }

    #[test]
    fn links_inside_the_bundle_are_fine() {
        use tar::EntryType::{Directory, Regular, Symlink};
        let dir = tempfile::tempdir().unwrap();
        let host = RealHost::new(dir.path());
        let top = extract_into(
            &host,
            &raw_tar(&[
                ("b/", Directory, ""),
                ("b/k/", Directory, ""),
                ("b/k/vmlinux-pvm", Regular, ""),
                ("b/k/vmlinux", Symlink, "vmlinux-pvm"),
                ("b/k/up", Symlink, "../k/vmlinux-pvm"),
                ("b/k/same", tar::EntryType::Link, "b/k/vmlinux-pvm"),
            ])[..],
            "/",
        )
        .unwrap();
        assert_eq!(top, "b");
        assert_eq!(
            host.read_link("/b/k/vmlinux").unwrap().as_deref(),
            Some("vmlinux-pvm")
        );
        assert_eq!(
            host.metadata("/b/k/same").unwrap().unwrap().kind,
            FileKind::File
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
