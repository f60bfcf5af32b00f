//! One asset, made present and verified in the cache (rustup
//! `src/dist/download.rs`, coreos-installer `download.rs`): reuse a cached
//! file whose hash matches; otherwise download into `<sha256>.partial`,
//! resuming with Range (only a 206 resumes, a 200 starts over), hash while
//! streaming, and rename into place only on a match. A mismatch names both
//! digests and deletes the partial file. Retriable failures are retried
//! with capped exponential backoff, then the next mirror.

use std::io::{self, Read, Write};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::digest::Sha256Digest;
use crate::firstboot::host::{Action, Host};
use crate::firstboot::{cache_path, live, CACHE_DIR};
use crate::plan::Asset;
use crate::transport::{self, DownloadError, FetchConfig, RateGuard, Surroundings};

/// Read/write buffer: large enough that syscalls stay rare, small enough that
/// two parallel downloads keep the helper far below its 16 MiB budget.
const CHUNK: usize = 256 * 1024;

/// Cached assets are public packages: readable by all, written by root.
const PARTIAL_MODE: u32 = 0o644;

/// The Host seam as the transport's surroundings: proxies from the host's
/// environment, `file://` paths under `--root`, and the host's clock.
pub struct HostNet<'a>(pub &'a dyn Host);

impl Surroundings for HostNet<'_> {
    fn var(&self, key: &str) -> Option<String> {
        self.0.env(key)
    }
    fn open_local(&self, path: &str) -> io::Result<transport::LocalFile> {
        self.0.open(path)
    }
    fn sleep(&self, d: Duration) {
        self.0.sleep(d)
    }
}

/// How an asset came to be in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// Already cached with the right digest.
    Reused,
    Downloaded {
        url: String,
        /// Bytes that were already in the partial file and were kept.
        resumed_from: u64,
        /// Mirrors tried before `url` and why each was left.
        left: Vec<MirrorFailure>,
    },
    /// Dry run: nothing fetched.
    WouldDownload,
}

impl Fetched {
    /// The step's detail for this asset (what status.json shows).
    pub fn describe(&self, asset: &Asset) -> String {
        match self {
            Self::Reused => "reused from cache".into(),
            Self::Downloaded {
                resumed_from, left, ..
            } => {
                let mut d = if *resumed_from > 0 {
                    format!(
                        "downloaded ({}, resumed at {})",
                        human_bytes(asset.size),
                        human_bytes(*resumed_from)
                    )
                } else {
                    format!("downloaded ({})", human_bytes(asset.size))
                };
                if !left.is_empty() {
                    let why: Vec<String> = left.iter().map(ToString::to_string).collect();
                    d.push_str(&format!(" after leaving {}", why.join("; ")));
                }
                d
            }
            Self::WouldDownload => "would be downloaded".into(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    /// Every mirror failed; each line says why.
    #[error("fetching {asset} ({name}): every mirror failed:\n{}", .attempts.iter().map(|a| format!("  - {a}")).collect::<Vec<_>>().join("\n"))]
    AllMirrorsFailed {
        asset: String,
        name: String,
        attempts: Vec<MirrorFailure>,
    },
    /// Writing the cache failed (full disk, read-only filesystem): another
    /// mirror would not help.
    #[error("fetching {asset}: {message}")]
    Local { asset: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorFailure {
    Download(DownloadError),
    ChecksumMismatch {
        url: String,
        expected: Sha256Digest,
        computed: Sha256Digest,
    },
    /// The server's length disagrees with the plan: the bytes cannot match.
    WrongSize {
        url: String,
        expected: u64,
        got: u64,
    },
}

impl std::fmt::Display for MirrorFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Download(e) => write!(f, "{e}"),
            Self::ChecksumMismatch {
                url,
                expected,
                computed,
            } => write!(
                f,
                "{url}: checksum mismatch: expected sha256 {expected}, computed {computed}; file refused"
            ),
            Self::WrongSize { url, expected, got } => write!(
                f,
                "{url}: size mismatch: expected {expected} bytes, server has {got}; file refused"
            ),
        }
    }
}

impl FetchError {
    pub fn hint(&self) -> String {
        match self {
            Self::AllMirrorsFailed { attempts, .. } => {
                if attempts
                    .iter()
                    .all(|a| matches!(a, MirrorFailure::Download(DownloadError::NotFound { .. })))
                {
                    "the asset is not at any of its URLs: check the release tag and URLs in the lock, rebuild the payload".into()
                } else if attempts.iter().any(|a| {
                    matches!(
                        a,
                        MirrorFailure::ChecksumMismatch { .. } | MirrorFailure::WrongSize { .. }
                    )
                }) {
                    "a mirror serves different bytes than the lock pinned: re-lock if the release was re-uploaded, otherwise distrust that mirror".into()
                } else {
                    "check network access, proxy settings (HTTPS_PROXY/NO_PROXY in /etc/cubeboot/environment) and DNS; then `cube-firstboot run --retry`".into()
                }
            }
            Self::Local { message, .. } if message.contains("No space left") => {
                "free space on the filesystem holding /var/lib/cubeboot, then `cube-firstboot run --retry`".into()
            }
            Self::Local { .. } => "check that /var/lib/cubeboot is writable".into(),
        }
    }
}

/// Make one asset present and verified in the cache, outside any step (an
/// image build, `dev fetch`, an upgrade): no one listens to its progress.
pub fn fetch_asset(
    host: &dyn Host,
    label: &str,
    asset: &Asset,
    cfg: &FetchConfig,
) -> Result<Fetched, FetchError> {
    fetch_asset_reporting(host, &live::Handle::none(), label, asset, cfg)
}

/// Make one asset present and verified in the cache; its byte counts go to
/// `progress`, and beside the steps it takes its turn on the link there.
pub fn fetch_asset_reporting(
    host: &dyn Host,
    progress: &live::Handle,
    label: &str,
    asset: &Asset,
    cfg: &FetchConfig,
) -> Result<Fetched, FetchError> {
    let cfg = &cfg.for_size(asset.size);
    let final_path = cache_path(asset);
    let partial_path = format!("{final_path}.partial");
    let local = |message: String| FetchError::Local {
        asset: label.into(),
        message,
    };

    // Reuse what is cached, but only after re-verifying it: the cache is
    // named by digest, yet nothing stops a disk error or a person editing it.
    if host.exists(&final_path) {
        let (digest, _) = hash_file(host, &final_path, u64::MAX)
            .map_err(|e| local(format!("reading cached {final_path}: {e}")))?;
        if digest == asset.sha256 {
            host.say(&format!("fetch {label}: {} already cached", asset.name));
            return Ok(Fetched::Reused);
        }
        host.say(&format!(
            "fetch {label}: cached {final_path} has sha256 {digest}, expected {}; downloading again",
            asset.sha256
        ));
        host.remove_file(&final_path)
            .map_err(|e| local(format!("{e:#}")))?;
    }
    // Stays: a dry run downloads nothing (the bytes would go nowhere).
    if host.is_dry_run() {
        for url in asset.urls.iter().take(1) {
            host.say(&format!("fetch {label}: would download {url}"));
        }
        host.record(Action::Write {
            path: final_path,
            bytes: usize::try_from(asset.size).unwrap_or(usize::MAX),
        });
        return Ok(Fetched::WouldDownload);
    }

    host.create_dir_all(CACHE_DIR)
        .map_err(|e| local(format!("{e:#}")))?;
    let mut attempts = Vec::new();
    for url in &asset.urls {
        let shown = transport::redact_url(url);
        let mut failures = 0u32;
        loop {
            match transfer(host, progress, label, asset, url, &partial_path, cfg) {
                Ok(resumed_from) => {
                    host.rename(&partial_path, &final_path)
                        .map_err(|e| local(format!("{e:#}")))?;
                    return Ok(Fetched::Downloaded {
                        url: shown,
                        resumed_from,
                        left: std::mem::take(&mut attempts),
                    });
                }
                Err(Attempt::Local(e)) => {
                    return Err(local(format!("{e:#}")));
                }
                Err(Attempt::Yielded) => continue,
                Err(Attempt::Mismatch {
                    computed,
                    resumed_from,
                }) => {
                    // Never keep bytes that failed verification.
                    let _ = host.remove_file(&partial_path);
                    failures += 1;
                    // A resumed file may have carried a bad prefix (power cut
                    // mid-write): one clean try on the same mirror first.
                    if resumed_from > 0 && failures < cfg.attempts_per_mirror {
                        host.say(&format!(
                            "fetch {label}: resumed download failed verification; starting over from {shown}"
                        ));
                        continue;
                    }
                    host.say(&format!(
                        "fetch {label}: {shown}: checksum mismatch: expected sha256 {}, computed {computed}",
                        asset.sha256
                    ));
                    attempts.push(MirrorFailure::ChecksumMismatch {
                        url: shown.clone(),
                        expected: asset.sha256,
                        computed,
                    });
                    break;
                }
                Err(Attempt::WrongSize(got)) => {
                    let _ = host.remove_file(&partial_path);
                    attempts.push(MirrorFailure::WrongSize {
                        url: shown.clone(),
                        expected: asset.size,
                        got,
                    });
                    break;
                }
                Err(Attempt::Download(e)) => {
                    let e = redact_error(e);
                    failures += 1;
                    if let Some(wait) = cfg.retry_wait(&e, failures) {
                        host.say(&format!(
                            "fetch {label}: {e}; retrying in {}s (attempt {} of {})",
                            wait.as_secs_f32(),
                            failures + 1,
                            cfg.attempts_per_mirror
                        ));
                        host.sleep(wait);
                        continue;
                    }
                    host.say(&format!("fetch {label}: giving up on {shown}: {e}"));
                    attempts.push(MirrorFailure::Download(e));
                    break;
                }
            }
        }
    }
    Err(FetchError::AllMirrorsFailed {
        asset: label.into(),
        name: asset.name.clone(),
        attempts,
    })
}

/// What one attempt against one URL ended with.
enum Attempt {
    Download(DownloadError),
    Mismatch {
        computed: Sha256Digest,
        resumed_from: u64,
    },
    WrongSize(u64),
    Local(anyhow::Error),
    /// Gave the link to the step's download (`Handle::check_turn`): not a
    /// failure, the next attempt resumes when it is done.
    Yielded,
}

/// One request: resume or start the partial file, stream, hash, verify.
/// Returns how many bytes were resumed on success (the file is verified).
fn transfer(
    host: &dyn Host,
    live: &live::Handle,
    label: &str,
    asset: &Asset,
    url: &str,
    partial_path: &str,
    cfg: &FetchConfig,
) -> Result<u64, Attempt> {
    // Hash what an earlier attempt left, so the digest covers the whole file.
    let (mut hasher, mut have) = match host.open(partial_path) {
        Ok(f) => {
            let (h, n) = hash_prefix(f, asset.size).map_err(|e| reading(partial_path, e))?;
            (h, n)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (Sha256::new(), 0),
        Err(e) => return Err(reading(partial_path, e)),
    };
    if have > asset.size {
        // Longer than the asset: cannot be a prefix of it.
        (hasher, have) = (Sha256::new(), 0);
        host.create(partial_path, PARTIAL_MODE)
            .map_err(Attempt::Local)?;
    }
    if have == asset.size && have > 0 {
        // A previous run got every byte but stopped before the rename.
        return verify(hasher, asset, have);
    }

    // Beside the steps, the step's own download goes first (`link.rs`).
    live.wait_turn();
    let opened = transport::open(&HostNet(host), url, have, cfg).map_err(Attempt::Download)?;
    if let Some(total) = opened.total {
        if total != asset.size {
            return Err(Attempt::WrongSize(total));
        }
    }
    let resumed_from = if opened.start == have {
        have
    } else {
        // The server ignored the range (a plain 200): start from zero.
        if have > 0 {
            host.say(&format!(
                "fetch {label}: server ignored the range request; restarting from byte 0"
            ));
        }
        (hasher, have) = (Sha256::new(), 0);
        0
    };
    if resumed_from > 0 {
        host.say(&format!(
            "fetch {label}: resuming {} at {} of {}",
            asset.name,
            human_bytes(resumed_from),
            human_bytes(asset.size)
        ));
    } else {
        host.say(&format!(
            "fetch {label}: downloading {} ({}) from {}",
            asset.name,
            human_bytes(asset.size),
            transport::redact_url(url)
        ));
    }

    let mut file = if resumed_from > 0 {
        host.append(partial_path)
    } else {
        host.create(partial_path, PARTIAL_MODE)
    }
    .map_err(Attempt::Local)?;
    let mut body = opened.body;
    let mut buf = vec![0u8; CHUNK];
    let mut progress = Progress::new(live, label, asset.size, have);
    let mut rate = RateGuard::new(cfg);
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // What arrived stays in the partial file; the next attempt
                // resumes after it.
                return Err(Attempt::Download(transport::classify_body_error(url, e)));
            }
        };
        if have + n as u64 > asset.size {
            // More bytes than the asset has: stop before filling the disk.
            drop(file);
            return Err(Attempt::WrongSize(have + n as u64));
        }
        file.write_all(&buf[..n]).map_err(|e| {
            Attempt::Local(anyhow::Error::from(e).context(format!("writing {partial_path}")))
        })?;
        hasher.update(&buf[..n]);
        have += n as u64;
        progress.update(host, have);
        // Too slow: what arrived stays for the next mirror to resume.
        rate.check(url, n).map_err(Attempt::Download)?;
        match live.check_turn() {
            Some((live::Verdict::Yield { alone, beside }, step)) => {
                host.say(&format!(
                    "fetch {label}: the {step} download slowed from {}/s to {}/s beside this one (they share one link); pausing at {} until it is done, then resuming",
                    human_bytes(alone as u64),
                    human_bytes(beside as u64),
                    human_bytes(have)
                ));
                // What arrived stays: the next attempt resumes after it.
                return Err(Attempt::Yielded);
            }
            Some((live::Verdict::Share { alone, beside }, step)) => host.say(&format!(
                "fetch {label}: the {step} download keeps {}/s beside this one (it had {}/s alone): both continue",
                human_bytes(beside as u64),
                human_bytes(alone as u64)
            )),
            None => {}
        }
    }
    // No fsync of the data: correctness rests on the digest, not on
    // durability. A power cut can tear a cached file; `verified_asset`
    // re-hashes before every use and fetches again when it no longer
    // matches. (An fsync here would make a 1 GiB fetch wait for the disk,
    // ~7 s on these machines, for no gain in safety.)
    drop(file);
    if have < asset.size {
        return Err(Attempt::Download(DownloadError::Retriable {
            url: url.into(),
            reason: format!("connection closed after {have} of {} bytes", asset.size),
            retry_after: None,
        }));
    }
    verify(hasher, asset, resumed_from).map(|_| resumed_from)
}

fn reading(path: &str, e: io::Error) -> Attempt {
    Attempt::Local(anyhow::Error::from(e).context(format!("reading {path}")))
}

fn verify(hasher: Sha256, asset: &Asset, resumed_from: u64) -> Result<u64, Attempt> {
    let computed = Sha256Digest::from_bytes(hasher.finalize().into());
    if computed == asset.sha256 {
        Ok(resumed_from)
    } else {
        Err(Attempt::Mismatch {
            computed,
            resumed_from,
        })
    }
}

/// Hash up to `limit` bytes of a file (the whole file when shorter).
fn hash_prefix(mut f: impl Read, limit: u64) -> io::Result<(Sha256, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        if total > limit {
            break;
        }
    }
    Ok((hasher, total))
}

fn hash_file(host: &dyn Host, target: &str, limit: u64) -> io::Result<(Sha256Digest, u64)> {
    let f = host.open(target)?;
    let (h, n) = hash_prefix(f, limit)?;
    Ok((Sha256Digest::from_bytes(h.finalize().into()), n))
}

fn redact_error(e: DownloadError) -> DownloadError {
    match e {
        DownloadError::NotFound { url, detail } => DownloadError::NotFound {
            url: transport::redact_url(&url),
            detail,
        },
        DownloadError::Retriable {
            url,
            reason,
            retry_after,
        } => DownloadError::Retriable {
            url: transport::redact_url(&url),
            reason,
            retry_after,
        },
        DownloadError::Fatal { url, reason } => DownloadError::Fatal {
            url: transport::redact_url(&url),
            reason,
        },
        DownloadError::TooSlow { url, reason } => DownloadError::TooSlow {
            url: transport::redact_url(&url),
            reason,
        },
    }
}

/// Console progress at every quarter, so a serial console shows movement
/// without a line per chunk.
struct Progress<'a> {
    live: &'a live::Handle,
    label: &'a str,
    size: u64,
    next_quarter: u64,
}

impl<'a> Progress<'a> {
    fn new(live: &'a live::Handle, label: &'a str, size: u64, have: u64) -> Self {
        live.download(label, have, size);
        let mut p = Self {
            live,
            label,
            size,
            next_quarter: 1,
        };
        while p.next_quarter < 4 && have * 4 >= p.size * p.next_quarter {
            p.next_quarter += 1;
        }
        p
    }

    fn update(&mut self, host: &dyn Host, have: u64) {
        // The status and webhook get the counts (rate-limited there).
        self.live.download(self.label, have, self.size);
        if self.next_quarter >= 4 || self.size == 0 {
            return;
        }
        if have * 4 >= self.size * self.next_quarter {
            // The real share, not the quarter crossed: one large read can
            // jump several quarters (a small file arrives in one piece).
            host.say(&format!(
                "fetch {}: {}% ({} of {})",
                self.label,
                have.min(self.size) * 100 / self.size,
                human_bytes(have),
                human_bytes(self.size)
            ));
            while self.next_quarter < 4 && have * 4 >= self.size * self.next_quarter {
                self.next_quarter += 1;
            }
        }
    }
}

pub fn human_bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if n >= 1024 * 1024 {
        format!("{:.1} MiB", n as f64 / MIB)
    } else if n >= 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::firstboot::host::ScriptedHost;

    pub(crate) fn asset(data: &[u8], url: &str) -> Asset {
        Asset {
            name: "a.bin".into(),
            urls: vec![url.into()],
            sha256: Sha256Digest::of(data),
            size: data.len() as u64,
        }
    }

    #[test]
    fn file_urls_download_verify_and_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let host = ScriptedHost::new(dir.path());
        let data = vec![42u8; 700_000];
        host.put("/srv/a.bin", &data);
        let a = asset(&data, "file:///srv/a.bin");
        let cfg = FetchConfig::default();
        let got = fetch_asset(&host, "kernel", &a, &cfg).unwrap();
        assert!(
            matches!(
                got,
                Fetched::Downloaded {
                    resumed_from: 0,
                    ..
                }
            ),
            "{got:?}"
        );
        assert_eq!(host.read(&cache_path(&a)).unwrap(), data);
        assert!(!host.exists(&format!("{}.partial", cache_path(&a))));
        assert_eq!(
            fetch_asset(&host, "kernel", &a, &cfg).unwrap(),
            Fetched::Reused
        );
    }

    #[test]
    fn missing_file_is_not_found_on_every_mirror() {
        let dir = tempfile::tempdir().unwrap();
        let host = ScriptedHost::new(dir.path());
        let mut a = asset(b"x", "file:///srv/none-1");
        a.urls.push("file:///srv/none-2".into());
        let err = fetch_asset(&host, "bundle", &a, &FetchConfig::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "fetching bundle (a.bin): every mirror failed:\n  - file:///srv/none-1: not found (no file /srv/none-1)\n  - file:///srv/none-2: not found (no file /srv/none-2)"
        );
        assert!(err
            .hint()
            .starts_with("the asset is not at any of its URLs"));
        // Not found is not retried: no backoff slept.
        assert!(host.said().iter().all(|l| !l.contains("retrying")));
    }

    #[test]
    fn partial_file_resumes_and_a_bad_cache_entry_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let host = ScriptedHost::new(dir.path());
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        host.put("/srv/a.bin", &data);
        let a = asset(&data, "file:///srv/a.bin");
        host.put(&format!("{}.partial", cache_path(&a)), &data[..250_000]);
        let got = fetch_asset(&host, "kernel", &a, &FetchConfig::default()).unwrap();
        assert!(
            matches!(
                got,
                Fetched::Downloaded {
                    resumed_from: 250_000,
                    ..
                }
            ),
            "{got:?}"
        );
        assert_eq!(host.read(&cache_path(&a)).unwrap(), data);

        // A cached file that no longer matches is fetched again.
        host.put(&cache_path(&a), b"rotten");
        let got = fetch_asset(&host, "kernel", &a, &FetchConfig::default()).unwrap();
        assert!(matches!(got, Fetched::Downloaded { .. }), "{got:?}");
        assert_eq!(host.read(&cache_path(&a)).unwrap(), data);
    }

    #[test]
    fn wrong_bytes_are_refused_with_both_digests() {
        let dir = tempfile::tempdir().unwrap();
        let host = ScriptedHost::new(dir.path());
        host.put("/srv/a.bin", b"evil!!");
        let a = asset(b"good!!", "file:///srv/a.bin");
        let err = fetch_asset(&host, "kernel", &a, &FetchConfig::default()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("expected sha256 {}", a.sha256)),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("computed {}", Sha256Digest::of(b"evil!!"))),
            "{msg}"
        );
        assert!(!host.exists(&cache_path(&a)));
        assert!(!host.exists(&format!("{}.partial", cache_path(&a))));
    }

    #[test]
    fn progress_reports_each_quarter_once() {
        let dir = tempfile::tempdir().unwrap();
        let host = ScriptedHost::new(dir.path());
        let quiet = live::Handle::none();
        let mut p = Progress::new(&quiet, "kernel", 100, 0);
        for have in [10, 25, 26, 60, 99, 100] {
            p.update(&host, have);
        }
        let said: Vec<String> = host.said();
        assert_eq!(
            said,
            vec![
                "fetch kernel: 25% (25 B of 100 B)",
                "fetch kernel: 60% (60 B of 100 B)",
                "fetch kernel: 99% (99 B of 100 B)",
            ]
        );
        // Resuming at 60% does not repeat earlier quarters.
        let host = ScriptedHost::new(dir.path());
        let mut p = Progress::new(&quiet, "kernel", 100, 60);
        p.update(&host, 80);
        assert_eq!(host.said(), vec!["fetch kernel: 80% (80 B of 100 B)"]);
    }
}
