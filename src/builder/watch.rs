//! `cubeboot watch`: a live view of a fleet coming up.
//!
//! The helpers post their whole status (signed, src/signing.rs) on every
//! change; the last accepted post from a node is the truth about it, so a
//! restarted `watch` catches up with the next post of each node. On a
//! terminal the view is one line per node, redrawn in place; otherwise one
//! JSON line per event (schema in docs/watch.md). Exit codes: 0 when every
//! expected node is done, 1 as soon as one failed (or, with `--keep-going`,
//! when the rest finished), 2 on timeout.
//!
//! This file is the receiver and the fleet's state; `watch/view.rs` renders
//! them (table or JSON lines).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, IsTerminal as _, Read as _};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::cli::WatchArgs;
use crate::signing::{self, Rejection};

mod view;
use view::{Table, View};

/// Largest post accepted. A status is a few KiB; anything near this is not
/// one of ours, and is refused from its Content-Length before the body is read.
pub const MAX_BODY: usize = 1 << 20;

/// How often the terminal view is redrawn at most.
const REDRAW_EVERY: Duration = Duration::from_millis(100);

/// How long an exiting `watch` waits for TLS connections to finish.
const SETTLE: Duration = Duration::from_secs(2);

/// Ends `watch` with an exit code other than 0 or a plain error (main maps it).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Finished {
    pub code: u8,
    pub message: String,
}

/// The `watch` verb.
pub fn run(args: WatchArgs) -> Result<()> {
    // Step 1: the secret and what to wait for.
    let secret = read_secret(&args.secret_file)?;
    let timeout = parse_duration(&args.timeout).context("--timeout")?;
    let expect = match (args.expect, args.nodes.is_empty()) {
        (Some(_), false) => bail!("give --expect N or node names, not both"),
        (Some(0), _) => bail!("--expect must be at least 1"),
        (Some(n), true) => Expect::Count(n),
        (None, false) => Expect::Names(args.nodes.clone()),
        (None, true) => Expect::Nothing,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(super::watch_tls::load_config(cert, key)?),
        (None, None) => None,
        _ => bail!("give --tls-cert and --tls-key together"),
    };
    let mut fleet = Fleet::new(expect, args.keep_going);
    // Step 2: listen. tiny_http reads requests on its own threads; this one
    // verifies, updates the fleet and draws, so the view needs no locks.
    // With TLS, tiny_http listens on loopback behind the TLS relay
    // (src/builder/watch_tls.rs), which listens where asked.
    let http_listen = if tls.is_some() {
        "127.0.0.1:0"
    } else {
        args.listen.as_str()
    };
    let server = tiny_http::Server::http(http_listen)
        .map_err(|e| anyhow::anyhow!("listening on {http_listen}: {e}"))?;
    let mut receiver = Receiver::new(secret);
    let http_addr = server.server_addr().to_ip();
    let front = match tls {
        Some(config) => {
            let backend = http_addr.context("watch's HTTP server has no IP address")?;
            Some(super::watch_tls::start(&args.listen, config, backend)?)
        }
        None => None,
    };
    let peers = front.as_ref().map(|f| f.peers.clone());
    // The bound address (port 0 picks one), so scripts can read it back.
    let bound = match &front {
        Some(f) => f.addr.to_string(),
        None => http_addr.map_or_else(|| args.listen.clone(), |a| a.to_string()),
    };
    // Before exiting: the TLS relay may still hold the last answers.
    let settle = || {
        if let Some(f) = &front {
            f.settle(SETTLE);
        }
    };
    eprintln!(
        "cubeboot watch: listening on {bound} ({}{})",
        if peers.is_some() { "TLS; " } else { "" },
        fleet.expect.describe()
    );
    let terminal = !args.json && io::stdout().is_terminal();
    let mut view = if terminal {
        View::Table(Table::new(bound.clone()))
    } else {
        View::Json
    };
    // Requests refused for their size are dropped on this thread: tiny_http
    // reads what is left of a body when its request is dropped, and a client
    // that never sends it must not stall the view.
    let (discard, discarded) = mpsc::channel::<tiny_http::Request>();
    std::thread::spawn(move || {
        for request in discarded {
            let response = tiny_http::Response::from_string("too large\n").with_status_code(413);
            let response = match tiny_http::Header::from_bytes("Connection", "close") {
                Ok(h) => response.with_header(h),
                Err(()) => response,
            };
            let _ = request.respond(response);
        }
    });
    // Step 3: receive until the fleet is finished or the time is up.
    let deadline = Instant::now() + timeout;
    let mut handling: Vec<Duration> = Vec::new();
    loop {
        let now = Instant::now();
        if now >= deadline {
            let message = fleet.timeout_message(timeout);
            view.finish(&fleet, &receiver, "timeout", 2, &message)?;
            report_stats(&mut handling);
            settle();
            return Err(Finished { code: 2, message }.into());
        }
        let wait = (deadline - now).min(REDRAW_EVERY);
        if let Some(request) = server.recv_timeout(wait).context("receiving a post")? {
            let received = Instant::now();
            // Behind the TLS relay, the sender it relays for.
            let peer = request
                .remote_addr()
                .map(|a| {
                    peers
                        .as_ref()
                        .and_then(|p| p.get(a.port()))
                        .unwrap_or(a.ip())
                        .to_string()
                })
                .unwrap_or_else(|| "unknown".into());
            match receiver.receive(request, unix_now(), &discard) {
                Ok(post) => {
                    if let Some(node) = fleet.update(&peer, post, Instant::now()) {
                        view.node(node)?;
                    }
                }
                Err(reason) => view.rejected(&peer, &reason)?,
            }
            if args.stats {
                handling.push(received.elapsed());
            }
        }
        view.tick(&fleet, &receiver, false)?;
        if let Some((code, message)) = fleet.verdict() {
            let outcome = if code == 0 { "all-done" } else { "failed" };
            view.finish(&fleet, &receiver, outcome, code, &message)?;
            report_stats(&mut handling);
            settle();
            if code == 0 {
                eprintln!("{message}");
                return Ok(());
            }
            return Err(Finished { code, message }.into());
        }
    }
}

/// `--stats` (scripts/bench-watch.sh): how long handling a post took, from
/// taking the request to having answered it and updated the view.
fn report_stats(handling: &mut [Duration]) {
    if handling.is_empty() {
        return;
    }
    handling.sort();
    let at = |q: f64| {
        let i = ((handling.len() as f64 * q) as usize).min(handling.len() - 1);
        handling[i].as_secs_f64() * 1000.0
    };
    eprintln!(
        "handled {} posts: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        handling.len(),
        at(0.50),
        at(0.99),
        at(1.0)
    );
}

fn read_secret(path: &std::path::Path) -> Result<String> {
    let limit = crate::bounded_read::SECRET_FILE_LIMIT;
    let text = crate::bounded_read::read_text_file_limited(path, limit).with_context(|| {
        format!(
            "reading webhook secret {} (cubeboot build --webhook writes it; pass --secret-file)",
            path.display()
        )
    })?;
    let secret = text.trim().to_string();
    signing::check_secret(&secret)
        .map_err(|e| anyhow::anyhow!("webhook secret {}: {e}", path.display()))?;
    Ok(secret)
}

/// `90`, `90s`, `15m`, `2h`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("{s:?} is not a duration (e.g. 90s, 15m, 2h)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => bail!("{s:?} is not a duration (e.g. 90s, 15m, 2h)"),
    };
    Ok(Duration::from_secs(secs))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a helper posts, read leniently: a newer helper may add fields, an
/// older one may lack some, and a receiver shows what it can.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Post {
    pub hostname: String,
    pub role: String,
    pub profile: String,
    pub state: String,
    pub step: String,
    pub progress: StepsDone,
    pub download: Option<Download>,
    pub phase: String,
    pub last_error: Option<String>,
    pub hints: Vec<String>,
    pub message: String,
    pub updated_at: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StepsDone {
    pub done: usize,
    pub total: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Download {
    pub asset: String,
    pub bytes: u64,
    pub total: u64,
}

impl Post {
    fn is_done(&self) -> bool {
        self.state == "done"
    }
    fn is_failed(&self) -> bool {
        self.state.starts_with("failed")
    }
    /// What a person should read first about a failure.
    fn hint(&self) -> Option<String> {
        self.hints.first().cloned().or_else(|| {
            self.last_error
                .as_deref()
                .and_then(|e| e.lines().next())
                .map(str::to_string)
        })
    }
}

/// Verifies posts: size, signature, freshness, no repeats.
pub struct Receiver {
    secret: String,
    /// Signatures accepted within the freshness window, with their timestamps.
    seen: HashMap<String, u64>,
    pub rejected: usize,
    pub last_rejection: Option<String>,
}

impl Receiver {
    pub fn new(secret: String) -> Self {
        Self {
            secret,
            seen: HashMap::new(),
            rejected: 0,
            last_rejection: None,
        }
    }

    /// Read, verify and answer one request. Err is the reason it was refused.
    fn receive(
        &mut self,
        mut request: tiny_http::Request,
        now: u64,
        discard: &mpsc::Sender<tiny_http::Request>,
    ) -> Result<Post, String> {
        let answer = |request: tiny_http::Request, code: u16, text: &str| {
            let _ = request.respond(tiny_http::Response::from_string(text).with_status_code(code));
        };
        if *request.method() != tiny_http::Method::Post {
            let reason = format!("{} instead of POST", request.method());
            answer(request, 405, "POST only\n");
            return Err(self.refuse(reason));
        }
        // Refused from its Content-Length: the body is never read here. The
        // answer and the drop happen on the discard thread, because tiny_http
        // drains an unread body when its request is dropped.
        if let Some(len) = request.body_length().filter(|l| *l > MAX_BODY) {
            let _ = discard.send(request);
            return Err(self.refuse(format!(
                "too large: {len} bytes announced (limit {MAX_BODY}); not read"
            )));
        }
        let timestamp = header(&request, signing::TIMESTAMP_HEADER);
        let signature = header(&request, signing::SIGNATURE_HEADER);
        let mut body = Vec::new();
        let read = request
            .as_reader()
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut body);
        if let Err(e) = read {
            answer(request, 400, "unreadable body\n");
            return Err(self.refuse(format!("unreadable body: {e}")));
        }
        if body.len() > MAX_BODY {
            answer(request, 413, "too large\n");
            return Err(self.refuse(format!("too large: over {MAX_BODY} bytes (chunked)")));
        }
        let verified = signing::verify(
            &self.secret,
            timestamp.as_deref(),
            signature.as_deref(),
            &body,
            now,
        )
        .and_then(|ts| {
            // Forget what can no longer pass the freshness check anyway.
            self.seen
                .retain(|_, t| now.abs_diff(*t) <= signing::MAX_SKEW_SECS);
            let sig = signature.clone().unwrap_or_default();
            if self.seen.contains_key(&sig) {
                return Err(Rejection::Replayed);
            }
            Ok((sig, ts))
        });
        let (sig, ts) = match verified {
            Ok(v) => v,
            Err(rejection) => {
                let code = if rejection == Rejection::Replayed {
                    409
                } else {
                    401
                };
                answer(request, code, &format!("{rejection}\n"));
                return Err(self.refuse(rejection.to_string()));
            }
        };
        let post: Post = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => {
                answer(request, 400, "not a cubeboot status\n");
                return Err(self.refuse(format!("signed, but not a status: {e}")));
            }
        };
        self.seen.insert(sig, ts);
        let _ = request.respond(tiny_http::Response::empty(204));
        Ok(post)
    }

    fn refuse(&mut self, reason: String) -> String {
        self.rejected += 1;
        self.last_rejection = Some(reason.clone());
        reason
    }
}

fn header(request: &tiny_http::Request, name: &'static str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str().to_string())
}

/// What the operator waits for.
#[derive(Debug, Clone)]
pub enum Expect {
    Nothing,
    Count(usize),
    Names(Vec<String>),
}

impl Expect {
    fn describe(&self) -> String {
        match self {
            Self::Nothing => "no --expect: until timeout or a failure".into(),
            Self::Count(n) => format!("expecting {n} nodes"),
            Self::Names(names) => format!("expecting {}", names.join(", ")),
        }
    }
}

pub struct Node {
    pub name: String,
    pub ip: String,
    pub post: Post,
    pub first_seen: Instant,
    pub last_seen: Instant,
}

/// Every node heard from, by name (hostname, else the peer's IP).
pub struct Fleet {
    pub nodes: BTreeMap<String, Node>,
    pub expect: Expect,
    keep_going: bool,
}

impl Fleet {
    pub fn new(expect: Expect, keep_going: bool) -> Self {
        Self {
            nodes: BTreeMap::new(),
            expect,
            keep_going,
        }
    }

    /// Record a post. None when it is older than what the node already said
    /// (a delayed retry): the newest status stays.
    pub fn update(&mut self, peer: &str, post: Post, now: Instant) -> Option<&Node> {
        let name = if post.hostname.is_empty() {
            peer.to_string()
        } else {
            post.hostname.clone()
        };
        match self.nodes.get_mut(&name) {
            Some(node) => {
                if post.updated_at < node.post.updated_at {
                    return None;
                }
                node.ip = peer.to_string();
                node.post = post;
                node.last_seen = now;
            }
            None => {
                self.nodes.insert(
                    name.clone(),
                    Node {
                        name: name.clone(),
                        ip: peer.to_string(),
                        post,
                        first_seen: now,
                        last_seen: now,
                    },
                );
            }
        }
        self.nodes.get(&name)
    }

    /// Exit code and message once the watch is over.
    pub fn verdict(&self) -> Option<(u8, String)> {
        let failed: Vec<&Node> = self.nodes.values().filter(|n| n.post.is_failed()).collect();
        if let Some(first) = failed.first() {
            if !self.keep_going {
                return Some((
                    1,
                    format!(
                        "{} failed: {}{}",
                        first.name,
                        first.post.state,
                        first
                            .post
                            .hint()
                            .map(|h| format!(" ({h})"))
                            .unwrap_or_default()
                    ),
                ));
            }
        }
        let finished = |n: &Node| n.post.is_done() || n.post.is_failed();
        let satisfied = match &self.expect {
            Expect::Nothing => false,
            Expect::Count(n) => self.nodes.values().filter(|x| finished(x)).count() >= *n,
            Expect::Names(names) => names
                .iter()
                .all(|name| self.find(name).is_some_and(finished)),
        };
        if !satisfied {
            return None;
        }
        let done = self.nodes.values().filter(|n| n.post.is_done()).count();
        if failed.is_empty() {
            Some((0, format!("all {done} expected nodes are done")))
        } else {
            let names: Vec<&str> = failed.iter().map(|n| n.name.as_str()).collect();
            Some((
                1,
                format!("{done} done, {} failed: {}", failed.len(), names.join(", ")),
            ))
        }
    }

    /// A node by hostname or IP.
    fn find(&self, name: &str) -> Option<&Node> {
        self.nodes
            .get(name)
            .or_else(|| self.nodes.values().find(|n| n.ip == name))
    }

    fn timeout_message(&self, timeout: Duration) -> String {
        let waiting: Vec<String> = match &self.expect {
            Expect::Names(names) => names
                .iter()
                .filter(|n| !self.find(n).is_some_and(|x| x.post.is_done()))
                .cloned()
                .collect(),
            _ => self
                .nodes
                .values()
                .filter(|n| !n.post.is_done())
                .map(|n| n.name.clone())
                .collect(),
        };
        let done = self.nodes.values().filter(|n| n.post.is_done()).count();
        let mut m = format!(
            "timed out after {}s: {done} done, {} heard from",
            timeout.as_secs(),
            self.nodes.len()
        );
        if let Expect::Count(n) = self.expect {
            m.push_str(&format!(", {n} expected"));
        }
        if !waiting.is_empty() {
            m.push_str(&format!("; not done: {}", waiting.join(", ")));
        }
        m
    }

    fn counts(&self) -> (usize, usize, usize) {
        let done = self.nodes.values().filter(|n| n.post.is_done()).count();
        let failed = self.nodes.values().filter(|n| n.post.is_failed()).count();
        (done, failed, self.nodes.len() - done - failed)
    }
}

#[cfg(test)]
mod tests {
    use super::view::table_lines;
    use super::*;

    fn post(host: &str, state: &str, at: u64) -> Post {
        Post {
            hostname: host.into(),
            state: state.into(),
            updated_at: at,
            ..Post::default()
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn verdicts_follow_the_expectation() {
        let t = Instant::now();
        let mut f = Fleet::new(Expect::Count(2), false);
        f.update("10.0.0.1", post("a", "running", 1), t);
        assert_eq!(f.verdict(), None);
        f.update("10.0.0.1", post("a", "done", 2), t);
        assert_eq!(f.verdict(), None);
        f.update("10.0.0.2", post("", "done", 2), t);
        assert_eq!(f.verdict().unwrap().0, 0);

        let mut f = Fleet::new(Expect::Names(vec!["a".into(), "10.0.0.2".into()]), true);
        f.update("10.0.0.1", post("a", "failed: fetch", 1), t);
        assert_eq!(f.verdict(), None, "keep going until the rest finish");
        f.update("10.0.0.2", post("b", "done", 1), t);
        assert_eq!(f.verdict().unwrap().0, 1);

        let mut f = Fleet::new(Expect::Count(5), false);
        f.update("10.0.0.1", post("a", "failed: fetch", 1), t);
        let (code, msg) = f.verdict().unwrap();
        assert_eq!(code, 1);
        assert!(msg.starts_with("a failed: failed: fetch"), "{msg}");
    }

    #[test]
    fn an_older_post_never_replaces_a_newer_one() {
        let t = Instant::now();
        let mut f = Fleet::new(Expect::Nothing, false);
        assert!(f.update("ip", post("a", "done", 10), t).is_some());
        assert!(f.update("ip", post("a", "running", 9), t).is_none());
        assert_eq!(f.nodes["a"].post.state, "done");
    }

    #[test]
    fn table_lines_fit_the_terminal() {
        let t = Instant::now();
        let mut f = Fleet::new(Expect::Count(50), false);
        for i in 0..50 {
            let mut p = post(&format!("node-{i:02}\x1b[2J"), "running", 1);
            p.download = Some(Download {
                asset: "bundle".into(),
                bytes: 5 << 20,
                total: 10 << 20,
            });
            f.update("127.0.0.1", p, t);
        }
        let r = Receiver::new("x".repeat(32));
        let lines = table_lines(&f, &r, "127.0.0.1:1", "", Duration::ZERO, 24, 80, t);
        assert_eq!(lines.len(), 23);
        assert!(lines.last().unwrap().contains("more not shown"));
        for l in &lines {
            assert!(l.chars().count() <= 79, "{l}");
            assert!(!l.contains('\x1b'), "{l:?}");
        }
        let lines = table_lines(&f, &r, "127.0.0.1:1", "", Duration::ZERO, 60, 200, t);
        assert_eq!(lines.len(), 52);
        assert!(lines[2].contains("[#####-----]  50% 10M"), "{}", lines[2]);
    }
}
