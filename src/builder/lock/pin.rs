//! `cubeboot lock`: where the lock comes from. Local files (`--asset`,
//! hashed while read), URLs (`--url`, downloaded and hashed in one pass), a
//! GitHub-release-style listing (`--release-json`) and an RPM repository
//! (`--kernel-repo`) are pinned here; the lock format itself, and reading
//! it back, is the parent module's.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::builder::kernel_package::{self, PackageFormat};
use crate::digest::{HashingReader, Sha256Digest};
use crate::transport::{self, FetchConfig};

use super::*;
use crate::builder::cli::LockArgs;

/// `cubeboot lock`: pin every given asset and write the lock atomically.
pub fn run(args: LockArgs) -> Result<()> {
    if args.assets.is_empty()
        && args.urls.is_empty()
        && args.release_json.is_none()
        && args.kernel_repo.is_none()
    {
        bail!("nothing to lock: give --asset PATH, --url URL, --release-json FILE or --kernel-repo URL");
    }
    if args.allow_non_pvm_kernel {
        eprintln!(
            "warning: --allow-non-pvm-kernel is no longer needed and changes nothing: a kernel is accepted when it carries kvm-pvm.ko"
        );
    }
    let mut file = LockFile {
        version: 1,
        generator: crate::generator(),
        allow_non_pvm_kernel: false,
        assets: LockAssets::default(),
        kernel_repo: None,
    };
    // The repository kernel, if asked for, before the release assets.
    if let Some(baseurl) = &args.kernel_repo {
        file.kernel_repo = Some(pin_kernel_repo(baseurl, &args.repo_rpms)?);
    } else if !args.repo_rpms.is_empty() {
        bail!("--repo-rpm needs --kernel-repo URL (the repository that serves them)");
    }
    let mut sources = Vec::new();
    // Step 1: local files; URLs come from --base-url and/or --tag.
    for path in &args.assets {
        let name = file_name(path)?;
        let (url, mirrors) = local_urls(&name, args.tag.as_deref(), args.base_url.as_deref())?;
        sources.push(Source {
            name,
            url,
            mirrors,
            open: Opener::Path(path.clone()),
            pin: None,
            listed_size: None,
        });
    }
    // Step 2: URLs, each with an optional `#sha256=` pin.
    for raw in &args.urls {
        sources.push(url_source(raw, args.base_url.as_deref())?);
    }
    // Step 3: a release listing.
    if let Some(json) = &args.release_json {
        sources.extend(release_sources(json, args.tag.as_deref())?);
    }
    // Step 4: hash (and inspect kernels) in one streaming pass per asset.
    for src in sources {
        let kind = AssetKind::classify(&src.name).with_context(|| {
            format!(
                "cannot tell what {} is: expected kernel-<ver>*.rpm, linux-image-<ver>*.deb, cube-sandbox-one-click-*.tar.gz or cube-firstboot*",
                src.name
            )
        })?;
        let (kind, locked) = pin_one(&src, kind)?;
        let slot = file.assets.slot(kind);
        if let Some(prev) = slot {
            bail!(
                "two {} assets: {} and {}; lock one per kind",
                kind.key(),
                prev.name,
                locked.name
            );
        }
        eprintln!(
            "locked {:<10} {} ({} bytes, sha256 {})",
            kind.key(),
            locked.name,
            locked.size,
            locked.sha256.map(|d| d.to_hex()).unwrap_or_default()
        );
        if let Some(facts) = &locked.bundle {
            for u in &facts.unknown {
                eprintln!(
                    "warning: {}: {} (recorded under `unknown`)",
                    locked.name,
                    u.escape_debug()
                );
            }
        }
        *slot = Some(locked);
    }
    // Step 5: read our own output back through the strict reader, then
    // write it atomically.
    let text = Lock::render(&file)?;
    Lock::parse(&text, &args.output)
        .map_err(|r| anyhow::anyhow!("generated lock is invalid:\n{r}"))?;
    crate::atomic_write::write_atomic(&args.output, text.as_bytes(), 0o644)
        .with_context(|| format!("writing lock {}", args.output.display()))?;
    eprintln!("wrote {}", args.output.display());
    // Either helper serves its architecture's builds (docs/arm64.md).
    if file.assets.helper.is_none() && file.assets.helper_aarch64.is_none() {
        eprintln!(
            "warning: {} pins no helper (cube-firstboot): `cubeboot build` will refuse it; lock again with --asset PATH/cube-firstboot (scripts/build-helper.sh builds it)",
            args.output.display()
        );
    }
    Ok(())
}

enum Opener {
    Path(PathBuf),
    Url(Url),
}

struct Source {
    name: String,
    url: Url,
    mirrors: BTreeMap<String, Url>,
    open: Opener,
    /// A digest the bytes must match (URL fragment or listing `digest`).
    pin: Option<(Sha256Digest, String)>,
    listed_size: Option<u64>,
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("{} has no file name", path.display()))
}

fn github_url(tag: &str, name: &str) -> Result<Url> {
    Url::join(&format!("{GITHUB_PATTERN}/{tag}"), name).map_err(anyhow::Error::msg)
}

fn cn_url(tag: &str, name: &str) -> Result<Url> {
    Url::join(&format!("{CN_PATTERN}/{tag}"), name).map_err(anyhow::Error::msg)
}

/// URLs for a local asset: `--base-url` first when given, GitHub otherwise,
/// with the other upstream channels as mirrors when a tag is known.
fn local_urls(
    name: &str,
    tag: Option<&str>,
    base: Option<&str>,
) -> Result<(Url, BTreeMap<String, Url>)> {
    let mut mirrors = BTreeMap::new();
    let url = match (base, tag) {
        (Some(base), tag) => {
            if let Some(tag) = tag {
                mirrors.insert("github".to_string(), github_url(tag, name)?);
                mirrors.insert("cn".to_string(), cn_url(tag, name)?);
            }
            Url::join(base, name).map_err(|e| anyhow::anyhow!("--base-url: {e}"))?
        }
        (None, Some(tag)) => {
            mirrors.insert("cn".to_string(), cn_url(tag, name)?);
            github_url(tag, name)?
        }
        (None, None) => bail!(
            "--asset {name} needs --tag TAG (GitHub and CN release URLs) or --base-url URL (where you host the assets)"
        ),
    };
    Ok((url, mirrors))
}

/// Split `URL#sha256=HEX`; refuse plain http without a pin.
fn url_source(raw: &str, base: Option<&str>) -> Result<Source> {
    let (url_text, pin) = match raw.split_once("#sha256=") {
        Some((u, hex)) => (
            u,
            Some(
                hex.parse::<Sha256Digest>()
                    .map_err(|e| anyhow::anyhow!("--url {raw}: pinned hash: {e}"))?,
            ),
        ),
        None => (raw, None),
    };
    let url: Url = url_text
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--url: {e}"))?;
    if !url.is_https() && !url.as_str().starts_with("file://") && pin.is_none() {
        bail!(
            "refusing to lock {url}: not https and no pinned hash (append #sha256=<64 hex> to the URL)"
        );
    }
    let name = url
        .as_str()
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .with_context(|| format!("--url {url} does not end in a file name"))?
        .to_string();
    let mut mirrors = BTreeMap::new();
    // A GitHub release URL has a CN twin (docs/pvm-kernel.md).
    let mut primary = url.clone();
    if let Some(rest) = url.as_str().strip_prefix(&format!("{GITHUB_PATTERN}/")) {
        if let Some((tag, _)) = rest.split_once('/') {
            mirrors.insert("cn".to_string(), cn_url(tag, &name)?);
        }
    }
    if let Some(base) = base {
        mirrors.insert("source".to_string(), url.clone());
        primary = Url::join(base, &name).map_err(|e| anyhow::anyhow!("--base-url: {e}"))?;
    }
    Ok(Source {
        name,
        url: primary,
        mirrors,
        open: Opener::Url(url),
        pin: pin.map(|d| (d, "the #sha256= pin".to_string())),
        listed_size: None,
    })
}

#[derive(Deserialize)]
struct ReleaseListing {
    #[serde(default)]
    tag_name: Option<String>,
    assets: Vec<ListedAsset>,
}

#[derive(Deserialize)]
struct ListedAsset {
    name: String,
    browser_download_url: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    digest: Option<String>,
}

/// Assets of ours in a GitHub-style release listing; others are skipped.
fn release_sources(json: &Path, tag: Option<&str>) -> Result<Vec<Source>> {
    let text = crate::bounded_read::read_text_file_limited(
        json,
        crate::bounded_read::RELEASE_LISTING_LIMIT,
    )
    .with_context(|| format!("reading {}", json.display()))?;
    let listing: ReleaseListing = serde_json::from_str(&text)
        .with_context(|| format!("parsing release listing {}", json.display()))?;
    let tag = tag.map(str::to_string).or(listing.tag_name);
    let mut out = Vec::new();
    for a in listing.assets {
        if AssetKind::classify(&a.name).is_none() {
            eprintln!("skipping {} (not an asset cubeboot uses)", a.name);
            continue;
        }
        let url: Url = a
            .browser_download_url
            .parse()
            .map_err(|e: String| anyhow::anyhow!("{}: {}: {e}", json.display(), a.name))?;
        // GitHub's `digest` is "sha256:<hex>"; it cross-checks our own hash.
        let pin = match a.digest.as_deref() {
            Some(d) => {
                let hex = d.strip_prefix("sha256:").with_context(|| {
                    format!(
                        "{}: {}: digest {d:?} is not sha256:<hex>",
                        json.display(),
                        a.name
                    )
                })?;
                let digest = hex
                    .parse::<Sha256Digest>()
                    .map_err(|e| anyhow::anyhow!("{}: {}: digest: {e}", json.display(), a.name))?;
                Some((digest, format!("the digest in {}", json.display())))
            }
            None => None,
        };
        if !url.is_https() && pin.is_none() {
            bail!(
                "refusing to lock {url}: not https and {} lists no digest for {}",
                json.display(),
                a.name
            );
        }
        let mut mirrors = BTreeMap::new();
        if let Some(tag) = &tag {
            if url.as_str().starts_with(GITHUB_PATTERN) {
                mirrors.insert("cn".to_string(), cn_url(tag, &a.name)?);
            }
        }
        out.push(Source {
            name: a.name,
            url: url.clone(),
            mirrors,
            open: Opener::Url(url),
            pin,
            listed_size: a.size,
        });
    }
    Ok(out)
}

/// Open, hash, inspect (kernels, bundles, a helper's ELF header),
/// cross-check: one pass over the bytes. Returns the slot the asset takes:
/// a helper's is its architecture's.
fn pin_one(src: &Source, kind: AssetKind) -> Result<(AssetKind, LockedAsset)> {
    let reader: Box<dyn Read> = match &src.open {
        Opener::Path(p) => {
            let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
            let len = f.metadata().ok().map(|m| m.len());
            match progress_bar(len, &src.name) {
                Some(bar) => Box::new(bar.wrap_read(f)),
                None => Box::new(f),
            }
        }
        Opener::Url(u) => open_url(u)?,
    };
    let mut hashing = HashingReader::new(reader);
    let facts = match kind.package_format() {
        Some(format) => {
            let facts = kernel_package::read_kernel_package(&mut hashing, format)
                .with_context(|| format!("inspecting kernel package {}", src.name))?;
            kernel_package::check_pvm_host(&src.name, &facts)?;
            Some(facts)
        }
        None => None,
    };
    let bundle = match kind {
        AssetKind::Bundle => Some(crate::builder::bundle_inspect::read_bundle(
            &mut hashing,
            &src.name,
        )?),
        _ => None,
    };
    let kind = match kind {
        AssetKind::Helper => AssetKind::helper(helper_arch(&mut hashing, &src.name)?),
        other => other,
    };
    // Whatever the inspection left unread still has to be hashed.
    let mut buf = vec![0u8; 1 << 20];
    while hashing
        .read(&mut buf)
        .with_context(|| format!("reading {}", src.name))?
        > 0
    {}
    let (sha256, size) = hashing.finish();
    if let Some((expected, source)) = &src.pin {
        if *expected != sha256 {
            bail!(
                "sha256 mismatch for {}: {source} says {expected}, computed {sha256}",
                src.name
            );
        }
    }
    if let Some(listed) = src.listed_size {
        if listed != size {
            bail!("{}: listed as {listed} bytes, got {size}", src.name);
        }
    }
    let locked = LockedAsset {
        name: src.name.clone(),
        url: src.url.clone(),
        mirrors: src.mirrors.clone(),
        size,
        sha256: Some(sha256),
        kernel: facts.map(|f| LockedKernel {
            kver: f.kver,
            package: f.package,
            version: f.version,
            // check_pvm_host refused packages without a module.
            module: f.module.unwrap_or_default(),
        }),
        bundle,
    };
    Ok((kind, locked))
}

/// The architecture of a helper binary, from its ELF header (the first 20
/// bytes, read through the hashing reader so they are hashed too).
fn helper_arch(reader: &mut impl Read, name: &str) -> Result<crate::arch::Arch> {
    let mut header = Vec::with_capacity(20);
    reader
        .take(20)
        .read_to_end(&mut header)
        .with_context(|| format!("reading {name}"))?;
    crate::arch::Arch::of_elf(&header).map_err(|what| {
        anyhow::anyhow!(
            "{name} is {what}: a helper is the static cube-firstboot that scripts/build-helper.sh builds (--arch x86_64 or aarch64)"
        )
    })
}

/// Pin every package of a repository kernel: hash each .rpm the repository
/// serves (a URL under `baseurl`, or a local copy of a file at the top of a
/// flat repository), read its header, and judge the kernel across the set.
fn pin_kernel_repo(baseurl: &str, rpms: &[String]) -> Result<LockedKernelRepo> {
    let base: Url = baseurl
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--kernel-repo: {e}"))?;
    if rpms.is_empty() {
        bail!("--kernel-repo {base} needs the packages to pin: --repo-rpm URL-or-PATH for each of kernel, kernel-core, kernel-modules");
    }
    let prefix = format!("{}/", base.as_str().trim_end_matches('/'));
    let mut packages = Vec::new();
    let mut contents = Vec::new();
    for raw in rpms {
        let (reader, location): (Box<dyn Read>, String) = if raw.parse::<Url>().is_ok() {
            let location = raw
                .strip_prefix(&prefix)
                .with_context(|| format!("--repo-rpm {raw} is not under --kernel-repo {base}"))?
                .to_string();
            let url: Url = raw.parse().map_err(anyhow::Error::msg)?;
            (open_url(&url)?, location)
        } else {
            let path = PathBuf::from(raw);
            let f = File::open(&path).with_context(|| format!("opening {raw}"))?;
            (Box::new(f), file_name(&path)?)
        };
        let mut hashing = HashingReader::new(reader);
        let c = kernel_package::read_package(&mut hashing, PackageFormat::Rpm)
            .with_context(|| format!("inspecting repository package {location}"))?;
        let mut buf = vec![0u8; 1 << 20];
        while hashing
            .read(&mut buf)
            .with_context(|| format!("reading {location}"))?
            > 0
        {}
        let (sha256, size) = hashing.finish();
        let (Some(name), Some(version), Some(arch), Some(header_sha256)) =
            (&c.package, &c.version, &c.arch, c.header_sha256)
        else {
            bail!("{location}: the rpm header lacks its name, version, arch or digest");
        };
        let nevra = format!("{name}-{version}.{arch}");
        eprintln!("locked {nevra} ({size} bytes, sha256 {sha256})");
        packages.push(LockedRepoPackage {
            nevra,
            location,
            size,
            sha256,
            header_sha256,
        });
        contents.push(c);
    }
    let facts = kernel_package::set_facts(&contents)
        .with_context(|| format!("reading the kernel in {}", rpms.join(", ")))?;
    kernel_package::check_pvm_host(&format!("{base}: {}", facts.package), &facts)?;
    packages.sort_by(|a, b| a.nevra.cmp(&b.nevra));
    Ok(LockedKernelRepo {
        baseurl: base,
        packages,
        kernel: LockedKernel {
            kver: facts.kver,
            package: facts.package,
            version: facts.version,
            // check_pvm_host refused a set without a module.
            module: facts.module.unwrap_or_default(),
        },
    })
}

/// Open a URL (http(s) or file://) through the shared transport: retried
/// and resumed as in the helper, with a progress bar on a terminal.
pub fn open_url(url: &Url) -> Result<Box<dyn Read>> {
    let stream =
        transport::Stream::open(&transport::Process, url.as_str(), &FetchConfig::default())
            .with_context(|| format!("downloading {url}"))?;
    let len = stream.total();
    let stream = match progress_bar(len, url.as_str()) {
        Some(bar) => stream.on_progress(Box::new(move |have, _| bar.set_position(have))),
        None => stream,
    };
    Ok(Box::new(stream))
}

/// A progress bar on a terminal only; logs and CI get nothing extra.
fn progress_bar(len: Option<u64>, name: &str) -> Option<indicatif::ProgressBar> {
    if !io::stderr().is_terminal() {
        return None;
    }
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec}",
    ) {
        bar.set_style(style);
    }
    bar.set_message(name.rsplit('/').next().unwrap_or(name).to_string());
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_pins_and_mirrors() {
        let err = url_source("http://127.0.0.1:1/cube-firstboot", None)
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "refusing to lock http://127.0.0.1:1/cube-firstboot: not https and no pinned hash (append #sha256=<64 hex> to the URL)"
        );
        let s = url_source(
            "https://github.com/TencentCloud/CubeSandbox/releases/download/v0.7.2/cube-sandbox-one-click-v0.7.2-amd64.tar.gz",
            None,
        )
        .unwrap();
        assert_eq!(
            s.mirrors["cn"].as_str(),
            "https://cnb.cool/CubeSandbox/CubeSandbox/-/releases/download/v0.7.2/cube-sandbox-one-click-v0.7.2-amd64.tar.gz"
        );
    }
}
