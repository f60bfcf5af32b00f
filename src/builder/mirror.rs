//! `cubeboot mirror --lock L --to DIR`: every pinned asset into DIR, verified,
//! so any static web server (or a bucket: `aws s3 sync DIR s3://…`) serving
//! DIR is a private mirror, and `cubeboot build --mirror URL` points the
//! targets at it.
//!
//! Layout: each asset under the path of its URL in the lock, decoded
//! (`https://github.com/O/R/releases/download/v1/b.tar.gz` goes to
//! `DIR/O/R/releases/download/v1/b.tar.gz`), so swapping a URL's scheme and
//! host for the mirror's base URL gives the mirror's copy: that is what
//! `build --mirror URL` does (`options::Mirror::order`), and releases of
//! different tags share one DIR. Two assets on one path with different
//! bytes, or one asset's path inside another's, are refused before anything
//! is written. Each asset comes from its local copy next to the lock when
//! that matches the pin, else from its URLs through the shared transport
//! (retries, resume, a progress bar). Bytes go to `.<name>.partial` beside
//! their place; only when every asset's SHA-256 and size match the lock are
//! they renamed into place, and any failure removes them all.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

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
    // Step 1: every asset's place, checked against the others before
    // anything is written.
    let mut places: Vec<(AssetKind, &LockedAsset, PathBuf)> = Vec::new();
    for kind in AssetKind::ALL {
        if let Some(asset) = lock.file.assets.get(kind) {
            let rel = mirror_path(asset).with_context(|| {
                format!("{}: {} ({})", args.lock.display(), asset.name, kind.key())
            })?;
            places.push((kind, asset, rel));
        }
    }
    check_places(&places).with_context(|| format!("{}", args.lock.display()))?;
    // Step 2: every asset fetched and verified beside its place; a failure
    // removes what was staged, so DIR gains nothing unless all are good.
    std::fs::create_dir_all(&args.to).with_context(|| format!("creating {}", args.to.display()))?;
    let mut staged: Vec<(PathBuf, Mirrored, Option<PathBuf>)> = Vec::new();
    let mut total = 0u64;
    for (i, (kind, asset, rel)) in places.iter().enumerate() {
        // The same bytes on the same path (checked above): once is enough.
        if places[..i].iter().any(|(_, _, r)| r == rel) {
            continue;
        }
        let dest = args.to.join(rel);
        match stage_one(&lock, asset, &dest) {
            Ok((how, partial)) => staged.push((dest, how, partial)),
            Err(e) => {
                for partial in staged.iter().filter_map(|(_, _, p)| p.as_ref()) {
                    let _ = std::fs::remove_file(partial);
                }
                return Err(e.context(format!("mirroring {} ({})", asset.name, kind.key())));
            }
        }
        total += asset.size;
    }
    // Step 3: all verified; each into its place.
    for (dest, how, partial) in staged {
        if let Some(partial) = partial {
            std::fs::rename(&partial, &dest)
                .with_context(|| format!("renaming into {}", dest.display()))?;
        }
        let said = match how {
            Mirrored::UpToDate => "up to date".to_string(),
            Mirrored::Copied => "copied from the lock's directory".to_string(),
            Mirrored::Downloaded(url) => format!("downloaded from {url}"),
        };
        eprintln!("{}: {said}", dest.display());
    }
    if lock.file.kernel_repo.is_some() {
        eprintln!(
            "note: the lock's kernel repository is not mirrored: dnf installs it from its baseurl"
        );
    }
    eprintln!(
        "mirrored {total} bytes into {}; serve it and build with --mirror URL",
        args.to.display()
    );
    Ok(())
}

/// Where an asset goes under the mirror directory: its URL's path, decoded
/// segment by segment, each an ordinary name (no `.`, `..`, empty segment
/// or `/` inside one), so nothing lands outside DIR.
pub fn mirror_path(asset: &LockedAsset) -> Result<PathBuf> {
    let path = asset.url.path();
    if path.is_empty() {
        bail!("{} has no path to serve it under", asset.url);
    }
    let mut rel = PathBuf::new();
    for segment in path.split('/') {
        let decoded = percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .map_err(|_| anyhow::anyhow!("{}: path segment {segment:?} is not UTF-8", asset.url))?;
        if decoded.is_empty()
            || decoded == "."
            || decoded == ".."
            || decoded.contains(['/', '\\', '\0'])
        {
            bail!(
                "{}: path segment {segment:?} cannot be a directory or file name in the mirror",
                asset.url
            );
        }
        rel.push(&*decoded);
    }
    Ok(rel)
}

/// One path serves one file: refuse two assets with different bytes on the
/// same path, and a path inside another asset's (a file cannot also be a
/// directory).
fn check_places(places: &[(AssetKind, &LockedAsset, PathBuf)]) -> Result<()> {
    for (i, (ka, a, pa)) in places.iter().enumerate() {
        for (kb, b, pb) in &places[i + 1..] {
            let clash = if pa == pb {
                if a.sha256 == b.sha256 && a.size == b.size {
                    continue;
                }
                "with different bytes"
            } else if pb.starts_with(pa) || pa.starts_with(pb) {
                "one inside the other"
            } else {
                continue;
            };
            bail!(
                "assets {} ({}) and {} ({}) collide in the mirror, {clash}: {} and {}; \
                 a mirror serves each asset under its URL's path, so give one of them \
                 another path (cubeboot lock --base-url, or a release tag of its own)",
                ka.key(),
                a.url,
                kb.key(),
                b.url,
                pa.display(),
                pb.display()
            );
        }
    }
    Ok(())
}

/// Get one asset's verified bytes for `dest`: how, and the staged file
/// beside it (`None` when `dest` already holds them) for the caller to
/// rename into place once every asset is staged.
fn stage_one(lock: &Lock, asset: &LockedAsset, dest: &Path) -> Result<(Mirrored, Option<PathBuf>)> {
    let Some(pin) = asset.sha256 else {
        bail!("the lock has no sha256 for it");
    };
    let dest = dest.to_path_buf();
    // Step 1: already there?
    if let Ok(f) = File::open(&dest) {
        let (sha, size) = digest::hash_reader(BufReader::new(f))
            .with_context(|| format!("hashing {}", dest.display()))?;
        if sha == pin && size == asset.size {
            return Ok((Mirrored::UpToDate, None));
        }
    }
    // Step 2: the local copy next to the lock, when it matches the pin.
    let local = lock.local_path(asset);
    if let Ok(f) = File::open(&local) {
        match stage_verified(BufReader::new(f), asset, pin, &dest) {
            Ok(staged) => return Ok((Mirrored::Copied, Some(staged))),
            Err(e) => eprintln!("{}: not used ({e:#}); downloading instead", local.display()),
        }
    }
    // Step 3: its URLs in the lock's order, each verified.
    let mut failures = Vec::new();
    for url in std::iter::once(&asset.url).chain(asset.mirrors.values()) {
        let result = lock::open_url(url).and_then(|body| stage_verified(body, asset, pin, &dest));
        match result {
            Ok(staged) => return Ok((Mirrored::Downloaded(url.to_string()), Some(staged))),
            Err(e) => failures.push(format!("{url}: {e:#}")),
        }
    }
    bail!(
        "no source gave the pinned bytes:\n  {}",
        failures.join("\n  ")
    )
}

/// Stream `body` into `.<name>.partial` beside `dest`, hashing as it goes;
/// keep it (and return its path) only when hash and size match.
fn stage_verified(
    body: impl Read,
    asset: &LockedAsset,
    pin: Sha256Digest,
    dest: &Path,
) -> Result<PathBuf> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let partial = dir.join(format!(".{}.partial", asset.name));
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
        Ok(partial.clone())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(url: &str) -> LockedAsset {
        LockedAsset {
            name: "b.tar.gz".into(),
            url: url.parse().unwrap(),
            mirrors: Default::default(),
            size: 1,
            sha256: None,
            kernel: None,
            bundle: None,
        }
    }

    #[test]
    fn an_asset_goes_under_its_url_path_decoded() {
        let p = |u: &str| mirror_path(&asset(u)).map(|p| p.display().to_string());
        assert_eq!(
            p("https://github.com/O/R/releases/download/v1/b.tar.gz?x=1#f").unwrap(),
            "O/R/releases/download/v1/b.tar.gz"
        );
        assert_eq!(
            p("http://10.0.0.1:8080/rel/linux-6.6%2Bpvm.deb").unwrap(),
            "rel/linux-6.6+pvm.deb"
        );
        assert_eq!(p("file:///srv/rel/b.tar.gz").unwrap(), "srv/rel/b.tar.gz");
        for bad in [
            "https://h/a/../b.tar.gz",
            "https://h/a/%2e%2e/b.tar.gz",
            "https://h/a//b.tar.gz",
            "https://h/a%2Fb.tar.gz",
            "https://h/",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }
}
