//! A tiny threaded HTTP/1.1 server on 127.0.0.1 for the helper's download
//! tests, with knobs for the failures the downloader must survive: a dropped
//! connection mid-body, a server that ignores Range, scripted status codes
//! (503 then success, 404), a corrupted body, a stalled or slow body. It also
//! answers POSTs (webhook) and CONNECT (an HTTP proxy that tunnels to itself).

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What the server does with one request to a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    /// Serve the body, honouring `Range: bytes=N-` with a 206.
    Normal,
    /// Announce the full length, send this many body bytes, close.
    DropAfter(usize),
    /// Answer a range request with a plain 200 and the whole body.
    IgnoreRange,
    /// Answer with this status and no body.
    Status(u16),
    /// This status with a `Retry-After: secs` header.
    StatusRetryAfter(u16, u64),
    /// Serve the body with one byte flipped.
    Corrupt,
    /// Send this many body bytes, then go silent for the duration.
    StallAfter(usize, Duration),
    /// Send the body in chunks with a pause after each.
    Slow { chunk: usize, pause: Duration },
    /// Announce a different Content-Length than the body has (and send it).
    WrongLength(u64),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// Whether it arrived through a CONNECT tunnel.
    pub tunneled: bool,
    pub started: Instant,
    pub finished: Option<Instant>,
}

struct Route {
    body: Vec<u8>,
    script: VecDeque<Behavior>,
    default: Behavior,
}

#[derive(Default)]
struct State {
    routes: BTreeMap<String, Route>,
    log: Vec<Request>,
}

pub struct Server {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Server {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                thread::spawn(move || {
                    let _ = handle(conn, &st, false);
                });
            }
        });
        Self { addr, state, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Serve `body` at `path`: the scripted behaviours one per request,
    /// then `Normal` forever.
    pub fn route(&self, path: &str, body: &[u8], script: Vec<Behavior>) {
        self.route_with_default(path, body, script, Behavior::Normal);
    }

    /// Like `route`, with a behaviour for every request after the script.
    pub fn route_with_default(
        &self,
        path: &str,
        body: &[u8],
        script: Vec<Behavior>,
        default: Behavior,
    ) {
        lock(&self.state).routes.insert(
            path.into(),
            Route {
                body: body.to_vec(),
                script: script.into(),
                default,
            },
        );
    }

    pub fn requests(&self) -> Vec<Request> {
        lock(&self.state).log.clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path && r.method != "CONNECT")
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn handle(conn: TcpStream, state: &Arc<Mutex<State>>, tunneled: bool) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(());
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    // Absolute-form targets (through a proxy) carry scheme and host.
    let path = match target.split_once("://") {
        Some((_, rest)) => rest
            .find('/')
            .map_or("/".to_string(), |i| rest[i..].to_string()),
        None => target.clone(),
    };
    // Routes ignore the query string (webhook tokens live there).
    let path = path.split('?').next().unwrap_or("").to_string();
    let idx = {
        let mut st = lock(state);
        st.log.push(Request {
            method: method.clone(),
            path: path.clone(),
            range: headers.get("range").cloned(),
            headers: headers.clone(),
            body,
            tunneled,
            started: Instant::now(),
            finished: None,
        });
        st.log.len() - 1
    };
    let mut out = conn;
    if method == "CONNECT" {
        out.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
        out.flush()?;
        // Serve the tunneled request ourselves, whatever host it named.
        return handle(out, state, true);
    }
    let result = respond(&mut out, state, &method, &path, headers.get("range"));
    lock(state).log[idx].finished = Some(Instant::now());
    result
}

fn respond(
    out: &mut TcpStream,
    state: &Arc<Mutex<State>>,
    method: &str,
    path: &str,
    range: Option<&String>,
) -> std::io::Result<()> {
    let (body, behavior) = {
        let mut st = lock(state);
        match st.routes.get_mut(path) {
            Some(r) => {
                let b = r.script.pop_front().unwrap_or_else(|| r.default.clone());
                (r.body.clone(), b)
            }
            None => (Vec::new(), Behavior::Status(404)),
        }
    };
    let status_only = |out: &mut TcpStream, code: u16, extra: &str| {
        write!(
            out,
            "HTTP/1.1 {code} Status\r\nContent-Length: 0\r\nConnection: close\r\n{extra}\r\n"
        )
    };
    if method == "POST" {
        return match behavior {
            Behavior::Status(code) => status_only(out, code, ""),
            _ => status_only(out, 200, ""),
        };
    }
    let start = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    match behavior {
        Behavior::Status(code) => return status_only(out, code, ""),
        Behavior::StatusRetryAfter(code, secs) => {
            return status_only(out, code, &format!("Retry-After: {secs}\r\n"))
        }
        _ => {}
    }
    let honour_range = behavior != Behavior::IgnoreRange;
    let (code, offset) = match start {
        Some(s) if honour_range && s >= body.len() => {
            return status_only(
                out,
                416,
                &format!("Content-Range: bytes */{}\r\n", body.len()),
            )
        }
        Some(s) if honour_range => (206, s),
        _ => (200, 0),
    };
    let mut payload = body[offset..].to_vec();
    if behavior == Behavior::Corrupt && !payload.is_empty() {
        let mid = payload.len() / 2;
        payload[mid] ^= 0xff;
    }
    let announced = match behavior {
        Behavior::WrongLength(n) => n,
        _ => payload.len() as u64,
    };
    let mut head = format!(
        "HTTP/1.1 {code} OK\r\nContent-Length: {announced}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n"
    );
    if code == 206 {
        head.push_str(&format!(
            "Content-Range: bytes {offset}-{}/{}\r\n",
            body.len().saturating_sub(1),
            body.len()
        ));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    match behavior {
        Behavior::DropAfter(n) => {
            out.write_all(&payload[..n.min(payload.len())])?;
            out.flush()?;
            let _ = out.shutdown(std::net::Shutdown::Both);
        }
        Behavior::StallAfter(n, d) => {
            out.write_all(&payload[..n.min(payload.len())])?;
            out.flush()?;
            thread::sleep(d);
            let _ = out.shutdown(std::net::Shutdown::Both);
        }
        Behavior::Slow { chunk, pause } => {
            for (i, c) in payload.chunks(chunk.max(1)).enumerate() {
                if i > 0 {
                    thread::sleep(pause);
                }
                out.write_all(c)?;
                out.flush()?;
            }
        }
        Behavior::WrongLength(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX).min(payload.len());
            out.write_all(&payload[..n])?;
        }
        _ => out.write_all(&payload)?,
    }
    out.flush()
}
