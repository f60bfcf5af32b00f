//! `cubeboot watch` against simulated helpers: threads that post through the
//! helper's real webhook code (signing, retries) to the real `watch` binary
//! on 127.0.0.1, with jittered timings.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cubeboot::firstboot::host::RealHost;
use cubeboot::firstboot::status::{DownloadProgress, Progress, Status};
use cubeboot::firstboot::webhook::Webhook;
use cubeboot::plan::testing::sample_plan;
use cubeboot::plan::Role;
use cubeboot::signing;
use cubeboot::status_schema::{CheckResult, StepId, StepState, StepView};
use support::tls::self_signed;

const SECRET: &str = "5ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e7";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Watch {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
    /// Read as it comes, as a consumer of the JSON lines would: a pipe
    /// left unread would stall watch once it is full.
    stdout: thread::JoinHandle<String>,
}

impl Watch {
    /// Start `cubeboot watch` with `args`; returns once it listens.
    fn start(dir: &Path, listen: &str, args: &[&str]) -> Self {
        let secret = dir.join("secret");
        std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cubeboot"))
            .arg("watch")
            .arg("--listen")
            .arg(listen)
            .arg("--secret-file")
            .arg(&secret)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        err.read_line(&mut first).unwrap();
        let addr = first
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .to_string();
        let stderr = Arc::new(Mutex::new(first));
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
            sink.lock().unwrap().push_str(&rest);
        });
        let mut out = child.stdout.take().unwrap();
        let stdout = thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        Self {
            child,
            addr,
            stderr,
            stdout,
        }
    }

    /// The threads the watch process has now (Linux /proc).
    fn threads(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    }

    fn url(&self) -> String {
        format!("http://{}/cubeboot", self.addr)
    }

    /// Wait for exit; returns (code, stdout, stderr).
    fn finish(mut self, within: Duration) -> (i32, String, String) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let out = self.stdout.join().unwrap();
                thread::sleep(Duration::from_millis(50));
                let err = self.stderr.lock().unwrap().clone();
                return (status.code().unwrap_or(-1), out, err);
            }
            if started.elapsed() > within {
                let _ = self.child.kill();
                panic!("watch did not exit within {within:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One simulated node: what it posts, in order.
fn script(name: &str, role: &str, fails: bool) -> Vec<Status> {
    let base = |state: &str, step: &str, done: usize| Status {
        version: 1,
        state: state.parse().unwrap(),
        step: StepId::from_name(step),
        progress: Progress { done, total: 13 },
        hostname: name.into(),
        role: Role::from_name(role),
        profile: "debian-12".into(),
        generator: "cubeboot test".into(),
        ..Status::default()
    };
    let mut fetch = base("running", "fetch", 1);
    fetch.download = Some(DownloadProgress {
        asset: "bundle".into(),
        bytes: 300 << 20,
        total: 1000 << 20,
    });
    let mut install = base("running", "cube-install", 8);
    install.phase = "pulling images".into();
    let last = if fails {
        let mut s = base("failed: cube-install", "cube-install", 8);
        s.last_error = Some("installer exited 1\nmore detail".into());
        s.hints = vec!["see /var/log/cube-install.log".into()];
        s
    } else {
        base("done", "", 13)
    };
    vec![base("running", "preflight", 0), fetch, install, last]
}

/// Post a script through the helper's webhook, with jitter between posts.
fn run_helper(url: String, root: PathBuf, seed: u64, posts: Vec<Status>) {
    let mut plan = sample_plan();
    plan.report.webhook = Some(url);
    plan.report.webhook_secret = Some(SECRET.into());
    let hook = Webhook::from_plan(&plan).unwrap();
    let host = RealHost::new(root);
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for mut status in posts {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        thread::sleep(Duration::from_millis((x >> 33) % 60));
        status.updated_at = unix_now();
        hook.post(&host, &status);
    }
}

fn run_fleet(url: &str, dir: &Path, n: usize, failing: impl Fn(usize) -> bool) -> Vec<Status> {
    let mut handles = Vec::new();
    let mut lasts = Vec::new();
    for i in 0..n {
        let name = format!("node-{i:02}");
        let role = if i == 0 { "control" } else { "compute" };
        let posts = script(&name, role, failing(i));
        lasts.push(posts.last().unwrap().clone());
        let root = dir.join(&name);
        std::fs::create_dir_all(&root).unwrap();
        let url = url.to_string();
        handles.push(thread::spawn(move || {
            run_helper(url, root, i as u64, posts)
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    lasts
}

fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

#[test]
fn fifty_helpers_json_lines_match_each_last_post() {
    let dir = tempfile::tempdir().unwrap();
    let watch = Watch::start(
        dir.path(),
        "127.0.0.1:0",
        &["--expect", "50", "--keep-going", "--timeout", "120"],
    );
    let lasts = run_fleet(&watch.url(), dir.path(), 50, |i| i % 8 == 3);
    let (code, out, err) = watch.finish(Duration::from_secs(30));
    assert_eq!(code, 1, "some failed, so exit 1 once all finished\n{err}");
    let evs = events(&out);
    let mut last_by_node: BTreeMap<String, &serde_json::Value> = BTreeMap::new();
    for e in &evs {
        assert_ne!(e["event"], "rejected", "{e}");
        if e["event"] == "node" {
            last_by_node.insert(e["node"].as_str().unwrap().to_string(), e);
        }
    }
    assert_eq!(last_by_node.len(), 50);
    for posted in &lasts {
        let seen = last_by_node[&posted.hostname];
        assert_eq!(seen["state"], posted.state.to_string(), "{seen}");
        assert_eq!(seen["role"], posted.role.map_or("", Role::as_str), "{seen}");
        let step = posted.step.map_or("", StepId::name);
        assert_eq!(seen["step"], step, "{seen}");
        assert_eq!(seen["progress"]["done"], posted.progress.done, "{seen}");
        assert_eq!(seen["ip"], "127.0.0.1");
        if posted.state.to_string().starts_with("failed") {
            assert_eq!(seen["hint"], posted.hints[0].as_str(), "{seen}");
            assert_eq!(seen["last_error"], "installer exited 1\nmore detail");
        } else {
            assert!(seen["hint"].is_null(), "{seen}");
        }
    }
    let fin = evs.last().unwrap();
    assert_eq!(fin["event"], "finished", "{fin}");
    assert_eq!(fin["exit_code"], 1);
    assert_eq!(fin["done"], 44);
    assert_eq!(fin["failed"], 6);
    assert_eq!(fin["rejected"], 0);
    // A download in progress was shown with its bytes and total.
    assert!(evs.iter().any(|e| e["download"]["total"] == 1000u64 << 20));
}

#[test]
fn exit_codes_all_done_one_failed_and_timeout() {
    // All done: 0.
    let dir = tempfile::tempdir().unwrap();
    let watch = Watch::start(dir.path(), "127.0.0.1:0", &["--expect", "5"]);
    run_fleet(&watch.url(), dir.path(), 5, |_| false);
    let (code, out, err) = watch.finish(Duration::from_secs(20));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("all 5 expected nodes are done"), "{err}");
    assert_eq!(events(&out).last().unwrap()["outcome"], "all-done");

    // One failed, no --keep-going: 1 as soon as it is heard, naming it.
    let dir = tempfile::tempdir().unwrap();
    let watch = Watch::start(dir.path(), "127.0.0.1:0", &["--expect", "5"]);
    run_fleet(&watch.url(), dir.path(), 1, |_| true);
    let (code, _, err) = watch.finish(Duration::from_secs(20));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("node-00 failed: failed: cube-install (see /var/log/cube-install.log"),
        "{err}"
    );

    // Named nodes, one never heard from: 2 after the timeout, naming it.
    let dir = tempfile::tempdir().unwrap();
    let watch = Watch::start(
        dir.path(),
        "127.0.0.1:0",
        &["--timeout", "3", "node-00", "node-01", "node-07"],
    );
    run_fleet(&watch.url(), dir.path(), 2, |_| false);
    let (code, out, err) = watch.finish(Duration::from_secs(20));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not done: node-07"), "{err}");
    assert_eq!(events(&out).last().unwrap()["outcome"], "timeout");
}

/// A raw HTTP/1.1 POST; returns the status code.
fn raw_post(addr: &str, headers: &[(&str, String)], body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut head = format!(
        "POST /cubeboot HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    status_of(&mut s)
}

fn status_of(s: &mut TcpStream) -> u16 {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {line:?}"))
}

fn signed(secret: &str, ts: u64, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        (signing::TIMESTAMP_HEADER, ts.to_string()),
        (signing::SIGNATURE_HEADER, signing::sign(secret, ts, body)),
    ]
}

#[test]
fn forged_unsigned_replayed_stale_and_huge_posts_are_refused_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let watch = Watch::start(dir.path(), "127.0.0.1:0", &["--expect", "1"]);
    let addr = watch.addr.clone();
    let mut good = script("node-ok", "control", false).pop().unwrap();
    good.updated_at = unix_now();
    let body = good.to_json().into_bytes();
    let now = unix_now();

    assert_eq!(raw_post(&addr, &[], &body), 401, "unsigned");
    let forged = signed("an0ther-secret-an0ther-secret-an0ther", now, &body);
    assert_eq!(raw_post(&addr, &forged, &body), 401, "forged");
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    assert_eq!(
        raw_post(&addr, &signed(SECRET, now, &body), &tampered),
        401,
        "body changed after signing"
    );
    let old = now - 3600;
    assert_eq!(
        raw_post(&addr, &signed(SECRET, old, &body), &body),
        401,
        "stale"
    );

    // 10 MB announced: answered 413 before a byte of the body is sent.
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n{}: {now}\r\n\r\n",
        signing::TIMESTAMP_HEADER
    )
    .unwrap();
    assert_eq!(status_of(&mut s), 413);
    drop(s);

    // A signed, fresh post is accepted; the same bytes again are a replay.
    let mut node = script("node-1", "compute", false).remove(0);
    node.updated_at = now;
    let first = node.to_json().into_bytes();
    let sig = signed(SECRET, now, &first);
    assert_eq!(raw_post(&addr, &sig, &first), 204);
    assert_eq!(raw_post(&addr, &sig, &first), 409, "replayed");

    // Still serving: a good post ends the watch.
    assert_eq!(raw_post(&addr, &signed(SECRET, now, &body), &body), 204);
    let (code, out, err) = watch.finish(Duration::from_secs(20));
    assert_eq!(code, 0, "{err}");
    let reasons: Vec<String> = events(&out)
        .iter()
        .filter(|e| e["event"] == "rejected")
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    let expect = [
        "unsigned",
        "forged",
        "forged",
        "stale",
        "too large",
        "replayed",
    ];
    assert_eq!(reasons.len(), expect.len(), "{reasons:?}");
    for (r, e) in reasons.iter().zip(expect) {
        assert!(r.starts_with(e), "{r:?} should start with {e:?}");
    }
    assert!(
        reasons[4].contains("10485760 bytes announced"),
        "{reasons:?}"
    );
}

#[test]
fn a_helper_retries_until_a_restarted_watch_hears_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = Watch::start(dir.path(), "127.0.0.1:0", &["--expect", "1"]);
    let addr = first.addr.clone();
    let url = first.url();
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    // The helper posts while nothing listens; it backs off and retries.
    let root = dir.path().join("node");
    std::fs::create_dir_all(&root).unwrap();
    let posts = vec![script("node-late", "compute", false).pop().unwrap()];
    let helper = thread::spawn(move || run_helper(url, root, 1, posts));
    thread::sleep(Duration::from_millis(1500));
    let second = Watch::start(dir.path(), &addr, &["--expect", "1", "--timeout", "60"]);
    helper.join().unwrap();
    let (code, out, err) = second.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{err}");
    let evs = events(&out);
    assert_eq!(evs[0]["node"], "node-late");
    assert_eq!(evs[0]["state"], "done");
}

/// `cubeboot watch` on a tmux pane of its own size, on a port picked here.
struct Tmux {
    socket: PathBuf,
    addr: String,
    /// Where the shell writes watch's exit code.
    done_file: PathBuf,
}

impl Tmux {
    fn start(dir: &Path, cols: u16, rows: u16, watch_args: &str) -> Self {
        if Command::new("tmux").arg("-V").output().is_err() {
            panic!("tmux is needed for this test (.ci/run installs it)");
        }
        let secret = dir.join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        // Pick a port: bind, read it, release.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = Self {
            socket: dir.join("tmux.sock"),
            addr: format!("127.0.0.1:{port}"),
            done_file: dir.join("exit-code"),
        };
        let cmd = format!(
            "{} watch --listen {} --secret-file {} {watch_args}; echo $? > {}; sleep 600",
            env!("CARGO_BIN_EXE_cubeboot"),
            t.addr,
            secret.display(),
            t.done_file.display()
        );
        let (x, y) = (cols.to_string(), rows.to_string());
        t.run(&["new-session", "-d", "-x", &x, "-y", &y, "sh", "-c", &cmd]);
        let started = Instant::now();
        while TcpStream::connect(&t.addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "watch never listened"
            );
            thread::sleep(Duration::from_millis(50));
        }
        t
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p"])
    }

    fn resize(&self, cols: u16, rows: u16) {
        let (x, y) = (cols.to_string(), rows.to_string());
        self.run(&["resize-window", "-x", &x, "-y", &y]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

#[test]
fn terminal_view_under_tmux_has_one_line_per_node() {
    let dir = tempfile::tempdir().unwrap();
    let tmux = Tmux::start(
        dir.path(),
        160,
        70,
        "--expect 50 --keep-going --timeout 120",
    );
    let lasts = run_fleet(&format!("http://{}/", tmux.addr), dir.path(), 50, |i| {
        i % 8 == 3
    });
    let started = Instant::now();
    while !tmux.done_file.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "watch did not exit"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let screen = tmux.run(&["capture-pane", "-p", "-J"]);
    assert_eq!(
        std::fs::read_to_string(&tmux.done_file).unwrap().trim(),
        "1"
    );
    // The header says the totals; each node is on exactly one line, with its
    // final state, and no line holds two nodes; a failed node's hint is on
    // the line below it.
    assert!(
        screen.contains("44 done, 6 failed, 0 in progress of 50 expected"),
        "{screen}"
    );
    let lines: Vec<&str> = screen.lines().collect();
    for posted in &lasts {
        let at: Vec<usize> = (0..lines.len())
            .filter(|i| lines[*i].starts_with(&format!("{} ", posted.hostname)))
            .collect();
        assert_eq!(at.len(), 1, "{}:\n{screen}", posted.hostname);
        let line = lines[at[0]];
        assert_eq!(line.matches("node-").count(), 1, "{line}");
        if posted.is_failed() {
            assert!(line.contains(" cube-install "), "{line}");
            assert!(
                line.trim_end().ends_with("  failed: cube-install"),
                "{line}"
            );
            assert_eq!(lines[at[0] + 1], "  hint: see /var/log/cube-install.log");
        } else {
            assert!(line.trim_end().ends_with(" done"), "{line}");
        }
    }
    assert!(!screen.contains('\x1b'));
}

#[test]
fn the_view_reads_at_80_100_and_160_columns_and_after_a_resize() {
    let dir = tempfile::tempdir().unwrap();
    let tmux = Tmux::start(dir.path(), 80, 30, "--expect 10 --keep-going --timeout 120");
    let url = format!("http://{}/", tmux.addr);
    run_fleet(&url, dir.path(), 4, |i| i == 2);
    let mut long = script("compute-node-with-a-long-name-07", "compute", true)
        .pop()
        .unwrap();
    long.updated_at = unix_now();
    let body = long.to_json().into_bytes();
    assert_eq!(
        raw_post(&tmux.addr, &signed(SECRET, unix_now(), &body), &body),
        204
    );
    let mut running = script("node-running", "compute", false).remove(1);
    running.updated_at = unix_now();
    let body = running.to_json().into_bytes();
    assert_eq!(
        raw_post(&tmux.addr, &signed(SECRET, unix_now(), &body), &body),
        204
    );
    let check = |cols: usize, screen: &str| {
        let lines: Vec<&str> = screen.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.starts_with("cubeboot watch 127.0.0.1"))
            .unwrap_or_else(|| panic!("{cols}: no header\n{screen}"));
        // Nothing of a frame above the header (a resize left none behind).
        for l in &lines[..header] {
            assert!(
                !l.contains("node-") && !l.contains("STEP"),
                "{cols}: stale {l:?}\n{screen}"
            );
        }
        assert_eq!(screen.matches("STEP").count(), 1, "{cols}:\n{screen}");
        for l in &lines {
            assert!(l.chars().count() <= cols, "{cols}: {l:?}");
        }
        let row = |start: &str| {
            let i = lines
                .iter()
                .position(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("{cols}: no {start}\n{screen}"));
            (i, lines[i])
        };
        for (name, state) in [
            ("node-00 ", "done"),
            ("node-01 ", "done"),
            ("node-03 ", "done"),
        ] {
            let (_, l) = row(name);
            assert!(
                l.trim_end().ends_with(&format!("  {state}")),
                "{cols}: {l:?}\n{screen}"
            );
        }
        let (i, l) = row("node-running ");
        assert!(
            l.contains(" fetch ") && l.contains("  running"),
            "{cols}: {l:?}\n{screen}"
        );
        assert!(!lines[i + 1].starts_with("  hint"), "{cols}\n{screen}");
        for failed in ["node-02 ", "compute-node"] {
            let (i, l) = row(failed);
            assert!(l.contains(" cube-install "), "{cols}: {l:?}\n{screen}");
            assert!(l.contains("  failed"), "{cols}: {l:?}\n{screen}");
            assert!(
                lines[i + 1].starts_with("  hint: see /var/log/cube-install.log"),
                "{cols}:\n{screen}"
            );
        }
        if cols >= 160 {
            assert!(
                screen.contains("compute-node-with-a-long-name-07 127.0.0.1"),
                "{screen}"
            );
            assert!(screen.contains("[###-------]  30% 1000M"), "{screen}");
        }
    };
    // Each capture after the view's next once-a-second redraw.
    let settle = || thread::sleep(Duration::from_millis(1500));
    settle();
    check(80, &tmux.screen());
    for cols in [100, 160, 80] {
        tmux.resize(cols, 30);
        settle();
        check(usize::from(cols), &tmux.screen());
    }
    assert!(!tmux.done_file.exists(), "watch ended early");
}

#[test]
fn the_secret_is_redacted_from_status_and_posts() {
    let mut plan = sample_plan();
    plan.report.webhook_secret = Some(SECRET.into());
    let secrets = cubeboot::firstboot::secrets::Secrets::new();
    for value in cubeboot::firstboot::report::plan_secrets(&plan) {
        secrets.add(&value);
    }
    let mut status = Status {
        last_error: Some(format!("curl -H 'X: {SECRET}' failed")),
        ..Status::default()
    };
    status.redact(&secrets);
    assert!(!status.to_json().contains(SECRET));
}

/// POST `body` with curl over HTTPS, trusting `cert`, from source address
/// `from`; returns the HTTP status (0: no HTTP answer).
fn curl_post(url: &str, cert: &Path, from: &str, headers: &[(&str, String)], body: &[u8]) -> u16 {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
    ])
    .args(["--interface", from, "--cacert"])
    .arg(cert)
    .args([
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        "@-",
    ]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    let mut child = cmd
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl is needed");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn with_tls_posts_arrive_encrypted_and_keep_their_sender() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let w = Watch::start(
        dir.path(),
        "127.0.0.1:0",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--json",
            "--expect",
            "1",
            "--timeout",
            "60",
        ],
    );
    let https = format!("https://{}/cubeboot", w.addr);
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = raw_post_result(&w.addr, b"{}");
    assert!(plain.is_none(), "plain HTTP was answered: {plain:?}");
    // A forged post over TLS is refused by the signature check behind it.
    let node = script("tls-node", "control", false).pop().unwrap();
    let body = node.to_json().into_bytes();
    let forged = signed(&"f".repeat(42), unix_now(), &body);
    assert_eq!(curl_post(&https, &cert, "127.0.0.2", &forged, &body), 401);
    // The real one, from 127.0.0.2: the view names that address, not the
    // relay's inside watch.
    let good = signed(SECRET, unix_now(), &body);
    assert_eq!(curl_post(&https, &cert, "127.0.0.2", &good, &body), 204);
    let (code, out, err) = w.finish(Duration::from_secs(20));
    assert_eq!(code, 0, "{err}\n{out}");
    assert!(err.contains("(TLS"), "{err}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rejected = events.iter().find(|e| e["event"] == "rejected").unwrap();
    assert_eq!(rejected["peer"], "127.0.0.2", "{rejected}");
    let n = events.iter().find(|e| e["event"] == "node").unwrap();
    assert_eq!(n["node"], "tls-node");
    assert_eq!(n["ip"], "127.0.0.2", "{n}");
    assert_eq!(n["state"], "done");
}

#[test]
fn tls_needs_both_files_and_says_which_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let watch = |extra: &[&std::ffi::OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cubeboot"))
            .args(["watch", "--listen", "127.0.0.1:0", "--timeout", "1"])
            .arg("--secret-file")
            .arg(&secret)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = watch(&["--tls-cert".as_ref(), cert.as_os_str()]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--tls-key"), "{err}");
    // The key where the certificate should be.
    let (code, err) = watch(&[
        "--tls-cert".as_ref(),
        key.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
    ]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains(&format!("{}: no certificate", key.display())),
        "{err}"
    );
    let (code, err) = watch(&[
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        cert.as_os_str(),
    ]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains(&format!("{}: no private key", cert.display())),
        "{err}"
    );
}

/// A plain HTTP post; None when no HTTP status line came back.
fn raw_post_result(addr: &str, body: &[u8]) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /cubeboot HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.starts_with("HTTP/").then_some(line)
}

/// Every field of the helper's status, none left at its default: listed
/// without `..Default::default()`, so a field added to the schema fails to
/// compile here until this test sets it too.
fn every_field_set(name: &str) -> Status {
    Status {
        version: 1,
        state: "failed: cube-verify".parse().unwrap(),
        step: Some(StepId::CubeVerify),
        progress: Progress {
            done: 11,
            total: 15,
        },
        last_error: Some("cubemaster did not answer\nsecond line".into()),
        hints: vec!["see /var/log/cube-install.log".into(), "second hint".into()],
        checks: [(
            cubeboot::status_schema::CheckName::CubeMaster,
            CheckResult {
                ok: false,
                detail: "no answer on :8089".into(),
            },
        )]
        .into(),
        warnings: vec!["net.ifnames=0 renames NICs".into()],
        generator: "cubeboot test".into(),
        profile: "debian-12".into(),
        updated_at: unix_now(),
        message: "failed: cube-verify: cubemaster did not answer".into(),
        steps: vec![
            StepView {
                name: StepId::Preflight,
                state: Some(StepState::Done),
                detail: "ok".into(),
            },
            StepView {
                name: StepId::CubeVerify,
                state: Some(StepState::Failed),
                detail: "cubemaster".into(),
            },
            StepView {
                name: StepId::Harden,
                state: None,
                detail: String::new(),
            },
        ],
        hostname: name.into(),
        role: Some(Role::Control),
        download: Some(DownloadProgress {
            asset: "bundle".into(),
            bytes: 1,
            total: 2,
        }),
        phase: "checking services".into(),
    }
}

#[test]
fn the_whole_status_reaches_the_fleet_view_typed_as_the_helper_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    let watch = Watch::start(
        dir.path(),
        "127.0.0.1:0",
        &["--json", "--expect", "1", "--timeout", "60"],
    );
    let posted = every_field_set("node-whole");
    let root = dir.path().join("node");
    std::fs::create_dir_all(&root).unwrap();
    run_helper(watch.url(), root, 7, vec![posted.clone()]);
    let (code, out, err) = watch.finish(Duration::from_secs(20));
    assert_eq!(code, 1, "{err}");
    let evs = events(&out);
    let node = evs
        .iter()
        .find(|e| e["event"] == "node")
        .expect("a node event");
    // The helper's JSON, whole: nothing the helper wrote is missing.
    let mut expect = serde_json::to_value(&posted).unwrap();
    expect["updated_at"] = node["status"]["updated_at"].clone();
    assert_eq!(node["status"], expect, "{node}");
    let back: Status = serde_json::from_value(node["status"].clone()).unwrap();
    assert_eq!(back.state, posted.state);
    assert_eq!(back.steps, posted.steps);
    // The flat fields of version 1 of the event stay as they were.
    assert_eq!(node["state"], "failed: cube-verify");
    assert_eq!(node["step"], "cube-verify");
    assert_eq!(node["hint"], "see /var/log/cube-install.log");
}

/// What a node may put in its strings to take over a terminal: clear the
/// screen, set the title, move to the line start, a NUL, C1 CSI, DEL and
/// the bidi overrides and isolates that reorder what is shown.
const HOSTILE: &str =
    "evil\x1b[2J\x1b]0;owned\x07\r\nfake-line\0\u{9b}31m\u{7f}\u{202e}gnp.exe\u{2066}\u{2069}\u{200e}\u{200f}\u{61c}\u{2028}end";

fn assert_inert(what: &str, text: &str) {
    for c in text.chars() {
        let bad = (c.is_control() && c != '\n')
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{61c}' | '\u{2028}' | '\u{2029}');
        assert!(!bad, "{what} holds U+{:04X} raw: {text:?}", c as u32);
    }
}

#[test]
fn a_signed_hostile_post_reaches_no_terminal_raw() {
    let dir = tempfile::tempdir().unwrap();
    let watch = Watch::start(
        dir.path(),
        "127.0.0.1:0",
        &["--json", "--expect", "1", "--timeout", "60"],
    );
    let mut posted = script(HOSTILE, "control", true).pop().unwrap();
    posted.hints = vec![format!("hint {HOSTILE}")];
    posted.last_error = Some(format!("error {HOSTILE}"));
    posted.message = format!("message {HOSTILE}");
    posted.phase = format!("phase {HOSTILE}");
    posted.state = format!("failed: rolled back to {HOSTILE}").parse().unwrap();
    posted.updated_at = unix_now();
    let body = posted.to_json().into_bytes();
    let addr = watch.addr.clone();
    // A step name this watch does not know, quoted in the refusal.
    let unknown = posted.to_json().replace(
        "\"step\": \"cube-install\"",
        &format!("\"step\": {:?}", HOSTILE),
    );
    let unknown = unknown.into_bytes();
    assert_eq!(
        raw_post(&addr, &signed(SECRET, unix_now() + 1, &unknown), &unknown),
        400
    );
    assert_eq!(
        raw_post(&addr, &signed(SECRET, unix_now(), &body), &body),
        204
    );
    let (code, out, err) = watch.finish(Duration::from_secs(20));
    assert_ne!(code, 0, "{err}");
    // The summary line on stderr names the node, escaped.
    assert_inert("stderr", &err);
    assert!(err.contains("evil\\u{1b}[2J"), "{err}");
    // JSON lines are printable ASCII, and still carry the exact text.
    for line in out.lines() {
        assert!(line.bytes().all(|b| (0x20..0x7f).contains(&b)), "{line:?}");
    }
    let evs = events(&out);
    let node = evs.iter().find(|e| e["event"] == "node").unwrap();
    assert_eq!(node["node"], HOSTILE);
    assert_eq!(node["status"]["phase"], format!("phase {HOSTILE}"));
    assert!(evs.iter().any(|e| e["event"] == "rejected"), "{out}");
}

#[test]
fn slow_connections_cost_no_thread_are_closed_and_delay_no_post() {
    let dir = tempfile::tempdir().unwrap();
    let watch = watch_for_one_node(dir.path());
    let addr = watch.addr.clone();
    // 200 clients that start a request and never finish it.
    let mut slow = unfinished_requests(&addr, 200, b"POST /cubeboot HTTP/1.1\r\nHost: x\r\n");
    thread::sleep(Duration::from_millis(500));
    let threads = watch.threads();
    assert!(
        threads <= 8,
        "watch runs {threads} threads for 200 slow connections"
    );
    // A helper's post is answered while they hang on.
    let mut posted = script("node-1", "compute", false).pop().unwrap();
    posted.updated_at = unix_now();
    let body = posted.to_json().into_bytes();
    // Kept going by --expect 1: the first post says running.
    let mut early = posted.clone();
    early.state = "running".parse().unwrap();
    let early = early.to_json().into_bytes();
    assert_eq!(
        raw_post(&addr, &signed(SECRET, unix_now(), &early), &early),
        204
    );
    // Trickling a byte a second does not keep a connection: each is closed
    // once its request is not whole 10 s after it was opened.
    let opened = Instant::now();
    let mut closed = vec![false; slow.len()];
    while closed.iter().any(|c| !c) && opened.elapsed() < Duration::from_secs(16) {
        for (s, gone) in slow.iter_mut().zip(closed.iter_mut()) {
            *gone = *gone || s.write_all(b"X").is_err() || closed_by_peer(s);
        }
        thread::sleep(Duration::from_secs(1));
    }
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(
        open,
        0,
        "{open} slow connections still open after {:?}",
        opened.elapsed()
    );
    assert_eq!(
        raw_post(&addr, &signed(SECRET, unix_now(), &body), &body),
        204
    );
    let (code, _, err) = watch.finish(Duration::from_secs(20));
    assert_eq!(code, 0, "{err}");
}

/// `watch --json --expect 1 --timeout 60` on a free loopback port.
fn watch_for_one_node(dir: &std::path::Path) -> Watch {
    Watch::start(
        dir,
        "127.0.0.1:0",
        &["--json", "--expect", "1", "--timeout", "60"],
    )
}

/// `n` connections to `addr` that each send `head` and never finish it.
fn unfinished_requests(addr: &str, n: usize, head: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(head).unwrap();
            s
        })
        .collect()
}

/// Whether the other end closed `s` (EOF or reset), without blocking.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let mut b = [0u8; 256];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// `cubeboot watch ARGS` with the test secret; (exit code, stderr).
fn watch_exit(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cubeboot"));
    cmd.arg("watch");
    if !args.contains(&"--secret-file") {
        cmd.arg("--secret-file").arg(&secret);
    }
    let out = cmd.args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn each_exit_code_means_one_thing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Usage: 2, whatever is wrong with the command line.
    for args in [
        &["--listen", "127.0.0.1:0", "--no-such-flag"][..],
        &["--listen", "127.0.0.1:0", "--timeout", "2d"],
        &["--listen", "127.0.0.1:0", "--expect", "0"],
        &["--listen", "127.0.0.1:0", "--expect", "2", "node-a"],
    ] {
        let (code, err) = watch_exit(d, args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
    }
    // I/O: 4, for a missing secret file and a port in use.
    let (code, err) = watch_exit(
        d,
        &[
            "--listen",
            "127.0.0.1:0",
            "--secret-file",
            "/nonexistent/secret",
        ],
    );
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("/nonexistent/secret"), "{err}");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let (code, err) = watch_exit(d, &["--listen", &busy_addr, "--timeout", "1"]);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains(&busy_addr), "{err}");
    // Timeout with nothing failed: 3. With --keep-going and a failed node,
    // the failure wins (1) and the message names it.
    let watch = Watch::start(
        d,
        "127.0.0.1:0",
        &["--expect", "3", "--keep-going", "--timeout", "3"],
    );
    run_fleet(&watch.url(), d, 2, |i| i == 1);
    let (code, _, err) = watch.finish(Duration::from_secs(20));
    assert_eq!(code, 1, "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains("timed out after 3s"), "{err}");
    assert!(last.contains("failed: node-01"), "{err}");
    // The man page says all of it.
    let man = d.join("man");
    let out = Command::new(env!("CARGO_BIN_EXE_cubeboot"))
        .args(["man", "--to"])
        .arg(&man)
        .output()
        .unwrap();
    assert!(out.status.success());
    let page = std::fs::read_to_string(man.join("cubeboot-watch.1")).unwrap();
    let section = page
        .split(".SH \"EXIT STATUS\"")
        .nth(1)
        .unwrap_or_else(|| panic!("{page}"));
    for code in ["0", "1", "2", "3", "4"] {
        assert!(
            section.contains(&format!(".TP\n{code}\n")),
            "{code}: {section}"
        );
    }
}

/// The code block in docs/watch.md that opens with "```LANG" after the
/// "Verifying a post yourself" heading.
fn doc_example(lang: &str) -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/watch.md")).unwrap();
    let section = doc.split("### Verifying a post yourself").nth(1).unwrap();
    let start = section.find(&format!("```{lang}\n")).unwrap() + lang.len() + 4;
    let len = section[start..].find("```").unwrap();
    section[start..start + len].to_string()
}

/// One request the helper's real webhook code sends: (headers, body).
fn capture_a_real_post(dir: &Path) -> (Vec<(String, String)>, Vec<u8>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let root = dir.join("node");
    std::fs::create_dir_all(&root).unwrap();
    let posts = vec![script("node-doc", "compute", false).pop().unwrap()];
    let helper = thread::spawn(move || run_helper(url, root, 3, posts));
    let (mut s, _) = listener.accept().unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .expect("the helper sends Content-Length");
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        .unwrap();
    drop(s);
    helper.join().unwrap();
    (headers, body)
}

#[test]
fn the_documented_verifications_accept_a_real_post_and_refuse_a_changed_one() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    // As build writes it: the hex text and a newline.
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let (headers, body) = capture_a_real_post(dir.path());
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let (ts, sig) = (
        get(signing::TIMESTAMP_HEADER),
        get(signing::SIGNATURE_HEADER),
    );
    let python = dir.path().join("verify.py");
    std::fs::write(&python, doc_example("python")).unwrap();
    let shell = dir.path().join("verify.sh");
    std::fs::write(&shell, doc_example("sh")).unwrap();
    let examples = [("python3", &python), ("sh", &shell)];
    for (interpreter, script) in examples {
        assert!(std::fs::read_to_string(script).unwrap().lines().count() <= 10);
        let run = |body: &[u8]| {
            let mut child = Command::new(interpreter)
                .arg(script)
                .arg(&secret)
                .arg(&ts)
                .arg(&sig)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(body).unwrap();
            let out = child.wait_with_output().unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        };
        let (code, said) = run(&body);
        assert_eq!((code, said.trim()), (Some(0), "ok"), "{interpreter}");
        let mut changed = body.clone();
        changed[5] ^= 1;
        let (code, said) = run(&changed);
        assert_eq!((code, said.trim()), (Some(1), "forged"), "{interpreter}");
    }
}

/// A POST on an open keep-alive connection; the status code of its answer.
fn post_on(s: &mut TcpStream, body: &[u8], ts: u64) -> u16 {
    s.write_all(&request_bytes(body, ts)).unwrap();
    answer_on(s)
}

/// A signed POST of `body`, as bytes on the wire.
fn request_bytes(body: &[u8], ts: u64) -> Vec<u8> {
    let mut head = format!(
        "POST /cubeboot HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in signed(SECRET, ts, body) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// The status code of the next answer on `s` (0: none within 10 s).
fn answer_on(s: &mut TcpStream) -> u16 {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A 204 is a status line and headers, no body.
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => answer.push(byte[0]),
            _ => return 0,
        }
    }
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_flood_of_slow_connections_closes_them_not_a_helpers_kept_one() {
    let dir = tempfile::tempdir().unwrap();
    let watch = watch_for_one_node(dir.path());
    let addr = watch.addr.clone();
    let mut status = script("node-kept", "compute", false).remove(0);
    status.updated_at = unix_now();
    let mut kept = TcpStream::connect(&addr).unwrap();
    assert_eq!(
        post_on(&mut kept, &status.to_json().into_bytes(), unix_now()),
        204
    );
    // More unfinished requests than watch keeps connections (512).
    let slow = unfinished_requests(&addr, 600, b"POST / HTTP/1.1\r\n");
    thread::sleep(Duration::from_millis(1000));
    let mut done = script("node-kept", "compute", false).pop().unwrap();
    done.updated_at = unix_now() + 1;
    assert_eq!(
        post_on(&mut kept, &done.to_json().into_bytes(), unix_now() + 1),
        204
    );
    drop(slow);
    let (code, _, err) = watch.finish(Duration::from_secs(20));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn two_posts_sent_back_to_back_on_one_connection_are_both_answered() {
    let dir = tempfile::tempdir().unwrap();
    let watch = Watch::start(
        dir.path(),
        "127.0.0.1:0",
        &["--json", "--expect", "1", "--timeout", "60"],
    );
    let mut first = script("node-piped", "compute", false).remove(0);
    first.updated_at = unix_now();
    let mut last = script("node-piped", "compute", false).pop().unwrap();
    last.updated_at = unix_now() + 1;
    let mut bytes = request_bytes(&first.to_json().into_bytes(), unix_now());
    bytes.extend(request_bytes(&last.to_json().into_bytes(), unix_now() + 1));
    let mut s = TcpStream::connect(&watch.addr).unwrap();
    s.write_all(&bytes).unwrap();
    assert_eq!(answer_on(&mut s), 204);
    assert_eq!(answer_on(&mut s), 204);
    let (code, _, err) = watch.finish(Duration::from_secs(20));
    assert_eq!(code, 0, "{err}");
}
