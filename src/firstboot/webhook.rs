//! The optional webhook: a JSON POST of the (redacted) status on each step
//! change and at the end. Retried a few times; a webhook that is down never
//! fails or stalls the run for long (prior-art §7: "Is it finished?").

use std::time::Duration;

use super::fetch::HostNet;
use super::host::Host;
use super::status::Status;
use crate::plan::Plan;
use crate::transport::{self, FetchConfig};

pub struct Webhook {
    url: String,
    cfg: FetchConfig,
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
            cfg: FetchConfig {
                // Short budgets: a report is worth seconds, not minutes.
                connect_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(10),
                backoff_initial: Duration::from_secs(1),
                backoff_max: Duration::from_secs(4),
                attempts_per_mirror: 3,
                ..FetchConfig::default()
            },
        })
    }

    /// POST the status. Failures are said on the console, never returned.
    /// The caller passes an already redacted status.
    pub fn post(&self, host: &dyn Host, status: &Status) {
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
        let mut failures = 0;
        loop {
            match transport::post_json(&HostNet(host), &self.url, body.as_bytes(), &self.cfg) {
                Ok(()) => return,
                Err(e) => {
                    failures += 1;
                    if let Some(wait) = self.cfg.retry_wait(&e, failures) {
                        host.sleep(wait);
                        continue;
                    }
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
}

/// Error text quotes the URL; keep its token out of the console.
fn redacted(text: &str, url: &str) -> String {
    text.replace(url, &transport::redact_url(url))
}
