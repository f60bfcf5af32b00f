//! watch's HTTP/1.1 receiver: one thread holds every connection and reads
//! requests as their bytes arrive (poll), so a connection costs a buffer,
//! not a thread, and a slow one delays nobody. What bounds it:
//!
//! - at most [`Limits::connections`] open connections; one more evicts the
//!   one that has waited longest without finishing a request (a slowloris
//!   holds its connections open; a helper's post arrives whole at once),
//!   sparing keep-alive connections that delivered an accepted post until
//!   no other is left;
//! - a request must arrive whole within [`Limits::request_time`] of the
//!   connection's accept or its previous answer, however slowly its bytes
//!   trickle, else the connection is closed;
//! - a head over [`MAX_HEAD`] is refused, a body over the receiver's limit
//!   is refused from its Content-Length before it is read, and the bytes
//!   buffered over all connections stay under [`BUFFER_BUDGET`].
//!
//! A complete request goes to watch's main thread with its connection; the
//! answer is written there, and a keep-alive connection comes back here.

use std::collections::HashMap;
use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd as _;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::event::{poll, PollFd, PollFlags, Timespec};

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;

/// Bytes buffered over all open connections at most.
pub const BUFFER_BUDGET: usize = 64 << 20;

/// How long an answer may take to write (it is a few bytes).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the deadlines are checked when nothing happens.
const TICK: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connections: usize,
    pub request_time: Duration,
    pub max_body: usize,
}

/// What the receiving thread hands to watch's main thread.
pub enum Incoming {
    Request(Request),
    /// Refused here, already answered: the peer and why.
    Refused(SocketAddr, String),
}

/// A complete request, with its connection for the answer.
pub struct Request {
    pub method: String,
    pub peer: SocketAddr,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    conn: Conn,
    keep_alive: bool,
    back: mpsc::Sender<Conn>,
    waker: UnixStream,
}

impl Request {
    /// A header's value by name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Answer; a keep-alive connection goes back to the receiving thread.
    /// A 204 (accepted) proves the connection a real sender's.
    pub fn respond(mut self, code: u16, text: &str) {
        self.conn.proven |= code == 204;
        let keep = self.keep_alive;
        let written = self.conn.stream.set_nonblocking(false).and_then(|()| {
            self.conn.stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
            self.conn
                .stream
                .write_all(response(code, text, keep).as_bytes())
        });
        if keep && written.is_ok() {
            self.conn.since = Instant::now();
            if self.back.send(self.conn).is_ok() {
                let _ = (&self.waker).write(&[1]);
            }
        }
    }
}

fn response(code: u16, text: &str, keep_alive: bool) -> String {
    let reason = match code {
        100 => "Continue",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        _ => "",
    };
    let connection = if keep_alive { "keep-alive" } else { "close" };
    if code == 204 {
        return format!("HTTP/1.1 204 {reason}\r\nConnection: {connection}\r\n\r\n");
    }
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{text}",
        text.len()
    )
}

/// An open connection and what it has sent of its next request.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    buf: Vec<u8>,
    /// Accepted, or last answered: the request must be whole by
    /// `since + request_time`.
    since: Instant,
    /// 100 Continue already sent for the request in `buf`.
    continued: bool,
    /// A post on it was accepted: evicted only when no other is left.
    proven: bool,
}

/// Start receiving on `listener`; complete requests arrive on the channel.
pub fn start(listener: TcpListener, limits: Limits) -> Result<mpsc::Receiver<Incoming>> {
    listener
        .set_nonblocking(true)
        .context("watch's listener: non-blocking")?;
    let (wake_rx, waker) = UnixStream::pair().context("watch's wake-up pair")?;
    wake_rx.set_nonblocking(true)?;
    let (out, incoming) = mpsc::channel();
    let (back, returned) = mpsc::channel();
    let mut state = Receiving {
        listener,
        limits,
        conns: HashMap::new(),
        next_id: 0,
        buffered: 0,
        out,
        back,
        returned,
        wake_rx,
        waker,
    };
    std::thread::Builder::new()
        .name("watch-receiver".into())
        .spawn(move || state.run())
        .context("starting watch's receiver")?;
    Ok(incoming)
}

struct Receiving {
    listener: TcpListener,
    limits: Limits,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    buffered: usize,
    out: mpsc::Sender<Incoming>,
    back: mpsc::Sender<Conn>,
    returned: mpsc::Receiver<Conn>,
    wake_rx: UnixStream,
    waker: UnixStream,
}

/// What a connection's bytes so far come to.
enum Read {
    /// Still incomplete.
    More,
    /// Refused and answered (the reason); the connection is closed.
    Refused(String),
    /// A whole request.
    Whole(Box<Parsed>),
}

struct Parsed {
    method: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    keep_alive: bool,
    /// Bytes of the buffer the request took (a pipelined next one follows).
    consumed: usize,
}

impl Receiving {
    fn run(&mut self) {
        let mut scratch = vec![0u8; 16 * 1024];
        loop {
            while let Ok(conn) = self.returned.try_recv() {
                self.hold(conn);
            }
            let ids: Vec<u64> = self.conns.keys().copied().collect();
            let ready = {
                let mut fds = Vec::with_capacity(ids.len() + 2);
                fds.push(PollFd::new(&self.listener, PollFlags::IN));
                fds.push(PollFd::new(&self.wake_rx, PollFlags::IN));
                for id in &ids {
                    fds.push(PollFd::from_borrowed_fd(
                        self.conns[id].stream.as_fd(),
                        PollFlags::IN,
                    ));
                }
                let tick = Timespec {
                    tv_sec: 0,
                    tv_nsec: TICK.as_nanos() as _,
                };
                if poll(&mut fds, Some(&tick)).is_err() {
                    continue;
                }
                fds.iter()
                    .map(|f| !f.revents().is_empty())
                    .collect::<Vec<bool>>()
            };
            if ready[1] {
                while (&self.wake_rx).read(&mut scratch).is_ok_and(|n| n > 0) {}
            }
            for (i, id) in ids.iter().enumerate() {
                if ready[i + 2] {
                    self.read(*id, &mut scratch);
                }
            }
            if ready[0] {
                self.accept();
            }
            self.expire();
        }
    }

    fn hold(&mut self, mut conn: Conn) {
        if conn.stream.set_nonblocking(true).is_err() {
            return;
        }
        conn.continued = false;
        self.buffered += conn.buf.len();
        if self.conns.len() >= self.limits.connections {
            self.evict_oldest();
        }
        let id = self.next_id;
        let pending = !conn.buf.is_empty();
        self.conns.insert(id, conn);
        self.next_id += 1;
        // A request sent right behind the last (pipelined) is already here.
        if pending {
            self.advance(id);
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    self.hold(Conn {
                        stream,
                        peer,
                        buf: Vec::new(),
                        since: Instant::now(),
                        continued: false,
                        proven: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Out of file descriptors (a low `ulimit -n`): make room as
                // a full house does, else the listener stays ready and
                // nothing is ever accepted.
                Err(_) if !self.conns.is_empty() => self.evict_oldest(),
                Err(_) => return,
            }
        }
    }

    /// Close the connection that has waited longest for its request,
    /// unproven ones first.
    fn evict_oldest(&mut self) {
        if let Some(id) = self
            .conns
            .iter()
            .min_by_key(|(_, c)| (c.proven, c.since))
            .map(|(id, _)| *id)
        {
            self.drop_conn(id);
        }
    }

    fn drop_conn(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            self.buffered -= c.buf.len();
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| now.duration_since(c.since) > self.limits.request_time)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.drop_conn(id);
        }
    }

    fn read(&mut self, id: u64, scratch: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let n = match conn.stream.read(scratch) {
            Ok(0) => return self.drop_conn(id),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => return self.drop_conn(id),
        };
        conn.buf.extend_from_slice(&scratch[..n]);
        self.buffered += n;
        self.advance(id);
    }

    /// Act on what a connection has sent so far.
    fn advance(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match parse(conn, self.limits.max_body) {
            Read::More => {
                while self.buffered > BUFFER_BUDGET && !self.conns.is_empty() {
                    self.evict_oldest();
                }
            }
            Read::Refused(reason) => {
                let _ = self.out.send(Incoming::Refused(conn.peer, reason));
                self.drop_conn(id);
            }
            Read::Whole(parsed) => {
                let Some(mut conn) = self.conns.remove(&id) else {
                    return;
                };
                self.buffered -= conn.buf.len();
                conn.buf.drain(..parsed.consumed);
                let Ok(waker) = self.waker.try_clone() else {
                    return;
                };
                let _ = self.out.send(Incoming::Request(Request {
                    method: parsed.method,
                    peer: conn.peer,
                    headers: parsed.headers,
                    body: parsed.body,
                    keep_alive: parsed.keep_alive,
                    conn,
                    back: self.back.clone(),
                    waker,
                }));
            }
        }
    }
}

/// Parse what `conn` has so far; a refused request is answered here.
fn parse(conn: &mut Conn, max_body: usize) -> Read {
    let Some(end) = find(&conn.buf, b"\r\n\r\n") else {
        if conn.buf.len() > MAX_HEAD {
            return refuse(conn, 431, format!("request head over {MAX_HEAD} bytes"));
        }
        return Read::More;
    };
    let head = String::from_utf8_lossy(&conn.buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(_target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return refuse(conn, 400, "malformed request line".into());
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if get("Transfer-Encoding").is_some() {
        return refuse(
            conn,
            411,
            "chunked body: send Content-Length (a status is a few KiB)".into(),
        );
    }
    let length = match get("Content-Length").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return refuse(conn, 400, "malformed Content-Length".into()),
    };
    if length > max_body {
        return refuse(
            conn,
            413,
            format!("too large: {length} bytes announced (limit {max_body}); not read"),
        );
    }
    let have = conn.buf.len() - (end + 4);
    if have < length {
        if !conn.continued && get("Expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            conn.continued = true;
            let _ = conn.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        return Read::More;
    }
    let connection = get("Connection").unwrap_or_default().to_ascii_lowercase();
    let keep_alive = if version == "HTTP/1.0" {
        connection == "keep-alive"
    } else {
        connection != "close"
    };
    let body = conn.buf[end + 4..end + 4 + length].to_vec();
    Read::Whole(Box::new(Parsed {
        method: method.to_string(),
        headers,
        body,
        keep_alive,
        consumed: end + 4 + length,
    }))
}

fn refuse(conn: &mut Conn, code: u16, reason: String) -> Read {
    let text = if code == 413 {
        "too large\n"
    } else {
        "refused\n"
    };
    let _ = conn
        .stream
        .write_all(response(code, text, false).as_bytes());
    let _ = conn.stream.shutdown(std::net::Shutdown::Write);
    Read::Refused(reason)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
