//! The optional webhook: a JSON POST of the (redacted) status on each step
//! change and at the end. Retried a few times; a webhook that is down never
//! fails or stalls the run for long (prior-art §7: "Is it finished?").

use std::time::Duration;

use super::download::{self, FetchConfig};
use super::host::Host;
use super::status::Status;
use crate::plan::Plan;

pub struct Webhook {
    url: String,
    cfg: FetchConfig,
    attempts: u32,
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
                ..FetchConfig::default()
            },
            attempts: 3,
        })
    }

    /// POST the status. Failures are said on the console, never returned.
    /// The caller passes an already redacted status.
    pub fn post(&self, host: &dyn Host, status: &Status) {
        if host.is_dry_run() {
            host.say(&format!(
                "dry run: would POST status ({}) to {}",
                status.state,
                download::redact_url(&self.url)
            ));
            return;
        }
        let body = status.to_json();
        for attempt in 1..=self.attempts {
            match download::post_json(host, &self.url, body.as_bytes(), &self.cfg) {
                Ok(()) => return,
                Err(e) if e.is_retriable() && attempt < self.attempts => {
                    host.sleep(self.cfg.backoff(attempt));
                }
                Err(e) => {
                    host.say(&format!(
                        "webhook {}: {}; continuing without it",
                        download::redact_url(&self.url),
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
    text.replace(url, &download::redact_url(url))
}
