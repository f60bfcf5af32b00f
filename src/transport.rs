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
//!
//! Here the I/O (HTTP through ureq, `file://` through the caller's
//! surroundings); what to do about a failure and how long to wait is
//! [`policy`]'s, the URL and proxy rules [`url`]'s. Both are pure.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::time::Duration;

mod policy;
mod url;

pub use policy::{DownloadError, FetchConfig, MinRate, RateGuard};
pub use url::{proxy_for, redact_url};

use policy::classify_status;
use url::{parse_content_range, percent_decode};

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
