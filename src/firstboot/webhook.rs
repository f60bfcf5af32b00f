//! The optional webhook: a JSON POST of the whole (redacted) status on each
//! step change and at the end, and, within a step, on a phase change and
//! with download counts at most every 2 s (src/firstboot/live.rs); signed
//! with the fleet secret when the plan has one (src/signing.rs; `cubeboot
//! watch` verifies it).
//!
//! Every post carries the full current status, so the last one received is
//! the truth and a missed one is healed by the next: a receiver that was
//! restarted catches up. Posts are retried with backoff for about half a
//! minute; once a post has given up, later ones try once until one gets
//! through, so a dead receiver never stalls the run for long.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::fetch::HostNet;
use super::host::{unix_secs, Host};
use super::status::Status;
use crate::plan::Plan;
use crate::signing;
use crate::transport::{self, FetchConfig};

pub struct Webhook {
    url: String,
    secret: Option<String>,
    cfg: FetchConfig,
    /// The last post gave up: try the next ones once until one succeeds.
    unreachable: AtomicBool,
}

impl Webhook {
    /// The plan's webhook, if it has one.
    pub fn from_plan(plan: &Plan) -> Option<Self> {
        let url = plan.report.webhook.as_deref()?.trim();
        if url.is_empty() {
            return None;
        }
        Some(Self {
            url: url.to_string(),
            secret: plan.report.webhook_secret.clone(),
            cfg: FetchConfig {
                // Short budgets: a report is worth seconds, not minutes.
                connect_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(10),
                backoff_initial: Duration::from_secs(1),
                backoff_max: Duration::from_secs(8),
                // 1 + 2 + 4 + 8 + 8 s of backoff: long enough to ride out a
                // receiver's restart.
                attempts_per_mirror: 6,
                ..FetchConfig::default()
            },
            unreachable: AtomicBool::new(false),
        })
    }

    /// POST the status. Failures are said on the console, never returned.
    /// The caller passes an already redacted status.
    pub fn post(&self, host: &dyn Host, status: &Status) {
        // Stays: the POST reaches another machine, which no host can stand in for.
        if host.is_dry_run() {
            host.say(&format!(
                "dry run: would POST status ({}) to {}",
                status.state,
                transport::redact_url(&self.url)
            ));
            return;
        }
        // Scrubbed here too: nothing secret leaves, whoever built the status.
        let mut status = status.clone();
        status.redact(host.secrets());
        let body = status.to_json();
        // Once a post has given up, the next ones try once each.
        let cfg = FetchConfig {
            attempts_per_mirror: if self.unreachable.load(Ordering::Relaxed) {
                1
            } else {
                self.cfg.attempts_per_mirror
            },
            ..self.cfg.clone()
        };
        let mut failures = 0;
        loop {
            // Signed afresh per attempt: the timestamp is when it was sent.
            let headers = self.headers(host, body.as_bytes());
            match transport::post_json(&HostNet(host), &self.url, body.as_bytes(), &headers, &cfg) {
                Ok(()) => {
                    self.unreachable.store(false, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    failures += 1;
                    if let Some(wait) = cfg.retry_wait(&e, failures) {
                        host.sleep(wait);
                        continue;
                    }
                    self.unreachable.store(true, Ordering::Relaxed);
                    host.say(&format!(
                        "webhook {}: {}; continuing without it",
                        transport::redact_url(&self.url),
                        redacted(&e.to_string(), &self.url)
                    ));
                    return;
                }
            }
        }
    }

    /// POST progress within a step (download counts, a phase): one try,
    /// and none while the receiver is known to be down. A lost one is
    /// healed by the next post, and the step-boundary posts (retried, and
    /// said on the console when they fail) are the ones that matter.
    pub fn post_progress(&self, host: &dyn Host, status: &Status) {
        // Stays: as in `post`, no host stands in for the receiver.
        if host.is_dry_run() || self.unreachable.load(Ordering::Relaxed) {
            return;
        }
        let mut status = status.clone();
        status.redact(host.secrets());
        let body = status.to_json();
        let cfg = FetchConfig {
            attempts_per_mirror: 1,
            ..self.cfg.clone()
        };
        let headers = self.headers(host, body.as_bytes());
        let _ = transport::post_json(&HostNet(host), &self.url, body.as_bytes(), &headers, &cfg);
    }

    fn headers(&self, host: &dyn Host, body: &[u8]) -> Vec<(&'static str, String)> {
        let Some(secret) = &self.secret else {
            return Vec::new();
        };
        let ts = unix_secs(host.now());
        vec![
            (signing::TIMESTAMP_HEADER, ts.to_string()),
            (signing::SIGNATURE_HEADER, signing::sign(secret, ts, body)),
        ]
    }
}

/// Error text quotes the URL; keep its token out of the console.
fn redacted(text: &str, url: &str) -> String {
    text.replace(url, &transport::redact_url(url))
}
