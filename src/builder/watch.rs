//! `cubeboot watch`: a live view of a fleet coming up.
//!
//! The helpers post their whole status (signed, src/signing.rs) on every
//! change; the last accepted post from a node is the truth about it, so a
//! restarted `watch` catches up with the next post of each node. On a
//! terminal the view is one line per node, redrawn in place; otherwise one
//! JSON line per event (schema in docs/watch.md). Exit codes: [`exit`].
//!
//! This file is the receiver and the fleet's state; `watch/view.rs` renders
//! them (table or JSON lines).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, IsTerminal as _};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::cli::WatchArgs;
use crate::printable::escape;
use crate::signing::{self, Rejection};
use crate::status_schema::Status;
use anyhow::{bail, Context, Result};

pub mod args;
mod layout;
mod server;
mod view;
pub use args::{exit, exit_status_help, parse_duration};
use server::{Incoming, Limits, Request};
use view::{Table, View};

/// Largest post accepted. A status is a few KiB; anything near this is not
/// one of ours, and is refused from its Content-Length before the body is read.
pub const MAX_BODY: usize = 1 << 20;

/// How often the terminal view is redrawn at most.
const REDRAW_EVERY: Duration = Duration::from_millis(100);

/// Open connections at most; one more closes the one that has waited
/// longest for its request (docs/watch.md, "Slow and idle connections").
pub const MAX_CONNECTIONS: usize = 512;

/// A request must arrive whole within this time of its connection's accept
/// or previous answer. A helper sends its few KiB at once, and its own
/// client gives up after 10 s without progress (src/firstboot/webhook.rs).
pub const REQUEST_TIME: Duration = Duration::from_secs(10);

/// How long an exiting `watch` waits for TLS connections to finish.
const SETTLE: Duration = Duration::from_secs(2);

/// Ends `watch` with an exit code other than 0 or a plain error (main maps it).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Finished {
    pub code: u8,
    pub message: String,
}

/// The `watch` verb. Every error ends it with one of the [`exit`] codes.
pub fn run(args: WatchArgs) -> Result<()> {
    watch(args).map_err(|e| match e.downcast::<Finished>() {
        Ok(end) => end.into(),
        // What is left once clap has checked the command line: files,
        // sockets, the terminal.
        Err(e) => Finished {
            code: exit::IO,
            message: format!("error: {e:#}"),
        }
        .into(),
    })
}

fn watch(args: WatchArgs) -> Result<()> {
    // Step 1: the secret and what to wait for (clap checked the flags).
    let secret = read_secret(&args.secret_file)?;
    let timeout = args.timeout;
    let expect = match (args.expect, args.nodes.is_empty()) {
        (Some(n), _) => Expect::Count(usize::try_from(n).unwrap_or(usize::MAX)),
        (None, false) => Expect::Names(args.nodes.clone()),
        (None, true) => Expect::Nothing,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(super::watch_tls::load_config(cert, key)?),
        _ => None,
    };
    let mut fleet = Fleet::new(expect, args.keep_going);
    // Step 2: listen. One thread reads requests off every connection
    // (watch/server.rs); this one verifies, answers, updates the fleet and
    // draws, so the view needs no locks. With TLS, the HTTP side listens on
    // loopback behind the TLS relay (src/builder/watch_tls.rs), which
    // listens where asked.
    let http_listen = if tls.is_some() {
        "127.0.0.1:0"
    } else {
        args.listen.as_str()
    };
    let listener =
        TcpListener::bind(http_listen).with_context(|| format!("listening on {http_listen}"))?;
    let http_addr = listener.local_addr().context("watch's listening address")?;
    let incoming = server::start(
        listener,
        Limits {
            connections: MAX_CONNECTIONS,
            request_time: REQUEST_TIME,
            max_body: MAX_BODY,
        },
    )?;
    let mut receiver = Receiver::new(secret);
    let front = match tls {
        Some(config) => Some(super::watch_tls::start(&args.listen, config, http_addr)?),
        None => None,
    };
    let peers = front.as_ref().map(|f| f.peers.clone());
    // The bound address (port 0 picks one), so scripts can read it back.
    let bound = match &front {
        Some(f) => f.addr.to_string(),
        None => http_addr.to_string(),
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
    // Step 3: receive until the fleet is finished or the time is up.
    let deadline = Instant::now() + timeout;
    let mut handling: Vec<Duration> = Vec::new();
    loop {
        let now = Instant::now();
        if now >= deadline {
            let message = fleet.timeout_message(timeout);
            let code = if fleet.counts().1 > 0 {
                exit::NODE_FAILED
            } else {
                exit::TIMEOUT
            };
            view.finish(&fleet, &receiver, "timeout", code, &message)?;
            report_stats(&mut handling);
            settle();
            return Err(Finished { code, message }.into());
        }
        let wait = (deadline - now).min(REDRAW_EVERY);
        // Behind the TLS relay, the sender it relays for.
        let sender = |a: SocketAddr| {
            peers
                .as_ref()
                .and_then(|p| p.get(a.port()))
                .unwrap_or(a.ip())
                .to_string()
        };
        match incoming.recv_timeout(wait) {
            Ok(Incoming::Request(request)) => {
                let received = Instant::now();
                let peer = sender(request.peer);
                match receiver.receive(request, unix_now()) {
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
            Ok(Incoming::Refused(from, reason)) => {
                let reason = receiver.refuse(reason);
                view.rejected(&sender(from), &reason)?;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("watch's receiver stopped"),
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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

    /// Verify and answer one request. Err is the reason it was refused.
    fn receive(&mut self, request: Request, now: u64) -> Result<Status, String> {
        if request.method != "POST" {
            let reason = format!("{} instead of POST", request.method);
            request.respond(405, "POST only\n");
            return Err(self.refuse(reason));
        }
        let signature = request.header(signing::SIGNATURE_HEADER);
        let verified = signing::verify(
            &self.secret,
            request.header(signing::TIMESTAMP_HEADER),
            signature,
            &request.body,
            now,
        )
        .and_then(|ts| {
            // Forget what can no longer pass the freshness check anyway.
            self.seen
                .retain(|_, t| now.abs_diff(*t) <= signing::MAX_SKEW_SECS);
            let sig = signature.unwrap_or_default().to_string();
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
                request.respond(code, &format!("{rejection}\n"));
                return Err(self.refuse(rejection.to_string()));
            }
        };
        let post: Status = match serde_json::from_slice(&request.body) {
            Ok(p) => p,
            Err(e) => {
                request.respond(400, "not a cubeboot status\n");
                return Err(self.refuse(format!("signed, but not a status: {e}")));
            }
        };
        self.seen.insert(sig, ts);
        request.respond(204, "");
        Ok(post)
    }

    fn refuse(&mut self, reason: String) -> String {
        self.rejected += 1;
        self.last_rejection = Some(reason.clone());
        reason
    }
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
    /// The node's last accepted status, as its helper wrote it.
    pub post: Status,
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
    pub fn update(&mut self, peer: &str, post: Status, now: Instant) -> Option<&Node> {
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
                    exit::NODE_FAILED,
                    format!(
                        "{} failed: {}{}",
                        escape(&first.name),
                        escape(&first.post.state.to_string()),
                        first
                            .post
                            .first_hint()
                            .map(|h| format!(" ({})", escape(h)))
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
            Some((exit::DONE, format!("all {done} expected nodes are done")))
        } else {
            let names: Vec<_> = failed.iter().map(|n| escape(&n.name)).collect();
            Some((
                exit::NODE_FAILED,
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
                .filter(|n| {
                    !self
                        .find(n)
                        .is_some_and(|x| x.post.is_done() || x.post.is_failed())
                })
                .map(|n| escape(n).into_owned())
                .collect(),
            _ => self
                .nodes
                .values()
                .filter(|n| !n.post.is_done() && !n.post.is_failed())
                .map(|n| escape(&n.name).into_owned())
                .collect(),
        };
        let done = self.nodes.values().filter(|n| n.post.is_done()).count();
        let failed: Vec<_> = self
            .nodes
            .values()
            .filter(|n| n.post.is_failed())
            .map(|n| escape(&n.name))
            .collect();
        let mut m = format!(
            "timed out after {}s: {done} done, {} heard from",
            timeout.as_secs(),
            self.nodes.len()
        );
        if !failed.is_empty() {
            m.push_str(&format!(", {} failed: {}", failed.len(), failed.join(", ")));
        }
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
    use crate::status_schema::DownloadProgress;

    fn post(host: &str, state: &str, at: u64) -> Status {
        Status {
            hostname: host.into(),
            state: state.parse().unwrap(),
            updated_at: at,
            ..Status::default()
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
        assert!(f.nodes["a"].post.is_done());
    }

    #[test]
    fn no_node_string_reaches_the_table_or_the_verdict_raw() {
        let t = Instant::now();
        let hostile = "n\x1b]0;x\x07\r\n\0\u{9b}\u{202e}\u{2066}\u{200f}\u{61c}";
        let mut f = Fleet::new(Expect::Count(2), false);
        let mut p = post(hostile, "failed: fetch", 1);
        p.hints = vec![format!("hint {hostile}")];
        p.phase = hostile.into();
        f.update("10.0.0.1", p, t);
        let mut p = post("b", &format!("failed: rolled back to {hostile}"), 1);
        p.last_error = Some(hostile.into());
        f.update("10.0.0.2", p, t);
        let mut r = Receiver::new("x".repeat(32));
        r.rejected = 1;
        let reason = format!("signed, but not a status: unknown step {hostile:?}");
        let lines = table_lines(&f, &r, "127.0.0.1:1", &reason, Duration::ZERO, 60, 200, t);
        let (_, verdict) = f.verdict().unwrap();
        let timeout = f.timeout_message(Duration::from_secs(1));
        for text in lines.iter().chain([&verdict, &timeout]) {
            assert!(
                !text.chars().any(|c| c.is_control()
                    || matches!(c, '\u{202e}' | '\u{2066}' | '\u{200f}' | '\u{61c}')),
                "{text:?}"
            );
        }
        assert!(verdict.contains("n\\u{1b}]0;x"), "{verdict}");
    }

    #[test]
    fn table_lines_fit_the_terminal() {
        let t = Instant::now();
        let mut f = Fleet::new(Expect::Count(50), false);
        for i in 0..50 {
            let mut p = post(&format!("node-{i:02}\x1b[2J"), "running", 1);
            p.download = Some(DownloadProgress {
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
        for l in &lines {
            assert!(!l.contains('\x1b'), "{l:?}");
        }
        assert_eq!(lines.len(), 52);
        assert!(lines[2].contains("[#####-----]  50% 10M"), "{}", lines[2]);
    }
}
