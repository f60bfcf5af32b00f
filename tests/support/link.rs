//! One network link shared by every connection of a test server, capped at
//! a rate in bytes per second: a cloud server's bandwidth cap, which splits
//! between its connections (src/firstboot/link.rs says why the helper cares).
//! Used by the critical path bench (benches/critical_path.rs) and the VM
//! tier's throttled first boot (tests/vm_e2e.rs).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Each chunk a connection sends takes the next free slot on the link, after
/// every chunk already sent: a token bucket with no depth, so an idle link
/// saves no credit and a new connection gets no burst.
pub struct SharedLink {
    bytes_per_sec: f64,
    free_at: Mutex<Option<Instant>>,
}

impl SharedLink {
    pub fn new(bytes_per_sec: f64) -> Self {
        assert!(bytes_per_sec > 0.0, "a link needs a positive rate");
        Self {
            bytes_per_sec,
            free_at: Mutex::new(None),
        }
    }

    /// Sleep until `chunk` more bytes have had their time on the link.
    pub fn pace(&self, chunk: usize) {
        let until = {
            let mut free = self.free_at.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let from = free.map_or(now, |f| f.max(now));
            let until = from + Duration::from_secs_f64(chunk as f64 / self.bytes_per_sec);
            *free = Some(until);
            until
        };
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
    }
}
