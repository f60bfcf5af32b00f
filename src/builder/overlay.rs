//! Image overlays: a deterministic `overlay.tar.xz` holding the helper, its
//! enabled unit, the plan and (with `--offline`) every pinned asset; the
//! one reader that `cubeboot inspect` and the tests share is [`read`].
//!
//! The writer is a function of an in-memory [`Overlay`] (a sorted map of
//! target path → entry), so the same description always gives the same bytes:
//! entries in `BTreeMap` order, every parent directory explicit, uid/gid 0,
//! fixed modes, one mtime for everything (`SOURCE_DATE_EPOCH` or
//! [`FALLBACK_MTIME`]), a fixed xz preset and check. (After
//! `coreos/coreos-installer: src/io/initrd.rs`, `Initrd::to_bytes`, and
//! docs/payloads.md, "Reproducible archives".)
//!
//! The writer and the reader are the two halves of one format: the tests
//! (below) write with one and read back with the other.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use xz2::stream::{Check, Stream};

use crate::digest::{HashingReader, Sha256Digest};
use crate::layout::{wants_links, CACHE_DIR, HELPER_PATH, PLAN_PATH, UNIT_NAME, UNIT_PATH};

pub mod read;
pub use read::{inspect, read_overlay, read_overlay_from, Kind, Listed};

/// mtime of every entry when `SOURCE_DATE_EPOCH` is unset: the value tar-rs's
/// `HeaderMode::Deterministic` uses (2006-07-24), not 0, because some tools
/// mishandle a zero mtime (tar-rs PR #250; docs/payloads.md).
pub const FALLBACK_MTIME: u64 = 1_153_704_088;

/// xz preset 6 is xz(1)'s default: ~94 MiB to compress, 9 MiB to decompress,
/// so the overlay unpacks on the smallest instance. Changing it changes every
/// overlay's bytes, so it is a constant, not an option.
pub const XZ_PRESET: u32 = 6;

/// CRC64 is xz(1)'s default check and what GNU tar, busybox and libarchive
/// all verify. (The kernel's initramfs decoder would need CRC32; an overlay is
/// never an initramfs.)
pub const XZ_CHECK: Check = Check::Crc64;

/// An overlay before it is written: target path (absolute, normalized) → entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    pub mtime: u64,
    pub entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, content: Content },
    Symlink { target: String },
}

/// File content: bytes in memory, or a file on the build machine that is
/// streamed into the archive and must hash to `sha256` (a multi-GiB bundle
/// need not fit in memory, and bytes that changed since they were pinned never
/// reach an image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Bytes(Vec<u8>),
    Pinned {
        path: PathBuf,
        size: u64,
        sha256: Sha256Digest,
    },
}

impl Content {
    pub fn size(&self) -> u64 {
        match self {
            Self::Bytes(b) => b.len() as u64,
            Self::Pinned { size, .. } => *size,
        }
    }
}

/// What the build stage hands over to make the standard overlay.
pub struct OverlayInputs {
    /// The plan, canonical JSON ([`crate::plan::Plan::to_json`]).
    pub plan_json: String,
    /// The static helper binary, verified against the lock by the caller or
    /// pinned here.
    pub helper: Content,
    /// `templates/cube-firstboot.service`; its `WantedBy=` decides the wants link.
    pub unit: String,
    /// With `--offline`: every pinned asset, stored under its SHA-256.
    pub cached_assets: Vec<(Sha256Digest, Content)>,
    pub mtime: u64,
}

/// The standard overlay: helper, unit enabled by its wants link(s), plan
/// (0600: it may carry a webhook URL), and the offline cache.
pub fn compose(inputs: OverlayInputs) -> Result<Overlay> {
    let mut overlay = Overlay::new(inputs.mtime);
    overlay.file(HELPER_PATH, 0o755, inputs.helper)?;
    overlay.file(
        UNIT_PATH,
        0o644,
        Content::Bytes(inputs.unit.clone().into_bytes()),
    )?;
    // Enabled the way `systemctl enable` would, but as an entry: an image build
    // has no running systemd to ask (docs/payloads.md, "Images").
    let links = wants_links(&inputs.unit, UNIT_NAME);
    ensure!(
        !links.is_empty(),
        "unit {UNIT_NAME} has no [Install] WantedBy=: it would never start on the image"
    );
    for link in links {
        overlay.symlink(&link, UNIT_PATH)?;
    }
    overlay.file(
        PLAN_PATH,
        0o600,
        Content::Bytes(inputs.plan_json.into_bytes()),
    )?;
    if !inputs.cached_assets.is_empty() {
        // The helper's fetch step reuses a cache file whose hash matches, so
        // first boot needs no network at all (CubeSandbox #361).
        overlay.dir(CACHE_DIR, 0o755)?;
    }
    for (digest, content) in inputs.cached_assets {
        if let Content::Bytes(bytes) = &content {
            let computed = Sha256Digest::of(bytes);
            ensure!(
                computed == digest,
                "asset for the offline cache does not match its pin: expected {digest}, computed {computed}"
            );
        }
        overlay.file(&format!("{CACHE_DIR}/{digest}"), 0o644, content)?;
    }
    Ok(overlay)
}

impl Overlay {
    pub fn new(mtime: u64) -> Self {
        Self {
            mtime,
            entries: BTreeMap::new(),
        }
    }

    /// Add a directory (and any missing parents, 0755).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        self.insert(path, Entry::Dir { mode })
    }

    /// Add a regular file (and any missing parents, 0755).
    pub fn file(&mut self, path: &str, mode: u32, content: Content) -> Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        self.insert(path, Entry::File { mode, content })
    }

    /// Add a symlink (and any missing parents, 0755).
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let path = normalize(path)?;
        ensure!(!target.is_empty(), "symlink {path} has an empty target");
        self.parents(&path)?;
        self.insert(
            path,
            Entry::Symlink {
                target: target.into(),
            },
        )
    }

    fn parents(&mut self, path: &str) -> Result<()> {
        for parent in ancestors(path) {
            match self.entries.get(&parent) {
                None => {
                    self.entries.insert(parent, Entry::Dir { mode: 0o755 });
                }
                Some(Entry::Dir { .. }) => {}
                Some(_) => bail!("{parent} is not a directory but {path} is inside it"),
            }
        }
        Ok(())
    }

    fn insert(&mut self, path: String, entry: Entry) -> Result<()> {
        match (self.entries.get(&path), &entry) {
            (None, _) => {}
            // A directory added explicitly may refine the mode of an implicit parent.
            (Some(Entry::Dir { .. }), Entry::Dir { .. }) => {}
            (Some(_), _) => bail!("overlay entry {path} added twice"),
        }
        self.entries.insert(path, entry);
        Ok(())
    }
}

/// Write the overlay as `tar.xz` bytes.
pub fn write_overlay(overlay: &Overlay) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write_overlay_to(overlay, &mut out)?;
    Ok(out)
}

/// Stream the overlay as `tar.xz` into `out`.
pub fn write_overlay_to<W: Write>(overlay: &Overlay, out: W) -> Result<()> {
    validate(overlay)?;
    let stream = Stream::new_easy_encoder(XZ_PRESET, XZ_CHECK).context("starting xz encoder")?;
    let xz = xz2::write::XzEncoder::new_stream(out, stream);
    let mut tar = tar::Builder::new(xz);
    for (path, entry) in &overlay.entries {
        append(&mut tar, overlay.mtime, path, entry)
            .with_context(|| format!("writing overlay entry {path}"))?;
    }
    let xz = tar.into_inner().context("finishing tar stream")?;
    let mut out = xz.finish().context("finishing xz stream")?;
    out.flush().context("flushing overlay")?;
    Ok(())
}

/// The mtime to stamp: `SOURCE_DATE_EPOCH` when set (reproducible-builds.org
/// convention), else [`FALLBACK_MTIME`]. Read at the CLI edge only.
pub fn mtime_from_env() -> Result<u64> {
    parse_source_date_epoch(std::env::var("SOURCE_DATE_EPOCH").ok().as_deref())
}

pub fn parse_source_date_epoch(value: Option<&str>) -> Result<u64> {
    match value {
        Some(v) => v.trim().parse::<u64>().with_context(|| {
            format!("SOURCE_DATE_EPOCH must be a whole number of seconds, got {v:?}")
        }),
        None => Ok(FALLBACK_MTIME),
    }
}

/// A target path in canonical form: absolute, no `.`/`..`/empty components,
/// no trailing slash.
fn normalize(path: &str) -> Result<String> {
    ensure!(
        path.starts_with('/'),
        "overlay path {path:?} is not absolute"
    );
    let mut parts = Vec::new();
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        ensure!(
            comp != "." && comp != "..",
            "overlay path {path:?} contains {comp:?}"
        );
        parts.push(comp);
    }
    ensure!(
        !parts.is_empty(),
        "overlay path {path:?} names the root itself"
    );
    Ok(format!("/{}", parts.join("/")))
}

/// `/a/b/c` → [`/a`, `/a/b`].
fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut idx = 0;
    while let Some(pos) = path[idx + 1..].find('/') {
        idx += pos + 1;
        out.push(path[..idx].to_string());
    }
    out
}

fn validate(overlay: &Overlay) -> Result<()> {
    for (path, entry) in &overlay.entries {
        ensure!(
            &normalize(path)? == path,
            "overlay path {path:?} is not in canonical form"
        );
        for parent in ancestors(path) {
            ensure!(
                matches!(overlay.entries.get(&parent), Some(Entry::Dir { .. })),
                "overlay entry {path} has no explicit parent directory {parent}"
            );
        }
        if let Entry::Dir { mode } | Entry::File { mode, .. } = entry {
            ensure!(
                mode & !0o7777 == 0,
                "overlay entry {path} has mode {mode:o}, beyond permission bits"
            );
        }
    }
    Ok(())
}

fn header(kind: tar::EntryType, mode: u32, mtime: u64, size: u64) -> Result<tar::Header> {
    // ustar with everything set by hand (tar-rs has no SOURCE_DATE_EPOCH
    // support; docs/payloads.md); names given so GNU tar maps to root either way.
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_username("root")?;
    h.set_groupname("root")?;
    h.set_mtime(mtime);
    h.set_size(size);
    Ok(h)
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    mtime: u64,
    path: &str,
    entry: &Entry,
) -> Result<()> {
    let name = path.trim_start_matches('/');
    match entry {
        Entry::Dir { mode } => {
            let mut h = header(tar::EntryType::Directory, *mode, mtime, 0)?;
            tar.append_data(&mut h, format!("{name}/"), io::empty())?;
        }
        Entry::Symlink { target } => {
            let mut h = header(tar::EntryType::Symlink, 0o777, mtime, 0)?;
            tar.append_link(&mut h, name, target)?;
        }
        Entry::File {
            mode,
            content: Content::Bytes(bytes),
        } => {
            let mut h = header(tar::EntryType::Regular, *mode, mtime, bytes.len() as u64)?;
            tar.append_data(&mut h, name, &bytes[..])?;
        }
        Entry::File {
            mode,
            content:
                Content::Pinned {
                    path: src,
                    size,
                    sha256,
                },
        } => {
            let file = fs::File::open(src).with_context(|| format!("reading {}", src.display()))?;
            let actual = file
                .metadata()
                .with_context(|| format!("reading {}", src.display()))?
                .len();
            ensure!(
                actual == *size,
                "{} is {actual} bytes, the lock pins {size}",
                src.display()
            );
            let mut h = header(tar::EntryType::Regular, *mode, mtime, *size)?;
            let mut hashing = HashingReader::new(io::BufReader::new(file).take(*size));
            tar.append_data(&mut h, name, &mut hashing)?;
            // The archive is discarded by the caller on this error (it writes
            // to a temporary file), so mismatched bytes never ship.
            let (computed, _) = hashing.finish();
            ensure!(
                computed == *sha256,
                "{} does not match its pin: expected {sha256}, computed {computed}",
                src.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::read::perms;
    use super::*;

    const UNIT: &str = "[Unit]\nDescription=x\n\n[Service]\nType=oneshot\nExecStart=/usr/local/sbin/cube-firstboot run\n\n[Install]\nWantedBy=cloud-init.target\n";

    fn sample(mtime: u64, offline: bool) -> Overlay {
        let bundle = b"bundle bytes".to_vec();
        compose(OverlayInputs {
            plan_json: "{\"version\": 1}\n".into(),
            helper: Content::Bytes(b"\x7fELF helper".to_vec()),
            unit: UNIT.into(),
            cached_assets: if offline {
                vec![(Sha256Digest::of(&bundle), Content::Bytes(bundle))]
            } else {
                vec![]
            },
            mtime,
        })
        .unwrap()
    }

    #[test]
    fn standard_overlay_lists_every_entry_with_parents_and_modes() {
        let bytes = write_overlay(&sample(FALLBACK_MTIME, true)).unwrap();
        let listed = read_overlay(&bytes).unwrap();
        let lines: Vec<String> = listed
            .iter()
            .map(|l| format!("{}{} {}", l.kind.letter(), perms(l.mode), l.path))
            .collect();
        let bundle = Sha256Digest::of(b"bundle bytes");
        assert_eq!(
            lines,
            vec![
                "drwxr-xr-x /etc".to_string(),
                "drwxr-xr-x /etc/cubeboot".into(),
                "-rw------- /etc/cubeboot/plan.json".into(),
                "drwxr-xr-x /etc/systemd".into(),
                "drwxr-xr-x /etc/systemd/system".into(),
                "drwxr-xr-x /etc/systemd/system/cloud-init.target.wants".into(),
                "lrwxrwxrwx /etc/systemd/system/cloud-init.target.wants/cube-firstboot.service"
                    .into(),
                "-rw-r--r-- /etc/systemd/system/cube-firstboot.service".into(),
                "drwxr-xr-x /usr".into(),
                "drwxr-xr-x /usr/local".into(),
                "drwxr-xr-x /usr/local/sbin".into(),
                "-rwxr-xr-x /usr/local/sbin/cube-firstboot".into(),
                "drwxr-xr-x /var".into(),
                "drwxr-xr-x /var/lib".into(),
                "drwxr-xr-x /var/lib/cubeboot".into(),
                "drwxr-xr-x /var/lib/cubeboot/cache".into(),
                format!("-rw-r--r-- /var/lib/cubeboot/cache/{bundle}"),
            ]
        );
        for l in &listed {
            assert_eq!(
                (l.uid, l.gid, l.mtime),
                (0, 0, FALLBACK_MTIME),
                "{}",
                l.path
            );
        }
        let link = &listed[6];
        assert_eq!(link.link_target.as_deref(), Some(UNIT_PATH));
        let plan = listed.iter().find(|l| l.path == PLAN_PATH).unwrap();
        assert_eq!(plan.sha256, Some(Sha256Digest::of(b"{\"version\": 1}\n")));
        assert_eq!(plan.size, 15);
    }

    #[test]
    fn same_description_gives_identical_bytes_and_mtime_changes_them() {
        let a = write_overlay(&sample(FALLBACK_MTIME, true)).unwrap();
        let b = write_overlay(&sample(FALLBACK_MTIME, true)).unwrap();
        assert_eq!(a, b);
        let c = write_overlay(&sample(1_700_000_000, true)).unwrap();
        assert_ne!(a, c);
        assert!(read_overlay(&c)
            .unwrap()
            .iter()
            .all(|l| l.mtime == 1_700_000_000));
    }

    #[test]
    fn xz_stream_uses_the_fixed_check() {
        let bytes = write_overlay(&sample(FALLBACK_MTIME, false)).unwrap();
        // xz stream header: magic, then stream flags; byte 7 holds the check id
        // (0x04 = CRC64), per the .xz file format spec §2.1.1.2.
        assert_eq!(&bytes[..6], b"\xfd7zXZ\0");
        assert_eq!(bytes[7], 0x04);
    }

    #[test]
    fn mismatched_offline_asset_is_refused() {
        let err = compose(OverlayInputs {
            plan_json: "{}".into(),
            helper: Content::Bytes(vec![1]),
            unit: UNIT.into(),
            cached_assets: vec![(
                Sha256Digest::of(b"pinned"),
                Content::Bytes(b"other".to_vec()),
            )],
            mtime: 1,
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "asset for the offline cache does not match its pin: expected {}, computed {}",
                Sha256Digest::of(b"pinned"),
                Sha256Digest::of(b"other")
            )
        );
    }

    #[test]
    fn pinned_file_is_streamed_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("bundle.tar.gz");
        fs::write(&src, b"real bundle").unwrap();
        let mut o = Overlay::new(1);
        o.file(
            "/var/lib/cubeboot/cache/x",
            0o644,
            Content::Pinned {
                path: src.clone(),
                size: 11,
                sha256: Sha256Digest::of(b"real bundle"),
            },
        )
        .unwrap();
        let listed = read_overlay(&write_overlay(&o).unwrap()).unwrap();
        assert_eq!(
            listed.last().unwrap().sha256,
            Some(Sha256Digest::of(b"real bundle"))
        );

        // Same size, different bytes: refused after streaming.
        fs::write(&src, b"evil bundle").unwrap();
        let err = write_overlay(&o).unwrap_err();
        assert!(
            format!("{err:#}").contains(&format!(
                "does not match its pin: expected {}, computed {}",
                Sha256Digest::of(b"real bundle"),
                Sha256Digest::of(b"evil bundle")
            )),
            "{err:#}"
        );
    }

    #[test]
    fn unit_without_install_section_is_refused() {
        let err = compose(OverlayInputs {
            plan_json: "{}".into(),
            helper: Content::Bytes(vec![1]),
            unit: "[Service]\nExecStart=/bin/true\n".into(),
            cached_assets: vec![],
            mtime: 1,
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unit cube-firstboot.service has no [Install] WantedBy=: it would never start on the image"
        );
    }

    #[test]
    fn bad_paths_are_refused_when_building() {
        let mut o = Overlay::new(1);
        let cases = [
            ("etc/x", "overlay path \"etc/x\" is not absolute"),
            ("/etc/../x", "overlay path \"/etc/../x\" contains \"..\""),
            ("/", "overlay path \"/\" names the root itself"),
        ];
        for (path, msg) in cases {
            let err = o.file(path, 0o644, Content::Bytes(vec![])).unwrap_err();
            assert_eq!(err.to_string(), msg);
        }
        o.file("/a", 0o644, Content::Bytes(vec![])).unwrap();
        let err = o.file("/a/b", 0o644, Content::Bytes(vec![])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/a is not a directory but /a/b is inside it"
        );
        let err = o.file("/a", 0o644, Content::Bytes(vec![])).unwrap_err();
        assert_eq!(err.to_string(), "overlay entry /a added twice");

        // A hand-made description without explicit parents is refused at write.
        let mut bare = Overlay::new(1);
        bare.entries.insert(
            "/x/y".into(),
            Entry::File {
                mode: 0o644,
                content: Content::Bytes(vec![]),
            },
        );
        let err = write_overlay(&bare).unwrap_err();
        assert_eq!(
            err.to_string(),
            "overlay entry /x/y has no explicit parent directory /x"
        );
    }

    /// A raw tar.xz with names the writer would never produce.
    fn hostile(name: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
        let mut tar_bytes = Vec::new();
        {
            let mut b = tar::Builder::new(&mut tar_bytes);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1);
            h.set_size(if link.is_some() { 0 } else { 3 });
            // Written into the raw header so tar-rs's own checks cannot clean it.
            let raw = h.as_old_mut();
            raw.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                raw.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_cksum();
            let data: &[u8] = if link.is_some() { b"" } else { b"bad" };
            b.append(&h, data).unwrap();
            b.finish().unwrap();
        }
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(&tar_bytes).unwrap();
        xz.finish().unwrap()
    }

    #[test]
    fn reader_refuses_absolute_paths_and_traversal() {
        let cases = [
            (
                "/etc/passwd",
                "entry \"/etc/passwd\" has an absolute path; refusing it",
            ),
            (
                "etc/../../x",
                "entry \"etc/../../x\" contains path traversal (..); refusing it",
            ),
            (
                "../x",
                "entry \"../x\" contains path traversal (..); refusing it",
            ),
        ];
        for (name, msg) in cases {
            let bytes = hostile(name, tar::EntryType::Regular, None);
            let err = read_overlay(&bytes).unwrap_err();
            assert_eq!(err.to_string(), msg, "{name}");
        }
        let dev = hostile("dev/sda", tar::EntryType::Block, Some(""));
        assert_eq!(
            read_overlay(&dev).unwrap_err().to_string(),
            "entry /dev/sda has unsupported type Block"
        );
    }

    #[test]
    fn listing_line_shows_mode_owner_size_digest_and_path() {
        let bytes = write_overlay(&sample(1, false)).unwrap();
        let listed = read_overlay(&bytes).unwrap();
        let plan = listed.iter().find(|l| l.path == PLAN_PATH).unwrap();
        assert_eq!(
            plan.to_string(),
            format!(
                "-rw------- 0:0         15 {} /etc/cubeboot/plan.json",
                Sha256Digest::of(b"{\"version\": 1}\n")
            )
        );
        let dir = listed.iter().find(|l| l.path == "/etc").unwrap();
        assert_eq!(
            dir.to_string(),
            format!("drwxr-xr-x 0:0          0 {} /etc", "-".repeat(64))
        );
    }

    #[test]
    fn source_date_epoch_overrides_the_fallback_and_is_parsed_strictly() {
        assert_eq!(parse_source_date_epoch(None).unwrap(), FALLBACK_MTIME);
        assert_eq!(
            parse_source_date_epoch(Some("1700000000\n")).unwrap(),
            1_700_000_000
        );
        assert_eq!(
            parse_source_date_epoch(Some("yesterday"))
                .unwrap_err()
                .to_string(),
            "SOURCE_DATE_EPOCH must be a whole number of seconds, got \"yesterday\""
        );
    }
}
