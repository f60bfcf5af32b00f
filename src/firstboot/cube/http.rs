//! Plain-HTTP probes of Cube's health endpoints (CubeAPI, CubeMaster, the
//! control plane's node registry). Only `http://` on private addresses: these
//! services do not terminate TLS.

use std::time::Duration;

use anyhow::{anyhow, Result};

use super::super::host::{unix_secs, Host};
use crate::transport::{self, FetchConfig};

/// One GET with a short timeout, through the shared transport; the body on
/// 2xx, an error naming the status or transport failure otherwise (callers
/// name the URL).
pub fn get(url: &str) -> Result<String> {
    let cfg = FetchConfig {
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        total_timeout: Some(Duration::from_secs(5)),
        // Cube's ports are on private addresses: never through an HTTP proxy
        // from the environment.
        use_proxy: false,
        ..FetchConfig::default()
    };
    // Probes read no files and need no environment: the process will do.
    transport::get_text(&transport::Process, url, &cfg).map_err(|e| anyhow!("{}", e.reason()))
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
