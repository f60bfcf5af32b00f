//! `cubeboot mirror --lock L --to DIR`: every pinned asset into DIR, verified,
//! so any static web server (or a bucket: `aws s3 sync DIR s3://…`) serving
//! DIR is a private mirror, and `cubeboot build --mirror URL` points the
//! targets at it.
//!
//! Layout: `DIR/<asset name>`, which is where `build --mirror URL` looks
//! (`URL/<asset name>`, see `options::Mirror::order`). Each asset comes from
//! its local copy next to the lock when that matches the pin, else from its
//! URLs through the shared transport (retries, resume, a progress bar). Bytes
//! go to `DIR/.<name>.partial` and are renamed into place only after their
//! SHA-256 and size match the lock; a mismatch removes them.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::cli::MirrorArgs;
use super::lock::{self, AssetKind, Lock, LockedAsset};
use crate::digest::{self, HashingReader, Sha256Digest};

/// What happened to one asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mirrored {
    /// Already in DIR with the pinned hash.
    UpToDate,
    /// Copied from the local copy next to the lock.
    Copied,
    /// Downloaded from this URL.
    Downloaded(String),
}

/// The `mirror` verb.
pub fn run(args: MirrorArgs) -> Result<()> {
    let lock = Lock::load(&args.lock)?;
    std::fs::create_dir_all(&args.to).with_context(|| format!("creating {}", args.to.display()))?;
    let mut total = 0u64;
    for kind in AssetKind::ALL {
        let Some(asset) = lock.file.assets.get(kind) else {
            continue;
        };
        let how = mirror_one(&lock, asset, &args.to)
            .with_context(|| format!("mirroring {} ({})", asset.name, kind.key()))?;
        total += asset.size;
        let said = match how {
            Mirrored::UpToDate => "up to date".to_string(),
            Mirrored::Copied => "copied from the lock's directory".to_string(),
            Mirrored::Downloaded(url) => format!("downloaded from {url}"),
        };
        eprintln!("{}/{}: {said}", args.to.display(), asset.name);
    }
    eprintln!(
        "mirrored {total} bytes into {}; serve it and build with --mirror URL",
        args.to.display()
    );
    Ok(())
}

/// Put one asset into `dir`, verified.
pub fn mirror_one(lock: &Lock, asset: &LockedAsset, dir: &Path) -> Result<Mirrored> {
    let Some(pin) = asset.sha256 else {
        bail!("the lock has no sha256 for it");
    };
    let dest = dir.join(&asset.name);
    // Step 1: already there?
    if let Ok(f) = File::open(&dest) {
        let (sha, size) = digest::hash_reader(BufReader::new(f))
            .with_context(|| format!("hashing {}", dest.display()))?;
        if sha == pin && size == asset.size {
            return Ok(Mirrored::UpToDate);
        }
    }
    // Step 2: the local copy next to the lock, when it matches the pin.
    let local = lock.local_path(asset);
    if let Ok(f) = File::open(&local) {
        match copy_verified(BufReader::new(f), asset, pin, dir) {
            Ok(()) => return Ok(Mirrored::Copied),
            Err(e) => eprintln!("{}: not used ({e:#}); downloading instead", local.display()),
        }
    }
    // Step 3: its URLs in the lock's order, each verified.
    let mut failures = Vec::new();
    for url in std::iter::once(&asset.url).chain(asset.mirrors.values()) {
        let result = lock::open_url(url).and_then(|body| copy_verified(body, asset, pin, dir));
        match result {
            Ok(()) => return Ok(Mirrored::Downloaded(url.to_string())),
            Err(e) => failures.push(format!("{url}: {e:#}")),
        }
    }
    bail!(
        "no source gave the pinned bytes:\n  {}",
        failures.join("\n  ")
    )
}

/// Stream `body` into `dir/.<name>.partial`, hashing as it goes; rename to
/// `dir/<name>` only when hash and size match.
fn copy_verified(
    body: impl Read,
    asset: &LockedAsset,
    pin: Sha256Digest,
    dir: &Path,
) -> Result<()> {
    let partial = dir.join(format!(".{}.partial", asset.name));
    let dest = dir.join(&asset.name);
    let result = (|| {
        let mut out = io::BufWriter::new(
            File::create(&partial).with_context(|| format!("creating {}", partial.display()))?,
        );
        let mut hashing = HashingReader::new(body);
        io::copy(&mut hashing, &mut out).context("copying")?;
        out.flush()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        let (sha, size) = hashing.finish();
        if sha != pin || size != asset.size {
            bail!(
                "got {size} bytes with sha256 {sha}; the lock pins {} bytes with sha256 {pin}",
                asset.size
            );
        }
        std::fs::rename(&partial, &dest)
            .with_context(|| format!("renaming into {}", dest.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}
