//! Plain-HTTP probes of Cube's health endpoints (CubeAPI, CubeMaster, the
//! control plane's node registry). Only `http://` on private addresses: these
//! services do not terminate TLS (facts §14).

use std::time::Duration;

use anyhow::{anyhow, Result};

use super::super::host::{unix_secs, Host};

/// One GET with a short timeout; the body on 2xx, an error naming the URL
/// and the status or transport failure otherwise.
pub fn get(url: &str) -> Result<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        // Cube's ports are on private addresses: never through an HTTP proxy
        // from the environment (ureq reads http_proxy by default).
        .proxy(None)
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent.get(url).call().map_err(|e| anyhow!("{e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| anyhow!("reading body: {e}"))?;
    if !(200..300).contains(&status) {
        return Err(anyhow!("HTTP {status}"));
    }
    Ok(body)
}

/// Poll `probe` until it succeeds or `budget` (by the host's clock) is spent,
/// sleeping `interval` between attempts. Returns the last error on timeout.
pub fn poll<T>(
    host: &dyn Host,
    budget: Duration,
    interval: Duration,
    mut on_retry: impl FnMut(&anyhow::Error, u64),
    mut probe: impl FnMut() -> Result<T>,
) -> Result<T> {
    let start = unix_secs(host.now());
    loop {
        match probe() {
            Ok(v) => return Ok(v),
            Err(e) => {
                let waited = unix_secs(host.now()).saturating_sub(start);
                if waited + interval.as_secs() > budget.as_secs() {
                    return Err(e);
                }
                on_retry(&e, waited);
                host.sleep(interval);
            }
        }
    }
}
