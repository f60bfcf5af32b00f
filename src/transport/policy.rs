//! What a transfer does about a failure, as data: retries, backoff,
//! timeouts, the minimum rate, and the class of each failure by what the
//! caller should do about it (retry only 408, 429, 5xx, timeouts and
//! dropped connections). No I/O here: `transport.rs` applies it.

use std::time::{Duration, Instant};

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

pub(super) fn classify_status(
    url: &str,
    code: u16,
    retry_after: Option<Duration>,
) -> DownloadError {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
