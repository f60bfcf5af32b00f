//! The downloader against a local HTTP server (127.0.0.1, started here):
//! resume after a dropped connection, a server that ignores Range, 503 then
//! success, a corrupted body refused, a stalled server timing out, mirror
//! fallback, proxies, and the two assets downloading in parallel.

mod support;

use std::time::Duration;

use cubeboot::digest::Sha256Digest;
use cubeboot::firstboot::fetch::{fetch_asset, verified_asset, FetchError, Fetched, MirrorFailure};
use cubeboot::firstboot::host::{Host, ScriptedHost};
use cubeboot::firstboot::journal::Journal;
use cubeboot::firstboot::{cache_path, Ctx, StepId};
use cubeboot::plan::{Asset, DownloadPlan};
use cubeboot::transport::{DownloadError, FetchConfig, MinRate};
use support::server::{Behavior, Server};
use support::target::{AssetFile, Target};

fn cfg() -> FetchConfig {
    FetchConfig {
        attempts_per_mirror: 3,
        connect_timeout: Duration::from_secs(5),
        // Short, so the stalled-server test is quick; still far above what
        // a local transfer needs between reads.
        idle_timeout: Duration::from_millis(700),
        ..FetchConfig::default()
    }
}

fn asset_for(file: &AssetFile, urls: Vec<String>) -> Asset {
    Asset {
        name: file.name.clone(),
        urls,
        sha256: file.sha256(),
        size: file.bytes.len() as u64,
    }
}

fn host() -> (tempfile::TempDir, ScriptedHost) {
    let dir = tempfile::tempdir().unwrap();
    let host = ScriptedHost::new(dir.path());
    (dir, host)
}

fn partial(asset: &Asset) -> String {
    format!("{}.partial", cache_path(asset))
}

#[test]
fn resumes_after_a_dropped_connection() {
    let server = Server::start();
    let file = AssetFile::new("k.deb", 1_000_000, 3);
    server.route("/k.deb", &file.bytes, vec![Behavior::DropAfter(300_000)]);
    let (_d, host) = host();
    let asset = asset_for(&file, vec![server.url("/k.deb")]);

    let got = fetch_asset(&host, "kernel", &asset, &cfg()).unwrap();
    assert_eq!(
        got,
        Fetched::Downloaded {
            url: server.url("/k.deb"),
            resumed_from: 300_000,
            left: vec![],
        }
    );
    let reqs = server.requests_to("/k.deb");
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].range, None);
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=300000-"));
    assert_eq!(host.read(&cache_path(&asset)).unwrap(), file.bytes);
    assert!(!host.exists(&partial(&asset)));
    // One backoff slept on the virtual clock, said on the console.
    let said = host.said().join("\n");
    assert!(said.contains("retrying in 1s (attempt 2 of 3)"), "{said}");
    assert!(
        said.contains("resuming k.deb at 293.0 KiB of 976.6 KiB"),
        "{said}"
    );
}

#[test]
fn a_partial_file_from_an_earlier_run_is_resumed() {
    let server = Server::start();
    let file = AssetFile::new("b.tgz", 800_000, 4);
    server.route("/b.tgz", &file.bytes, vec![]);
    let (_d, host) = host();
    let asset = asset_for(&file, vec![server.url("/b.tgz")]);
    host.put(&partial(&asset), &file.bytes[..500_000]);
    let got = fetch_asset(&host, "bundle", &asset, &cfg()).unwrap();
    assert!(
        matches!(
            got,
            Fetched::Downloaded {
                resumed_from: 500_000,
                ..
            }
        ),
        "{got:?}"
    );
    assert_eq!(
        server.requests_to("/b.tgz")[0].range.as_deref(),
        Some("bytes=500000-")
    );
    assert_eq!(host.read(&cache_path(&asset)).unwrap(), file.bytes);
}

#[test]
fn a_server_ignoring_range_restarts_from_zero() {
    let server = Server::start();
    let file = AssetFile::new("k.deb", 600_000, 5);
    server.route_with_default("/k.deb", &file.bytes, vec![], Behavior::IgnoreRange);
    let (_d, host) = host();
    let asset = asset_for(&file, vec![server.url("/k.deb")]);
    // Garbage where a prefix should be: appending to it would never verify.
    host.put(&partial(&asset), vec![0u8; 200_000]);
    let got = fetch_asset(&host, "kernel", &asset, &cfg()).unwrap();
    assert!(
        matches!(
            got,
            Fetched::Downloaded {
                resumed_from: 0,
                ..
            }
        ),
        "{got:?}"
    );
    let reqs = server.requests_to("/k.deb");
    assert_eq!(
        reqs.len(),
        1,
        "a 200 is taken as the whole file, not retried"
    );
    assert_eq!(reqs[0].range.as_deref(), Some("bytes=200000-"));
    assert_eq!(host.read(&cache_path(&asset)).unwrap(), file.bytes);
    assert!(host
        .said()
        .iter()
        .any(|l| l.contains("server ignored the range request; restarting from byte 0")));
}

#[test]
fn retries_503_with_backoff_then_succeeds() {
    let server = Server::start();
    let file = AssetFile::new("k.deb", 100_000, 6);
    server.route(
        "/k.deb",
        &file.bytes,
        vec![Behavior::Status(503), Behavior::Status(503)],
    );
    let (_d, host) = host();
    let asset = asset_for(&file, vec![server.url("/k.deb")]);
    let t0 = host.now();
    fetch_asset(&host, "kernel", &asset, &cfg()).unwrap();
    assert_eq!(server.requests_to("/k.deb").len(), 3);
    // Backoff 1 s then 2 s, slept through the host (virtual clock).
    assert_eq!(
        host.now().duration_since(t0).unwrap(),
        Duration::from_secs(3)
    );
    assert_eq!(host.read(&cache_path(&asset)).unwrap(), file.bytes);
}

#[test]
fn retry_after_is_honoured_up_to_the_cap() {
    let server = Server::start();
    let file = AssetFile::new("k.deb", 10_000, 6);
    server.route(
        "/k.deb",
        &file.bytes,
        vec![Behavior::StatusRetryAfter(429, 7)],
    );
    let (_d, host) = host();
    let asset = asset_for(&file, vec![server.url("/k.deb")]);
    let t0 = host.now();
    fetch_asset(&host, "kernel", &asset, &cfg()).unwrap();
    assert_eq!(
        host.now().duration_since(t0).unwrap(),
        Duration::from_secs(7)
    );
}

#[test]
fn only_retriable_failures_are_retried() {
    let server = Server::start();
    let file = AssetFile::new("k.deb", 10_000, 7);
    server.route_with_default("/forbidden", &file.bytes, vec![], Behavior::Status(403));
    server.route_with_default("/busy", &file.bytes, vec![], Behavior::Status(408));
    let (_d, host) = host();
    let asset = asset_for(&file, vec![server.url("/forbidden"), server.url("/busy")]);
    let err = fetch_asset(&host, "kernel", &asset, &cfg()).unwrap_err();
    assert_eq!(
        server.requests_to("/forbidden").len(),
        1,
        "403 is not retried"
    );
    assert_eq!(server.requests_to("/busy").len(), 3, "408 is retried");
    let FetchError::AllMirrorsFailed { attempts, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(
        matches!(&attempts[0], MirrorFailure::Download(DownloadError::Fatal { reason, .. }) if reason == "HTTP 403")
    );
    assert!(
        matches!(&attempts[1], MirrorFailure::Download(DownloadError::Retriable { reason, .. }) if reason == "HTTP 408")
    );
    assert!(
        err.hint().starts_with("check network access"),
        "{}",
        err.hint()
    );
}

#[test]
fn a_corrupted_body_is_refused_with_both_digests() {
    let server = Server::start();
    let file = AssetFile::new("k.deb", 300_000, 8);
    server.route_with_default("/k.deb", &file.bytes, vec![], Behavior::Corrupt);
    let (_d, host) = host();
    let asset = asset_for(&file, vec![server.url("/k.deb")]);
    let err = fetch_asset(&host, "kernel", &asset, &cfg()).unwrap_err();
    let mut corrupt = file.bytes.clone();
    corrupt[150_000] ^= 0xff;
    let msg = err.to_string();
    assert_eq!(
        msg,
        format!(
            "fetching kernel (k.deb): every mirror failed:\n  - {}: checksum mismatch: expected sha256 {}, computed {}; file refused",
            server.url("/k.deb"),
            file.sha256(),
            Sha256Digest::of(&corrupt)
        )
    );
    assert_eq!(
        server.requests_to("/k.deb").len(),
        1,
        "a fresh mismatch is not retried on the same mirror"
    );
    assert!(
        !host.exists(&cache_path(&asset)),
        "refused bytes got a final name"
    );
    assert!(!host.exists(&partial(&asset)), "refused bytes were kept");
    assert!(err.hint().contains("different bytes than the lock pinned"));
}

#[test]
fn a_stalled_server_times_out_and_the_next_mirror_resumes() {
    let server = Server::start();
    let file = AssetFile::new("k.deb", 400_000, 9);
    server.route_with_default(
        "/stall",
        &file.bytes,
        vec![],
        Behavior::StallAfter(50_000, Duration::from_secs(4)),
    );
    let mirror = Server::start();
    mirror.route("/k.deb", &file.bytes, vec![]);
    let (_d, host) = host();
    let asset = asset_for(&file, vec![server.url("/stall"), mirror.url("/k.deb")]);
    let got = fetch_asset(&host, "kernel", &asset, &cfg()).unwrap();
    let stalled = server.requests_to("/stall");
    assert_eq!(stalled.len(), 3, "each stall is a retriable timeout");
    assert_eq!(stalled[1].range.as_deref(), Some("bytes=50000-"));
    assert_eq!(stalled[2].range.as_deref(), Some("bytes=100000-"));
    // The second mirror carries on from what the first delivered.
    assert_eq!(
        mirror.requests_to("/k.deb")[0].range.as_deref(),
        Some("bytes=150000-")
    );
    assert!(
        matches!(
            got,
            Fetched::Downloaded {
                resumed_from: 150_000,
                ..
            }
        ),
        "{got:?}"
    );
    assert_eq!(host.read(&cache_path(&asset)).unwrap(), file.bytes);
    let said = host.said().join("\n");
    assert!(
        said.contains("timed out") || said.contains("timeout"),
        "{said}"
    );
}

#[test]
fn mirror_fallback_after_404_without_retrying_it() {
    let server = Server::start();
    let file = AssetFile::new("k.deb", 50_000, 10);
    server.route("/good", &file.bytes, vec![]);
    let (_d, host) = host();
    let asset = asset_for(&file, vec![server.url("/missing"), server.url("/good")]);
    let got = fetch_asset(&host, "kernel", &asset, &cfg()).unwrap();
    assert_eq!(server.requests_to("/missing").len(), 1);
    assert!(
        matches!(
            &got,
            Fetched::Downloaded { url, resumed_from: 0, left }
                if *url == server.url("/good")
                    && matches!(left[..], [MirrorFailure::Download(DownloadError::NotFound { .. })])
        ),
        "{got:?}"
    );
}

#[test]
fn http_404_on_every_mirror_is_the_same_error_class_as_a_missing_file() {
    let server = Server::start();
    let (_d, host) = host();
    let file = AssetFile::new("k.deb", 10, 11);
    let asset = asset_for(&file, vec![server.url("/a"), "file:///srv/none".into()]);
    let err = fetch_asset(&host, "kernel", &asset, &cfg()).unwrap_err();
    let FetchError::AllMirrorsFailed { attempts, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(attempts
        .iter()
        .all(|a| matches!(a, MirrorFailure::Download(DownloadError::NotFound { .. }))));
    assert!(err
        .hint()
        .starts_with("the asset is not at any of its URLs"));
}

#[test]
fn a_server_announcing_the_wrong_size_is_refused_before_the_body() {
    let server = Server::start();
    let file = AssetFile::new("k.deb", 10_000, 12);
    server.route_with_default("/k", &file.bytes, vec![], Behavior::WrongLength(20_000));
    let (_d, host) = host();
    let asset = asset_for(&file, vec![server.url("/k")]);
    let err = fetch_asset(&host, "kernel", &asset, &cfg()).unwrap_err();
    assert!(
        err.to_string()
            .contains("size mismatch: expected 10000 bytes, server has 20000; file refused"),
        "{err}"
    );
    assert!(!host.exists(&partial(&asset)));
}

#[test]
fn proxies_come_from_the_host_environment_and_no_proxy_bypasses_them() {
    let proxy = Server::start();
    let file = AssetFile::new("k.deb", 30_000, 13);
    proxy.route("/k.deb", &file.bytes, vec![]);
    let (_d, host) = host();
    host.set_env("HTTP_PROXY", &proxy.url(""));
    // A name only the proxy knows: resolving it here would fail.
    let asset = asset_for(&file, vec!["http://assets.example.invalid/k.deb".into()]);
    fetch_asset(&host, "kernel", &asset, &cfg()).unwrap();
    let reqs = proxy.requests();
    assert_eq!(reqs[0].method, "CONNECT");
    assert_eq!(reqs[0].path, "assets.example.invalid:80");
    assert!(reqs[1].tunneled);
    assert_eq!(reqs[1].path, "/k.deb");

    // NO_PROXY: straight to the origin, the proxy sees nothing.
    let origin = Server::start();
    origin.route("/k.deb", &file.bytes, vec![]);
    let (_d2, host2) = self::host();
    host2.set_env("HTTP_PROXY", &proxy.url(""));
    host2.set_env("NO_PROXY", "localhost,127.0.0.1");
    let asset2 = asset_for(&file, vec![origin.url("/k.deb")]);
    let before = proxy.requests().len();
    fetch_asset(&host2, "kernel", &asset2, &cfg()).unwrap();
    assert_eq!(proxy.requests().len(), before);
    assert_eq!(origin.requests_to("/k.deb").len(), 1);
}

#[test]
fn the_bundle_downloads_in_parallel_once_the_kernel_has_shown_its_rate() {
    let server = Server::start();
    let kernel = AssetFile::new("kernel.deb", 400_000, 14);
    let bundle = AssetFile::new("bundle.tar.gz", 400_000, 15);
    // Each takes a while to serve; run one after the other they could not
    // overlap in time.
    let slow = Behavior::Slow {
        chunk: 20_000,
        pause: Duration::from_millis(60),
    };
    server.route_with_default("/kernel.deb", &kernel.bytes, vec![], slow.clone());
    server.route_with_default("/bundle.tar.gz", &bundle.bytes, vec![], slow);
    let t = Target::with_plan_edit(|p| {
        for (key, f, path) in [
            ("kernel", &kernel, "/kernel.deb"),
            ("bundle", &bundle, "/bundle.tar.gz"),
        ] {
            p["assets"][key] = serde_json::json!({
                "name": f.name, "urls": [server.url(path)],
                "sha256": f.sha256().to_hex(), "size": f.bytes.len()
            });
        }
    });
    // A probe shorter than the kernel's download, and a link on which the
    // kernel keeps its rate (src/firstboot/link.rs).
    let end = t.run_once(&cubeboot::firstboot::runner::RunOptions {
        link: cubeboot::firstboot::live::Rules {
            probe: Duration::from_millis(100),
            window: Duration::from_millis(100),
            yield_below: 0.0,
            ..Default::default()
        },
        ..support::target::opts(cubeboot::firstboot::runner::Scope::StopAfter(StepId::Fetch))
    });
    assert_eq!(
        end,
        cubeboot::firstboot::runner::RunEnd::Stopped(StepId::Fetch)
    );
    // The server notes a request's end just after the client saw its last
    // byte; give it a moment.
    for _ in 0..100 {
        if server.requests().iter().all(|r| r.finished.is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let k = &server.requests_to("/kernel.deb")[0];
    let b = &server.requests_to("/bundle.tar.gz")[0];
    let (k0, k1) = (k.started, k.finished.unwrap());
    let (b0, b1) = (b.started, b.finished.unwrap());
    assert!(k0 < b1 && b0 < k1, "downloads did not overlap");
    // The kernel first, alone for the probe.
    assert!(b0 >= k0 + Duration::from_millis(100), "{k0:?} {b0:?}");
    let (plan, _) = t.plan();
    assert_eq!(
        t.host.read(&cache_path(&plan.assets.kernel)).unwrap(),
        kernel.bytes
    );
    assert_eq!(
        t.host.read(&cache_path(&plan.assets.bundle)).unwrap(),
        bundle.bytes
    );
    // Console shows progress per asset.
    let said = t.host.said().join("\n");
    for label in ["fetch kernel: ", "fetch bundle: "] {
        assert!(
            said.lines()
                .any(|l| l.starts_with(label) && l.contains("% (")),
            "{said}"
        );
    }
}

#[test]
fn tls_certificates_are_checked_and_a_bad_one_is_not_retried() {
    // A real TLS server on 127.0.0.1 (openssl s_server) with a self-signed
    // certificate the system store does not trust.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = support::tls::self_signed(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_d, host) = host();
    let file = AssetFile::new("k.deb", 10, 16);
    let asset = asset_for(&file, vec![format!("https://127.0.0.1:{port}/k.deb")]);
    let err = fetch_asset(&host, "kernel", &asset, &cfg()).unwrap_err();
    let _ = server.kill();
    let _ = server.wait();
    let FetchError::AllMirrorsFailed { attempts, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(attempts.len(), 1);
    assert!(
        matches!(&attempts[0], MirrorFailure::Download(DownloadError::Fatal { reason, .. }) if reason.contains("invalid peer certificate")),
        "{err}"
    );
    assert!(
        !host.said().iter().any(|l| l.contains("retrying")),
        "a bad certificate was retried"
    );
    assert!(!host.exists(&partial(&asset)));
}

/// A mirror that trickles (20 bytes/s here, a read every 0.5 s, inside the
/// 0.7 s idle timeout) never goes silent, so the idle timeout never fires; the minimum-throughput window must give up on it and
/// move to the healthy mirror, saying why.
#[test]
fn a_trickling_mirror_is_left_for_the_next_one() {
    let server = Server::start();
    let file = AssetFile::new("k.deb", 64 * 1024, 11);
    server.route_with_default(
        "/trickle",
        &file.bytes,
        vec![],
        Behavior::Slow {
            chunk: 10,
            pause: Duration::from_millis(500),
        },
    );
    let mirror = Server::start();
    mirror.route("/k.deb", &file.bytes, vec![]);
    let (_d, host) = host();
    let asset = asset_for(&file, vec![server.url("/trickle"), mirror.url("/k.deb")]);
    let cfg = FetchConfig {
        min_rate: Some(MinRate {
            bytes_per_sec: 16 * 1024,
            window: Duration::from_secs(2),
        }),
        ..cfg()
    };
    // Run it on a thread: before the fix this never returns.
    let (tx, rx) = std::sync::mpsc::channel();
    let host = std::sync::Arc::new(host);
    let h = host.clone();
    std::thread::spawn(move || {
        let _ = tx.send(fetch_asset(&*h, "kernel", &asset, &cfg).map(|f| (f, asset)));
    });
    let (got, asset) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the helper stayed stuck on a trickling mirror")
        .unwrap();
    // One try at the trickle: slowness is not retried on the same mirror.
    assert_eq!(server.requests_to("/trickle").len(), 1);
    assert!(
        matches!(&got, Fetched::Downloaded { url, .. } if *url == mirror.url("/k.deb")),
        "{got:?}"
    );
    assert_eq!(host.read(&cache_path(&asset)).unwrap(), file.bytes);
    let said = host.said().join("\n");
    assert!(said.contains("too slow"), "{said}");
    // The step's detail (what status.json shows) names the mirror left.
    assert!(
        got.describe(&asset)
            .contains(&format!("{}: too slow", server.url("/trickle"))),
        "{}",
        got.describe(&asset)
    );
}

/// A bundle mirror that trickles (10 bytes every 0.5 s) and a healthy one.
fn trickle_and_good(file: &AssetFile) -> (Server, Server) {
    let slow = Server::start();
    slow.route_with_default(
        "/trickle",
        &file.bytes,
        vec![],
        Behavior::Slow {
            chunk: 10,
            pause: Duration::from_millis(500),
        },
    );
    let good = Server::start();
    good.route(&format!("/{}", file.name), &file.bytes, vec![]);
    (slow, good)
}

/// The plan's `download` settings reach the fetch step: a 1 s window
/// leaves the trickling mirror quickly, and the step's detail (status.json)
/// names it.
#[test]
fn the_fetch_step_applies_the_plans_minimum_rate() {
    let file = AssetFile::new("bundle.tar.gz", 64 * 1024, 21);
    let (slow, good) = trickle_and_good(&file);
    let urls = vec![slow.url("/trickle"), good.url("/bundle.tar.gz")];
    let t = Target::with_plan_edit(|p| {
        p["assets"]["bundle"] = serde_json::json!({
            "name": file.name, "urls": urls,
            "sha256": file.sha256().to_hex(), "size": file.bytes.len()
        });
        p["download"] = serde_json::json!({
            "min_bytes_per_sec": 16384, "min_rate_window_secs": 1
        });
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let opts = support::target::opts(cubeboot::firstboot::runner::Scope::StopAfter(StepId::Fetch));
    let t = std::sync::Arc::new(t);
    let t2 = t.clone();
    std::thread::spawn(move || {
        let _ = tx.send(t2.run_once(&opts));
    });
    let end = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the fetch step stayed stuck on a trickling mirror");
    assert_eq!(
        end,
        cubeboot::firstboot::runner::RunEnd::Stopped(StepId::Fetch)
    );
    assert_eq!(slow.requests_to("/trickle").len(), 1);
    let (plan, _) = t.plan();
    assert_eq!(
        t.host.read(&cache_path(&plan.assets.bundle)).unwrap(),
        file.bytes
    );
    // The bundle downloads beside the steps after fetch; the journal
    // records it when it ends.
    let journal = Journal::read(&t.host).unwrap().unwrap();
    let detail = &journal.steps[&StepId::Bundle].detail;
    assert!(
        detail.contains(&format!("after leaving {}: too slow", slow.url("/trickle"))),
        "{detail}"
    );
}

/// The kernel stage fetches the kernel package itself when the fetch step
/// skipped it (native KVM decided, then changed): that download must leave
/// a trickling mirror too, by the plan's settings.
#[test]
fn the_kernel_stages_own_fetch_applies_the_plans_minimum_rate() {
    let file = AssetFile::new("kernel.deb", 64 * 1024, 22);
    let (slow, good) = trickle_and_good(&file);
    let mut plan = cubeboot::plan::testing::sample_plan();
    plan.assets.kernel = asset_for(&file, vec![slow.url("/trickle"), good.url("/kernel.deb")]);
    plan.download = DownloadPlan {
        min_bytes_per_sec: 16 * 1024,
        min_rate_window_secs: 1,
    };
    let (_d, host) = host();
    let (tx, rx) = std::sync::mpsc::channel();
    let host = std::sync::Arc::new(host);
    let h = host.clone();
    std::thread::spawn(move || {
        let mut journal = Journal::new("test");
        let ctx = Ctx::new(&*h, &plan, &mut journal);
        let got = verified_asset(&ctx, "kernel", &plan.assets.kernel).map_err(|e| format!("{e:#}"));
        let _ = tx.send((got, plan.assets.kernel.clone()));
    });
    let (got, asset) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the kernel stage's fetch stayed stuck on a trickling mirror");
    assert_eq!(got.unwrap(), cache_path(&asset));
    assert_eq!(slow.requests_to("/trickle").len(), 1);
    assert_eq!(host.read(&cache_path(&asset)).unwrap(), file.bytes);
}

#[test]
fn the_fetch_step_reports_growing_download_counts_at_most_every_two_seconds() {
    let server = Server::start();
    let kernel = AssetFile::new("kernel.deb", 600_000, 21);
    let bundle = AssetFile::new("bundle.tar.gz", 300_000, 22);
    // 20 KB every 30 ms: about a second of real time for the kernel.
    let slow = Behavior::Slow {
        chunk: 20_000,
        pause: Duration::from_millis(30),
    };
    server.route_with_default("/kernel.deb", &kernel.bytes, vec![], slow.clone());
    server.route_with_default("/bundle.tar.gz", &bundle.bytes, vec![], slow);
    server.route("/hook", b"", vec![]);
    let t = Target::with_plan_edit(|p| {
        for (key, f, path) in [
            ("kernel", &kernel, "/kernel.deb"),
            ("bundle", &bundle, "/bundle.tar.gz"),
        ] {
            p["assets"][key] = serde_json::json!({
                "name": f.name, "urls": [server.url(path)],
                "sha256": f.sha256().to_hex(), "size": f.bytes.len()
            });
        }
        p["report"]["webhook"] = serde_json::json!(server.url("/hook"));
    });
    // The fetch step's own download is the kernel's; the bundle's runs
    // beside the steps that follow.
    let total = kernel.bytes.len() as u64;
    // The helper's clock is virtual: a quarter second passes every 10 ms
    // of real time, so the rate limit is met many times over the transfer.
    // Meanwhile the status file is read as `cube-firstboot status` would.
    let running = std::sync::atomic::AtomicBool::new(true);
    let mut seen_in_file: Vec<u64> = Vec::new();
    let started = t.host.now();
    let end = std::thread::scope(|s| {
        let ticker = s.spawn(|| {
            let mut seen = Vec::new();
            while running.load(std::sync::atomic::Ordering::SeqCst) {
                t.host.sleep(Duration::from_millis(250));
                std::thread::sleep(Duration::from_millis(10));
                if let Ok(text) = t.host.read_string("/run/cubeboot/status.json") {
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    if let Some(b) = v["download"]["bytes"].as_u64() {
                        if seen.last() != Some(&b) {
                            seen.push(b);
                        }
                    }
                }
            }
            seen
        });
        let end = t.run_once(&support::target::opts(
            cubeboot::firstboot::runner::Scope::StopAfter(StepId::Fetch),
        ));
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        seen_in_file = ticker.join().unwrap();
        end
    });
    let virtual_secs = t.host.now().duration_since(started).unwrap().as_secs();
    assert_eq!(
        end,
        cubeboot::firstboot::runner::RunEnd::Stopped(StepId::Fetch)
    );
    assert!(
        seen_in_file.len() >= 2 && seen_in_file.windows(2).all(|w| w[0] < w[1]),
        "the status file showed {seen_in_file:?}"
    );
    let posts: Vec<serde_json::Value> = server
        .requests_to("/hook")
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let fetch_posts: Vec<&serde_json::Value> =
        posts.iter().filter(|p| p["step"] == "fetch").collect();
    assert_eq!(fetch_posts[0]["message"], "running step fetch");
    let progress: Vec<(u64, u64, u64)> = fetch_posts[1..]
        .iter()
        .map(|p| {
            let d = &p["download"];
            assert_eq!(d["asset"], "kernel", "{p}");
            (
                p["updated_at"].as_u64().unwrap(),
                d["bytes"].as_u64().unwrap(),
                d["total"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(progress.len() >= 3, "{progress:?}");
    assert!(
        progress.windows(2).all(|w| w[0].1 < w[1].1),
        "bytes do not grow: {progress:?}"
    );
    // The last count is posted whatever the rate limit says.
    assert_eq!(progress.last().unwrap().1, total, "{progress:?}");
    assert!(progress.iter().all(|p| p.2 == total), "{progress:?}");
    // Bounded: two seconds between the step's post and the first count,
    // and between counts, except the final one.
    let start_at = fetch_posts[0]["updated_at"].as_u64().unwrap();
    let times: Vec<u64> = std::iter::once(start_at)
        .chain(progress.iter().map(|p| p.0))
        .collect();
    let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[..gaps.len() - 1].iter().all(|g| *g >= 2),
        "posts closer than 2 s: {gaps:?}"
    );
    assert!(
        progress.len() as u64 <= virtual_secs / 2 + 1,
        "{} posts in {virtual_secs} s",
        progress.len()
    );
}

/// Issue 21 item 1: `R/var/lib/cubeboot/cache/<sha>.partial -> /outside`,
/// planted by whoever prepared the image, must not carry the download out
/// of the root, and the final cache name must not become a link out of it.
fn planted_partial(asset: &Asset) -> (tempfile::TempDir, tempfile::TempDir, std::path::PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let partial_at = root.path().join(partial(asset).trim_start_matches('/'));
    std::fs::create_dir_all(partial_at.parent().unwrap()).unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, &partial_at).unwrap();
    (root, outside, victim)
}

fn assert_confined(root: &std::path::Path, asset: &Asset, victim: &std::path::Path, bytes: &[u8]) {
    assert_eq!(
        std::fs::read(victim).unwrap(),
        b"precious",
        "written outside the root"
    );
    let cached = root.join(cache_path(asset).trim_start_matches('/'));
    let m = std::fs::symlink_metadata(&cached).unwrap();
    assert!(m.is_file(), "the cache name is not a plain file: {m:?}");
    assert_eq!(std::fs::read(&cached).unwrap(), bytes);
}

#[test]
fn a_planted_partial_link_does_not_carry_the_download_out_of_the_root() {
    let server = Server::start();
    let file = AssetFile::new("k.deb", 300_000, 9);
    server.route("/k.deb", &file.bytes, vec![]);
    let asset = asset_for(&file, vec![server.url("/k.deb")]);
    let (root, _outside, victim) = planted_partial(&asset);
    // The host `run --root R` uses.
    let host = cubeboot::firstboot::host::RealHost::new(root.path());
    fetch_asset(&host, "kernel", &asset, &cfg()).unwrap();
    assert_confined(root.path(), &asset, &victim, &file.bytes);
}

#[test]
fn dev_fetch_dest_does_not_write_through_a_planted_partial_link() {
    let server = Server::start();
    let file = AssetFile::new("k.deb", 300_000, 10);
    server.route("/k.deb", &file.bytes, vec![]);
    let asset = asset_for(&file, vec![server.url("/k.deb")]);
    let (root, _outside, victim) = planted_partial(&asset);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cube-firstboot"))
        .args([
            "dev",
            "fetch",
            &server.url("/k.deb"),
            &file.sha256().to_hex(),
        ])
        .args(["--size", &file.bytes.len().to_string(), "--dest"])
        .arg(root.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_confined(root.path(), &asset, &victim, &file.bytes);
}

/// Issue 21 item 2: a body that is not a download (a health probe's
/// answer) past its 1 MiB limit is refused, not cut and read as if whole.
#[test]
fn an_oversized_probe_answer_is_refused() {
    let server = Server::start();
    let big = vec![b'{'; (1 << 20) + 10];
    server.route("/health", &big, vec![]);
    server.route("/ok", b"{\"ok\": true}", vec![]);
    let url = server.url("/health");
    let err =
        cubeboot::transport::get_text(&cubeboot::transport::Process, &url, &cfg()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{url}: response body larger than the limit of 1 MiB; not read further")
    );
    let ok =
        cubeboot::transport::get_text(&cubeboot::transport::Process, &server.url("/ok"), &cfg());
    assert_eq!(ok.unwrap(), "{\"ok\": true}");
}
