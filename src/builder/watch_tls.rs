//! `cubeboot watch --tls-cert C --tls-key K`: HTTPS in front of watch's
//! HTTP server.
//!
//! watch terminates TLS itself (tiny_http's TLS, which watch used before,
//! needed rustls 0.20, left without the fix for RUSTSEC-2024-0336) with the rustls
//! the HTTP client already links: each connection's handshake and records
//! are handled here, and its plaintext is relayed to the HTTP server on a
//! loopback port. That server sees the relay's address, so [`Peers`] maps
//! the relay's local port back to the sender: the view and the rejection
//! reports name the node, not the relay. The loopback port still takes
//! plain HTTP from this machine; posts there are verified like any other.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

/// A client that does not finish its handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection silent for this long is closed (the helpers open one per
/// post).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

const BUF: usize = 16 * 1024;

/// The TLS server configuration from PEM files: the certificate chain
/// (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading TLS certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", cert.display()))?;
    if certs.is_empty() {
        bail!(
            "{}: no certificate (expected PEM `BEGIN CERTIFICATE` blocks, leaf first)",
            cert.display()
        );
    }
    let private = match PrivateKeyDer::from_pem_file(key) {
        Ok(k) => k,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => bail!(
            "{}: no private key (expected a PEM `BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY` block)",
            key.display()
        ),
        Err(e) => bail!("reading TLS key {}: {e}", key.display()),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .with_context(|| {
            format!(
                "TLS certificate {} and key {} do not make a usable pair",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// Who is behind each relay connection, by the relay's local port.
#[derive(Clone, Default)]
pub struct Peers(Arc<Mutex<HashMap<u16, IpAddr>>>);

impl Peers {
    fn lock(&self) -> MutexGuard<'_, HashMap<u16, IpAddr>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sender behind the relay connection from this port.
    pub fn get(&self, relay_port: u16) -> Option<IpAddr> {
        self.lock().get(&relay_port).copied()
    }
}

/// Connections being relayed, so `watch` can let the last answers reach
/// their clients before it exits (they are in this process, not yet in the
/// kernel's socket buffers as plain HTTP answers would be).
#[derive(Clone, Default)]
struct Active(Arc<(Mutex<usize>, Condvar)>);

impl Active {
    fn count(&self) -> MutexGuard<'_, usize> {
        self.0 .0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one connection until the guard drops.
    fn enter(&self) -> impl Drop + '_ {
        struct Leave<'a>(&'a Active);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                *self.0.count() -= 1;
                self.0 .0 .1.notify_all();
            }
        }
        *self.count() += 1;
        Leave(self)
    }
}

/// The TLS connections open now, oldest first, so one over
/// [`MAX_TLS_CONNECTIONS`] closes the oldest (as the HTTP side does, see
/// watch/server.rs): each holds two threads, so their number is bounded.
#[derive(Clone, Default)]
struct Open(Arc<Mutex<(u64, std::collections::BTreeMap<u64, TcpStream>)>>);

/// TLS connections open at most (two threads each).
pub const MAX_TLS_CONNECTIONS: usize = 256;

impl Open {
    /// Register `tcp`, closing the oldest when full; the id for [`Open::close`].
    fn add(&self, tcp: &TcpStream) -> Option<u64> {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        while open.1.len() >= MAX_TLS_CONNECTIONS {
            if let Some((_, oldest)) = open.1.pop_first() {
                // Its relay threads see the end and finish.
                let _ = oldest.shutdown(Shutdown::Both);
            }
        }
        let id = open.0;
        open.0 += 1;
        open.1.insert(id, tcp.try_clone().ok()?);
        Some(id)
    }

    fn close(&self, id: u64) {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        open.1.remove(&id);
    }
}

/// The listening TLS side.
pub struct TlsFront {
    pub addr: SocketAddr,
    pub peers: Peers,
    active: Active,
}

impl TlsFront {
    /// Wait until no connection is being relayed, at most `limit`: the
    /// helpers close theirs once answered.
    pub fn settle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut n = self.active.count();
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            n = self
                .active
                .0
                 .1
                .wait_timeout(n, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Listen on `listen` and relay each TLS connection's plaintext to
/// `backend`, on threads of their own.
pub fn start(listen: &str, config: Arc<ServerConfig>, backend: SocketAddr) -> Result<TlsFront> {
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    let peers = Peers::default();
    let active = Active::default();
    let (shared, counted) = (peers.clone(), active.clone());
    let open = Open::default();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(tcp) = stream else { continue };
            let Some(id) = open.add(&tcp) else { continue };
            let (config, peers, active) = (config.clone(), shared.clone(), counted.clone());
            let open = open.clone();
            std::thread::spawn(move || {
                let _counted = active.enter();
                // A failed handshake or a dropped connection ends only itself.
                let _ = relay(tcp, &config, backend, &peers);
                open.close(id);
            });
        }
    });
    Ok(TlsFront {
        addr,
        peers,
        active,
    })
}

fn lock(conn: &Mutex<ServerConnection>) -> MutexGuard<'_, ServerConnection> {
    conn.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One connection: the handshake, then requests one way and answers the
/// other, each on its own thread; the connection state is shared under a
/// lock that is never held while waiting to read.
fn relay(
    tcp: TcpStream,
    config: &Arc<ServerConfig>,
    backend: SocketAddr,
    peers: &Peers,
) -> io::Result<()> {
    let peer = tcp.peer_addr()?;
    tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    tcp.set_write_timeout(Some(IDLE_TIMEOUT))?;
    tcp.set_nodelay(true)?;
    let mut conn = ServerConnection::new(config.clone()).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut &tcp) {
            // Send the alert saying why, if there is one.
            let _ = conn.write_tls(&mut &tcp);
            return Err(e);
        }
    }
    tcp.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let inner = TcpStream::connect(backend)?;
    inner.set_nodelay(true)?;
    peers.lock().insert(inner.local_addr()?.port(), peer.ip());
    let conn = Mutex::new(conn);
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = answers(&inner, &tcp, &conn);
            // Nothing more to say to the client, and nothing more will be
            // answered (the HTTP side closed, e.g. a request too slow):
            // this also ends the read waiting on the client.
            let _ = tcp.shutdown(Shutdown::Both);
        });
        let result = requests(&tcp, &inner, &conn);
        // Tells the HTTP server the client is done.
        let _ = inner.shutdown(Shutdown::Write);
        result
    })
}

/// Client → TLS → plaintext → HTTP server.
fn requests(tcp: &TcpStream, inner: &TcpStream, conn: &Mutex<ServerConnection>) -> io::Result<()> {
    let mut raw = vec![0u8; BUF];
    let mut plain = Vec::new();
    // What arrived with the handshake's last flight.
    let mut ended = drain(&mut lock(conn), &mut plain)?;
    loop {
        if !plain.is_empty() {
            (&*inner).write_all(&plain)?;
            plain.clear();
        }
        if ended {
            return Ok(());
        }
        let n = (&*tcp).read(&mut raw)?;
        if n == 0 {
            return Ok(());
        }
        let mut c = lock(conn);
        let mut records = &raw[..n];
        while !records.is_empty() {
            c.read_tls(&mut records)?;
            if let Err(e) = c.process_new_packets() {
                let _ = c.write_tls(&mut &*tcp);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            ended |= drain(&mut c, &mut plain)?;
        }
        // Whatever the records asked to send back (a key update).
        while c.wants_write() {
            c.write_tls(&mut &*tcp)?;
        }
    }
}

/// Decrypted bytes ready to read; true once the client said close_notify.
fn drain(c: &mut ServerConnection, out: &mut Vec<u8>) -> io::Result<bool> {
    let mut buf = [0u8; BUF];
    loop {
        match c.reader().read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// HTTP server → TLS → client.
fn answers(inner: &TcpStream, tcp: &TcpStream, conn: &Mutex<ServerConnection>) -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = (&*inner).read(&mut buf)?;
        let mut c = lock(conn);
        if n == 0 {
            c.send_close_notify();
        } else {
            c.writer().write_all(&buf[..n])?;
        }
        while c.wants_write() {
            c.write_tls(&mut &*tcp)?;
        }
        if n == 0 {
            return Ok(());
        }
    }
}
