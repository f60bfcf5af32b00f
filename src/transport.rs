//! The one place either binary talks to the network. The builder's `lock`,
//! the helper's fetch step, its webhook and the Cube stage's health probes
//! all ask this module to open a URL at an offset, to GET a small body or to
//! POST a JSON body; the HTTP client (ureq 3 with rustls) stays behind it,
//! so swapping the client touches this file only.
//!
//! What every caller gets: failures classified by what to do about them
//! (retry only 408, 429, 5xx, timeouts and dropped connections), capped
//! exponential backoff that honours `Retry-After`, Range resume that accepts
//! only a 206 starting at the requested byte, proxies from
//! `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`, and `file://` URLs
//! (percent-decoded) on the same path as http(s): they serve air-gapped
//! installs and tests, and a missing file is the same error class as a 404
//! (rustup `src/download/mod.rs`).
//!
//! Pure Rust, no builder-only crates: the static helper links it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

/// What a transfer needs from its surroundings. The helper passes its Host
/// seam (environment and files under `--root`, its clock); the builder the
/// process itself ([`Process`]).
pub trait Surroundings: Sync {
    /// An environment variable (proxies).
    fn var(&self, key: &str) -> Option<String>;
    /// Open the file a `file://` URL names (already percent-decoded).
    fn open_local(&self, path: &str) -> io::Result<File>;
    /// Wait between retries.
    fn sleep(&self, d: Duration);
}

/// What [`Surroundings::open_local`] returns.
pub type LocalFile = File;

/// The running process: its environment, its filesystem, its clock.
pub struct Process;

impl Surroundings for Process {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
    fn open_local(&self, path: &str) -> io::Result<File> {
        File::open(path)
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// How transfers behave: retries, backoff, timeouts and proxies. The helper's
/// CLI builds it (`--fetch-retries`, `--fetch-timeout`); tests shorten the
/// timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchConfig {
    /// Attempts per mirror for retriable failures before the next mirror.
    pub attempts_per_mirror: u32,
    /// First backoff; doubles per attempt up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// TCP connect (and TLS handshake) budget.
    pub connect_timeout: Duration,
    /// Longest silence while waiting for headers or body bytes: a stalled
    /// server is a timeout, not a hang.
    pub idle_timeout: Duration,
    /// Budget for a whole request, body included (health probes; a
    /// download's per-attempt deadline, see [`FetchConfig::for_size`]).
    pub total_timeout: Option<Duration>,
    /// Slowest transfer worth waiting for: a mirror that trickles is never
    /// silent long enough for `idle_timeout`, so it is given up when fewer
    /// bytes than this arrive in a window.
    pub min_rate: Option<MinRate>,
    /// Whether proxies from the environment apply. Off for Cube's own
    /// endpoints, which are on private addresses.
    pub use_proxy: bool,
    pub user_agent: String,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            // With the backoff below, about 1.5 minutes of retrying per
            // mirror: enough to ride out a flaky first-boot network.
            attempts_per_mirror: 8,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            total_timeout: None,
            min_rate: None,
            use_proxy: true,
            user_agent: format!("cubeboot/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// At least `bytes_per_sec`, averaged over each `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRate {
    pub bytes_per_sec: u64,
    pub window: Duration,
}

impl FetchConfig {
    /// Backoff before attempt `attempt` (1-based count of failures so far):
    /// `initial * 2^(attempt-1)`, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.backoff_initial
            .saturating_mul(factor)
            .min(self.backoff_max)
    }

    /// This configuration for one attempt at an asset of `size` bytes: with
    /// a minimum rate, the attempt also gets an overall deadline, twice what
    /// the slowest acceptable rate needs plus one window and the connect
    /// budget, so no pattern of bursts and pauses holds a mirror for good.
    pub fn for_size(&self, size: u64) -> FetchConfig {
        let mut cfg = self.clone();
        if let Some(min) = self.min_rate {
            let secs = size.saturating_mul(2) / min.bytes_per_sec.max(1);
            let deadline = self.connect_timeout + min.window + Duration::from_secs(secs);
            cfg.total_timeout = Some(cfg.total_timeout.map_or(deadline, |t| t.min(deadline)));
        }
        cfg
    }

    /// The wait before the next attempt after `failures` failures ended with
    /// `err`, or `None` when this URL should be given up: not retriable, or
    /// out of attempts. A server's `Retry-After` lengthens the wait, up to
    /// the cap.
    pub fn retry_wait(&self, err: &DownloadError, failures: u32) -> Option<Duration> {
        let DownloadError::Retriable { retry_after, .. } = err else {
            return None;
        };
        if failures >= self.attempts_per_mirror {
            return None;
        }
        let wait = self.backoff(failures);
        Some(match retry_after {
            Some(ra) => wait.max((*ra).min(self.backoff_max)),
            None => wait,
        })
    }
}

/// Why a request failed, by what the caller should do about it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DownloadError {
    /// 404/410, or a `file://` path that does not exist: try the next mirror.
    #[error("{url}: not found ({detail})")]
    NotFound { url: String, detail: String },
    /// Timeouts, resets, 408, 429, 5xx: retry this mirror after a backoff.
    #[error("{url}: {reason}")]
    Retriable {
        url: String,
        reason: String,
        /// A server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// Anything retrying cannot fix (403, TLS failure, bad URL): next mirror.
    #[error("{url}: {reason}")]
    Fatal { url: String, reason: String },
    /// Below the minimum throughput, or past the attempt's deadline: this
    /// mirror is alive but too slow to wait for; the next mirror resumes.
    #[error("{url}: too slow: {reason}")]
    TooSlow { url: String, reason: String },
}

impl DownloadError {
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Retriable { .. })
    }

    /// What went wrong, without the URL (for callers that name it already).
    pub fn reason(&self) -> &str {
        match self {
            Self::NotFound { detail, .. } => detail,
            Self::Retriable { reason, .. }
            | Self::Fatal { reason, .. }
            | Self::TooSlow { reason, .. } => reason,
        }
    }
}

/// Watches one attempt's throughput against [`FetchConfig::min_rate`]:
/// every full window, the bytes that arrived in it must average the minimum.
pub struct RateGuard {
    min: Option<MinRate>,
    window_start: Instant,
    window_bytes: u64,
}

impl RateGuard {
    /// Start watching now (call right after the request opened).
    pub fn new(cfg: &FetchConfig) -> Self {
        Self {
            min: cfg.min_rate,
            window_start: Instant::now(),
            window_bytes: 0,
        }
    }

    /// Count `n` bytes just read from `url`.
    pub fn check(&mut self, url: &str, n: usize) -> Result<(), DownloadError> {
        self.check_at(url, n, Instant::now())
    }

    fn check_at(&mut self, url: &str, n: usize, now: Instant) -> Result<(), DownloadError> {
        let Some(min) = self.min else {
            return Ok(());
        };
        self.window_bytes += n as u64;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < min.window {
            return Ok(());
        }
        let needed = u128::from(min.bytes_per_sec) * elapsed.as_millis() / 1000;
        if u128::from(self.window_bytes) < needed {
            return Err(DownloadError::TooSlow {
                url: url.into(),
                reason: format!(
                    "{} bytes in {:.1} s, below the minimum of {} bytes/s",
                    self.window_bytes,
                    elapsed.as_secs_f64(),
                    min.bytes_per_sec
                ),
            });
        }
        self.window_start = now;
        self.window_bytes = 0;
        Ok(())
    }
}

/// An opened download.
pub struct Opened {
    /// Offset of the first body byte: the requested offset when the server
    /// honoured the range (206), 0 when it sent the whole file (200).
    pub start: u64,
    /// Length of the whole resource, when the server said.
    pub total: Option<u64>,
    pub body: Box<dyn Read + Send>,
}

/// Open `url` for reading from byte `offset` (0 = the whole file).
pub fn open(
    env: &dyn Surroundings,
    url: &str,
    offset: u64,
    cfg: &FetchConfig,
) -> Result<Opened, DownloadError> {
    if let Some(path) = url.strip_prefix("file://") {
        open_file(env, url, &percent_decode(path), offset)
    } else if url.starts_with("http://") || url.starts_with("https://") {
        open_http(env, url, offset, cfg)
    } else {
        Err(DownloadError::Fatal {
            url: url.into(),
            reason: "unsupported URL scheme (expected http, https or file)".into(),
        })
    }
}

/// POST a JSON body; any 2xx is success.
pub fn post_json(
    env: &dyn Surroundings,
    url: &str,
    body: &[u8],
    headers: &[(&str, String)],
    cfg: &FetchConfig,
) -> Result<(), DownloadError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(DownloadError::Fatal {
            url: redact_url(url),
            reason: "webhook URL must be http or https".into(),
        });
    }
    let agent = agent_for(env, url, cfg)?;
    let mut request = agent.post(url).content_type("application/json");
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let resp = request.send(body).map_err(|e| classify_ureq(url, e))?;
    let code = resp.status().as_u16();
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(classify_status(
            url,
            code,
            retry_after(resp.headers().get("retry-after")),
        ))
    }
}

/// GET a small body (a health probe's JSON): the text on 2xx, the classified
/// failure otherwise. A body past 1 MiB is refused after reading 1 MiB + 1
/// byte: no probe answer is that long.
pub fn get_text(
    env: &dyn Surroundings,
    url: &str,
    cfg: &FetchConfig,
) -> Result<String, DownloadError> {
    const LIMIT: u64 = 1 << 20;
    let opened = open(env, url, 0, cfg)?;
    let body = match crate::bounded_read::read_limited(opened.body, LIMIT) {
        Err(e) if e.kind() == io::ErrorKind::FileTooLarge => {
            return Err(DownloadError::Fatal {
                url: url.into(),
                reason: format!("response body {e}"),
            })
        }
        other => other.map_err(|e| classify_body_error(url, e))?,
    };
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Called with the bytes read so far and the total, when known.
pub type ProgressHook<'a> = Box<dyn FnMut(u64, Option<u64>) + Send + 'a>;

/// One URL as a single stream for callers that consume the bytes as they
/// arrive (the builder hashes and inspects a package in one pass).
/// Retriable failures, while opening or mid-body, are retried after the
/// backoff and resume at the byte reached; only a 206 from exactly that byte
/// is accepted, because the bytes already read are gone to the caller.
pub struct Stream<'a> {
    env: &'a dyn Surroundings,
    url: String,
    cfg: FetchConfig,
    body: Option<Box<dyn Read + Send>>,
    pos: u64,
    total: Option<u64>,
    failures: u32,
    rate: RateGuard,
    progress: Option<ProgressHook<'a>>,
}

impl<'a> Stream<'a> {
    /// Open `url`, retrying retriable failures as configured.
    pub fn open(
        env: &'a dyn Surroundings,
        url: &str,
        cfg: &FetchConfig,
    ) -> Result<Self, DownloadError> {
        let mut s = Self {
            env,
            url: url.to_string(),
            cfg: cfg.clone(),
            body: None,
            pos: 0,
            total: None,
            failures: 0,
            rate: RateGuard::new(cfg),
            progress: None,
        };
        s.connect()?;
        Ok(s)
    }

    /// Length of the whole resource, when the server said.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// Report progress after every read.
    pub fn on_progress(mut self, hook: ProgressHook<'a>) -> Self {
        self.progress = Some(hook);
        self
    }

    fn connect(&mut self) -> Result<(), DownloadError> {
        loop {
            match open(self.env, &self.url, self.pos, &self.cfg) {
                Ok(o) if o.start == self.pos => {
                    self.total = o.total.or(self.total);
                    self.body = Some(o.body);
                    self.rate = RateGuard::new(&self.cfg);
                    return Ok(());
                }
                Ok(_) => {
                    return Err(DownloadError::Fatal {
                        url: redact_url(&self.url),
                        reason: format!(
                            "the server ignored the range request; cannot resume at byte {}",
                            self.pos
                        ),
                    })
                }
                Err(e) => self.wait(e)?,
            }
        }
    }

    /// Sleep before the next attempt, or give up with `err`.
    fn wait(&mut self, err: DownloadError) -> Result<(), DownloadError> {
        self.failures += 1;
        match self.cfg.retry_wait(&err, self.failures) {
            Some(d) => {
                self.env.sleep(d);
                Ok(())
            }
            None => Err(err),
        }
    }
}

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(body) = self.body.as_mut() else {
                self.connect().map_err(io::Error::other)?;
                continue;
            };
            let err = match body.read(buf) {
                Ok(0) => match self.total {
                    Some(total) if self.pos < total => DownloadError::Retriable {
                        url: self.url.clone(),
                        reason: format!("connection closed after {} of {total} bytes", self.pos),
                        retry_after: None,
                    },
                    _ => return Ok(0),
                },
                Ok(n) => {
                    self.pos += n as u64;
                    self.rate.check(&self.url, n).map_err(io::Error::other)?;
                    if let Some(hook) = self.progress.as_mut() {
                        hook(self.pos, self.total);
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => classify_body_error(&self.url, e),
            };
            self.body = None;
            self.wait(err).map_err(io::Error::other)?;
        }
    }
}

/// Classify an error met while reading a body (after `open` succeeded).
pub fn classify_body_error(url: &str, e: io::Error) -> DownloadError {
    match ureq::Error::from(e) {
        ureq::Error::Io(io) => classify_io(url, &io),
        other => classify_ureq(url, other),
    }
}

/// Which proxy serves `url`, from the curl-style variables read through the
/// caller's surroundings: `https_proxy`/`HTTPS_PROXY` for https, `http_proxy`/`HTTP_PROXY` for
/// http (the lower-case name wins, as in curl), `ALL_PROXY` as a fallback,
/// and `NO_PROXY`/`no_proxy` exceptions (comma list of host suffixes, `*`).
pub fn proxy_for(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = url_host(rest)?;
    let get = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| env(n).filter(|v| !v.trim().is_empty()))
    };
    let proxy = match scheme {
        "https" => get(&["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]),
        "http" => get(&["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]),
        _ => None,
    }?;
    let no_proxy = get(&["no_proxy", "NO_PROXY"]).unwrap_or_default();
    if no_proxy_matches(&no_proxy, &host) {
        return None;
    }
    Some(proxy.trim().to_string())
}

/// A URL fit for logs and status: no userinfo, query or fragment (webhook
/// tokens often live there).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.split(['?', '#']).next().unwrap_or("").to_string();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    format!("{scheme}://{authority}{path}")
}

fn open_file(
    env: &dyn Surroundings,
    url: &str,
    path: &str,
    offset: u64,
) -> Result<Opened, DownloadError> {
    let mut f = match env.open_local(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(DownloadError::NotFound {
                url: url.into(),
                detail: format!("no file {path}"),
            })
        }
        Err(e) => {
            return Err(DownloadError::Fatal {
                url: url.into(),
                reason: format!("opening {path}: {e}"),
            })
        }
    };
    let fatal = |e: io::Error| DownloadError::Fatal {
        url: url.into(),
        reason: format!("reading {path}: {e}"),
    };
    let len = f.metadata().map_err(fatal)?.len();
    // Like a server answering 416 to a range past the end, start over.
    let start = if offset <= len { offset } else { 0 };
    f.seek(SeekFrom::Start(start)).map_err(fatal)?;
    Ok(Opened {
        start,
        total: Some(len),
        body: Box::new(f),
    })
}

fn open_http(
    env: &dyn Surroundings,
    url: &str,
    offset: u64,
    cfg: &FetchConfig,
) -> Result<Opened, DownloadError> {
    let agent = agent_for(env, url, cfg)?;
    let mut req = agent.get(url);
    if offset > 0 {
        req = req.header("Range", format!("bytes={offset}-"));
    }
    let resp = req.call().map_err(|e| classify_ureq(url, e))?;
    let code = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_length = header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
    let (start, total) = match code {
        200 => (0, content_length),
        206 => {
            // A 206 must resume exactly where we asked; anything else is a
            // server bug we do not try to patch over.
            let range = header("content-range").unwrap_or_default();
            match parse_content_range(&range) {
                Some((first, total)) if first == offset => (first, total),
                _ => {
                    return Err(DownloadError::Retriable {
                        url: url.into(),
                        reason: format!(
                            "206 with Content-Range {range:?} does not resume at byte {offset}"
                        ),
                        retry_after: None,
                    })
                }
            }
        }
        // The partial file is at or past the end of the resource: start over.
        416 if offset > 0 => return open_http(env, url, 0, cfg),
        _ => {
            return Err(classify_status(
                url,
                code,
                retry_after(resp.headers().get("retry-after")),
            ))
        }
    };
    Ok(Opened {
        start,
        total,
        body: Box::new(resp.into_body().into_reader()),
    })
}

fn agent_for(
    env: &dyn Surroundings,
    url: &str,
    cfg: &FetchConfig,
) -> Result<ureq::Agent, DownloadError> {
    let proxy = match cfg
        .use_proxy
        .then(|| proxy_for(url, &|k| env.var(k)))
        .flatten()
    {
        None => None,
        Some(p) => Some(ureq::Proxy::new(&p).map_err(|_| DownloadError::Fatal {
            url: redact_url(url),
            reason: format!("invalid proxy URL {}", redact_url(&p)),
        })?),
    };
    let tls = ureq::tls::TlsConfig::builder()
        // Certificates are checked against the system store (what the
        // distro's ca-certificates trusts), not a bundled list.
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(proxy)
        .tls_config(tls)
        .user_agent(cfg.user_agent.as_str())
        .timeout_resolve(Some(cfg.connect_timeout))
        .timeout_connect(Some(cfg.connect_timeout))
        .timeout_per_read(Some(cfg.idle_timeout))
        .timeout_per_write(Some(cfg.idle_timeout))
        .timeout_global(cfg.total_timeout)
        // Pooled connections are no use for one request per agent.
        .max_idle_connections(0)
        .build();
    Ok(config.into())
}

fn classify_status(url: &str, code: u16, retry_after: Option<Duration>) -> DownloadError {
    let url = url.to_string();
    match code {
        404 | 410 => DownloadError::NotFound {
            url,
            detail: format!("HTTP {code}"),
        },
        408 | 429 | 500..=599 => DownloadError::Retriable {
            url,
            reason: format!("HTTP {code}"),
            retry_after,
        },
        _ => DownloadError::Fatal {
            url,
            reason: format!("HTTP {code}"),
        },
    }
}

fn classify_ureq(url: &str, e: ureq::Error) -> DownloadError {
    let retriable = |reason: String| DownloadError::Retriable {
        url: url.into(),
        reason,
        retry_after: None,
    };
    match e {
        ureq::Error::Io(io) => classify_io(url, &io),
        ureq::Error::Timeout(ureq::Timeout::Global) => DownloadError::TooSlow {
            url: url.into(),
            reason: "not finished within the attempt's deadline".into(),
        },
        ureq::Error::Timeout(t) => retriable(format!("timed out ({t})")),
        // At first boot DNS and routes may come up late: worth another try.
        ureq::Error::HostNotFound => retriable("host not found".into()),
        ureq::Error::ConnectionFailed => retriable("connection failed".into()),
        ureq::Error::Protocol(p) => retriable(format!("protocol error: {p}")),
        ureq::Error::BodyStalled => retriable("body stalled".into()),
        other => DownloadError::Fatal {
            url: url.into(),
            reason: other.to_string(),
        },
    }
}

fn classify_io(url: &str, e: &io::Error) -> DownloadError {
    use io::ErrorKind as K;
    match e.kind() {
        K::TimedOut
        | K::WouldBlock
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::ConnectionRefused
        | K::NotConnected
        | K::BrokenPipe
        | K::UnexpectedEof
        | K::Interrupted
        | K::HostUnreachable
        | K::NetworkUnreachable
        | K::NetworkDown
        | K::AddrNotAvailable => DownloadError::Retriable {
            url: url.into(),
            reason: format!("{e}"),
            retry_after: None,
        },
        _ => DownloadError::Fatal {
            url: url.into(),
            reason: format!("{e}"),
        },
    }
}

fn retry_after(v: Option<&ureq::http::HeaderValue>) -> Option<Duration> {
    let secs: u64 = v?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// `bytes 100-199/200` → (100, Some(200)); `bytes 100-199/*` → (100, None).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (first, _last) = range.split_once('-')?;
    let first = first.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((first, total))
}

/// Host part of `authority/path` (no brackets for IPv6, no port, no userinfo).
fn url_host(rest: &str) -> Option<String> {
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// curl's NO_PROXY rule: `*` matches all; otherwise each entry (leading `.`
/// or `*.` ignored) matches the host itself and any subdomain of it.
fn no_proxy_matches(list: &str, host: &str) -> bool {
    list.split(',').map(str::trim).any(|entry| {
        if entry == "*" {
            return true;
        }
        let entry = entry
            .trim_start_matches("*.")
            .trim_start_matches('.')
            .to_ascii_lowercase();
        // Entries may carry a port (`host:8080`); hosts are matched by name.
        let entry = entry.split(':').next().unwrap_or("");
        !entry.is_empty()
            && (host == entry
                || host
                    .strip_suffix(entry)
                    .is_some_and(|prefix| prefix.ends_with('.')))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn proxies_follow_scheme_and_no_proxy() {
        let env = env_of(&[
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("http_proxy", "http://plain:8080"),
            ("NO_PROXY", "internal.example, .corp,10.0.0.1"),
        ]);
        let cases = [
            ("https://github.com/x", Some("http://proxy:3128")),
            ("http://mirror.example/x", Some("http://plain:8080")),
            ("https://a.internal.example/x", None),
            ("https://internal.example:8443/x", None),
            ("https://notinternal.example/x", Some("http://proxy:3128")),
            ("http://deep.sub.corp/x", None),
            ("http://10.0.0.1/x", None),
            ("file:///srv/x", None),
        ];
        for (url, want) in cases {
            assert_eq!(proxy_for(url, &env).as_deref(), want, "{url}");
        }
        let env = env_of(&[("HTTPS_PROXY", "http://p:1"), ("no_proxy", "*")]);
        assert_eq!(proxy_for("https://x/y", &env), None);
        assert_eq!(proxy_for("https://x/y", &env_of(&[])), None);
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(parse_content_range(""), None);
    }

    #[test]
    fn status_codes_are_classified() {
        let kind = |code| match classify_status("u", code, None) {
            DownloadError::NotFound { .. } => "notfound",
            DownloadError::Retriable { .. } => "retry",
            DownloadError::Fatal { .. } => "fatal",
            DownloadError::TooSlow { .. } => "slow",
        };
        for (code, want) in [
            (404, "notfound"),
            (410, "notfound"),
            (408, "retry"),
            (429, "retry"),
            (500, "retry"),
            (503, "retry"),
            (599, "retry"),
            (403, "fatal"),
            (400, "fatal"),
            (401, "fatal"),
        ] {
            assert_eq!(kind(code), want, "HTTP {code}");
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let cfg = FetchConfig {
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            ..FetchConfig::default()
        };
        let got: Vec<u64> = (1..=6).map(|a| cfg.backoff(a).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(cfg.backoff(1000).as_secs(), 10);
    }

    #[test]
    fn the_rate_guard_judges_whole_windows() {
        let cfg = FetchConfig {
            min_rate: Some(MinRate {
                bytes_per_sec: 100,
                window: Duration::from_secs(10),
            }),
            ..FetchConfig::default()
        };
        let mut g = RateGuard::new(&cfg);
        let t0 = g.window_start;
        let at = |s| t0 + Duration::from_secs(s);
        // A slow start inside the window is fine; the window's average counts.
        assert!(g.check_at("u", 10, at(5)).is_ok());
        assert!(g.check_at("u", 990, at(10)).is_ok());
        // The next window: 999 bytes in 10 s is below 100 bytes/s.
        assert!(g.check_at("u", 999, at(19)).is_ok());
        let err = g.check_at("u", 0, at(20)).unwrap_err();
        assert!(matches!(err, DownloadError::TooSlow { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "u: too slow: 999 bytes in 10.0 s, below the minimum of 100 bytes/s"
        );
        // No minimum configured: never too slow.
        let mut g = RateGuard::new(&FetchConfig::default());
        assert!(g
            .check_at("u", 0, Instant::now() + Duration::from_secs(3600))
            .is_ok());
    }

    #[test]
    fn the_attempt_deadline_scales_with_the_size() {
        let cfg = FetchConfig {
            connect_timeout: Duration::from_secs(30),
            min_rate: Some(MinRate {
                bytes_per_sec: 16 * 1024,
                window: Duration::from_secs(60),
            }),
            ..FetchConfig::default()
        };
        // 1 GiB at 16 KiB/s is 65536 s; twice that plus window and connect.
        assert_eq!(
            cfg.for_size(1 << 30).total_timeout,
            Some(Duration::from_secs(2 * 65536 + 90))
        );
        assert_eq!(cfg.for_size(0).total_timeout, Some(Duration::from_secs(90)));
        assert_eq!(FetchConfig::default().for_size(1 << 30).total_timeout, None);
    }

    #[test]
    fn urls_are_redacted_for_logs() {
        assert_eq!(
            redact_url("https://user:tok@hooks.example/p/q?key=s3cret#x"),
            "https://hooks.example/p/q"
        );
        assert_eq!(redact_url("http://h:8080"), "http://h:8080");
    }

    #[test]
    fn file_urls_decode_percent_escapes() {
        assert_eq!(percent_decode("/srv/a%20b.deb"), "/srv/a b.deb");
        assert_eq!(percent_decode("/srv/100%"), "/srv/100%");
        assert_eq!(percent_decode("/srv/%zz"), "/srv/%zz");
    }
}
